"""Lab 01's checks: the solution passes; zeros, random values, the library's own code,
the input returned unchanged and the commonest mistakes fail, each named in words."""
import math

import pytest
import torch
import torch.nn.functional as F

import xailab
from labtools import fails_saying, solution_function
from xailab.attribution import perturbation as P
from xailab.checks import core, lab01

NB = "01_black_box.ipynb"


@pytest.fixture(autouse=True)
def fresh():
    core.reset()
    yield
    core.reset()


# ----------------------------------------------------------------------------- occlusion
@pytest.fixture(scope="module")
def occlusion_sensitivity():
    return solution_function(NB, "occlusion_sensitivity")


def test_occlusion_solution_passes(occlusion_sensitivity):
    assert lab01.check_occlusion(occlusion_sensitivity, verbose=False).passed


def test_occlusion_rejects_degenerate_answers():
    fails_saying(lab01.check_occlusion, lambda m, im, t, **k: torch.zeros(im.shape[1:]), "all zeros")
    fails_saying(lab01.check_occlusion, lambda m, im, t, **k: torch.randn(im.shape[1:]), "unrelated")
    fails_saying(lab01.check_occlusion, lambda m, im, t, **k: im, "returns the image")
    fails_saying(lab01.check_occlusion, lambda m, im, t, **k: im.mean(0), "input (nearly) unchanged")
    fails_saying(lab01.check_occlusion, lambda m, im, t, **k: None, "forget `return`")
    said = fails_saying(lab01.check_occlusion, lambda m, im, t, **k: torch.zeros(im.shape[1:]), "zeros")
    assert "windows" not in said                 # a zero map is not told to divide by the windows


def test_occlusion_refuses_the_library():
    def library(model, image, target, window=8, stride=8, baseline=0.0):
        return xailab.explain(model, image[None], target, method="occlusion", window=window,
                              stride=stride, baseline=baseline)[0]

    def windows(model, image, target, window=8, stride=8, baseline=0.0):
        masks, counts = P.occlusion_windows(image.shape[1], image.shape[2], window, stride)
        return counts

    fails_saying(lab01.check_occlusion, library, "write this one yourself")
    fails_saying(lab01.check_occlusion, lambda m, im, t, **k: P.occlusion(m, im[None], t, **k)[0],
                 "write this one yourself")
    fails_saying(lab01.check_occlusion, windows, "write this one yourself")


def _occlusion(model, image, target, window, stride, baseline, sign=1.0, average=True, probs=False):
    _, H, W = image.shape
    heat, count = torch.zeros(H, W), torch.zeros(H, W)
    score_of = (lambda z: model(z).softmax(1)[0, target]) if probs else (lambda z: model(z)[0, target])
    with torch.no_grad():
        score = score_of(image[None])
        for r in range(0, H - window + 1, stride):
            for c in range(0, W - window + 1, stride):
                occluded = image.clone()
                occluded[:, r:r + window, c:c + window] = baseline
                heat[r:r + window, c:c + window] += sign * (score - score_of(occluded[None]))
                count[r:r + window, c:c + window] += 1
    return heat / count if average else heat


def test_occlusion_names_the_commonest_mistakes():
    fails_saying(lab01.check_occlusion,
                 lambda m, im, t, window=8, stride=8, baseline=0.0: _occlusion(m, im, t, window, stride,
                                                                               baseline, sign=-1.0),
                 "sign is flipped")
    fails_saying(lab01.check_occlusion,
                 lambda m, im, t, window=8, stride=8, baseline=0.0: _occlusion(m, im, t, window, stride,
                                                                               baseline, average=False),
                 "you sum the drops")
    fails_saying(lab01.check_occlusion,
                 lambda m, im, t, window=8, stride=8, baseline=0.0: _occlusion(m, im, t, window, stride,
                                                                               baseline, probs=True),
                 "probabilities")
    fails_saying(lab01.check_occlusion,
                 lambda m, im, t, window=8, stride=8, baseline=0.0: _occlusion(m, im, t, window, stride, 0.0),
                 "baseline is ignored")


def test_an_unwritten_exercise_says_so_once_and_hints_come_in_tiers():
    def unwritten(*a, **k):
        raise NotImplementedError("exercise 1: write occlusion_sensitivity")

    first = lab01.check_occlusion(unwritten, verbose=False)
    assert not first.passed and "\n".join(first.lines).count("not written yet") == 1
    tiers = core.exercises()["occlusion_sensitivity"]["hints"]
    assert len(tiers) == 3 and first.record() == []          # recorded once already
    assert core._ATTEMPTS["occlusion_sensitivity"] == 1


# ----------------------------------------------------------------------------- RISE masks
def _masks(n, size, cell, p, seed, bilinear=True, shift=True, flip=False, one_grid=False, seeded=True):
    gen = torch.Generator().manual_seed(seed) if seeded else None
    s = math.ceil(size / cell)
    u = torch.rand(1 if one_grid else n, 1, s, s, generator=gen).expand(n, 1, s, s)
    grid = ((u > p) if flip else (u < p)).float()
    up = F.interpolate(grid, size=((s + 1) * cell,) * 2, mode="bilinear" if bilinear else "nearest",
                       **({"align_corners": False} if bilinear else {}))[:, 0]
    out = torch.empty(n, size, size)
    for i in range(n):
        dy, dx = torch.randint(0, cell, (2,), generator=gen).tolist() if shift else (0, 0)
        out[i] = up[i, dy:dy + size, dx:dx + size]
    return out


def test_rise_masks_solution_passes():
    assert lab01.check_rise_masks(solution_function(NB, "make_rise_masks"), verbose=False).passed
    assert lab01.check_rise_masks(_masks, verbose=False).passed


def test_rise_masks_reject_degenerate_answers():
    fails_saying(lab01.check_rise_masks, lambda n, size, cell, p, seed: torch.zeros(n, size, size), "all zeros")
    fails_saying(lab01.check_rise_masks, lambda n, size, cell, p, seed: torch.full((n, size, size), p),
                 "must be random")
    fails_saying(lab01.check_rise_masks, lambda n, size, cell, p, seed: torch.rand(n, size, size),
                 "noise per pixel")
    fails_saying(lab01.check_rise_masks, lambda n, size, cell, p, seed: P.rise_masks(n, size, cell, p, seed),
                 "write this one yourself")
    fails_saying(lab01.check_rise_masks, lambda n, size, cell, p, seed: torch.rand(size, size), "shape")


def test_rise_masks_name_the_commonest_mistakes():
    fails_saying(lab01.check_rise_masks, lambda *a: _masks(*a, bilinear=False), "bilinear")
    fails_saying(lab01.check_rise_masks, lambda *a: _masks(*a, shift=False), "random offset")
    fails_saying(lab01.check_rise_masks, lambda *a: _masks(*a, flip=True), "1 - p")
    fails_saying(lab01.check_rise_masks, lambda *a: _masks(*a, one_grid=True), "own random grid")
    fails_saying(lab01.check_rise_masks, lambda *a: _masks(*a, seeded=False), "same seed")


# ----------------------------------------------------------------------------- RISE saliency
def _rise(model, image, target, masks, p, probs=True):
    sal = torch.zeros(image.shape[1:])
    with torch.no_grad():
        for batch in masks.split(64):
            out = model(image[None] * batch[:, None])
            w = (out.softmax(1) if probs else out)[:, target]
            sal += (w[:, None, None] * batch).sum(0)
    return sal / (len(masks) * p)


def test_rise_solution_passes():
    assert lab01.check_rise(solution_function(NB, "rise_saliency"), verbose=False).passed


def test_rise_rejects_degenerate_answers():
    fails_saying(lab01.check_rise, lambda m, im, t, masks, p: torch.zeros(im.shape[1:]), "all zeros")
    fails_saying(lab01.check_rise, lambda m, im, t, masks, p: torch.rand(im.shape[1:]), "unrelated")
    fails_saying(lab01.check_rise, lambda m, im, t, masks, p: im, "returns the image")
    fails_saying(lab01.check_rise, lambda m, im, t, masks, p: im.mean(0) * 3, "input (nearly) unchanged")
    fails_saying(lab01.check_rise, lambda m, im, t, masks, p: xailab.explain(m, im[None], t, method="rise")[0],
                 "write this one yourself")
    fails_saying(lab01.check_rise, lambda m, im, t, masks, p: P.rise(m, im[None], t, n_masks=len(masks), p=p)[0],
                 "write this one yourself")


def test_rise_names_the_commonest_mistakes():
    fails_saying(lab01.check_rise, lambda m, im, t, masks, p: _rise(m, im, t, masks, p) * len(masks) * p,
                 "normalise it by 1 / (N p)")
    fails_saying(lab01.check_rise, lambda m, im, t, masks, p: _rise(m, im, t, masks, p) / p,
                 "factor p is missing")
    fails_saying(lab01.check_rise, lambda m, im, t, masks, p: _rise(m, im, t, masks, p, probs=False), "logit")


# ----------------------------------------------------------------------------- mass share
def test_mass_share_solution_passes():
    assert lab01.check_mass_share(solution_function(NB, "mass_share"), verbose=False).passed


def test_mass_share_rejects_degenerate_answers():
    from xailab import evaluation

    fails_saying(lab01.check_mass_share, lambda h, r: 0.0, "computes nothing")
    fails_saying(lab01.check_mass_share, lambda h, r: float(torch.rand(())), "expected")
    fails_saying(lab01.check_mass_share, lambda h, r: h, "returns the map it was given")
    fails_saying(lab01.check_mass_share, lambda h, r: float(evaluation.relevance_mass(h.clamp(min=0)[None], r[None])),
                 "write this one yourself")
    fails_saying(lab01.check_mass_share, lambda h, r: lab01._mass_share(h, r), "write this one yourself")


def test_mass_share_names_the_commonest_mistakes():
    fails_saying(lab01.check_mass_share, lambda h, r: float((h * r).sum() / h.sum()), "positive relevance")
    fails_saying(lab01.check_mass_share, lambda h, r: float((h.abs() * r).sum() / h.abs().sum()), "absolute value")
    fails_saying(lab01.check_mass_share, lambda h, r: float(r.float().mean()), "share of the pixels")

    def no_guard(h, r):
        pos = h.clamp(min=0)
        return float((pos * r).sum() / pos.sum())
    fails_saying(lab01.check_mass_share, no_guard, "nan", "return 0.0")
