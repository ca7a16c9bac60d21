"""Checks for lab 04 (saliency): vanilla gradient, SmoothGrad, integrated gradients.

    from xailab.checks import lab04
    lab04.check_gradient(vanilla_gradient)            # fn(model, x, target) -> [N,3,H,W]
    lab04.check_smoothgrad(smoothgrad)                # fn(model, x, target, n_samples, noise)
    lab04.check_integrated_gradients(integrated_gradients)   # fn(model, x, target, baseline, n_steps)

Each check runs the student's function on the trained shapesnet and a few test
images while the library's gradient methods refuse to run, compares it with a
private reference and prints a verdict in words; it returns the ``Report``
(truthy when passed). SmoothGrad and integrated gradients are built on the
student's own ``vanilla_gradient``, so their checks ask for exercise 1 first.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import hooks
from ..attribution import saliency
from ..solving import solves
from .core import (Report, call, degenerate, diagnose, finish as _done, name_of as _name,
                   relative_error, tensor_result)

SEED = 4
TARGETS = [0, 3, 1, 5]          # fixed classes, deliberately not all the predicted ones

# every library function that returns (or trivially yields) a gradient map: smoothgrad
# with noise 0 is the gradient, integrated gradients with one step from x - 1 is too
GRADIENT_FAMILY = ("gradient", "gradient_x_input", "smoothgrad", "integrated_gradients",
                   "guided_backprop", "deconvnet", "saliency.input_gradients")


def _setup(n: int = 4):
    from .. import models
    from ..data import shapes
    model = models.load("shapesnet")
    x = shapes("test", n, seed=SEED).images()
    x[1] = 0.25 + 0.5 * x[1]    # a dim image: its range is half the others'
    return model, x, torch.tensor(TARGETS[:n])


def _shape_hint(x):
    n, c, h, w = x.shape

    def hint(g) -> str:
        shape = tuple(g.shape)
        if shape in ((n, h, w), (n, 1, h, w)):
            return (" : you reduced over the colour channels (abs, max or sum). Return one value per "
                    "pixel and channel; the heat map reduces them later")
        if shape in ((c, h, w), (1, c, h, w)):
            return " : you summed the images of the batch together; return one gradient per image"
        return ""
    return hint


def _result(report: Report, fn, got, x):
    """The student's result as a float tensor shaped like x, or None with a verdict."""
    if not report.passed:
        return None
    return tensor_result(report, fn, got, x.shape, "a tensor [N,3,H,W]", " (a division by zero?)",
                         shape_hint=_shape_hint(x))


def _clean(report: Report, fn, model, x, kept, before) -> bool:
    """The model and the caller's x must come back unchanged."""
    changed = before.diff(model)
    if changed:
        report.fail(f"{_name(fn)} changed the model ({'; '.join(changed)})")
        return False
    if x.requires_grad or not torch.equal(x, kept):
        report.fail(f"{_name(fn)} changed the x it was given (requires_grad or values); "
                    "work on a detached copy of x")
        return False
    return True


@solves("gradient")
def _grad_of(model, x, score_fn):
    """Gradient of score_fn(logits).sum() with respect to x (for diagnosing mistakes)."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(score_fn(model(x)).sum(), x)
    return g


def _named(report: Report, got, want, inputs, mistakes) -> bool:
    """Name what went wrong: a known mistake when the answer equals one exactly (never for
    an all-zero or constant answer), else a degenerate answer (zeros, constant, the input,
    unrelated values). A known mistake is checked first because a wrong-class gradient
    is as uncorrelated with the right one as random values are. True when named."""
    if float(got.abs().max()) > 0 and float(got.std()) > 0 and diagnose(report, got, mistakes):
        return True
    return degenerate(report, got, want, inputs=inputs)


@solves("gradient")
def _gradient(model, x, target):
    """The private reference: d score[n, target[n]] / d x[n]."""
    return _grad_of(model, x, lambda o: o.gather(1, target.view(-1, 1)))


def check_gradient(fn, verbose: bool = True) -> Report:
    """``fn(model, x, target)`` must return d score[n, target[n]] / d x[n] for every
    image n, shape [N,3,H,W], raw (signed, not reduced over channels)."""
    report = Report("check_gradient", exercise="vanilla_gradient", forbid=GRADIENT_FAMILY)
    model, x, target = _setup()
    before, kept = hooks.Snapshot.of(model), x.clone()
    got = _result(report, fn, call(report, fn, model, x, target), x)
    if got is None or not _clean(report, fn, model, x, kept, before):
        return _done(report, verbose)
    want = _gradient(model, x, target)
    what = "gradient for 4 images, each with its own target class"
    if relative_error(got, want) > 1e-4:
        with torch.no_grad():
            pred = model(x).argmax(1)
        if _named(report, got, want, (x,), [
                (want.abs(), "you returned |gradient| (the absolute value); return the signed gradient "
                             "(the heat map takes the absolute value later)"),
                (want.abs().amax(1, keepdim=True).expand_as(want),
                 "you took the largest |gradient| over the colour channels; return every channel, signed"),
                (want * x, "that is gradient x input; return the gradient alone"),
                (_grad_of(model, x, lambda o: o.gather(1, pred.view(-1, 1))),
                 "you used the predicted class; use the `target` you were given"),
                (_grad_of(model, x, lambda o: o[:, target]),
                 "you indexed the scores with [:, target], which gives every image the scores of all N "
                 "targets; pick score[n, target[n]] for each image n"),
                (_grad_of(model, x, lambda o: o[:, int(target[0])]),
                 "every image used the first target; pick score[n, target[n]] for each image n"),
                (want / len(x), "you averaged the scores over the batch (mean), which divides every "
                                "gradient by N; sum them: image n's score depends only on image n"),
                (_grad_of(model, x, lambda o: o.sum(1)),
                 "you back-propagated the sum of all class scores; select each image's target score"),
                (_grad_of(model, x, lambda o: o.softmax(1).gather(1, target.view(-1, 1))),
                 "you differentiated the softmax probability; use the raw class score (logit)"),
                (_grad_of(model, x, lambda o: o.log_softmax(1).gather(1, target.view(-1, 1))),
                 "you differentiated the log-probability; use the raw class score (logit)")]):
            return _done(report, verbose)
    report.compare(what, got, want)
    return _done(report, verbose)


class _Recorder(nn.Module):
    """Wraps a model and keeps a copy of every batch it is called on."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.model(x)


def check_smoothgrad(fn, verbose: bool = True) -> Report:
    """``fn(model, x, target, n_samples, noise)`` must average the gradient over
    ``n_samples`` noisy copies x + N(0, sigma^2), sigma = noise * (x.max() - x.min())
    per image, fresh noise for every copy. The check records the noisy images your
    function feeds the model, so it can compare with the exact average at *your* noise."""
    report = Report("check_smoothgrad", exercise="smoothgrad", forbid=GRADIENT_FAMILY)
    if not report.requires("vanilla_gradient"):
        return _done(report, verbose)
    model, x, target = _setup(2)
    n_samples, noise = 8, 0.2
    rec = _Recorder(model)
    before, kept = hooks.Snapshot.of(model), x.clone()
    torch.manual_seed(SEED)
    got = _result(report, fn, call(report, fn, rec, x, target, n_samples=n_samples, noise=noise), x)
    if got is None or not _clean(report, fn, model, x, kept, before):
        return _done(report, verbose)
    seen = torch.cat(rec.seen) if rec.seen else x[:0]
    seen = seen[~(seen == x[:, None]).flatten(2).all(2).any(0)] if len(seen) else seen  # drop clean x
    if len(seen) == 0:
        rough = saliency.smoothgrad(model, x, target, n_samples=n_samples, noise=noise, seed=SEED,
                                    reduce=None)
        if not degenerate(report, got, rough, inputs=(x,)):
            report.fail("the model never saw a noisy image: add noise to x before each gradient")
        return _done(report, verbose)
    owner = torch.cdist(seen.flatten(1), x.flatten(1)).argmin(1)      # which image each copy is of
    for n in range(len(x)):
        copies = seen[owner == n]
        if len(copies) != n_samples:
            report.fail(f"image {n}: the model saw {len(copies)} noisy copies, expected n_samples = "
                        f"{n_samples} (one gradient per noisy copy)")
            return _done(report, verbose)
        if n_samples > 1 and bool((copies == copies[:1]).all()):
            report.fail(f"image {n}: all {n_samples} noisy copies are identical: you used the same "
                        "noise each sample. Draw fresh noise for every sample (inside the loop)")
            return _done(report, verbose)
        sigma = noise * float(x[n].max() - x[n].min())
        std = float((copies - x[n]).std())
        if abs(std / sigma - 1) > 0.03:
            hint = (" It looks like the noise is not scaled by the image range: sigma must be "
                    "noise * (max - min) of each image's own pixels." if abs(std / noise - 1) < 0.03 else "")
            if copies.min() >= 0 and copies.max() <= 1:
                hint += " Your noisy images stay in [0, 1]: SmoothGrad does not clip them."
            report.fail(f"image {n}: your noise has standard deviation {std:.3f}, expected "
                        f"noise * (max - min) = {sigma:.3f}.{hint}")
            return _done(report, verbose)
    report.ok(f"noise level right: each image got {n_samples} fresh noisy copies with sigma = "
              f"{noise} x its range")
    grads = [_gradient(model, seen[owner == n], target[n].expand(n_samples)) for n in range(len(x))]
    want = torch.stack([g.mean(0) for g in grads])
    what = "SmoothGrad (mean gradient over your noisy copies)"
    if relative_error(got, want) > 1e-4:
        if _named(report, got, want, (x,), [
                (want * n_samples, "you summed the gradients; divide by n_samples to average them"),
                (want.abs(), "you returned |mean gradient|; return the signed mean"),
                (torch.stack([g.abs().mean(0) for g in grads]),
                 "you averaged |gradient|; average the signed gradients"),
                (torch.stack([g[-1] for g in grads]),
                 "you returned the last sample's gradient; average over all n_samples"),
                (torch.stack([g.pow(2).mean(0) for g in grads]),
                 "you averaged squared gradients (the SmoothGrad-squared variant); average the plain "
                 "gradients")]):
            return _done(report, verbose)
    report.compare(what, got, want)
    return _done(report, verbose)


RULE_NAMES = {"right": "the right Riemann sum (k = 1..n, the paper's)",
              "left": "the left Riemann sum (k = 0..n-1)", "middle": "the midpoint rule",
              "trapezoid": "the trapezoid rule", "gausslegendre": "Gauss-Legendre quadrature"}


@solves("integrated_gradients")
def _ig(model, x, target, baseline=None, n_steps=16, rule="right", times_delta=True):
    """The private reference: integrated gradients by the quadrature ``rule``."""
    alphas, weights = saliency.ig_rule(rule, n_steps)
    base = torch.zeros_like(x) if baseline is None else torch.broadcast_to(baseline, x.shape)
    delta = x - base
    points = torch.cat([base + float(a) * delta for a in alphas])        # all steps in one batch
    grads = _gradient(model, points, target.repeat(len(alphas))).view(len(alphas), *x.shape)
    mean = (grads.double() * weights.view(-1, 1, 1, 1, 1)).sum(0).to(x.dtype)
    return mean * delta if times_delta else mean


def check_integrated_gradients(fn, verbose: bool = True) -> Report:
    """``fn(model, x, target, baseline=None, n_steps=...)`` must return
    (x - baseline) * (1/m) sum_{k=1..m} grad S(baseline + k/m (x - baseline)), the right
    Riemann sum, and its attributions must sum to about f(x) - f(baseline)."""
    report = Report("check_integrated_gradients", exercise="integrated_gradients", forbid=GRADIENT_FAMILY)
    if not report.requires("vanilla_gradient"):
        return _done(report, verbose)
    model, x, target = _setup(2)
    n_steps = 16
    before, kept = hooks.Snapshot.of(model), x.clone()
    got = _result(report, fn, call(report, fn, model, x, target, n_steps=n_steps), x)
    if got is None or not _clean(report, fn, model, x, kept, before):
        return _done(report, verbose)
    want = _ig(model, x, target, n_steps=n_steps)
    if relative_error(got, want) > 1e-4:
        def mistakes():                      # computed one by one, only until one matches
            yield (_ig(model, x, target, n_steps=n_steps, times_delta=False),
                   "the (x - baseline) factor is missing: you returned the average path gradient; "
                   "multiply it element-wise by (x - baseline)")
            left = _ig(model, x, target, n_steps=n_steps, rule="left")
            yield (left, "you used the left Riemann endpoints k = 0..n-1 (the first point is the baseline "
                         "itself); the lab's rule takes k = 1..n, ending at x")
            yield (want * n_steps, "you summed the gradients; divide by n_steps (average them)")
            yield (left * n_steps, "you summed the gradients (and started at k = 0); average them over "
                                   "k = 1..n_steps")
            yield (_gradient(model, x, target) * x,
                   "that is gradient x input at x alone; integrate along the path from the baseline")
            for r in ("middle", "trapezoid", "gausslegendre"):
                yield (_ig(model, x, target, n_steps=n_steps, rule=r),
                       f"you used {RULE_NAMES[r]}; this lab uses the right Riemann sum, points "
                       "baseline + k/n (x - baseline) for k = 1..n")
        if _named(report, got, want, (x,), mistakes()):
            return _done(report, verbose)
    if not report.compare(f"black baseline, {n_steps} steps, right Riemann sum", got, want):
        return _done(report, verbose)
    with torch.no_grad():
        diff = (model(x) - model(torch.zeros_like(x))).gather(1, target.view(-1, 1))[:, 0]
    gap = float(((got.sum((1, 2, 3)) - diff).abs() / diff.abs()).max())
    report.ok(f"completeness: your attributions sum to f(x) - f(black) up to {100 * gap:.1f}% at "
              f"{n_steps} steps (more steps make the gap smaller)")

    # a grey baseline: the path starts there and the result is multiplied by x - baseline
    grey = torch.full_like(x[0], 0.5)
    got = _result(report, fn, call(report, fn, model, x, target, baseline=grey, n_steps=n_steps), x)
    if got is None:
        return _done(report, verbose)
    want = _ig(model, x, target, baseline=grey, n_steps=n_steps)
    if relative_error(got, want) > 1e-4 and diagnose(report, got, [
            (_ig(model, x, target, n_steps=n_steps),
             "with a grey baseline you returned the black-baseline result: use the `baseline` you "
             "are given (None only means black)"),
            (_ig(model, x, target, baseline=grey, n_steps=n_steps, times_delta=False) * x,
             "the path starts at the baseline, but you multiplied by x instead of (x - baseline)")]):
        return _done(report, verbose)
    report.compare("grey baseline (0.5): path from the baseline, times (x - baseline)", got, want)
    return _done(report, verbose)
