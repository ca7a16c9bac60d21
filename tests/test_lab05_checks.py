"""Lab 05's checks pass the solution's own functions and fail, naming the mistake, for
zeros, random values, the library's implementation, the input returned unchanged and
the commonest mistakes of each exercise."""
import numpy as np
import pytest
import torch

import xailab
from xailab import evaluation, hooks
from xailab.attribution import cam as cam_module
from xailab.checks import core, lab05

from labtools import fails_saying, solution_function

NB = "05_cam.ipynb"


@pytest.fixture(scope="module")
def sol():
    return {name: solution_function(NB, name) for name in ("my_cam", "my_gradcam", "box_from_map", "iou")}


def _cam(model, x, target, rows=None, weights=True, relu=False):
    """CAM written out, with switches for the common mistakes."""
    with hooks.record(model, "features.block3") as rec, torch.no_grad():
        model(x)
    A = rec.activations["features.block3"]
    if not weights:
        return A.sum(1)
    w = model.fc.weight.detach()[target if rows is None else rows]
    m = (w[:, :, None, None] * A).sum(1)
    return m.clamp_min(0) if relu else m


def _gradcam(model, x, target, layer, pool="mean", relu=True):
    """Grad-CAM written out, with switches for the common mistakes."""
    with hooks.record(model, layer) as rec:
        model(x).gather(1, target[:, None]).sum().backward()
    model.zero_grad(set_to_none=True)
    A, G = rec.activations[layer], rec.gradients[layer]
    alpha = G.mean((2, 3)) if pool == "mean" else G.sum((2, 3))
    m = (alpha[:, :, None, None] * A).sum(1)
    return m.clamp_min(0) if relu else m


# --- exercise 1: CAM ---------------------------------------------------------------

def test_cam_passes_the_solution(sol):
    core.reset()
    assert lab05.check_cam(sol["my_cam"], verbose=False).passed


def test_cam_rejects_degenerate_answers_and_the_library():
    check = lab05.check_cam
    fails_saying(check, lambda m, x, t: torch.zeros(len(x), 16, 16), "all zeros")
    fails_saying(check, lambda m, x, t: torch.randn(len(x), 16, 16), "unrelated")
    fails_saying(check, lambda m, x, t: x, "shape")
    for method in ("cam", "gradcam", "hirescam"):
        fails_saying(check, lambda m, x, t: xailab.explain(m, x, t, method=method, upsample=False),
                     "write this one yourself")
    fails_saying(check, lambda m, x, t: cam_module.cam(m, x, t, upsample=False), "write this one yourself")
    fails_saying(check, lambda m, x, t: cam_module.weighted_sum(
        _cam_activations(m, x), m.fc.weight.detach()[t], relu=False), "write this one yourself")


def _cam_activations(model, x):
    with hooks.record(model, "features.block3") as rec, torch.no_grad():
        model(x)
    return rec.activations["features.block3"]


def test_cam_names_the_common_mistakes():
    check = lab05.check_cam
    assert check(_cam, verbose=False).passed
    fails_saying(check, lambda m, x, t: _cam(m, x, t, rows=m(x).argmax(1)), "predicted class")
    fails_saying(check, lambda m, x, t: _cam(m, x, t, rows=t[:1].expand(len(t))), "first target's class row")
    fails_saying(check, lambda m, x, t: _cam(m, x, t, weights=False), "no weighting")
    fails_saying(check, lambda m, x, t: _cam(m, x, t, relu=True), "relu")


# --- exercise 2: Grad-CAM ----------------------------------------------------------

def test_gradcam_passes_the_solution(sol):
    core.reset()
    assert lab05.check_gradcam(sol["my_gradcam"], verbose=False).passed


def test_gradcam_rejects_degenerate_answers_and_the_library():
    check = lab05.check_gradcam
    side = lambda layer: 8 if layer == "features.block3" else 32
    fails_saying(check, lambda m, x, t, layer: torch.zeros(len(x), side(layer), side(layer)), "all zeros")
    fails_saying(check, lambda m, x, t, layer: torch.rand(len(x), side(layer), side(layer)), "unrelated")
    fails_saying(check, lambda m, x, t, layer: x, "shape")
    for method in ("gradcam", "gradcam_pp", "hirescam"):
        fails_saying(check, lambda m, x, t, layer: xailab.explain(m, x, t, method=method, layer=layer,
                                                                  upsample=False), "write this one yourself")
    fails_saying(check, lambda m, x, t, layer: cam_module.layer_pass(m, x, t, layer).activations.sum(1),
                 "write this one yourself")


def test_gradcam_names_the_common_mistakes():
    check = lab05.check_gradcam
    assert check(_gradcam, verbose=False).passed
    fails_saying(check, lambda m, x, t, layer: _gradcam(m, x, t, layer, relu=False), "relu is missing")
    fails_saying(check, lambda m, x, t, layer: _gradcam(m, x, t, layer, pool="sum"),
                 "summed the gradients", "instead of averaging")
    fails_saying(check, lambda m, x, t, layer: _gradcam(m, x, m(x).argmax(1), layer), "predicted class")


# --- exercise 3: the box around the largest region ---------------------------------

def _largest(mask):
    from skimage.measure import label
    regions = label(np.asarray(mask), connectivity=2)
    sizes = np.bincount(regions.ravel())
    sizes[0] = 0
    return regions == sizes.argmax()


def _box(region):
    ys, xs = np.nonzero(np.asarray(region))
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def test_box_from_map_passes_the_solution_and_the_reference_is_right(sol):
    core.reset()
    assert lab05.check_box_from_map(sol["box_from_map"], verbose=False).passed
    h = torch.zeros(6, 8)
    h[1:3, 2:7] = 1.0
    assert evaluation.box_from_map(h, 0.2) == (2, 1, 7, 3)     # x0, y0, x1, y1, exclusive ends


def test_box_from_map_rejects_degenerate_answers_and_the_library():
    check = lab05.check_box_from_map
    gen = torch.Generator().manual_seed(0)

    def random_box(h, thr):
        x0, y0 = (int(v) for v in torch.randint(0, 5, (2,), generator=gen))
        return x0, y0, x0 + int(torch.randint(2, 9, (1,), generator=gen)), y0 + int(torch.randint(2, 7, (1,), generator=gen))

    fails_saying(check, lambda h, thr: (0, 0, 0, 0), "all zeros")
    fails_saying(check, random_box, "unrelated")
    fails_saying(check, lambda h, thr: h, "input unchanged")
    fails_saying(check, lambda h, thr: (0, 0, h.shape[1], h.shape[0]), "expected")
    fails_saying(check, lambda h, thr: evaluation.box_from_map(h, thr), "write this one yourself")
    fails_saying(check, lambda h, thr: _box(evaluation.largest_region(h >= thr * h.max())),
                 "write this one yourself")


def test_box_from_map_names_the_common_mistakes(sol):
    check = lab05.check_box_from_map
    fails_saying(check, lambda h, thr: _box(h >= thr * h.max()), "all the pixels above the threshold",
                 "largest connected region")
    fails_saying(check, lambda h, thr: tuple(v - (i > 1) for i, v in enumerate(sol["box_from_map"](h, thr))),
                 "off by one", "exclusive")
    fails_saying(check, lambda h, thr: tuple(v - (i == 2) for i, v in enumerate(sol["box_from_map"](h, thr))),
                 "off by one in x1")
    fails_saying(check, lambda h, thr: _box(_largest(h >= thr)), "threshold is relative")


# --- exercise 4: IoU ---------------------------------------------------------------

def test_iou_passes_the_solution_and_the_reference_agrees_with_torchvision(sol):
    from torchvision.ops import box_iou
    core.reset()
    assert lab05.check_iou(sol["iou"], verbose=False).passed
    a = torch.tensor([c[0] for c in lab05.IOU_CASES], dtype=torch.float64)
    b = torch.tensor([c[1] for c in lab05.IOU_CASES], dtype=torch.float64)
    want = box_iou(a, b).diagonal()
    ours = torch.tensor([evaluation.box_iou(*c) for c in lab05.IOU_CASES], dtype=torch.float64)
    assert torch.allclose(ours, want, atol=1e-12)
    assert any(v == 0 for v in ours) and any(0 < v < 1 for v in ours) and 1.0 in ours.tolist()


def test_iou_rejects_degenerate_answers_and_the_library():
    check = lab05.check_iou
    rng = np.random.default_rng(0)
    fails_saying(check, lambda a, b: 0.0, "all zeros")
    fails_saying(check, lambda a, b: 0.5, "same value")
    fails_saying(check, lambda a, b: float(rng.random()), "unrelated")
    fails_saying(check, lambda a, b: a, "input unchanged")
    fails_saying(check, lambda a, b: evaluation.box_iou(a, b), "write this one yourself")
    # torchvision answers in tensors: the exercise asks for a Python float from the coordinates
    from torchvision.ops import box_iou
    fails_saying(check, lambda a, b: box_iou(torch.tensor([a]), torch.tensor([b])), "python float")


def test_iou_names_the_common_mistakes():
    check = lab05.check_iou

    def unclamped(a, b):
        iw, ih = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
        inter = iw * ih
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    def inclusive(a, b):
        iw, ih = min(a[2], b[2]) - max(a[0], b[0]) + 1, min(a[3], b[3]) - max(a[1], b[1]) + 1
        inter = max(iw, 0) * max(ih, 0)
        return inter / ((a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter)

    fails_saying(check, unclamped, "not clamped at zero", "disjoint")
    fails_saying(check, inclusive, "inclusive/exclusive")


def test_every_check_says_when_the_exercise_is_not_written():
    def nyi(*args, **kwargs):
        raise NotImplementedError("exercise: write me")
    for check in (lab05.check_cam, lab05.check_gradcam, lab05.check_box_from_map, lab05.check_iou):
        fails_saying(check, nyi, "not written yet")
