"""Lab 03's checks: the solution passes; zeros, random values, the library's own code,
the input returned unchanged and the commonest mistakes fail, in words that name them."""
from __future__ import annotations

import pytest
import torch

from labtools import fails_saying, solution_function
from xailab import optvis
from xailab.checks import core, lab03

NB = "03_feature_visualisation.ipynb"


@pytest.fixture(scope="module")
def step():
    return solution_function(NB, "ascent_step")


@pytest.fixture(scope="module")
def loop(step):
    fn = solution_function(NB, "visualise")
    fn.__globals__["ascent_step"] = step
    return fn


def _with_step_passed(check, fn, *words):
    """fails_saying for a check that needs exercise 1 (ascent_step) passed first."""
    return fails_saying(check, fn, *words, passed=("ascent_step",))


def _step(model, image, score_fn, lr, shift, blur_sigma, normalise=True, sign=1.0, clamp=True):
    x = image.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(score_fn(model, torch.roll(x, tuple(shift), (2, 3))).sum(), x)
    g = g / g.abs().mean() if normalise else g
    out = image + sign * lr * g
    return optvis.gaussian_blur(out.clamp(0, 1) if clamp else out, blur_sigma)


# ------------------------------------------------------------------ exercise 1: ascent_step
def test_solution_step_passes(step):
    core.reset()
    assert lab03.check_ascent_step(step, verbose=False).passed


def test_step_degenerate_answers_fail():
    fails_saying(lab03.check_ascent_step, lambda m, x, f, lr, s, b: torch.zeros_like(x), "all zeros")
    g = torch.Generator().manual_seed(0)
    fails_saying(lab03.check_ascent_step, lambda m, x, f, lr, s, b: torch.rand(x.shape, generator=g),
                 "unrelated")
    fails_saying(lab03.check_ascent_step, lambda m, x, f, lr, s, b: x.clone(), "input", "unchanged")


def test_step_library_refuses():
    fails_saying(lab03.check_ascent_step, optvis.ascent_step, "write this one yourself")


def test_step_commonest_mistakes_are_named():
    fails_saying(lab03.check_ascent_step, lambda *a: _step(*a, sign=-1.0), "subtracted")
    fails_saying(lab03.check_ascent_step, lambda *a: _step(*a, normalise=False), "not normalised")
    fails_saying(lab03.check_ascent_step, lambda *a: _step(*a, clamp=False), "clamp")


# ------------------------------------------------------------------ exercise 2: visualise
def test_solution_loop_passes_after_the_step(step, loop):
    core.reset()
    assert not lab03.check_visualise(loop, verbose=False).passed       # exercise 1 not yet checked
    assert lab03.check_ascent_step(step, verbose=False).passed
    assert lab03.check_visualise(loop, verbose=False).passed


def test_loop_asks_for_exercise_1_first(loop):
    said = fails_saying(lab03.check_visualise, loop, "fix exercise 1", "first")
    assert "ascent_step" in said


def _recipe(model, score_fn, steps, lr, jitter, blur_sigma, seed, seeded=True, shifts=True,
            normalise=True, clamp=True, sigma=None):
    if seeded:
        torch.manual_seed(seed)
    x = (0.5 + 0.01 * torch.randn(1, 3, 64, 64)).clamp(0, 1)
    for _ in range(steps):
        shift = torch.randint(-jitter, jitter + 1, (2,)).tolist()
        x = _step(model, x, score_fn, lr, shift if shifts else (0, 0),
                  blur_sigma if sigma is None else sigma, normalise=normalise, clamp=clamp)
    return x


def test_recipe_helper_passes():
    core.reset()
    core._PASSED.add("ascent_step")
    assert lab03.check_visualise(_recipe, verbose=False).passed


def test_loop_degenerate_answers_fail():
    _with_step_passed(lab03.check_visualise, lambda m, f, n, lr, j, b, s: torch.zeros(1, 3, 64, 64),
                      "all zeros")
    g = torch.Generator().manual_seed(0)
    _with_step_passed(lab03.check_visualise, lambda m, f, n, lr, j, b, s: torch.rand(1, 3, 64, 64, generator=g),
                      "unrelated")
    _with_step_passed(lab03.check_visualise, lambda *a: _recipe(*a[:2], 0, *a[3:]), "starting image")


def test_loop_library_refuses():
    _with_step_passed(lab03.check_visualise,
                      lambda m, f, n, lr, j, b, s: optvis.ascent(m, f, n, lr, j, b, seed=s),
                      "write this one yourself")


def test_loop_commonest_mistakes_are_named():
    _with_step_passed(lab03.check_visualise, lambda *a: _recipe(*a, shifts=False), "no jitter")
    _with_step_passed(lab03.check_visualise, lambda *a: _recipe(*a, sigma=0.0), "no blur")
    _with_step_passed(lab03.check_visualise, lambda *a: _recipe(*a, seeded=False), "seed")
    _with_step_passed(lab03.check_visualise, lambda *a: _recipe(*a, normalise=False), "step size")
    _with_step_passed(lab03.check_visualise, lambda *a: _recipe(*a, clamp=False), "clamp")
    _with_step_passed(lab03.check_visualise, lambda *a: _recipe(*a[:-1], 0), "seeded with 0")
