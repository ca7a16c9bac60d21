"""Checks for lab 04 (saliency): vanilla gradient, SmoothGrad, integrated gradients.

    from xailab.checks import lab04
    lab04.check_gradient(vanilla_gradient)            # fn(model, x, target) -> [N,3,H,W]
    lab04.check_smoothgrad(smoothgrad)                # fn(model, x, target, n_samples, noise)
    lab04.check_integrated_gradients(integrated_gradients)   # fn(model, x, target, baseline, n_steps)

Each check runs the student's function on the trained shapesnet and a few test
images, compares it with ``xailab.attribution.saliency`` and prints a verdict in
words; it returns the ``Report`` (truthy when passed).
"""
from __future__ import annotations

import torch
from torch import nn

from .. import hooks
from ..attribution import saliency
from .core import Report, call, relative_error, name_of as _name, finish as _done, diagnose, tensor_result

SEED = 4
TARGETS = [0, 3, 1, 5]          # fixed classes, deliberately not all the predicted ones


def _setup(n: int = 4):
    from .. import models
    from ..data import shapes
    model = models.load("shapesnet")
    x = shapes("test", n, seed=SEED).images()
    x[1] = 0.25 + 0.5 * x[1]    # a dim image: its range is half the others'
    return model, x, torch.tensor(TARGETS[:n])


def _result(report: Report, fn, got, x):
    """The student's result as a float tensor shaped like x, or None with a verdict."""
    if not report.passed:
        return None
    return tensor_result(report, fn, got, x.shape, "a tensor [N,3,H,W]", " (a division by zero?)",
                         shape_hint=lambda g: " (one value per pixel and channel: do not sum or take "
                                              "the max over channels)" if g.dim() == 3 else "")


def _clean(report: Report, fn, model, x, kept, before) -> bool:
    """The model and the caller's x must come back unchanged."""
    changed = before.diff(model)
    if changed:
        report.fail(f"{_name(fn)} changed the model ({'; '.join(changed)})")
        return False
    if x.requires_grad or not torch.equal(x, kept):
        report.fail(f"{_name(fn)} changed the x it was given (requires_grad or values); "
                    "work on a copy: x = x.detach().clone().requires_grad_(True)")
        return False
    return True


def _grad_of(model, x, score_fn):
    """Gradient of score_fn(logits).sum() with respect to x (for diagnosing mistakes)."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(score_fn(model(x)).sum(), x)
    return g


def check_gradient(fn, verbose: bool = True) -> Report:
    """``fn(model, x, target)`` must return d score[n, target[n]] / d x[n] for every
    image n, shape [N,3,H,W], raw (signed, not reduced over channels)."""
    report = Report("check_gradient")
    model, x, target = _setup()
    before, kept = hooks.Snapshot.of(model), x.clone()
    got = _result(report, fn, call(report, fn, model, x, target), x)
    if got is None:
        return _done(report, verbose)
    want = saliency.gradient(model, x, target, reduce=None)
    if not _clean(report, fn, model, x, kept, before):
        return _done(report, verbose)
    what = "gradient for 4 images, each with its own target class"
    if relative_error(got, want) > 1e-4:
        with torch.no_grad():
            pred = model(x).argmax(1)
        if diagnose(report, got, [
                (want.abs(), "you returned |gradient|; return the signed gradient (the heat map takes "
                             "the absolute value later)"),
                (want * x, "that is gradient x input; return the gradient alone"),
                (_grad_of(model, x, lambda o: o.gather(1, pred.view(-1, 1))),
                 "you used the predicted class; use the `target` you were given"),
                (_grad_of(model, x, lambda o: o[:, int(target[0])]),
                 "every image used the first target; pick score[n, target[n]] for each image n "
                 "(e.g. out.gather(1, target[:, None]) or out[range(N), target])"),
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
    per image. The check records the noisy images your function feeds the model,
    so it can compare with the exact average at *your* noise."""
    report = Report("check_smoothgrad")
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
        report.fail("the model never saw a noisy image: add noise to x before each forward pass")
        return _done(report, verbose)
    owner = torch.cdist(seen.flatten(1), x.flatten(1)).argmin(1)      # which image each copy is of
    for n in range(len(x)):
        copies = seen[owner == n]
        if len(copies) != n_samples:
            report.fail(f"image {n}: the model saw {len(copies)} noisy copies, expected n_samples = "
                        f"{n_samples} (one gradient per noisy copy)")
            return _done(report, verbose)
        sigma = noise * float(x[n].max() - x[n].min())
        std = float((copies - x[n]).std())
        if abs(std / sigma - 1) > 0.03:
            hint = (" It looks like you used noise itself as sigma; scale it by the image's "
                    "range x.max() - x.min()." if abs(std / noise - 1) < 0.03 else "")
            if copies.min() >= 0 and copies.max() <= 1:
                hint += " Your noisy images stay in [0, 1]: SmoothGrad does not clip them."
            report.fail(f"image {n}: your noise has standard deviation {std:.3f}, expected "
                        f"noise * (max - min) = {sigma:.3f}.{hint}")
            return _done(report, verbose)
    report.ok(f"noise level right: each image got {n_samples} copies with sigma = {noise} x its range")
    grads = [saliency.input_gradients(model, seen[owner == n], target[n].expand(n_samples))
             for n in range(len(x))]
    want = torch.stack([g.mean(0) for g in grads])
    what = "SmoothGrad (mean gradient over your noisy copies)"
    if relative_error(got, want) > 1e-4 and diagnose(report, got, [
            (want * n_samples, "you summed the gradients; divide by n_samples to average them"),
            (want.abs(), "you returned |mean gradient|; return the signed mean"),
            (torch.stack([g.pow(2).mean(0) for g in grads]),
             "you averaged squared gradients (the SmoothGrad-squared variant); average the plain "
             "gradients")]):
        return _done(report, verbose)
    report.compare(what, got, want)
    return _done(report, verbose)


RULE_NAMES = {"right": "the right Riemann sum (the paper's)", "left": "the left Riemann sum",
              "middle": "the midpoint rule", "trapezoid": "the trapezoid rule",
              "gausslegendre": "Gauss-Legendre quadrature"}


def check_integrated_gradients(fn, verbose: bool = True) -> Report:
    """``fn(model, x, target, baseline=None, n_steps=...)`` must return
    (x - baseline) * the average gradient on the straight path from baseline to x
    (any of the Riemann rules, the trapezoid rule or Gauss-Legendre is accepted),
    and its attributions must sum to about f(x) - f(baseline)."""
    report = Report("check_integrated_gradients")
    model, x, target = _setup(2)
    n_steps = 16
    before, kept = hooks.Snapshot.of(model), x.clone()
    got = _result(report, fn, call(report, fn, model, x, target, n_steps=n_steps), x)
    if got is None or not _clean(report, fn, model, x, kept, before):
        return _done(report, verbose)
    ig, errors = {}, {}
    for r in RULE_NAMES:                     # the lab's rule first; the others only if needed
        ig[r] = saliency.integrated_gradients(model, x, target, n_steps=n_steps, rule=r, reduce=None)
        errors[r] = relative_error(got, ig[r])
        if errors[r] <= 1e-4:
            break
    best = min(errors, key=errors.get)
    if errors[best] > 1e-4:
        alphas = torch.arange(1, n_steps + 1, dtype=x.dtype) / n_steps
        mean_grad = sum(saliency.input_gradients(model, a * x, target) for a in alphas) / n_steps
        if not diagnose(report, got, [
                (mean_grad, "you returned the average path gradient; multiply it by (x - baseline)"),
                (ig["right"] * n_steps, "you summed the gradients; divide by n_steps (average them)"),
                (ig["left"] * n_steps, "you summed the gradients; divide by n_steps (average them)"),
                (saliency.gradient(model, x, target, reduce=None) * x,
                 "that is gradient x input at x alone; integrate along the path from the baseline")]):
            report.fail(f"black baseline, {n_steps} steps: {_closest(errors[best], best)}")
        return _done(report, verbose)
    report.compare(f"black baseline, {n_steps} steps: matches {RULE_NAMES[best]}", got, ig[best])
    with torch.no_grad():
        diff = (model(x) - model(torch.zeros_like(x))).gather(1, target.view(-1, 1))[:, 0]
    gap = float(((got.sum((1, 2, 3)) - diff).abs() / diff.abs()).max())
    report.ok(f"completeness: your attributions sum to f(x) - f(black) up to {100 * gap:.1f}% at "
              f"{n_steps} steps (more steps make the gap smaller)")

    # a grey baseline: the path starts there and the result is multiplied by x - baseline
    grey = torch.full_like(x[0], 0.5)
    got = _result(report, fn, call(report, fn, model, x, target, baseline=grey, n_steps=n_steps), x)
    if got is not None:
        want = saliency.integrated_gradients(model, x, target, baseline=grey, n_steps=n_steps,
                                             rule=best, reduce=None)
        report.compare("grey baseline (0.5): path from the baseline, times (x - baseline)", got, want)
    return _done(report, verbose)


def _closest(err, rule):
    from .core import in_words
    return f"closest to {RULE_NAMES[rule]} with {in_words(err)}"
