"""Checks for lab 05 (CAM vs Grad-CAM): CAM and Grad-CAM from hooks, then the
weakly supervised localisation protocol.

    from xailab.checks import lab05
    lab05.check_cam(my_cam)                  # fn(model, x, target) -> [N,h,w]
    lab05.check_gradcam(my_gradcam)          # fn(model, x, target, layer) -> [N,h,w]
    lab05.check_box_from_map(box_from_map)   # fn(heatmap [H,W], threshold) -> (x0, y0, x1, y1)
    lab05.check_iou(iou)                     # fn(box_a, box_b) -> float

Each check runs the student's function on fixed inputs while the library code that
answers the exercise refuses to run (the CAM family and its building blocks,
``evaluation.box_from_map``, ``evaluation.largest_region``, ``evaluation.box_iou``),
compares it with the reference and prints a verdict in words; it returns the
``Report`` (truthy when passed).
"""
from __future__ import annotations

import numbers

import numpy as np
import torch

from .. import evaluation, hooks
from ..attribution import cam as reference
from ..solving import solves
from .core import (Report, call, degenerate, diagnose, finish as _done, name_of as _name,
                   relative_error, tensor_result)

SEED = 7
TARGETS = [2, 0, 5, 3]          # fixed classes, deliberately not all the predicted ones

# the CAM family and the building blocks that would make a map exercise a passthrough
CAM_FAMILY = ("cam", "gradcam", "gradcam_pp", "hirescam", "scorecam", "guided_gradcam",
              "cam.layer_pass", "cam.weighted_sum", "cam.gap_linear_weights")


def _setup(name: str, n: int = 4):
    from .. import models
    from ..data import shapes
    model = models.load(name)
    x = shapes("test", n, seed=SEED).images()
    return model, x, torch.tensor(TARGETS[:n])


def _map_shape_hint(got) -> str:
    if got.dim() == 4:
        return " (sum the weighted maps over the channel dimension, dim=1)"
    if got.shape[-1] == 64:
        return " (return the map at the layer's resolution: do not upsample)"
    if got.dim() == 3:
        return " (record the `layer` you were given, not a fixed one)"
    return ""


def _map(report: Report, fn, got, shape):
    """The student's map as a float tensor of ``shape``, or None with a verdict."""
    if not report.passed:
        return None
    return tensor_result(report, fn, got, shape, f"a tensor {list(shape)}", shape_hint=_map_shape_hint)


def _clean(report: Report, fn, model, before) -> bool:
    changed = before.diff(model)
    if changed:
        report.fail(f"{_name(fn)} changed the model ({'; '.join(changed)}); "
                    "use `with hooks.record(...)` so the hooks go away")
        return False
    return True


def _named(report: Report, got, want, inputs, mistakes) -> bool:
    """A known mistake when the answer equals one exactly (never for an all-zero or
    constant answer), else a degenerate answer (zeros, constant, the input, unrelated
    values): a wrong-class map is as uncorrelated with the right one as noise is."""
    if float(got.abs().max()) > 0 and float(got.std()) > 0 and diagnose(report, got, mistakes):
        return True
    return degenerate(report, got, want, inputs=inputs)


def _activations(model, x, layer):
    with hooks.record(model, layer) as rec, torch.no_grad():
        model(x)
    return rec.activations[layer]


def check_cam(fn, verbose: bool = True) -> Report:
    """``fn(model, x, target)`` must return the raw class activation map
    M_c = sum_k w_k^c A_k of the last feature maps of shapesnet (layer
    ``features.block3``), at their resolution [N,16,16], without ReLU or bias."""
    report = Report("check_cam", exercise="my_cam", forbid=CAM_FAMILY)
    model, x, target = _setup("shapesnet")
    before = hooks.Snapshot.of(model)
    got = _map(report, fn, call(report, fn, model, x, target), (len(x), 16, 16))
    if got is None or not _clean(report, fn, model, before):
        return _done(report, verbose)
    want = reference.cam(model, x, target, upsample=False)
    if relative_error(got, want) > 1e-4:
        A = _activations(model, x, "features.block3")
        W = model.fc.weight.detach()
        pred = reference.cam(model, x, None, upsample=False)
        bias = model.fc.bias.detach()[target][:, None, None]
        if _named(report, got, want, (x,), [
                (want.clamp_min(0), "you applied a ReLU; CAM as in the paper keeps the negative values "
                                    "(the ReLU belongs to Grad-CAM)"),
                (pred, "you used the predicted class; use the `target` you were given (row target[n] "
                       "of the fc weights for image n)"),
                ((W[int(target[0])][None, :, None, None] * A).sum(1),
                 "every image used the first target's class row; weight image n by row target[n]"),
                ((W.sum(0)[None, :, None, None] * A).sum(1),
                 "you summed the weights of all classes; use the class row of each image's target"),
                (A.sum(1), "there is no weighting: you summed the maps over channels; weight each map "
                           "A_k by the class's fc weight w_k^c first"),
                (A.mean(1), "there is no weighting: you averaged the maps over channels; weight each map "
                            "A_k by the class's fc weight w_k^c and sum"),
                (want + bias, "you added the bias; it is the same everywhere and not part of the map"),
                (want / 256, "you divided by the number of positions; CAM is the weighted sum of the maps, "
                             "not of their averages"),
                (reference.gradcam(model, x, target, upsample=False),
                 "that is Grad-CAM (gradient weights and ReLU); use the fc weights of the class")]):
            return _done(report, verbose)
    report.compare("CAM for 4 images, each with its own target class", got, want)
    return _done(report, verbose)


def check_gradcam(fn, verbose: bool = True) -> Report:
    """``fn(model, x, target, layer)`` must return Grad-CAM, ReLU(sum_k alpha_k A_k) with
    alpha_k the spatial mean of d score / d A_k, at the layer's resolution. Checked on
    shapesvgg (where CAM cannot apply) at two layers."""
    report = Report("check_gradcam", exercise="my_gradcam", forbid=CAM_FAMILY)
    model, x, target = _setup("shapesvgg")
    before = hooks.Snapshot.of(model)
    for layer, side in [("features.block3", 8), ("features.block2.relu2", 32)]:
        got = _map(report, fn, call(report, fn, model, x, target, layer), (len(x), side, side))
        if got is None or not _clean(report, fn, model, before):
            return _done(report, verbose)
        model.zero_grad(set_to_none=True)   # a backward pass may have filled parameter .grad
        want = reference.gradcam(model, x, target, layer=layer, upsample=False)
        if relative_error(got, want) > 1e-4:
            p = reference.layer_pass(model, x, target, layer)
            n = p.activations.shape[-1] * p.activations.shape[-2]
            if _named(report, got, want, (x,), [
                    (reference.gradcam(model, x, target, layer=layer, upsample=False, relu=False),
                     "the ReLU is missing: Grad-CAM keeps only the positive part"),
                    (want * n, "you summed the gradients over positions instead of averaging them "
                               "(mean over the two spatial dimensions)"),
                    (reference.weighted_sum(p.activations, p.gradients.sum((2, 3)), relu=False),
                     "you summed the gradients over positions instead of averaging them, and the ReLU "
                     "is missing"),
                    (reference.hirescam(model, x, target, layer=layer, upsample=False),
                     "you multiplied gradients and activations position by position (that is HiResCAM); "
                     "average the gradients over positions first"),
                    (reference.gradcam(model, x, None, layer=layer, upsample=False),
                     "you used the predicted class; use the `target` you were given"),
                    (p.activations.sum(1).clamp_min(0),
                     "there is no weighting: weight each map A_k by its averaged gradient alpha_k"),
                    (reference.weighted_sum(p.activations, p.gradients.abs().mean((2, 3))),
                     "you averaged |gradient|; keep the sign of the gradients")]):
                return _done(report, verbose)
        if not report.compare(f"Grad-CAM at {layer} ({side}x{side})", got, want):
            return _done(report, verbose)
    return _done(report, verbose)


def _box_cases():
    """Hand-made maps with known boxes, and Grad-CAM maps of real images."""
    cases = []
    h = torch.zeros(12, 16)
    h[2:6, 3:9] = 1.0
    h[8:11, 12:15] = 0.8                  # a second, smaller region
    h[0, 15] = 0.15                       # below 20% of the maximum
    cases.append(("two regions", h, 0.2))
    h2 = h.clone()
    h2[6:8, 9:11] = 0.5                   # touches the big region at a corner only
    cases.append(("regions touching at a corner", h2, 0.2))
    cases.append(("a higher threshold", h2, 0.9))
    h3 = 3.0 * h                          # a maximum of 3: the threshold is relative to it
    h3[6:8, 3:9] = 0.4                    # above 0.2 itself, below 20% of the maximum
    h3[9, 2] = 0.7
    cases.append(("a map whose maximum is 3", h3, 0.2))
    from .. import models
    from ..data import shapes
    model = models.load("shapesnet")
    x = shapes("test", 3, seed=SEED).images()
    maps = reference.gradcam(model, x)
    for i in range(3):
        cases.append((f"Grad-CAM map of test image {i}", maps[i], 0.2))
    return cases


@solves("evaluation.box_from_map")
def _box_of(region) -> tuple | None:
    ys, xs = np.nonzero(np.asarray(region))
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _as_box(report: Report, fn, got, h):
    """The student's box as a tuple of 4 ints, or None after saying what came back."""
    if isinstance(got, (torch.Tensor, np.ndarray)) and np.ndim(got) >= 2:
        report.fail(f"{_name(fn)} returned an array of shape {tuple(np.shape(got))}"
                    + (": the heat map itself, the input unchanged" if tuple(np.shape(got)) == tuple(h.shape)
                       else "") + "; expected a tuple (x0, y0, x1, y1) of 4 integers")
        return None
    try:
        box = tuple(int(v) for v in got)
        if len(box) != 4 or any(float(v) != int(v) for v in got):
            raise ValueError
    except (TypeError, ValueError):
        report.fail(f"{_name(fn)} returned {got!r}; expected a tuple (x0, y0, x1, y1) of 4 integers")
        return None
    return box


def _box_hint(box, want, h, thr) -> str:
    """What a wrong box says about the mistake behind it."""
    x0, y0, x1, y1 = want
    mask = (h >= thr * h.max()).numpy()
    hints = {(x0, y0, x1 - 1, y1 - 1): "off by one: the ends must be exclusive (x1 = last column + 1), "
                                       "so that mask[y0:y1, x0:x1] is the box",
             (x0, y0, x1 - 1, y1): "off by one in x1: the ends are exclusive (x1 = last column + 1)",
             (x0, y0, x1, y1 - 1): "off by one in y1: the ends are exclusive (y1 = last row + 1)",
             (x0, y0, x1 + 1, y1 + 1): "off by one: x1 = last column + 1 (exclusive end), not + 2",
             (y0, x0, y1, x1): "you swapped x and y: x is the column (dim 1), y the row (dim 0)"}
    union = _box_of(mask)
    if union is not None:
        hints.setdefault(union, "your box covers all the pixels above the threshold; keep only the "
                                "largest connected region")
    from skimage.measure import label
    n4 = label(mask, connectivity=1)
    if n4.max() > 0:
        sizes = np.bincount(n4.ravel())
        sizes[0] = 0
        hints.setdefault(_box_of(n4 == sizes.argmax()),
                         "diagonal neighbours belong to the same region: use 8-connectivity "
                         "(connectivity=2)")
    absolute = (h >= thr).numpy()
    if absolute.any():
        hints.setdefault(_box_of(evaluation.largest_region(absolute)),
                         "the threshold is relative: keep the pixels >= threshold * the map's maximum")
    if box in hints:
        return hints[box]
    n8 = label(mask, connectivity=2)
    if box in {_box_of(n8 == k) for k in range(1, n8.max() + 1)}:
        return "you boxed one of the regions above the threshold, but not the largest one"
    return ("your box is not the box of any region above the threshold: it looks unrelated to the map "
            "(threshold, then the largest connected region, then its box)")


def check_box_from_map(fn, verbose: bool = True) -> Report:
    """``fn(heatmap, threshold)`` must return the box (x0, y0, x1, y1), exclusive ends,
    of the largest 8-connected region where heatmap >= threshold * heatmap.max()."""
    report = Report("check_box_from_map", exercise="box_from_map",
                    forbid=("evaluation.box_from_map", "evaluation.largest_region"))
    cases = _box_cases()
    got, want = [], []
    for what, h, thr in cases:
        box = call(report, fn, h.clone(), thr)
        if not report.passed:
            return _done(report, verbose)
        box = _as_box(report, fn, box, h)
        if box is None:
            return _done(report, verbose)
        got.append(box)
        want.append(evaluation.box_from_map(h, thr))
    if got == want:
        report.ok(f"boxes of {len(cases) - 3} hand-made maps and 3 Grad-CAM maps: all correct. Well done!")
        return _done(report, verbose)
    if all(b == (0, 0, 0, 0) for b in got):
        report.fail("your function returns (0, 0, 0, 0), all zeros, for every map: it computes nothing yet")
    elif len(set(got)) == 1:
        report.fail(f"your function returns the same box {got[0]} for every map: it must come from the map")
    else:
        k = next(i for i, (g, w) in enumerate(zip(got, want)) if g != w)
        what, h, thr = cases[k]
        report.fail(f"{what}: got {got[k]}, expected {want[k]}. " + _box_hint(got[k], want[k], h, thr))
    return _done(report, verbose)


IOU_CASES = [((0, 0, 4, 4), (0, 0, 4, 4)), ((0, 0, 4, 4), (2, 0, 6, 4)), ((0, 0, 2, 2), (3, 3, 5, 5)),
             ((1, 2, 9, 6), (3, 1, 5, 8)), ((0, 0, 4, 4), (4, 0, 8, 4)), ((0, 0, 4, 4), (6, 1, 9, 3)),
             ((2, 2, 10, 10), (4, 4, 6, 6)), ((5, 1, 12, 7), (0, 3, 8, 14)), ((0, 0, 3, 6), (1, 4, 7, 5)),
             ((10, 10, 20, 30), (0, 0, 8, 5))]


@solves("evaluation.box_iou")
def _iou_variant(a, b, extra=0, clamp=True, over="union"):
    """IoU with one of the common mistakes (for diagnosis)."""
    a = (a[0], a[1], a[2] + extra, a[3] + extra)
    b = (b[0], b[1], b[2] + extra, b[3] + extra)
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(iw, 0) * max(ih, 0) if clamp else iw * ih
    area_a, area_b = (a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1])
    den = {"union": area_a + area_b - inter, "sum": area_a + area_b, "a": area_a}[over]
    return inter / den if den else 0.0


def check_iou(fn, verbose: bool = True) -> Report:
    """``fn(box_a, box_b)`` must return the intersection over union of two boxes
    (x0, y0, x1, y1), exclusive ends, given as plain tuples, as a Python float."""
    report = Report("check_iou", exercise="iou", forbid=("evaluation.box_iou",))
    got = []
    for a, b in IOU_CASES:
        value = call(report, fn, a, b)
        if not report.passed:
            return _done(report, verbose)
        if value is None:
            report.fail(f"{_name(fn)} returned None: did you forget `return`?")
            return _done(report, verbose)
        if isinstance(value, tuple) and value in (a, b):
            report.fail(f"{_name(fn)} returned one of its boxes, {value}: the input unchanged; "
                        "return their IoU, a number")
            return _done(report, verbose)
        if isinstance(value, (torch.Tensor, np.ndarray)) or not isinstance(value, numbers.Real) \
                or isinstance(value, bool):
            report.fail(f"{_name(fn)} returned {type(value).__name__} {value!r}; expected a Python float "
                        "computed from the four coordinates of each box")
            return _done(report, verbose)
        got.append(float(value))
    want = [evaluation.box_iou(a, b) for a, b in IOU_CASES]
    bad = [i for i, (g, w) in enumerate(zip(got, want)) if abs(g - w) > 1e-6]
    if not bad:
        report.ok(f"{len(IOU_CASES)} pairs of boxes, overlapping, nested, apart and touching: all correct. "
                  "Well done!")
        return _done(report, verbose)
    g, w = torch.tensor(got, dtype=torch.float64), torch.tensor(want, dtype=torch.float64)
    variant = lambda **kw: torch.tensor([_iou_variant(a, b, **kw) for a, b in IOU_CASES], dtype=torch.float64)
    if _named(report, g, w, (), [
            (variant(clamp=False), "the intersection is not clamped at zero: for boxes that do not overlap "
                                   "(disjoint boxes) the width or height is negative; clamp each at 0"),
            (variant(extra=1), "inclusive/exclusive confusion: the ends are exclusive, so a box's width is "
                               "x1 - x0, not x1 - x0 + 1"),
            (variant(extra=-1), "inclusive/exclusive confusion: the ends are exclusive, so a box's width is "
                                "x1 - x0, not x1 - x0 - 1"),
            (variant(over="sum"), "the union counts the intersection twice: area a + area b - intersection"),
            (variant(over="a"), "you divided by the area of the first box; divide by the area of the union")]):
        return _done(report, verbose)
    a, b = IOU_CASES[bad[0]]
    report.fail(f"iou({a}, {b}) = {got[bad[0]]:.4f}, expected {want[bad[0]]:.4f}: "
                + ("boxes that do not overlap must give 0 (clamp negative widths at 0)" if want[bad[0]] == 0
                   else "IoU = intersection area / (area a + area b - intersection area)"))
    return _done(report, verbose)
