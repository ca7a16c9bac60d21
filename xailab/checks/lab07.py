"""Checks for lab 07 (inversion): total variation, the feature-matching loss, the inversion loop.

    from xailab import checks
    checks.lab07.check_total_variation(total_variation)   # fn(x, beta) -> Tensor[N]
    checks.lab07.check_feature_loss(feature_loss)         # fn(phi, phi0, x, tv_weight) -> Tensor[N]
    checks.lab07.check_invert(invert)                     # fn(model, layer, image, steps, tv_weight, lr) -> [3,H,W]

Each check runs the student's function while the library code that answers the
exercise refuses to run, compares it with a private reference (for ``invert``: the
lab's recipe, same seed, a few steps) and prints a verdict in words; it returns the
``Report`` (truthy when passed). The loss uses the student's ``total_variation`` and
the loop the student's ``feature_loss``, so those checks ask for the earlier
exercise first.
"""
from __future__ import annotations

import torch

from .. import hooks
from ..solving import solves
from .core import (Report, call, degenerate, diagnose, relative_error, name_of as _name,
                   finish as _done, tensor_result, unstable)

SEED = 7
INVERT_STEPS = 10      # the loop is compared step for step with the reference: a few steps suffice
INVERT_TOL = 1e-3


@solves("optvis.total_variation")
def _tv(x, beta=2.0):
    dx = x[:, :, :-1, 1:] - x[:, :, :-1, :-1]
    dy = x[:, :, 1:, :-1] - x[:, :, :-1, :-1]
    return (dx ** 2 + dy ** 2 + (1e-8 if beta < 2 else 0.0)).pow(beta / 2).flatten(1).mean(1)


@solves("optvis.feature_match")
def _loss(phi, phi0, x, tv_weight):
    """||phi - phi0||^2 / ||phi0||^2 + tv_weight * TV^2(x), one value per image."""
    err = (phi - phi0).pow(2).flatten(1).sum(1) / phi0.pow(2).flatten(1).sum(1)
    return err + tv_weight * _tv(x, 2.0)


def _like(shape_of, name):
    def hint(got) -> str:
        if tuple(got.shape) == tuple(shape_of.shape):
            return f": you returned a tensor shaped like {name}; reduce it to one value per image"
        if got.dim() == 0:
            return ": you returned one number for the whole batch; return one value per image"
        return " (one value per image, shape [N])"
    return hint


def check_total_variation(fn, verbose: bool = True) -> Report:
    """``fn(x, beta)``: for x [N,C,H,W], one value per image: the mean over channels and
    pixels (i < H-1, j < W-1) of ((x[c,i,j+1]-x[c,i,j])^2 + (x[c,i+1,j]-x[c,i,j])^2)^(beta/2)."""
    report = Report("check_total_variation", exercise="total_variation", forbid=("optvis.total_variation",))
    g = torch.Generator().manual_seed(SEED)
    n = 32                     # images from smooth to rough, so that a wrong answer shows
    amp = torch.linspace(0.02, 1.0, n).view(n, 1, 1, 1)[torch.randperm(n, generator=g)]
    x = 0.5 + amp * (torch.rand(n, 3, 12, 10, generator=g) - 0.5)
    for beta in (2.0, 1.0):
        got = tensor_result(report, fn, call(report, fn, x, beta), (n,), "one value per image, shape [N]",
                            shape_hint=_like(x, "x"))
        if got is None:
            return _done(report, verbose)
        want = _tv(x, beta)
        if relative_error(got, want) > 1e-4:
            if degenerate(report, got, want):
                return _done(report, verbose)
            dx = x[:, :, :-1, 1:] - x[:, :, :-1, :-1]
            dy = x[:, :, 1:, :-1] - x[:, :, :-1, :-1]
            s = (dx ** 2 + dy ** 2).pow(beta / 2)
            alts = [
                (s.flatten(1).sum(1), "you summed over pixels; take the mean (so the weight does not "
                                      "depend on the image size)"),
                ((dx ** 2 + dy ** 2).flatten(1).mean(1),
                 "beta is ignored: raise the bracket to the power beta / 2"),
                ((dx.abs() ** beta + dy.abs() ** beta).flatten(1).mean(1),
                 "you took |dx|^beta + |dy|^beta; the paper takes (dx^2 + dy^2)^(beta/2)"),
                ((x[:, :, :, 1:] - x[:, :, :, :-1]).pow(2).flatten(1).mean(1)
                 + (x[:, :, 1:] - x[:, :, :-1]).pow(2).flatten(1).mean(1),
                 "you averaged the horizontal and vertical differences separately; combine them "
                 "per pixel on the common (H-1) x (W-1) grid, then apply the power"),
            ]
            if diagnose(report, got, [(alt, f"beta = {beta:g}: {hint}") for alt, hint in alts]):
                return _done(report, verbose)
        if not report.compare(f"beta = {beta:g}, {n} random images", got, want):
            return _done(report, verbose)
    flat = call(report, fn, torch.full((1, 3, 8, 8), 0.4), 2.0)
    if flat is not None and float(torch.as_tensor(flat).abs().max()) > 1e-6:
        report.fail("a constant image must have total variation 0")
    return _done(report, verbose)


def check_feature_loss(fn, verbose: bool = True) -> Report:
    """``fn(phi, phi0, x, tv_weight)``: for features phi, phi0 [N,C,h,w] and images x
    [N,3,H,W], one loss per image, ||phi - phi0||^2 / ||phi0||^2 + tv_weight * TV^2(x),
    differentiable with respect to phi and x."""
    report = Report("check_feature_loss", exercise="feature_loss", forbid=("optvis.feature_match",))
    if not report.requires("total_variation"):
        return _done(report, verbose)
    g = torch.Generator().manual_seed(SEED + 1)
    n = 10
    phi0 = torch.relu(torch.randn(n, 8, 6, 6, generator=g)) * torch.linspace(0.5, 3, n).view(n, 1, 1, 1)
    phi = torch.relu(phi0 + 0.7 * torch.randn(n, 8, 6, 6, generator=g))
    x = torch.rand(n, 3, 10, 10, generator=g) * torch.linspace(0.1, 1, n).view(n, 1, 1, 1)
    for w in (0.5, 0.0):
        p, xx = phi.clone().requires_grad_(True), x.clone().requires_grad_(True)
        raw = call(report, fn, p, phi0.clone(), xx, w)
        got = tensor_result(report, fn, raw, (n,), "one loss per image, shape [N]", shape_hint=_like(phi, "phi"))
        if got is None:
            return _done(report, verbose)
        want = _loss(phi, phi0, x, w)
        what = f"tv_weight {w:g}, {n} random feature maps and images"
        if relative_error(got, want) > 1e-4:
            if degenerate(report, got, want):
                return _done(report, verbose)
            diff = (phi - phi0).pow(2).flatten(1).sum(1)
            norm0 = phi0.pow(2).flatten(1).sum(1)
            tv = w * _tv(x)
            alts = [
                (diff + tv, "the feature term is not divided by ||phi0||^2: without it the loss depends on "
                            "the scale of the layer, and tv_weight means something different at every layer"),
                (diff.sqrt() / norm0.sqrt() + tv,
                 "you took the ratio of the norms, ||phi - phi0|| / ||phi0||; the loss uses their squares"),
                ((phi - phi0).pow(2).flatten(1).mean(1) + tv,
                 "you took the mean squared difference; divide the sum of squares by ||phi0||^2 instead"),
                (diff / phi.pow(2).flatten(1).sum(1) + tv,
                 "you divided by ||phi||^2 (the reconstruction's features); divide by the target's ||phi0||^2"),
                (diff / norm0 - tv, "the TV term is subtracted; the prior is a penalty, add it"),
                (diff / norm0 + w * _tv(x) * x[0].numel(), "the TV term is a sum; total_variation is a mean"),
                (diff / norm0 + 0.1 * _tv(x), "tv_weight is ignored: multiply the TV term by tv_weight"),
                (diff / norm0 + _tv(x), "tv_weight is ignored: multiply the TV term by tv_weight"),
                (diff / norm0 if w else None, "the TV prior term is missing: add tv_weight * TV(x)"),
            ]
            if diagnose(report, got, [(alt, f"{what}: {hint}") for alt, hint in alts]):
                return _done(report, verbose)
        if not report.compare(what, got, want):
            return _done(report, verbose)
        if not isinstance(raw, torch.Tensor) or not raw.requires_grad:
            report.fail("your loss carries no gradient: keep it a differentiable function of phi and x "
                        "(no .item(), .detach(), torch.no_grad() or numpy on the way)")
            return _done(report, verbose)
        got_grads = torch.autograd.grad(raw.sum(), (p, xx), allow_unused=True)
        p2, x2 = phi.clone().requires_grad_(True), x.clone().requires_grad_(True)
        want_grads = torch.autograd.grad(_loss(p2, phi0, x2, w).sum(), (p2, x2))
        for name, gg, wg in zip(("phi", "x"), got_grads, want_grads):
            if float(wg.abs().max()) == 0:
                continue
            if gg is None:
                report.fail(f"your loss does not depend on {name} for autograd: compute it from the "
                            f"{name} you are given, without detaching it")
                return _done(report, verbose)
            if not report.compare(f"tv_weight {w:g}: gradient with respect to {name}", gg, wg, tol=1e-3):
                return _done(report, verbose)
    return _done(report, verbose)


def _start(image, seed=0):
    torch.manual_seed(seed)
    return (0.5 + 0.1 * torch.randn_like(image[None])).clamp(0, 1)


@solves("optvis.invert")
def _invert(model, layer, image, steps, tv_weight, lr, seeded=True, grey=False, clamp=True,
            schedule=True, sign=1.0, zero_grad=True):
    """The lab's recipe (the reference); each flag switched gives one of its mistakes."""
    with hooks.frozen(model):
        with hooks.record(model, layer) as rec, torch.no_grad():
            model(image[None])
        phi0 = rec.activations[layer]
        if grey:
            x = torch.full_like(image[None], 0.5)
        elif seeded:
            x = _start(image)
        else:
            x = (0.5 + 0.1 * torch.randn_like(image[None])).clamp(0, 1)
        x.requires_grad_(True)
        opt = torch.optim.Adam([x], lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if schedule else None
        with hooks.record(model, layer, detach=False) as rec, torch.enable_grad():
            for _ in range(steps):
                model(x)
                loss = sign * _loss(rec.activations[layer], phi0, x, tv_weight).sum()
                if zero_grad:
                    opt.zero_grad()
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                if clamp:
                    with torch.no_grad():
                        x.clamp_(0, 1)
    return x.detach()[0]


def check_invert(fn, verbose: bool = True) -> Report:
    """``fn(model, layer, image, steps, tv_weight, lr)`` must follow the lab's recipe:
    seed 0, start clamp(0.5 + 0.1 * N(0, 1)), Adam with a cosine-annealed learning rate,
    per step the sum of the student's feature_loss, then clamp to [0, 1]; the model and
    the image stay unchanged. Compared with the reference for a few steps at two layers."""
    from .. import models
    from ..data import shapes
    report = Report("check_invert", exercise="invert",
                    forbid=("optvis.invert", "optvis.optimize", "optvis.feature_match"))
    if not report.requires("feature_loss"):
        return _done(report, verbose)
    model = models.load("shapesnet")
    x = shapes("test", 1, seed=3).images()[0]
    cases = [("features.block1.conv2", 0.1, 0.05), ("features.block2.conv2", 0.5, 0.1)]
    for layer, tv_weight, lr in cases:
        what = f"{layer}, tv_weight {tv_weight:g}, lr {lr:g}, {INVERT_STEPS} steps"
        args = (model, layer, x, INVERT_STEPS, tv_weight, lr)
        before, kept = hooks.Snapshot.of(model), x.clone()
        got = tensor_result(report, fn, call(report, fn, *args), x.shape, "an image [3,H,W]",
                            shape_hint=lambda g: " (return one image [3,H,W]: drop the batch dimension)"
                            if tuple(g.shape) == (1, *x.shape) else " (an image [3,H,W])")
        if got is None:
            return _done(report, verbose)
        changed = before.diff(model)
        if changed:
            report.fail(f"{_name(fn)} changed the model ({'; '.join(changed)}); optimise only the image "
                        "and leave the model frozen (hooks.frozen(model) restores everything)")
            return _done(report, verbose)
        if not torch.equal(x, kept):
            report.fail(f"{_name(fn)} changed the image it was given")
            return _done(report, verbose)
        want = _invert(*args)
        if relative_error(got, want) <= INVERT_TOL:
            report.ok(f"{what}: the same reconstruction as the reference "
                      f"(relative error {relative_error(got, want):.1e})")
            continue
        if float(got.abs().max()) == 0:
            degenerate(report, got, want)
            return _done(report, verbose)
        if relative_error(got, x) < 0.05 or degenerate(report, got, want, inputs=(x,)):
            if report.passed:
                report.fail("you returned the original image (nearly) unchanged; start from noise and "
                            "optimise the feature-matching loss")
            return _done(report, verbose)
        if got.min() < 0 or got.max() > 1:
            report.fail(f"{what}: the reconstruction leaves [0, 1]: clamp after each step")
            return _done(report, verbose)
        if unstable(report, fn, args, got, want, what, "give different images: seed torch with 0 before "
                    "drawing the start noise"):
            return _done(report, verbose)
        alts = [
            (_invert(*args, clamp=False), "never clamped: clamp the image to [0, 1] after each step"),
            (_invert(*args, zero_grad=False),
             "the gradients pile up from step to step: zero the optimiser's gradients every step"),
            (_invert(*args, schedule=False),
             "the learning rate never decays: step a cosine schedule (annealed to 0 over the steps) "
             "after each optimiser step"),
            (_invert(model, layer, x, INVERT_STEPS, 0.0, lr),
             "the TV prior had no effect: pass tv_weight on to your feature_loss"),
            (_invert(*args, sign=-1.0), "the loss went up: minimise it (gradient descent), not maximise"),
            (_invert(*args, grey=True), "you started from plain grey; start from grey plus noise of sd 0.1"),
        ]
        if diagnose(report, got, [(alt, f"{what}: {hint}") for alt, hint in alts]):
            return _done(report, verbose)
        if degenerate(report, got, want):
            return _done(report, verbose)
        report.fail(f"{what}: your reconstruction differs from the reference's (relative error "
                    f"{relative_error(got, want):.1e}). Follow the recipe exactly: seed 0, the start "
                    "noise, Adam with the cosine schedule, the sum of your feature_loss, clamp")
        return _done(report, verbose)
    return _done(report, verbose)
