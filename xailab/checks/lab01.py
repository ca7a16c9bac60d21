"""Checks for lab 01 (the black box): occlusion sensitivity, RISE masks, RISE saliency,
relevance mass share.

Each ``check_*(fn, verbose=True)`` runs the student's function on fixed inputs while the
library code that answers the exercise refuses to run, compares it with a reference
computed outside that block, names the commonest mistakes in words and returns the
``Report`` (truthy when everything passed).
"""
from __future__ import annotations

import torch

from ..solving import solves
from .core import Report, call, degenerate, finish, relative_error, tensor_result

OCCLUSION = ("occlusion", "perturbation.occlusion_windows")
RISE_MASKS = ("perturbation.rise_masks", "rise")
RISE = ("rise", "perturbation.rise_masks")
MASS = ("evaluation.relevance_mass",)


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


def _as_map(report: Report, fn, raw, image: torch.Tensor, shape):
    """The student's map as a float tensor of ``shape``, or None after saying why not
    (a returned image, a map with an extra dimension of 1 is accepted)."""
    if isinstance(raw, torch.Tensor) and tuple(raw.shape) == tuple(image.shape):
        if torch.equal(raw.detach().cpu().float(), image.cpu().float()):
            report.fail("your function returns the image it was given: return a map [H, W] of scores")
            return None
    if isinstance(raw, torch.Tensor) and tuple(raw.shape) != tuple(shape) \
            and tuple(raw.squeeze().shape) == tuple(shape):
        raw = raw.squeeze()
    return tensor_result(report, fn, raw, shape, what="one value per pixel, a map [H, W]")


def _ratio(got: torch.Tensor, want: torch.Tensor) -> float | None:
    """The constant c with got ~= c * want, when there is one."""
    denom = float((want.double() * want.double()).sum())
    if denom == 0:
        return None
    c = float((got.double() * want.double()).sum()) / denom
    return c if relative_error(got, c * want) < 1e-3 else None


# ----------------------------------------------------------------------------- occlusion
def check_occlusion(fn, verbose: bool = True) -> Report:
    """``fn(model, image [3,H,W], target int, window, stride, baseline) -> [H,W]``:
    the average drop of the target logit over the windows covering each pixel."""
    from ..attribution.perturbation import occlusion, occlusion_windows

    report = Report("occlusion sensitivity", exercise="occlusion_sensitivity", forbid=OCCLUSION)
    model, x, labels = _model_and_images(2)
    cases = [(0, 16, 8, 0.0), (1, 8, 8, 0.5)]
    for i, window, stride, baseline in cases:
        what = f"image {i}, window {window}, stride {stride}, baseline {baseline}"
        target = int(labels[i])

        def ref(**kw):
            opts = dict(window=window, stride=stride, baseline=baseline) | kw
            return occlusion(model, x[i:i + 1], target, **opts)[0].cpu()

        want = ref()
        raw = call(report, fn, model, x[i].clone(), target, window=window, stride=stride, baseline=baseline)
        if raw is None and not report.passed:
            break                      # it raised or returned nothing: the report says why, once
        got = _as_map(report, fn, raw, x[i], want.shape)
        if got is None:
            break
        if report.compare(what, got, want, tol=1e-4):
            continue
        report.lines.pop()             # replaced by the diagnosis below
        if degenerate(report, got, want, inputs=(x[i].mean(0), x[i][0], x[i][1], x[i][2])):
            break
        c = _ratio(got, want)
        probs = ref(output="probability")
        _, counts = occlusion_windows(x.shape[-2], x.shape[-1], window, stride)
        if c is not None and abs(c + 1) < 1e-3:
            report.fail(f"{what}: the sign is flipped: score the drop f(x) - f(occluded), so that "
                        "hiding evidence for the class gives a positive value")
        elif relative_error(got, probs) < 1e-3 or relative_error(got, -probs) < 1e-3:
            report.fail(f"{what}: you used probabilities (after softmax); the exercise measures the "
                        "drop of the logit, the raw model output")
        elif baseline != 0.0 and relative_error(got, ref(baseline=0.0)) < 1e-3:
            report.fail(f"{what}: the baseline is ignored: the hidden window must take the value "
                        "`baseline`, not 0")
        elif relative_error(got, want * counts) < 1e-3:
            report.fail(f"{what}: you sum the drops of the windows that cover a pixel; the exercise "
                        "asks for their average (divide by how many windows cover each pixel)")
        elif c is not None:
            report.fail(f"{what}: your map is {c:.3g} times the reference: the shape is right, a "
                        "constant factor is not (check what you divide by)")
        else:
            report.fail(f"{what}: not the reference map; check where the windows start and stop "
                        "(they must cover the image) and that all three channels are hidden")
        break
    return finish(report, verbose)


# ----------------------------------------------------------------------------- RISE masks
def _phase_spread(m: torch.Tensor, cell: int) -> float:
    """How much the per-pixel spread of the masks depends on the pixel's position within
    a cell: about 0 when every mask is shifted at random, large when the cells of all
    masks line up."""
    sd = m.std(0)
    by_phase = torch.stack([sd[a::cell, b::cell].mean() for a in range(cell) for b in range(cell)])
    return float(by_phase.max() - by_phase.min())


def check_rise_masks(fn, verbose: bool = True) -> Report:
    """``fn(n_masks, size, cell, p, seed) -> FloatTensor[n_masks, size, size]``. Masks are
    random, so the check tests the properties RISE masks must have, not exact values."""
    report = Report("RISE masks", exercise="make_rise_masks", forbid=RISE_MASKS)
    n, size, cell = 400, 64, 8
    for p in (0.5, 0.25):
        raw = call(report, fn, n, size, cell, p, 0)
        if raw is None and not report.passed:
            break
        m = tensor_result(report, fn, raw, (n, size, size), what=f"{n} masks [n_masks, size, size]")
        if m is None:
            break
        flat = m.reshape(n, -1)
        if float(m.abs().max()) == 0:
            report.fail(f"p={p}: your masks are all zeros: they hide the whole image")
            break
        if float(m.std()) == 0:
            report.fail(f"p={p}: every value of every mask is {float(m.flatten()[0]):.3g}: masks must be "
                        "random, each cell kept with probability p")
            break
        if float(m.min()) < -1e-6 or float(m.max()) > 1 + 1e-6:
            report.fail(f"p={p}: values in [{float(m.min()):.3g}, {float(m.max()):.3g}]; masks must lie in [0, 1]")
            break
        centred = flat - flat.mean(1, keepdim=True)
        centred = centred / centred.norm(dim=1, keepdim=True).clamp_min(1e-12)
        alike = float((centred[1:] @ centred[0]).mean())
        if alike > 0.5:
            report.fail(f"p={p}: the masks are alike (average correlation with the first one {alike:.2f}): "
                        "every mask needs its own random grid")
            break
        mean = float(m.mean())
        if abs(mean - p) >= 0.05:
            if abs(mean - (1 - p)) < 0.05:
                report.fail(f"p={p}: average mask value {mean:.3f}, about 1 - p: your cells are kept with "
                            "probability 1 - p; a cell must be on with probability p")
            else:
                report.fail(f"p={p}: average mask value {mean:.3f}; it should be close to p = {p}")
            break
        report.ok(f"p={p}: average mask value {mean:.3f} (close to p = {p})")
        step = float((m[:, :, 1:] - m[:, :, :-1]).abs().mean())
        if step >= 0.15:
            report.fail(f"p={p}: neighbouring pixels differ by {step:.3f} on average: this is noise per "
                        "pixel; RISE masks are smooth blobs about `cell` pixels wide (a coarse random "
                        "grid, enlarged)")
            break
        soft = float(((m > 0.02) & (m < 0.98)).float().mean())
        if soft <= 0.1:
            report.fail(f"p={p}: only {soft:.0%} of the values lie strictly between 0 and 1: the masks have "
                        "hard-edged blocks; enlarge the grid with bilinear interpolation, not by "
                        "repeating cells (nearest)")
            break
        report.ok(f"p={p}: smooth blobs with soft edges (neighbours differ by {step:.3f})")
        spread = _phase_spread(m, cell)
        if spread >= 0.02:
            report.fail(f"p={p}: the cells of all masks line up on the same grid (the spread of a pixel "
                        f"depends on where it sits in its cell: {spread:.3f}); shift each mask by its "
                        "own random offset of 0..cell-1 pixels")
            break
        report.ok(f"p={p}: all masks differ, and their cells fall at random places")
    if report.passed:
        a, b = call(report, fn, 40, size, cell, 0.5, 1), call(report, fn, 40, size, cell, 0.5, 1)
        c = call(report, fn, 40, size, cell, 0.5, 2)
        if all(isinstance(t, torch.Tensor) for t in (a, b, c)):
            if not torch.equal(a, b):
                report.fail("the same seed gives different masks: draw every random number from one "
                            "generator seeded with `seed`")
            elif torch.equal(a, c):
                report.fail("seeds 1 and 2 give the same masks: the seed must change the masks")
            else:
                report.ok("the same seed gives the same masks, another seed other masks")
    return finish(report, verbose)


# ----------------------------------------------------------------------------- RISE
def check_rise(fn, verbose: bool = True) -> Report:
    """``fn(model, image [3,H,W], target int, masks [N,H,W], p) -> [H,W]``:
    sum_i softmax(f(image * M_i))[target] * M_i / (N * p)."""
    from ..attribution.perturbation import rise, rise_masks

    report = Report("RISE saliency", exercise="rise_saliency", forbid=RISE)
    model, x, labels = _model_and_images(2)
    for i, (n_masks, p) in enumerate([(200, 0.5), (150, 0.3)]):
        target = int(labels[i])
        masks = rise_masks(n_masks, x.shape[-2:], cell=8, p=p, seed=3).clone()

        def ref(**kw):
            return rise(model, x[i:i + 1], target, n_masks=n_masks, cell=8, p=p, seed=3, **kw)[0].cpu()

        want = ref()
        what = f"image {i}, {n_masks} masks, p={p}"
        raw = call(report, fn, model, x[i].clone(), target, masks.clone(), p)
        if raw is None and not report.passed:
            break
        got = _as_map(report, fn, raw, x[i], want.shape)
        if got is None:
            break
        if report.compare(what, got, want, tol=1e-4):
            continue
        report.lines.pop()
        if degenerate(report, got, want, inputs=(x[i].mean(0), x[i][0], x[i][1], x[i][2])):
            break
        c = _ratio(got, want)
        logits = ref(output="logit")
        if c is not None and abs(c - n_masks * p) < 1e-2 * n_masks * p:
            report.fail(f"{what}: your map is the plain weighted sum: normalise it by 1 / (N p) "
                        "(N masks, each pixel kept with probability p)")
        elif c is not None and abs(c - 1 / p) < 1e-2 / p:
            report.fail(f"{what}: the factor p is missing from the normalisation 1 / (N p)")
        elif c is not None and abs(c - n_masks) < 1e-2 * n_masks:
            report.fail(f"{what}: the factor N is missing from the normalisation 1 / (N p)")
        elif _ratio(got, logits) is not None:
            report.fail(f"{what}: you weighted the masks by the logit; RISE weights them by the class "
                        "probability (softmax of the output)")
        elif c is not None:
            report.fail(f"{what}: your map is {c:.3g} times the reference; check the normalisation 1 / (N p)")
        else:
            report.fail(f"{what}: not the reference map; each mask is weighted by the probability of the "
                        "target for the image seen through that mask (the image times the mask, on "
                        "every channel)")
        break
    return finish(report, verbose)


# ----------------------------------------------------------------------------- relevance mass
@solves(*MASS)
def _mass_share(heatmap: torch.Tensor, region: torch.Tensor) -> float:
    """Reference: share of the positive relevance that falls inside ``region``."""
    pos = heatmap.float().clamp(min=0)
    total = float(pos.sum())
    return float((pos * region.float()).sum()) / total if total > 0 else 0.0


def _number(got):
    try:
        return float(got)
    except (TypeError, ValueError, RuntimeError):
        return None


def check_mass_share(fn, verbose: bool = True) -> Report:
    """``fn(heatmap [H,W], region BoolTensor[H,W]) -> float`` in [0, 1]."""
    report = Report("relevance mass share", exercise="mass_share", forbid=MASS)
    gen = torch.Generator().manual_seed(0)
    region = torch.zeros(16, 16, dtype=torch.bool)
    region[2:8, 3:9] = True
    signed = torch.randn(16, 16, generator=gen)
    cases = [("random signed map", signed),
             ("non-negative map", torch.rand(16, 16, generator=gen) ** 2),
             ("map that is all negative", -torch.rand(16, 16, generator=gen)),
             ("map that is zero", torch.zeros(16, 16))]
    results = []
    for what, h in cases:
        raw = call(report, fn, h.clone(), region.clone())
        if raw is None and not report.passed:
            break
        if isinstance(raw, torch.Tensor) and raw.numel() > 1:
            same = raw.shape == h.shape and torch.equal(raw.detach().float(), h)
            report.fail(f"{what}: your function returns " + ("the map it was given" if same else
                        f"a tensor of shape {tuple(raw.shape)}") + "; return one number, the share")
            break
        got = _number(raw)
        if got is None:
            report.fail(f"{what}: return a number (a float), got {type(raw).__name__}")
            break
        want = _mass_share(h, region)
        results.append((what, h, got, want))
        if got != got:   # NaN
            report.fail(f"{what}: got NaN: 0 / 0 when there is no positive relevance at all; "
                        "return 0.0 in that case")
            break
        if abs(got - want) < 1e-5:
            report.ok(f"{what}: {got:.3f}")
            continue
        r = region.float()
        mistakes = [
            (float((h * r).sum() / h.sum()) if float(h.sum()) != 0 else None,
             "keep only the positive relevance (negative values set to 0) before summing"),
            (float((h.abs() * r).sum() / h.abs().sum()) if float(h.abs().sum()) != 0 else None,
             "negative relevance counts as 0, not as its absolute value"),
            (float(r.mean()), "that is the share of the pixels inside the region; weigh each pixel by "
                              "its positive relevance"),
            (float((h.clamp(min=0) * r).sum()), "divide the relevance inside the region by the total "
                                                "positive relevance"),
            (1.0 - want if float(h.clamp(min=0).sum()) > 0 else None,
             "that is the share outside the region; sum inside it"),
        ]
        hint = next((words for alt, words in mistakes if alt is not None and abs(got - alt) < 1e-5), None)
        if hint is None and all(g == 0 for _, _, g, _ in results):
            hint = "your function returns 0: it computes nothing yet"
        report.fail(f"{what}: {got:.3f}, expected {want:.3f}: " + (hint or
                    "the positive relevance inside the region divided by all positive relevance"))
        break
    if report.passed:
        again = _number(call(report, fn, signed.clone(), region.clone()))
        if again is not None and abs(again - results[0][2]) > 1e-9:
            report.fail("the same map gives a different answer the second time: no randomness here")
    return finish(report, verbose)
