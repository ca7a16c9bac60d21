"""Checks for lab 08 (evaluating explanations): the deletion AUC, the pointing game and
the Spearman rank correlation of the model-randomisation test.

    from xailab.checks import lab08
    lab08.check_deletion(deletion_auc)                 # fn(model, x, heatmap, target, step) -> FloatTensor[N]
    lab08.check_pointing_game(pointing_game)           # fn(heatmaps, masks, tolerance) -> BoolTensor[N]
    lab08.check_spearman(spearman_similarity)          # fn(a [N,H,W], b [N,H,W]) -> FloatTensor[N]

Each check runs the student's function on fixed inputs while the library code that
computes the same thing (``evaluation.deletion`` / ``insertion``,
``evaluation.pointing_game``, ``evaluation.spearman``, and scipy's rank functions)
refuses to run, compares with a private reference and names the common mistakes in
words. It prints the verdict and returns the ``Report`` (truthy when passed).
"""
from __future__ import annotations

import sys
from contextlib import contextmanager

import torch

from .. import hooks
from ..solving import WriteItYourself, solves
from .core import Report, call, degenerate, finish, name_of, tensor_result

SEED = 11
FORBID_DELETION = ("evaluation.deletion", "evaluation.insertion")
FORBID_POINTING = ("evaluation.pointing_game",)
FORBID_SPEARMAN = ("evaluation.spearman",)


def _close(got, alt, rtol=1e-3, atol=1e-4) -> bool:
    return alt is not None and tuple(got.shape) == tuple(alt.shape) and \
        torch.allclose(got.double(), alt.double(), rtol=rtol, atol=atol)


def _shape_hint(*inputs):
    """A ``tensor_result`` shape hint that names an input returned unchanged."""
    def hint(g):
        if any(tuple(g.shape) == tuple(i.shape) for i in inputs):
            return ": you returned an input unchanged; return one value per image"
        if g.dim() == 0:
            return " (one value per image, not one number for the whole batch)"
        return " (one value per image)"
    return hint


def _random_answer(report, fn, args, got, what) -> bool:
    """Run ``fn`` again on the same inputs: a different answer means random values."""
    again = call(report, fn, *[a.clone() if isinstance(a, torch.Tensor) else a for a in args])
    if not report.passed:
        return True
    if not isinstance(again, torch.Tensor) or tuple(again.shape) != tuple(got.shape) or \
            not torch.equal(again.detach().float().cpu(), got):
        report.fail(f"{name_of(fn)} gives a different {what} each time it runs on the same input, as random "
                    "values would: compute it from the inputs")
        return True
    return False


# ----------------------------------------------------------------------------- deletion

@solves("evaluation.deletion")
def _deletion_curves(model, x, heat, target, step, logits=False, descending=True):
    """Deletion curves [N, K+1] (private reference): pixels set to 0 in the order of
    ``heat`` (ties by position), scored by the target's probability (or logit)."""
    n, _, h, w = x.shape
    counts = torch.arange(0, h * w + step, step).clamp(max=h * w).unique_consecutive()
    order = heat.flatten(1).sort(dim=1, descending=descending, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w).expand_as(order))
    curves = []
    with hooks.preserved(model), torch.no_grad():
        model.eval()
        for i in range(n):
            removed = rank[i].view(1, 1, h, w) < counts.view(-1, 1, 1, 1)
            out = model(torch.where(removed, torch.zeros(()), x[i:i + 1]))
            score = out if logits else torch.softmax(out, 1)
            curves.append(score[:, target[i]].double())
    return torch.stack(curves), counts.double() / (h * w)


def _deletion_inputs():
    from .. import models
    from ..data import shapes

    model = models.load("shapesnet")
    x = shapes("test", 6, seed=SEED).images()
    target = torch.tensor([1, 4, 0, 2, 3, 5])
    heat = torch.rand(6, 64, 64, generator=torch.Generator().manual_seed(SEED))
    heat[:, :4, :4] = heat.max() + 1                 # a few clear winners, many close values
    return model, x, heat, target, 256


def check_deletion(fn, verbose: bool = True) -> Report:
    """``fn(model, x, heatmap, target, step)``: deletion AUC per image, FloatTensor[N]."""
    report = Report("check_deletion", exercise="deletion_auc", forbid=FORBID_DELETION)
    model, x, heat, target, step = _deletion_inputs()
    args = (model, x, heat, target, step)
    before = hooks.Snapshot.of(model)
    raw = call(report, fn, model, x.clone(), heat.clone(), target.clone(), step)
    if report.passed:
        changed = before.diff(model)
        if changed:
            report.fail(f"{name_of(fn)} changed the model: {'; '.join(changed)}")
    got = tensor_result(report, fn, raw, shape=(len(x),), what="one AUC per image",
                        shape_hint=_shape_hint(x, heat)) if report.passed else None
    if got is None:
        return finish(report, verbose)
    curves, frac = _deletion_curves(*args)
    want = torch.trapezoid(curves, frac, dim=1)
    if degenerate(report, got, want) or _random_answer(report, fn, args, got, "AUC"):
        return finish(report, verbose)
    if report.compare("AUC per image", got, want, tol=1e-3):
        report.ok("the most important pixels go first, the curve starts at the untouched image, scores "
                  "probabilities, and the trapezoid rule runs over the fraction of pixels removed")
        return finish(report, verbose)
    up, up_frac = _deletion_curves(*args, descending=False)
    logit, _ = _deletion_curves(*args, logits=True)
    mistakes = [
        (torch.trapezoid(up, up_frac, dim=1), "it matches deleting the LEAST important pixels first (ascending "
         "order): the deletion curve removes the highest-ranked pixels first, sort in descending order"),
        (torch.trapezoid(logit, frac, dim=1), "it matches the curve of the target's logit: score each image "
         "with the softmax probability of the target class, not the raw model output"),
        (curves.mean(1), "it matches the mean of the curve's points: the AUC is the trapezoid rule over "
         "x = fraction of pixels removed (the end points count half)"),
        (curves[:, :-1].mean(1), "it matches the mean of the curve without its last point (a Riemann sum): "
         "use the trapezoid rule over x = fraction of pixels removed"),
        (torch.trapezoid(curves, dim=1), "it matches the trapezoid rule over the step number: the x axis is the "
         "fraction of pixels removed, from 0 to 1"),
        (torch.trapezoid(curves[:, 1:], frac[1:], dim=1) / (1 - frac[1]), "it matches a curve that leaves out "
         "point 0: include the untouched image first"),
        (torch.trapezoid(logit, dim=1), "it matches logits with the step number as x: score probabilities, "
         "and integrate over the fraction of pixels removed"),
    ]
    for alt, msg in mistakes:
        if _close(got, alt):
            report.fail(msg)
            break
    else:
        if (got < 0).any() or (got > 1).any():
            report.fail("an AUC of probabilities over x in [0, 1] lies between 0 and 1: score the softmax "
                        "probability of the target class and integrate over the fraction of pixels removed")
    return finish(report, verbose)


# ----------------------------------------------------------------------------- pointing game

@solves("evaluation.pointing_game")
def _pointing(heat, masks, tolerance, swap=False, squared=False, square=False, strict_less=False):
    """The pointing game (private reference) and its common wrong variants."""
    n, h, w = heat.shape
    peak = heat.flatten(1).argmax(1)
    py, px = (peak // w).view(-1, 1, 1), (peak % w).view(-1, 1, 1)
    if swap:
        py, px = px, py
    yy, xx = torch.arange(h).view(1, -1, 1), torch.arange(w).view(1, 1, -1)
    if square:
        near = torch.maximum((yy - py).abs(), (xx - px).abs()) <= tolerance
    else:
        d2 = (yy - py) ** 2 + (xx - px) ** 2
        limit = tolerance if squared else tolerance ** 2
        near = d2 < limit if strict_less else d2 <= limit
    return (near & masks).flatten(1).any(1)


def _pointing_inputs():
    masks = torch.zeros(6, 24, 24, dtype=torch.bool)
    masks[:, 8:14, 4:10] = True                               # rows 8-13, columns 4-9
    heat = torch.rand(6, 24, 24, generator=torch.Generator().manual_seed(SEED)) * 0.5
    # (row, col): inside; 4 px right of the mask; 3 below and 3 right (4.2 px diagonal);
    # far away; inside but off the diagonal; 6 px right of the mask
    peaks = [(10, 6), (10, 13), (16, 12), (2, 22), (12, 5), (9, 15)]
    for i, (py, px) in enumerate(peaks):
        heat[i, py, px] = 1.0
    return heat, masks, (0, 4, 5, 6)


def check_pointing_game(fn, verbose: bool = True) -> Report:
    """``fn(heatmaps, masks, tolerance)``: BoolTensor[N], a hit when some mask pixel lies
    within Euclidean distance ``tolerance`` (pixels, inclusive) of the map's maximum."""
    report = Report("check_pointing_game", exercise="pointing_game", forbid=FORBID_POINTING)
    heat, masks, tolerances = _pointing_inputs()
    got_all, want_all = [], []
    for tol in tolerances:
        raw = call(report, fn, heat.clone(), masks.clone(), tol)
        if not report.passed:
            return finish(report, verbose)
        got = tensor_result(report, fn, raw, shape=(len(heat),), what="one hit per map",
                            shape_hint=_shape_hint(heat))
        if got is None:
            return finish(report, verbose)
        got_all.append(got)
        want_all.append(_pointing(heat, masks, tol).float())
    got, want = torch.cat(got_all), torch.cat(want_all)
    if degenerate(report, got, want):
        return finish(report, verbose)
    if _random_answer(report, fn, (heat, masks, tolerances[1]), got_all[1], "hit list"):
        return finish(report, verbose)
    if torch.equal(got.bool(), want.bool()):
        for tol, w in zip(tolerances, want_all):
            report.ok(f"tolerance {tol}: hits {w.int().tolist()} as expected")
        return finish(report, verbose)
    variants = [
        (dict(swap=True), "your maximum has row and column swapped: in a flattened [H, W] map, the row is "
         "index // W and the column index % W"),
        (dict(squared=True), "you compared the squared distance with the tolerance itself: the tolerance is a "
         "distance in pixels, so compare squared distance with tolerance squared (or the distance with tolerance)"),
        (dict(square=True), "you used a square window (the largest of |row difference| and |column difference|): "
         "the tolerance is a Euclidean distance, a disc around the maximum"),
        (dict(strict_less=True), "a pixel at distance exactly `tolerance` counts as near: use <=, not <"),
    ]
    for kw, msg in variants:
        alt = torch.cat([_pointing(heat, masks, tol, **kw).float() for tol in tolerances])
        if torch.equal(got.bool(), alt.bool()):
            report.fail(msg)
            break
    else:
        for tol, g, w in zip(tolerances, got_all, want_all):
            if not torch.equal(g.bool(), w.bool()):
                report.fail(f"tolerance {tol}: got hits {g.bool().int().tolist()}, expected {w.int().tolist()}")
                break
    return finish(report, verbose)


# ----------------------------------------------------------------------------- Spearman

def _average_ranks(v: torch.Tensor) -> torch.Tensor:
    """Ranks 0..P-1 of every row of ``v`` [N, P], ties sharing their average rank."""
    s = v.sort(dim=1).values
    below = torch.searchsorted(s, v.contiguous(), right=False)
    upto = torch.searchsorted(s, v.contiguous(), right=True)
    return (below + upto - 1).double() / 2


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.double(), b.double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    den = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(den > 0, (a * b).sum(1) / den.clamp_min(1e-300), torch.zeros_like(den))


def _ordinal_ranks(v: torch.Tensor) -> torch.Tensor:
    order = v.sort(dim=1, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(v.shape[1]).expand_as(order))
    return rank.double()


@solves("evaluation.spearman")
def _spearman(a, b, absolute=True, ranks="average"):
    """Spearman rank correlation per map pair (private reference) and wrong variants:
    ``absolute`` |a|, |b| (the lab's rule) or signed; ``ranks`` "average" (ties share
    their mean rank), "ordinal" (ties by position) or None (Pearson of the values)."""
    a, b = a.detach().flatten(1).double(), b.detach().flatten(1).double()
    if absolute:
        a, b = a.abs(), b.abs()
    if ranks == "average":
        a, b = _average_ranks(a), _average_ranks(b)
    elif ranks == "ordinal":
        a, b = _ordinal_ranks(a), _ordinal_ranks(b)
    return _pearson(a, b).float()


def _spearman_cases():
    """(a, b) pairs [N, H, W]: signed maps without ties, then non-negative maps with many
    ties at 0 and one constant map (its correlation is 0)."""
    g = torch.Generator().manual_seed(808)
    n, h, w = 10, 12, 12
    a = torch.randn(n, h, w, generator=g)
    rho = torch.linspace(-0.9, 0.95, n).view(-1, 1, 1)
    b = rho * a.abs() + (1 - rho.abs()).sqrt() * torch.randn(n, h, w, generator=g)
    b = b * torch.where(torch.rand(n, h, w, generator=g) < 0.5, -1.0, 1.0)   # signs independent of |b|
    c = (torch.randn(n, h, w, generator=g) + 0.3 * torch.arange(n).view(-1, 1, 1) / n).clamp_min(0)
    d = (0.8 * c + 0.6 * torch.randn(n, h, w, generator=g)).clamp_min(0).round(decimals=1)
    d[-1] = 0                                                                   # a constant map
    c[2, :6] = c[2, :6].round(decimals=1)
    return [(a, b), (c, d)]


@contextmanager
def _no_scipy_ranks():
    """While the student's function runs, scipy's rank helpers refuse like the library."""
    stats = sys.modules.get("scipy.stats")
    saved = {}
    if stats is not None:
        for name in ("spearmanr", "rankdata"):
            if hasattr(stats, name):
                saved[name] = getattr(stats, name)

                def refuse(*args, _name=name, **kwargs):
                    raise WriteItYourself(f"write this one yourself: your function calls scipy.stats.{_name}, "
                                          "which is the answer to this exercise. Rank the values with torch "
                                          "operations instead.")
                setattr(stats, name, refuse)
    try:
        yield
    finally:
        for name, f in saved.items():
            setattr(stats, name, f)


def check_spearman(fn, verbose: bool = True) -> Report:
    """``fn(a, b)``: maps FloatTensor[N, H, W] -> FloatTensor[N], the Spearman rank
    correlation of |a[i]| and |b[i]| with tied values sharing their average rank, and 0
    when either map is constant."""
    report = Report("check_spearman", exercise="spearman_similarity", forbid=FORBID_SPEARMAN)
    for k, (a, b) in enumerate(_spearman_cases()):
        with _no_scipy_ranks():
            raw = call(report, fn, a.clone(), b.clone())
        if not report.passed:
            break
        got = tensor_result(report, fn, raw, shape=(len(a),), what="one correlation per pair of maps",
                            nan_hint=(": a constant map (all its pixels tied) has ranks with no spread; "
                                      "return 0 for it instead of dividing 0 by 0") if k else "",
                            shape_hint=_shape_hint(a))
        if got is None:
            break
        want = _spearman(a, b)
        what = "signed maps, no ties" if k == 0 else "non-negative maps with many ties at 0, one constant map"
        if _close(got, want, rtol=1e-4, atol=1e-5):
            report.compare(f"Spearman correlation per map ({what})", got, want, tol=1e-4)
            continue
        # the known mistakes first: a signed-map answer looks unrelated, but it is a mistake to name
        mistakes = [
            (_spearman(a, b, ranks=None), "it matches the Pearson correlation of the values: Spearman's is the "
             "Pearson correlation of the RANKS of the values"),
            (_spearman(a, b, absolute=False, ranks=None), "it matches the Pearson correlation of the signed "
             "values: rank |a| and |b|, then correlate the ranks"),
            (_spearman(a, b, absolute=False), "it matches the ranks of the signed maps: the randomisation test "
             "here compares |a| with |b| (absolute values), so rank the absolute values"),
            (_spearman(a, b, ranks="ordinal"), "it matches ranks with ties broken by position: tied values must "
             "share the average of the ranks they span (as scipy.stats.rankdata does)"),
            (_spearman(a, b, absolute=False, ranks="ordinal"), "it matches ordinal ranks of the signed maps: rank "
             "|a| and |b|, and give tied values the average of the ranks they span"),
        ]
        named = next((msg for alt, msg in mistakes if _close(got, alt, rtol=1e-4, atol=1e-5)), None)
        if named:
            report.fail(named)
            break
        if degenerate(report, got, want):
            break
        if k == 0:
            with _no_scipy_ranks():
                if _random_answer(report, fn, (a, b), got, "correlation"):
                    break
        report.compare(f"Spearman correlation per map ({what})", got, want, tol=1e-4)
        if k == 1:
            report.fail("right on maps without ties, wrong on maps with many tied zeros: tied values must "
                        "share the average of the ranks they span, and a constant map gives 0")
        break
    if report.passed:
        report.ok("ties share their average rank, as in scipy.stats.spearmanr, and a constant map gives 0")
    return finish(report, verbose)
