"""Checks for lab 08 (evaluating explanations): the deletion AUC and the pointing game.

    from xailab.checks import lab08
    lab08.check_deletion(my_deletion)        # fn(model, x, heatmap, target, step) -> FloatTensor[N]
    lab08.check_pointing_game(my_pointing)   # fn(heatmaps, masks, tolerance) -> BoolTensor[N]

Each check runs the student's function on fixed inputs, compares it with
``xailab.evaluation`` and prints a verdict in words; it returns the ``Report``
(truthy when passed).
"""
from __future__ import annotations

import torch

from .. import evaluation, hooks
from .core import Report, call, name_of as _name, finish as _show

SEED = 11


def _tensor(report: Report, fn, got, shape):
    if got is None:
        report.fail(f"{_name(fn)} returned None: did you forget `return`?")
        return None
    try:
        got = torch.as_tensor(got).detach().cpu()
    except Exception:  # noqa: BLE001
        report.fail(f"{_name(fn)} returned a {type(got).__name__}; expected a tensor of shape {list(shape)}")
        return None
    if tuple(got.shape) != tuple(shape):
        report.fail(f"{_name(fn)} returned shape {tuple(got.shape)}, expected {tuple(shape)} (one value per image)")
        return None
    return got


def check_deletion(fn, verbose: bool = True) -> Report:
    """``fn(model, x, heatmap, target, step)``: deletion AUC per image."""
    from .. import models
    from ..data import shapes

    report = Report("deletion AUC")
    model = models.load("shapesnet")
    x = shapes("test", 3, seed=SEED).images()
    target = torch.tensor([1, 4, 0])
    heat = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(SEED))
    heat[:, :4, :4] = heat.max() + 1                 # a few clear winners, many close values
    before = hooks.Snapshot.of(model)
    got = call(report, fn, model, x, heat, target, 256)
    if report.passed:
        changed = before.diff(model)
        if changed:
            report.fail(f"{_name(fn)} changed the model: {'; '.join(changed)}")
    got = _tensor(report, fn, got, (3,)) if report.passed else None
    if got is None:
        return _show(report, verbose)
    want, curves, frac = evaluation.deletion(model, x, heat, target, step=256, return_curves=True)
    if report.compare("AUC per image", got.float(), want, tol=1e-3):
        report.ok("the most important pixels go first, the curve starts at the untouched image "
                  "and the trapezoid rule runs over the fraction of pixels removed")
    else:
        g = got.float()
        rect = curves[:, :-1].mean(1)
        no_start = torch.trapezoid(curves[:, 1:], frac[1:], dim=1) / (1 - frac[1])
        rev = evaluation.deletion(model, x, -heat, target, step=256)
        hints = [(rect, "it matches the mean of the curve without the last point: use the trapezoid rule "
                        "(torch.trapezoid) over x = fraction of pixels removed"),
                 (no_start, "it matches a curve that leaves out point 0: include the unmodified image first"),
                 (rev, "it matches deleting the LEAST important pixels first: sort in descending order")]
        for alt, msg in hints:
            if torch.allclose(g, alt.float(), rtol=1e-3, atol=1e-4):
                report.fail(msg)
                break
        else:
            if (g < 0).any() or (g > 1).any():
                report.fail("an AUC of probabilities over [0, 1] lies between 0 and 1: score the softmax "
                            "probability of the target class, not the logit")
    return _show(report, verbose)


def check_pointing_game(fn, verbose: bool = True) -> Report:
    """``fn(heatmaps, masks, tolerance)``: hit per map when a pixel within ``tolerance``
    of the map's maximum lies in the mask."""
    report = Report("pointing game")
    masks = torch.zeros(5, 24, 24, dtype=torch.bool)
    masks[:, 8:14, 8:14] = True
    heat = torch.rand(5, 24, 24, generator=torch.Generator().manual_seed(SEED)) * 0.5
    peaks = [(10, 10), (10, 17), (10, 19), (2, 2), (20, 11)]   # (y, x): in, 4 px out, 6 px out, far, 7 px below
    for i, (py, px) in enumerate(peaks):
        heat[i, py, px] = 1.0
    for tol in (0, 4, 6):
        got = call(report, fn, heat, masks, tol)
        if not report.passed:
            break
        got = _tensor(report, fn, got, (5,))
        if got is None:
            break
        want = evaluation.pointing_game(heat, masks, tol)
        if torch.equal(got.bool(), want):
            report.ok(f"tolerance {tol}: hits {want.int().tolist()} as expected")
        else:
            report.fail(f"tolerance {tol}: got hits {got.bool().int().tolist()}, expected {want.int().tolist()}"
                        + (" (a pixel at distance exactly `tolerance` counts: use <=)" if tol else
                           " (with tolerance 0 only the maximum itself counts)"))
            break
    return _show(report, verbose)
