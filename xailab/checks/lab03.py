"""Checks for lab 03 (feature visualisation): one gradient-ascent step, then the loop.

    from xailab import checks
    checks.lab03.check_ascent_step(ascent_step)   # fn(model, image, score_fn, lr, shift, blur_sigma) -> image
    checks.lab03.check_visualise(visualise)       # fn(model, score_fn, steps, lr, jitter, blur_sigma, seed) -> image

Each check runs the student's function on the trained shapesnet while the library's
gradient-ascent code refuses to run, compares the result with a private reference
that follows the lab's recipe (the same seed, the same random shifts, a few steps)
and prints a verdict in words; it returns the ``Report``. ``check_visualise`` asks
for exercise 1 first: the loop is built on the student's own ``ascent_step``.
"""
from __future__ import annotations

import torch

from .. import hooks, optvis
from ..solving import solves
from .core import (Report, call, degenerate, diagnose, relative_error, name_of as _name,
                   finish as _done, tensor_result, unstable, changed_model)

SEED = 3
LAYER, CHANNEL = "features.block3", 12
# the library code that answers these exercises: one step, the loop, the general optimiser
FORBID = ("optvis.ascent_step", "optvis.ascent", "optvis.optimize")
VIS_STEPS = 6          # the loop is compared step for step, so a few steps suffice
VIS_TOL = 1e-3         # float differences in the gradient grow a little over the steps


def channel_score(model, x):
    """Mean activation of channel 12 of features.block3, one value per image."""
    with hooks.record(model, LAYER, detach=False) as rec:
        model(x)
    return rec.activations[LAYER][:, CHANNEL].mean((1, 2))


def class_score(index):
    def score(model, x):
        return model(x)[:, index]
    score.__name__ = f"class_score({index})"
    return score


def _image(report, fn, got, shape):
    return tensor_result(report, fn, got, shape, f"an image tensor {list(shape)}",
                         " (is the gradient normalised by a mean that can be zero?)")


@solves("optvis.ascent_step")
def _step(model, image, score_fn, lr, shift, blur_sigma, normalise=True, clamp=True):
    """The reference step, and (with ``normalise``/``clamp`` off) two of its mistakes."""
    with hooks.frozen(model):
        x = image.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            score = score_fn(model, torch.roll(x, tuple(int(s) for s in shift), (2, 3))).sum()
            (g,) = torch.autograd.grad(score, x)
    g = g / g.abs().mean().clamp_min(1e-12) if normalise else g
    out = image.detach() + lr * g
    return optvis.gaussian_blur(out.clamp(0, 1) if clamp else out, blur_sigma)


def _start(seed, size=64):
    torch.manual_seed(seed)
    return (0.5 + 0.01 * torch.randn(1, 3, size, size)).clamp(0, 1)


@solves("optvis.ascent")
def _visualise(model, score_fn, steps, lr, jitter, blur_sigma, seed, shifts=True, normalise=True,
               clamp=True, seeded=True, one_shift=False):
    """The lab's recipe (the reference), and with a flag switched off one of its mistakes."""
    if seeded:
        x = _start(seed)
    else:
        x = (0.5 + 0.01 * torch.randn(1, 3, 64, 64)).clamp(0, 1)
    shift = torch.randint(-jitter, jitter + 1, (2,)).tolist() if one_shift else None
    for _ in range(steps):
        if not one_shift:
            shift = torch.randint(-jitter, jitter + 1, (2,)).tolist()
        x = _step(model, x, score_fn, lr, shift if shifts else (0, 0), blur_sigma, normalise, clamp)
    return x


def check_ascent_step(fn, verbose: bool = True) -> Report:
    """``fn(model, image, score_fn, lr, shift, blur_sigma)``: roll the image by ``shift``,
    gradient g of score_fn(model, rolled).sum() w.r.t. the image, step
    image + lr * g / mean|g|, clamp to [0, 1], blur with ``blur_sigma``."""
    from .. import models
    from ..data import shapes
    report = Report("check_ascent_step", exercise="ascent_step", forbid=FORBID)
    model = models.load("shapesnet")
    x = shapes("test", 1, seed=SEED).images()
    x = 0.2 + 0.6 * x                       # away from 0 and 1, so that clamping matters less
    cases = [("no shift, no blur", (0, 0), 0.0), ("shift (3, -2), no blur", (3, -2), 0.0),
             ("shift (3, -2), blur sigma 1", (3, -2), 1.0)]
    for what, shift, sigma in cases:
        before, kept = hooks.Snapshot.of(model), x.clone()
        got = _image(report, fn, call(report, fn, model, x, channel_score, 0.5, shift, sigma), x.shape)
        if got is None:
            return _done(report, verbose)
        if changed_model(report, fn, before, model):
            return _done(report, verbose)
        if not torch.equal(x, kept) or x.requires_grad:
            report.fail(f"{_name(fn)} changed the image it was given; work on a detached copy")
            return _done(report, verbose)
        want = _step(model, x, channel_score, 0.5, shift, sigma)
        if relative_error(got, want) > 1e-4:
            if degenerate(report, got, want, inputs=(x,)):
                return _done(report, verbose)
            xg = x.clone().requires_grad_(True)
            with torch.enable_grad():
                s = channel_score(model, torch.roll(xg, shift, (2, 3))).sum()
                (grad,) = torch.autograd.grad(s, xg)
            norm = grad / grad.abs().mean()
            alts = [
                (optvis.gaussian_blur((x - 0.5 * norm).clamp(0, 1), sigma),
                 "the image moved against the gradient: ascent adds lr * g (you subtracted it)"),
                (_step(model, x, channel_score, 0.5, shift, sigma, normalise=False),
                 "the step is not normalised: divide g by its mean absolute value, so that lr is "
                 "the mean change per pixel"),
                (_step(model, x, channel_score, 0.5, shift, sigma, clamp=False),
                 "pixels left [0, 1]: clamp the image after the step, before blurring"),
                (_step(model, x, channel_score, 0.5, (0, 0), sigma),
                 "the shift was ignored: evaluate the score on the image rolled by shift"),
                (_step(model, x, channel_score, 0.5, shift, 0.0),
                 "no blur: finish with a Gaussian blur of width blur_sigma"),
                (_step(model, x, channel_score, 0.5, shift, 0.0).roll(shift, (2, 3)),
                 "your result is still shifted: take the gradient with respect to the unshifted image "
                 "(autograd undoes the roll for you) and step that image"),
            ]
            if diagnose(report, got, [(alt, f"{what}: {hint}") for alt, hint in alts]):
                return _done(report, verbose)
        if not report.compare(what, got, want):
            return _done(report, verbose)
    return _done(report, verbose)


def check_visualise(fn, verbose: bool = True) -> Report:
    """``fn(model, score_fn, steps, lr, jitter, blur_sigma, seed)`` must follow the lab's
    recipe exactly: seed torch's global generator with ``seed``, start from
    clamp(0.5 + 0.01 * N(0, 1)) [1,3,64,64], then ``steps`` times draw a shift
    (dy, dx) in [-jitter, jitter] with one two-integer draw and take one ascent step.
    Compared with the reference for a few steps, for a class score and a channel."""
    from .. import models
    report = Report("check_visualise", exercise="visualise", forbid=FORBID)
    if not report.requires("ascent_step"):
        return _done(report, verbose)
    model = models.load("shapesnet")
    before = hooks.Snapshot.of(model)
    cases = [("class 'circle', seed 1, jitter 1, blur 0.3", class_score(0), 0.05, 1, 0.3, 1),
             (f"channel {CHANNEL} of {LAYER}, seed 5, jitter 3, blur 0.5", channel_score, 0.05, 3, 0.5, 5)]
    for what, score, lr, jit, sigma, seed in cases:
        args = (model, score, VIS_STEPS, lr, jit, sigma, seed)
        got = _image(report, fn, call(report, fn, *args), (1, 3, 64, 64))
        if got is None:
            return _done(report, verbose)
        if changed_model(report, fn, before, model):
            return _done(report, verbose)
        want = _visualise(*args)
        if relative_error(got, want) <= VIS_TOL:
            report.ok(f"{what}, {VIS_STEPS} steps: the same image as the reference "
                      f"(relative error {relative_error(got, want):.1e})")
            continue
        start = _start(seed)
        if relative_error(got, start) < 1e-4:
            report.fail("you returned the starting image: take the steps and keep each step's result")
            return _done(report, verbose)
        if float(got.abs().max()) == 0:
            degenerate(report, got, want)
            return _done(report, verbose)
        if got.min() < 0 or got.max() > 1:
            report.fail(f"{what}: the image left [0, 1]: clamp after each step")
            return _done(report, verbose)
        if unstable(report, fn, args, got, want, what, "with the same seed give different images: seed "
                    "torch's generator with seed before drawing the start noise"):
            return _done(report, verbose)
        alts = [
            (_visualise(*args, shifts=False),
             "no jitter: every step must evaluate the score on the image rolled by a freshly drawn shift"),
            (_visualise(*args, one_shift=True),
             "the same shift at every step: draw a new shift inside the loop"),
            (_visualise(*args[:-1], 0),
             "you seeded with 0 instead of the seed argument"),
            (_visualise(*args[:-2], 0.0, seed),
             "no blur: pass blur_sigma on to every step"),
            (_visualise(*args, normalise=False),
             "wrong step size: each step must move by lr * g / mean|g| (normalised gradient)"),
            (_visualise(*args, clamp=False),
             "never clamped: clamp the image to [0, 1] after each step"),
        ]
        # the known mistakes match exactly, so they are named before the generic verdicts
        if diagnose(report, got, [(alt, f"{what}: {hint}") for alt, hint in alts]):
            return _done(report, verbose)
        if degenerate(report, got, want, inputs=(start,)):
            return _done(report, verbose)
        report.fail(f"{what}: your image differs from the reference's (relative error "
                    f"{relative_error(got, want):.1e}). Follow the recipe exactly: seed, then ONE draw of "
                    "the start noise [1,3,64,64], then per step ONE draw of two integers for the shift, "
                    "then your ascent_step with lr and blur_sigma")
        return _done(report, verbose)
    return _done(report, verbose)
