"""Checks for lab 05 (CAM vs Grad-CAM): CAM and Grad-CAM from hooks, then the
weakly supervised localisation protocol.

    from xailab.checks import lab05
    lab05.check_cam(my_cam)                  # fn(model, x, target) -> [N,h,w]
    lab05.check_gradcam(my_gradcam)          # fn(model, x, target, layer) -> [N,h,w]
    lab05.check_box_from_map(my_box)         # fn(heatmap [H,W], threshold) -> (x0, y0, x1, y1)
    lab05.check_iou(my_iou)                  # fn(box_a, box_b) -> float

Each check runs the student's function on fixed inputs, compares it with
``xailab.attribution.cam`` or ``xailab.evaluation`` and prints a verdict in words;
it returns the ``Report`` (truthy when passed).
"""
from __future__ import annotations

import torch

from .. import evaluation, hooks
from ..attribution import cam as reference
from .core import Report, call, relative_error, name_of as _name, finish as _done, diagnose, tensor_result

SEED = 7
TARGETS = [2, 0, 5, 3]          # fixed classes, deliberately not all the predicted ones


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


def check_cam(fn, verbose: bool = True) -> Report:
    """``fn(model, x, target)`` must return the raw class activation map
    M_c = sum_k w_k^c A_k of the last feature maps of shapesnet (layer
    ``features.block3``), at their resolution [N,16,16], without ReLU or bias."""
    report = Report("check_cam")
    model, x, target = _setup("shapesnet")
    before = hooks.Snapshot.of(model)
    got = _map(report, fn, call(report, fn, model, x, target), (len(x), 16, 16))
    if got is None or not _clean(report, fn, model, before):
        return _done(report, verbose)
    want = reference.cam(model, x, target, upsample=False)
    if relative_error(got, want) > 1e-4:
        pred = reference.cam(model, x, None, upsample=False)
        bias = model.fc.bias.detach()[target][:, None, None]
        if diagnose(report, got, [
                (want.clamp_min(0), "you applied a ReLU; CAM as in the paper keeps the negative values "
                                    "(the ReLU belongs to Grad-CAM)"),
                (pred, "you used the predicted class; use the `target` you were given"),
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
    report = Report("check_gradcam")
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
            if diagnose(report, got, [
                    (reference.gradcam(model, x, target, layer=layer, upsample=False, relu=False),
                     "the ReLU is missing: Grad-CAM keeps only the positive part"),
                    (want * n, "you summed the gradients over positions; average them (mean over dims 2 and 3)"),
                    (reference.hirescam(model, x, target, layer=layer, upsample=False),
                     "you multiplied gradients and activations position by position (that is HiResCAM); "
                     "average the gradients over positions first"),
                    (reference.gradcam(model, x, None, layer=layer, upsample=False),
                     "you used the predicted class; use the `target` you were given"),
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
    from .. import models
    from ..data import shapes
    model = models.load("shapesnet")
    x = shapes("test", 3, seed=SEED).images()
    maps = reference.gradcam(model, x)
    for i in range(3):
        cases.append((f"Grad-CAM map of test image {i}", maps[i], 0.2))
    return cases


def check_box_from_map(fn, verbose: bool = True) -> Report:
    """``fn(heatmap, threshold)`` must return the box (x0, y0, x1, y1), exclusive ends,
    of the largest 8-connected region where heatmap >= threshold * heatmap.max()."""
    report = Report("check_box_from_map")
    for what, h, thr in _box_cases():
        got = call(report, fn, h.clone(), thr)
        if not report.passed:
            return _done(report, verbose)
        want = evaluation.box_from_map(h, thr)
        try:
            got_t = tuple(int(v) for v in got)
        except (TypeError, ValueError):
            report.fail(f"{_name(fn)} returned {got!r}; expected a tuple (x0, y0, x1, y1) of 4 integers")
            return _done(report, verbose)
        if got_t == want:
            continue
        x0, y0, x1, y1 = want
        from skimage.measure import label
        union = (h >= thr * h.max()).numpy()
        ys, xs = union.nonzero()
        hints = {(x0, y0, x1 - 1, y1 - 1): "the ends must be exclusive (x1 = last column + 1), "
                                           "so that mask[y0:y1, x0:x1] is the box",
                 (y0, x0, y1, x1): "you swapped x and y: x is the column (dim 1), y the row (dim 0)",
                 (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1):
                     "your box covers every region above the threshold; keep only the largest connected one"}
        n4 = label(union, connectivity=1)
        if n4.max() > 0:
            import numpy as np
            sizes = np.bincount(n4.ravel())
            sizes[0] = 0
            r4 = (n4 == sizes.argmax()).nonzero()
            hints.setdefault((int(r4[1].min()), int(r4[0].min()), int(r4[1].max()) + 1, int(r4[0].max()) + 1),
                             "diagonal neighbours belong to the same region: use 8-connectivity "
                             "(skimage.measure.label(mask, connectivity=2))")
        report.fail(f"{what}: got {got_t}, expected {want}. " +
                    hints.get(got_t, "compare your steps with the protocol: threshold, largest region, box"))
        return _done(report, verbose)
    report.ok("boxes of 3 hand-made maps and 3 Grad-CAM maps: all correct. Well done!")
    return _done(report, verbose)


def check_iou(fn, verbose: bool = True) -> Report:
    """``fn(box_a, box_b)`` must return intersection over union of two boxes
    (x0, y0, x1, y1) with exclusive ends."""
    report = Report("check_iou")
    cases = [((0, 0, 4, 4), (0, 0, 4, 4)), ((0, 0, 4, 4), (2, 0, 6, 4)), ((0, 0, 2, 2), (3, 3, 5, 5)),
             ((1, 2, 9, 6), (3, 1, 5, 8)), ((0, 0, 4, 4), (4, 0, 8, 4))]
    for a, b in cases:
        got = call(report, fn, a, b)
        if not report.passed:
            return _done(report, verbose)
        want = evaluation.box_iou(a, b)
        try:
            got = float(got)
        except (TypeError, ValueError):
            report.fail(f"{_name(fn)} returned {got!r}; expected a number")
            return _done(report, verbose)
        if abs(got - want) > 1e-6:
            inclusive = evaluation.box_iou(a[:2] + (a[2] + 1, a[3] + 1), b[:2] + (b[2] + 1, b[3] + 1))
            hint = "the ends are exclusive: a box's width is x1 - x0, not x1 - x0 + 1" \
                if abs(got - inclusive) < 1e-6 else \
                "boxes that do not overlap must give 0 (clamp negative widths at 0)" if want == 0 else \
                "IoU = intersection area / (area a + area b - intersection area)"
            report.fail(f"iou({a}, {b}) = {got:.4f}, expected {want:.4f}: {hint}")
            return _done(report, verbose)
    report.ok(f"{len(cases)} pairs of boxes, overlapping, nested, apart and touching: all correct. Well done!")
    return _done(report, verbose)
