"""Lab 07's checks: the solution passes; zeros, random values, the library's own code,
the input returned unchanged and the commonest mistakes fail, in words that name them."""
from __future__ import annotations

import pytest
import torch

from labtools import fails_saying, solution_function
from xailab import hooks, optvis
from xailab.checks import core, lab07

NB = "07_inversion.ipynb"


@pytest.fixture(scope="module")
def tv():
    return solution_function(NB, "total_variation")


@pytest.fixture(scope="module")
def loss(tv):
    fn = solution_function(NB, "feature_loss")
    fn.__globals__["total_variation"] = tv
    return fn


@pytest.fixture(scope="module")
def inv(loss):
    fn = solution_function(NB, "invert")
    fn.__globals__["feature_loss"] = loss
    return fn


def _after(earlier, check, fn, *words):
    """fails_saying with the ``earlier`` exercises' checks counted as passed."""
    return fails_saying(check, fn, *words, passed=earlier)


# ------------------------------------------------------------------ exercise 1: total_variation
def _tv(x, beta=2.0):
    dx = x[:, :, :-1, 1:] - x[:, :, :-1, :-1]
    dy = x[:, :, 1:, :-1] - x[:, :, :-1, :-1]
    return dx, dy


def test_solution_tv_passes(tv):
    core.reset()
    assert lab07.check_total_variation(tv, verbose=False).passed


def test_tv_degenerate_answers_fail():
    check = lab07.check_total_variation
    fails_saying(check, lambda x, beta: torch.zeros(len(x)), "all zeros")
    g = torch.Generator().manual_seed(0)
    fails_saying(check, lambda x, beta: torch.rand(len(x), generator=g), "unrelated")
    fails_saying(check, lambda x, beta: x, "shaped like x")
    fails_saying(check, lambda x, beta: torch.full((len(x),), 0.3), "same value")


def test_tv_library_refuses():
    fails_saying(lab07.check_total_variation, optvis.total_variation, "write this one yourself")
    fails_saying(lab07.check_total_variation, lambda x, beta: optvis.tv(1.0, beta)(x), "write this one yourself")


def test_tv_commonest_mistakes_are_named():
    def summed(x, beta):
        dx, dy = _tv(x)
        return (dx ** 2 + dy ** 2).pow(beta / 2).flatten(1).sum(1)

    def beta_ignored(x, beta):
        dx, dy = _tv(x)
        return (dx ** 2 + dy ** 2).flatten(1).mean(1)

    def separate(x, beta):
        return ((x[:, :, :, 1:] - x[:, :, :, :-1]).pow(2).flatten(1).mean(1)
                + (x[:, :, 1:] - x[:, :, :-1]).pow(2).flatten(1).mean(1))
    fails_saying(lab07.check_total_variation, summed, "take the mean")
    fails_saying(lab07.check_total_variation, beta_ignored, "beta is ignored")
    fails_saying(lab07.check_total_variation, separate, "separately")


# ------------------------------------------------------------------ exercise 2: feature_loss
def _feature(phi, phi0):
    return (phi - phi0).pow(2).flatten(1).sum(1), phi0.pow(2).flatten(1).sum(1)


def test_solution_loss_passes_after_tv(tv, loss):
    core.reset()
    assert not lab07.check_feature_loss(loss, verbose=False).passed     # exercise 1 not yet checked
    assert lab07.check_total_variation(tv, verbose=False).passed
    assert lab07.check_feature_loss(loss, verbose=False).passed


def test_loss_asks_for_exercise_1_first(loss):
    fails_saying(lab07.check_feature_loss, loss, "fix exercise 1", "total_variation")


def test_loss_degenerate_answers_fail():
    after = ("total_variation",)
    _after(after, lab07.check_feature_loss, lambda p, p0, x, w: torch.zeros(len(p)), "all zeros")
    g = torch.Generator().manual_seed(0)
    _after(after, lab07.check_feature_loss, lambda p, p0, x, w: torch.rand(len(p), generator=g), "unrelated")
    _after(after, lab07.check_feature_loss, lambda p, p0, x, w: p, "shaped like phi")
    _after(after, lab07.check_feature_loss, lambda p, p0, x, w: ((p - p0) ** 2).sum() / (p0 ** 2).sum(),
           "one number for the whole batch")


def test_loss_library_refuses():
    def via_objective(p, p0, x, w):
        ctx = optvis.Context({"l": p}, None, x)
        return -optvis.feature_match("l", p0)(ctx) + w * optvis.total_variation(x)
    _after(("total_variation",), lab07.check_feature_loss, via_objective, "write this one yourself")


def test_loss_commonest_mistakes_are_named(tv):
    after = ("total_variation",)

    def unnormalised(p, p0, x, w):
        d, _ = _feature(p, p0)
        return d + w * tv(x)

    def norm_ratio(p, p0, x, w):
        d, n = _feature(p, p0)
        return d.sqrt() / n.sqrt() + w * tv(x)

    def no_tv(p, p0, x, w):
        d, n = _feature(p, p0)
        return d / n

    def detached(p, p0, x, w):
        d, n = _feature(p.detach(), p0)
        return d / n + w * tv(x.detach())
    _after(after, lab07.check_feature_loss, unnormalised, "not divided by ||phi0||^2")
    _after(after, lab07.check_feature_loss, norm_ratio, "ratio of the norms")
    _after(after, lab07.check_feature_loss, no_tv, "tv prior term is missing")
    _after(after, lab07.check_feature_loss, detached, "no gradient")


# ------------------------------------------------------------------ exercise 3: invert
AFTER = ("total_variation", "feature_loss")


def test_solution_invert_passes_after_the_loss(tv, loss, inv):
    core.reset()
    assert not lab07.check_invert(inv, verbose=False).passed            # exercises 1, 2 not yet checked
    assert lab07.check_total_variation(tv, verbose=False).passed
    assert lab07.check_feature_loss(loss, verbose=False).passed
    assert lab07.check_invert(inv, verbose=False).passed


def test_invert_asks_for_exercise_2_first(inv):
    _after(("total_variation",), lab07.check_invert, inv, "fix exercise 2", "feature_loss")


def test_invert_degenerate_answers_fail():
    _after(AFTER, lab07.check_invert, lambda m, l, img, n, w, lr: torch.zeros_like(img), "all zeros")
    g = torch.Generator().manual_seed(0)
    _after(AFTER, lab07.check_invert, lambda m, l, img, n, w, lr: torch.rand(img.shape, generator=g), "random")
    _after(AFTER, lab07.check_invert, lambda m, l, img, n, w, lr: img * 0.99, "unchanged")
    _after(AFTER, lab07.check_invert, lambda m, l, img, n, w, lr: img.clone(), "unchanged")


def test_invert_library_refuses():
    _after(AFTER, lab07.check_invert,
           lambda m, l, img, n, w, lr: optvis.invert(m, l, img, steps=n, tv_weight=w, lr=lr),
           "write this one yourself")


def _loop(model, layer, image, steps, tv_weight, lr, seeded=True, clamp=True, zero_grad=True,
          schedule=True, pass_tv=True):
    with hooks.record(model, layer) as rec, torch.no_grad():
        model(image[None])
    phi0 = rec.activations[layer]
    if seeded:
        torch.manual_seed(0)
    x = (0.5 + 0.1 * torch.randn_like(image[None])).clamp(0, 1).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    with hooks.frozen(model), hooks.record(model, layer, detach=False) as rec:
        for _ in range(steps):
            model(x)
            d, n = _feature(rec.activations[layer], phi0)
            dx, dy = _tv(x)
            loss = (d / n + (tv_weight if pass_tv else 0.0) * (dx ** 2 + dy ** 2).flatten(1).mean(1)).sum()
            if zero_grad:
                opt.zero_grad()
            loss.backward()
            opt.step()
            if schedule:
                sched.step()
            if clamp:
                with torch.no_grad():
                    x.clamp_(0, 1)
    return x.detach()[0]


def test_invert_test_loop_passes():
    core.reset()
    core._PASSED.update(AFTER)
    assert lab07.check_invert(_loop, verbose=False).passed


def test_invert_commonest_mistakes_are_named():
    _after(AFTER, lab07.check_invert, lambda *a: _loop(*a, clamp=False), "clamp")
    _after(AFTER, lab07.check_invert, lambda *a: _loop(*a, zero_grad=False), "zero the optimiser")
    _after(AFTER, lab07.check_invert, lambda *a: _loop(*a, seeded=False), "seed torch with 0")
    _after(AFTER, lab07.check_invert, lambda *a: _loop(*a, schedule=False), "cosine")
    _after(AFTER, lab07.check_invert, lambda *a: _loop(*a, pass_tv=False), "tv_weight")


def test_invert_must_leave_the_model_alone():
    def trains(model, layer, image, steps, tv_weight, lr):
        model.train()
        return _loop(model, layer, image, steps, tv_weight, lr)
    from xailab import models
    model = models.load("shapesnet")
    try:
        _after(AFTER, lab07.check_invert, trains, "changed the model")
    finally:
        model.eval()
