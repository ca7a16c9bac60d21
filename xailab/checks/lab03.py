"""Checks for lab 03 (feature visualisation): one gradient-ascent step, then the loop.

    from xailab.checks import lab03
    lab03.check_ascent_step(ascent_step)   # fn(model, image, score_fn, lr, shift, blur_sigma) -> image
    lab03.check_visualise(visualise)       # fn(model, score_fn, steps, lr, jitter, blur_sigma, seed) -> image

Each check runs the student's function on the trained shapesnet, compares it with
``xailab.optvis`` and prints a verdict in words; it returns the ``Report``.
"""
from __future__ import annotations

import torch

from .. import hooks, optvis
from .core import (Report, call, diagnose, relative_error, name_of as _name, finish as _done,
                   tensor_result)

SEED = 3
LAYER, CHANNEL = "features.block3", 12


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
                         " (divide by mean|g| plus a tiny number?)")


def check_ascent_step(fn, verbose: bool = True) -> Report:
    """``fn(model, image, score_fn, lr, shift, blur_sigma)``: roll the image by ``shift``,
    gradient g of score_fn(model, rolled).sum() w.r.t. the image, step
    image + lr * g / mean|g|, clamp to [0, 1], blur with ``blur_sigma``."""
    from .. import models
    from ..data import shapes
    report = Report("check_ascent_step")
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
        changed = before.diff(model)
        if changed:
            report.fail(f"{_name(fn)} changed the model ({'; '.join(changed)})")
            return _done(report, verbose)
        if not torch.equal(x, kept) or x.requires_grad:
            report.fail(f"{_name(fn)} changed the image it was given; work on a copy "
                        "(x = image.detach().clone().requires_grad_(True))")
            return _done(report, verbose)
        want = optvis.ascent_step(model, x, channel_score, 0.5, shift, sigma)
        if relative_error(got, want) > 1e-4:
            xg = x.clone().requires_grad_(True)
            with torch.enable_grad():
                s = channel_score(model, torch.roll(xg, shift, (2, 3))).sum()
                (grad,) = torch.autograd.grad(s, xg)
            norm = grad / grad.abs().mean()
            alts = [
                (optvis.gaussian_blur((x - 0.5 * norm).clamp(0, 1), sigma),
                 "the image moved against the gradient: ascent adds lr * g (you subtracted it)"),
                (optvis.gaussian_blur((x + 0.5 * grad).clamp(0, 1), sigma),
                 "the step is not normalised: divide g by its mean absolute value g.abs().mean()"),
                (optvis.gaussian_blur(x + 0.5 * norm, sigma),
                 "pixels left [0, 1]: clamp the image after the step, before blurring"),
                (optvis.ascent_step(model, x, channel_score, 0.5, (0, 0), sigma),
                 "the shift was ignored: evaluate the score on torch.roll(x, shift, dims=(2, 3))"),
                (optvis.ascent_step(model, x, channel_score, 0.5, shift, 0.0),
                 "no blur: finish with optvis.gaussian_blur(image, blur_sigma)"),
                (optvis.ascent_step(model, x, channel_score, 0.5, shift, 0.0).roll(shift, (2, 3)),
                 "your result is still shifted: take the gradient with respect to the unshifted image "
                 "(autograd undoes the roll for you) and step that image"),
            ]
            if diagnose(report, got, [(alt, f"{what}: {hint}") for alt, hint in alts]):
                return _done(report, verbose)
        if not report.compare(what, got, want):
            return _done(report, verbose)
    return _done(report, verbose)


def check_visualise(fn, verbose: bool = True) -> Report:
    """``fn(model, score_fn, steps, lr, jitter, blur_sigma, seed)`` must return an image
    [1,3,64,64] in [0,1] that (a) shapesnet classifies as a circle with probability
    >= 0.9 when score_fn is the circle score, and (b) makes channel 12 of
    features.block3 stronger than on every image of a 1,000-image sample."""
    from .. import models
    from ..data import shapes
    report = Report("check_visualise")
    model = models.load("shapesnet")
    before = hooks.Snapshot.of(model)
    steps = optvis.resolve_steps(32, 32)
    got = _image(report, fn, call(report, fn, model, class_score(0), steps, 0.05, 1, 0.3, 0), (1, 3, 64, 64))
    if got is None:
        return _done(report, verbose)
    if before.diff(model):
        report.fail(f"{_name(fn)} changed the model ({'; '.join(before.diff(model))})")
        return _done(report, verbose)
    if got.min() < 0 or got.max() > 1:
        report.fail("the image left [0, 1]: clamp after each step")
        return _done(report, verbose)
    if float((got - 0.5).abs().max()) < 0.05:
        report.fail("the image is still (almost) grey: are you taking the steps and keeping the result?")
        return _done(report, verbose)
    with torch.no_grad():
        p = float(model(got).softmax(1)[0, 0])
    (report.ok if p >= 0.9 else report.fail)(
        f"class 'circle', {steps} steps: the model says circle with probability {p:.3f} (want >= 0.9)")
    got = _image(report, fn, call(report, fn, model, channel_score, steps, 0.05, 1, 0.3, 0), (1, 3, 64, 64))
    if got is None:
        return _done(report, verbose)
    data = shapes("test", 1000, seed=1).images()
    with torch.no_grad():
        best = float(torch.cat([channel_score(model, b) for b in data.split(250)]).max())
        ours = float(channel_score(model, got))
    (report.ok if ours > best else report.fail)(
        f"channel {CHANNEL} of {LAYER}: your image drives it to {ours:.2f}, the best of 1,000 "
        f"shapes images to {best:.2f}")
    return _done(report, verbose)
