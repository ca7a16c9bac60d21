"""Checks for lab 01 (the black box): occlusion sensitivity, RISE, relevance mass.

Each ``check_*`` runs the student's function on fixed inputs, compares it with
``xailab``'s reference and prints a verdict in words; it returns the ``Report``
(truthy when everything passed).
"""
from __future__ import annotations

import torch

from .core import Report, call, relative_error


def _model_and_images(n: int = 2):
    """The trained shapesnet when its checkpoint is there, else a seeded untrained one."""
    from .. import data, models

    try:
        model = models.load("shapesnet")
    except (FileNotFoundError, RuntimeError):
        torch.manual_seed(0)
        model = models.build("shapesnet").eval()
    ds = data.shapes("test", 8, seed=7)
    return model, ds.images(list(range(n))), ds.labels[:n]


def _as_map(got, shape, report: Report, what: str):
    if got is None:
        return None
    if not isinstance(got, torch.Tensor):
        report.fail(f"{what} returned {type(got).__name__}; return a torch.Tensor of shape {tuple(shape)}")
        return None
    got = got.detach().float().cpu()
    if tuple(got.shape) != tuple(shape):
        squeezed = got.squeeze()
        if tuple(squeezed.shape) == tuple(shape):
            report.ok(f"{what}: shape {tuple(got.shape)} squeezes to {tuple(shape)} (accepted)")
            return squeezed
        report.fail(f"{what}: shape {tuple(got.shape)}, expected {tuple(shape)} (one value per pixel)")
        return None
    if not torch.isfinite(got).all():
        report.fail(f"{what}: contains NaN or inf values")
        return None
    return got


def _ratio_hint(got: torch.Tensor, want: torch.Tensor) -> float | None:
    """The constant c with got ~= c * want, when there is one."""
    denom = float((want * want).sum())
    if denom == 0:
        return None
    c = float((got * want).sum()) / denom
    return c if relative_error(got, c * want) < 1e-3 else None


def check_occlusion(fn) -> Report:
    """``fn(model, image [3,H,W], target int, window, stride, baseline) -> [H,W]``:
    the average drop of the target logit over the windows covering each pixel."""
    from .. import explain

    report = Report("occlusion sensitivity")
    model, x, labels = _model_and_images(2)
    cases = [(0, 16, 8, 0.0), (1, 8, 8, 0.5)]
    for i, window, stride, baseline in cases:
        what = f"image {i}, window {window}, stride {stride}, baseline {baseline}"
        want = explain(model, x[i:i + 1], int(labels[i]), method="occlusion", window=window,
                       stride=stride, baseline=baseline)[0].cpu()
        raw = call(report, fn, model, x[i].clone(), int(labels[i]), window=window, stride=stride,
                   baseline=baseline)
        if raw is None:
            break                      # it raised: the report says why, once
        got = _as_map(raw, want.shape, report, what)
        if got is None:
            continue
        if report.compare(what, got, want, tol=1e-4):
            continue
        c = _ratio_hint(got, want)
        probs = explain(model, x[i:i + 1], int(labels[i]), method="occlusion", window=window,
                        stride=stride, baseline=baseline, probs=True)[0].cpu()
        if c is not None and abs(c + 1) < 1e-3:
            report.fail("the sign is flipped: use f(x) - f(occluded), so hiding evidence gives a positive score")
        elif relative_error(got, probs) < 1e-3:
            report.fail("you used probabilities; the reference measures the drop of the logit "
                        "(the raw model output, before softmax)")
        elif relative_error(got, -probs) < 1e-3:
            report.fail("you used probabilities with a flipped sign; use logit(x) - logit(occluded)")
        elif baseline != 0.0 and relative_error(got, explain(
                model, x[i:i + 1], int(labels[i]), method="occlusion", window=window,
                stride=stride, baseline=0.0)[0].cpu()) < 1e-3:
            report.fail("the baseline is ignored: the occluded window must be set to `baseline`, not 0")
        elif c is not None:
            report.fail(f"your map is {c:.3g} times the reference: divide each pixel's summed drop by "
                        "the number of windows that cover it")
        else:
            from ..attribution.perturbation import occlusion_windows
            masks, counts = occlusion_windows(x.shape[-2], x.shape[-1], window, stride)
            if relative_error(got, want * counts) < 1e-3:
                report.fail("you sum the drops over windows; average them (divide by the number of "
                            "windows that cover each pixel)")
            else:
                report.fail("hint: windows start at 0, stride, 2*stride, ... and stop when they reach the "
                            "border; occlude all three channels at once")
    report.show()
    return report


def check_rise_masks(fn) -> Report:
    """``fn(n_masks, size, cell, p, seed) -> FloatTensor[n_masks, size, size]`` (random:
    the check tests the properties of RISE masks, not exact values)."""
    report = Report("RISE masks")
    n, size, cell = 400, 64, 8
    for p in (0.5, 0.25):
        masks = call(report, fn, n, size, cell, p, 0)
        if masks is None:
            break
        if not isinstance(masks, torch.Tensor) or tuple(masks.shape) != (n, size, size):
            report.fail(f"p={p}: expected a tensor of shape {(n, size, size)}, got "
                        f"{tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__}")
            break
        m = masks.detach().float().cpu()
        if m.min() < -1e-6 or m.max() > 1 + 1e-6:
            report.fail(f"p={p}: values in [{float(m.min()):.3g}, {float(m.max()):.3g}]; masks must lie in [0, 1]")
            continue
        mean = float(m.mean())
        (report.ok if abs(mean - p) < 0.05 else report.fail)(
            f"p={p}: average mask value {mean:.3f} (should be close to p = {p})")
        soft = float(((m > 0.02) & (m < 0.98)).float().mean())
        (report.ok if soft > 0.1 else report.fail)(
            f"p={p}: {soft:.0%} of the values are strictly between 0 and 1 "
            + ("(soft edges, as bilinear upsampling gives)" if soft > 0.1 else
               "; upsample the binary grid bilinearly (F.interpolate(mode='bilinear'))"))
        step = float((m[:, :, 1:] - m[:, :, :-1]).abs().mean())
        (report.ok if step < 0.15 else report.fail)(
            f"p={p}: neighbouring pixels differ by {step:.3f} on average"
            + (" (smooth blobs of about `cell` pixels)" if step < 0.15 else
               "; masks should be smooth blobs: draw a coarse grid and upsample it, not noise per pixel"))
        flat = m.reshape(n, -1)
        distinct = float((flat[1:] - flat[:1]).abs().amax(1).gt(1e-6).float().mean())
        (report.ok if distinct > 0.95 else report.fail)(
            f"p={p}: {distinct:.0%} of the masks differ from the first one"
            + ("" if distinct > 0.95 else "; draw a new random grid for every mask"))
        if p == 0.5:
            # random shifts: the pixel-wise average should not show the cell grid
            avg = m.mean(0)
            ripple = float(avg.std())
            (report.ok if ripple < 0.06 else report.fail)(
                f"the average mask is flat (pixel-wise spread {ripple:.3f})" if ripple < 0.06 else
                f"the average mask shows a pattern (spread {ripple:.3f}); crop each mask at a random shift")
    again = None
    if report.passed:
        again = call(report, fn, n, size, cell, 0.5, 0)
    if again is not None and isinstance(again, torch.Tensor) and again.shape == (n, size, size):
        first = call(report, fn, n, size, cell, 0.5, 0)
        (report.ok if torch.equal(first, again) else report.fail)(
            "same seed, same masks" if torch.equal(first, again) else
            "the same seed gives different masks; use torch.Generator().manual_seed(seed)")
    report.show()
    return report


def check_rise(fn) -> Report:
    """``fn(model, image [3,H,W], target int, masks [M,H,W], p) -> [H,W]``:
    sum_i softmax(f(image * M_i))[target] * M_i / (M * p)."""
    from ..attribution.perturbation import rise, rise_masks

    report = Report("RISE saliency")
    model, x, labels = _model_and_images(2)
    for i, (n_masks, p) in enumerate([(200, 0.5), (150, 0.3)]):
        masks = rise_masks(n_masks, x.shape[-2:], cell=8, p=p, seed=3)
        want = rise(model, x[i:i + 1], int(labels[i]), n_masks=n_masks, cell=8, p=p, seed=3)[0].cpu()
        what = f"image {i}, {n_masks} masks, p={p}"
        raw = call(report, fn, model, x[i].clone(), int(labels[i]), masks.clone(), p)
        if raw is None:
            break
        got = _as_map(raw, want.shape, report, what)
        if got is None:
            continue
        if report.compare(what, got, want, tol=1e-4):
            continue
        c = _ratio_hint(got, want)
        logits = rise(model, x[i:i + 1], int(labels[i]), n_masks=n_masks, cell=8, p=p, seed=3,
                      probs=False)[0].cpu()
        if c is not None and abs(c - n_masks * p) < 1e-2 * n_masks * p:
            report.fail("normalise: divide the weighted sum by N * p (number of masks times p)")
        elif c is not None and abs(c - p) < 1e-3:
            report.fail("divide by N * p, not by N alone")
        elif c is not None and abs(c - 1 / p) < 1e-3 / p:
            report.fail("divide by N * p: the factor p is missing")
        elif c is not None and abs(c - n_masks) < 1e-2 * n_masks:
            report.fail("divide by N * p: the factor N is missing")
        elif relative_error(got, logits) < 1e-3:
            report.fail("use the class probability (softmax of the output), not the logit")
        elif c is not None:
            report.fail(f"your map is {c:.3g} times the reference; check the normalisation 1 / (N p)")
        else:
            report.fail("hint: mask the image as image * M_i (broadcast M_i over the channels), score "
                        "the target's probability, and weight each mask by that score")
    report.show()
    return report


def mass_share(heatmap: torch.Tensor, region: torch.Tensor) -> float:
    """Reference: share of the positive relevance that falls inside ``region``."""
    pos = heatmap.float().clamp(min=0)
    total = float(pos.sum())
    return float((pos * region.float()).sum()) / total if total > 0 else 0.0


def check_mass_share(fn) -> Report:
    """``fn(heatmap [H,W], region BoolTensor[H,W]) -> float`` in [0, 1]."""
    report = Report("relevance mass share")
    gen = torch.Generator().manual_seed(0)
    region = torch.zeros(16, 16, dtype=torch.bool)
    region[2:8, 3:9] = True
    cases = [("random signed map", torch.randn(16, 16, generator=gen)),
             ("non-negative map", torch.rand(16, 16, generator=gen)),
             ("map that is all negative", -torch.rand(16, 16, generator=gen)),
             ("map that is zero", torch.zeros(16, 16))]
    for what, h in cases:
        got = call(report, fn, h.clone(), region.clone())
        if got is None:
            break
        try:
            got = float(got)
        except (TypeError, ValueError):
            report.fail(f"{what}: return a number (a float), got {type(got).__name__}")
            continue
        want = mass_share(h, region)
        if got != got:   # NaN
            report.fail(f"{what}: got NaN; when there is no positive relevance at all, return 0.0")
        elif abs(got - want) < 1e-5:
            report.ok(f"{what}: {got:.3f}")
        elif what == "random signed map" and abs(got - float((h * region).sum() / h.sum())) < 1e-5:
            report.fail(f"{what}: {got:.3f}, expected {want:.3f}; keep only the positive relevance "
                        "(clamp negatives to 0) before summing")
        else:
            report.fail(f"{what}: {got:.3f}, expected {want:.3f} (positive relevance inside the region "
                        "divided by all positive relevance)")
    report.show()
    return report
