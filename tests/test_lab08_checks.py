"""Lab 08 checks: the solution passes; zeros, random values, the library, the input
returned unchanged and the commonest mistakes fail, each named in words."""
import pytest
import torch

from labtools import fails_saying, solution_function
from xailab import evaluation
from xailab.checks import core, lab08


# ----------------------------------------------------------------------------- deletion

def _student_deletion(descending=True, logits=False, auc="trapezoid"):
    """A student's deletion AUC, right or with one of the common mistakes."""
    def deletion_auc(model, x, heatmap, target, step):
        n, _, h, w = x.shape
        counts = torch.arange(0, h * w + step, step).clamp(max=h * w).unique_consecutive()
        order = heatmap.flatten(1).argsort(dim=1, descending=descending, stable=True)
        out = []
        with torch.no_grad():
            for i in range(n):
                imgs = []
                for c in counts:
                    flat = x[i].flatten(1).clone()
                    flat[:, order[i, :c]] = 0
                    imgs.append(flat.view_as(x[i]))
                s = model(torch.stack(imgs))
                p = (s if logits else torch.softmax(s, 1))[:, target[i]]
                out.append(torch.trapezoid(p, counts / (h * w)) if auc == "trapezoid" else p.mean())
        return torch.stack(out)
    return deletion_auc


def test_deletion_reference_matches_the_library():
    args = lab08._deletion_inputs()
    curves, frac = lab08._deletion_curves(*args)
    want = evaluation.deletion(*args[:4], step=args[4])
    assert torch.allclose(torch.trapezoid(curves, frac, dim=1).float(), want, atol=1e-5)


def test_deletion_solution_passes():
    core.reset()
    assert lab08.check_deletion(solution_function("08_evaluation.ipynb", "deletion_auc"), verbose=False)
    assert lab08.check_deletion(_student_deletion(), verbose=False)


def test_deletion_rejects_shortcuts_and_mistakes():
    check = lab08.check_deletion
    fails_saying(check, lambda m, x, h, t, s: torch.zeros(len(x)), "all zeros")
    fails_saying(check, lambda m, x, h, t, s: torch.rand(len(x)), "random")
    fails_saying(check, lambda m, x, h, t, s: h, "input unchanged")
    fails_saying(check, lambda m, x, h, t, s: evaluation.deletion(m, x, h, t, step=s),
                 "write this one yourself", "evaluation.deletion")
    fails_saying(check, lambda m, x, h, t, s: 1 - evaluation.insertion(m, x, h, t, step=s),
                 "write this one yourself", "evaluation.insertion")
    fails_saying(check, _student_deletion(descending=False), "least important pixels first", "descending")
    fails_saying(check, _student_deletion(logits=True), "logit", "probability")
    fails_saying(check, _student_deletion(auc="mean"), "mean of the curve", "trapezoid")


# ----------------------------------------------------------------------------- pointing game

def _student_pointing(swap=False, squared=False, square=False, less=False):
    def pointing_game(heatmaps, masks, tolerance):
        n, h, w = heatmaps.shape
        hits = []
        for i in range(n):
            flat = int(heatmaps[i].flatten().argmax())
            r, c = (flat % w, flat // w) if swap else (flat // w, flat % w)
            rows, cols = torch.nonzero(masks[i], as_tuple=True)
            dy, dx = (rows - r).abs(), (cols - c).abs()
            if square:
                d = torch.maximum(dy, dx).float()
            elif squared:
                d = (dy ** 2 + dx ** 2).float()
            else:
                d = (dy.float() ** 2 + dx.float() ** 2).sqrt()
            hits.append(bool((d < tolerance).any()) if less else bool((d <= tolerance).any()))
        return torch.tensor(hits)
    return pointing_game


def test_pointing_game_solution_passes():
    core.reset()
    assert lab08.check_pointing_game(solution_function("08_evaluation.ipynb", "pointing_game"), verbose=False)
    assert lab08.check_pointing_game(_student_pointing(), verbose=False)


def test_pointing_game_reference_matches_the_library():
    heat, masks, tols = lab08._pointing_inputs()
    for tol in tols:
        assert torch.equal(lab08._pointing(heat, masks, tol), evaluation.pointing_game(heat, masks, tol))


def test_pointing_game_rejects_shortcuts_and_mistakes():
    check = lab08.check_pointing_game
    fails_saying(check, lambda h, m, t: torch.zeros(len(h), dtype=torch.bool), "all zeros")
    fails_saying(check, lambda h, m, t: torch.rand(len(h)) > 0.5, "random")
    fails_saying(check, lambda h, m, t: h, "input unchanged")
    fails_saying(check, lambda h, m, t: m.flatten(1).any(1), "same value")
    fails_saying(check, lambda h, m, t: evaluation.pointing_game(h, m, t),
                 "write this one yourself", "evaluation.pointing_game")
    fails_saying(check, _student_pointing(swap=True), "row and column swapped")
    fails_saying(check, _student_pointing(squared=True), "squared distance with the tolerance itself")
    fails_saying(check, _student_pointing(square=True), "square window", "euclidean")
    fails_saying(check, _student_pointing(less=True), "<=")


# ----------------------------------------------------------------------------- Spearman

def _student_spearman(absolute=True, ranks="average"):
    def spearman_similarity(a, b):
        out = []
        for p, q in zip(a, b):
            p, q = p.flatten().double(), q.flatten().double()
            if absolute:
                p, q = p.abs(), q.abs()
            if ranks == "average":
                p = (p[:, None] > p[None]).sum(1) + ((p[:, None] == p[None]).sum(1) - 1) / 2
                q = (q[:, None] > q[None]).sum(1) + ((q[:, None] == q[None]).sum(1) - 1) / 2
            elif ranks == "ordinal":
                p, q = p.argsort(stable=True).argsort().double(), q.argsort(stable=True).argsort().double()
            c = torch.corrcoef(torch.stack([p, q]))[0, 1]
            out.append(torch.nan_to_num(c, nan=0.0))
        return torch.stack(out).float()
    return spearman_similarity


def test_spearman_solution_passes_and_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    core.reset()
    fn = solution_function("08_evaluation.ipynb", "spearman_similarity")
    assert lab08.check_spearman(fn, verbose=False)
    assert lab08.check_spearman(_student_spearman(), verbose=False)
    for a, b in lab08._spearman_cases():
        keep = [i for i in range(len(a)) if a[i].std() > 0 and b[i].std() > 0]
        want = torch.tensor([stats.spearmanr(a[i].abs().flatten(), b[i].abs().flatten()).statistic for i in keep])
        assert torch.allclose(fn(a, b)[keep].double(), want, atol=1e-5)
        assert torch.allclose(lab08._spearman(a, b)[keep].double(), want, atol=1e-5)


def test_spearman_rejects_shortcuts_and_mistakes():
    check = lab08.check_spearman
    fails_saying(check, lambda a, b: torch.zeros(len(a)), "all zeros")
    fails_saying(check, lambda a, b: torch.rand(len(a)) * 2 - 1, "random")
    fails_saying(check, lambda a, b: a, "input unchanged")
    fails_saying(check, lambda a, b: evaluation.spearman(a, b), "write this one yourself", "evaluation.spearman")
    fails_saying(check, lambda a, b: lab08._spearman(a, b), "write this one yourself")
    fails_saying(check, _student_spearman(ranks=None), "pearson", "ranks")
    fails_saying(check, _student_spearman(absolute=False), "absolute")
    fails_saying(check, _student_spearman(absolute=False, ranks=None), "pearson", "signed")
    fails_saying(check, _student_spearman(ranks="ordinal"), "ties", "average")


def test_spearman_refuses_scipy_while_the_check_runs():
    stats = pytest.importorskip("scipy.stats")

    def with_scipy(a, b):
        return torch.tensor([stats.spearmanr(p.abs().flatten(), q.abs().flatten()).statistic
                             for p, q in zip(a, b)], dtype=torch.float32)
    fails_saying(lab08.check_spearman, with_scipy, "write this one yourself", "scipy.stats.spearmanr")
    assert callable(stats.spearmanr) and stats.spearmanr([1, 2, 3], [1, 2, 4]).statistic == 1.0


def test_spearman_nan_for_a_constant_map_is_named():
    def nan_for_constant(a, b):
        s = _student_spearman()
        out = s(a, b)
        const = (b.flatten(1).std(1) == 0) | (a.flatten(1).std(1) == 0)
        return torch.where(const, torch.full_like(out, float("nan")), out)
    fails_saying(lab08.check_spearman, nan_for_constant, "constant map", "return 0")
