"""Gradient saliency: vanilla gradient, gradient x input, SmoothGrad, integrated
gradients, guided backprop and DeconvNet.

All six reduce to one helper, ``input_gradients``: the gradient of the target
class score with respect to the input pixels, for a batch. The methods differ
only in *where* they evaluate it (noisy copies, points on a path) and in the
ReLU backward rule (``hooks.modified_relu_backward``). Each returns a heatmap
[N,H,W] (``reduce="abs_max"``: max over colour channels of the absolute value)
or, with ``reduce=None``, the raw attribution [N,C,H,W] as Captum's counterpart
computes it (Saliency(abs=False), InputXGradient, NoiseTunnel, IntegratedGradients,
GuidedBackprop, Deconvolution; the one difference is IG's trapezoid rule, see there).

The registry's wrapper runs every method in eval mode with the parameters frozen
(only input gradients are computed) and applies ``reduce``; methods here return the
raw attribution [N,C,H,W].
"""
from __future__ import annotations

import contextlib
import warnings
import weakref

import numpy as np
import torch
from torch import nn

from .. import hooks
from ..runtime import class_scores, positive_int
from ..solving import solves
from . import register, resolve_target


@solves("saliency.input_gradients")
def input_gradients(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """d score[n, target[n]] / d x[n] for every image n: one forward, one backward pass."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = class_scores(model(x), "gradient methods need")
        (grad,) = torch.autograd.grad(out.gather(1, target.view(-1, 1)).sum(), x)
    return grad


@contextlib.contextmanager
def _relu_rule(model: nn.Module, x: torch.Tensor, rule: str):
    """The modified ReLU backward rule of guided backprop or DeconvNet for the body."""
    _warn_functional_relus(model, x, rule)
    with hooks.modified_relu_backward(model, rule):
        yield


_FUNCTIONAL = weakref.WeakKeyDictionary()   # model -> number of functional ReLU calls


def _warn_functional_relus(model, x, rule):
    if model not in _FUNCTIONAL:            # one extra forward pass per model, then cached
        _FUNCTIONAL[model] = hooks.functional_relus(model, x)
    if _FUNCTIONAL[model]:
        warnings.warn(f"{type(model).__name__} applies ReLU {_FUNCTIONAL[model]} time(s) as a function "
                      f"(F.relu / torch.relu) that no hook can reach: the {rule} rule changes only nn.ReLU "
                      "modules, the others keep the plain gradient. Use nn.ReLU modules for a faithful "
                      "result.", stacklevel=4)


def _gradient_sum(model, x, target, point, weights, batch_size, squared=False):
    """sum_k weights[k] * grad(point(k)) (squared first if asked), where point(k) is the k-th
    evaluation point [N,C,H,W] of every image; at most ``batch_size`` images per pass."""
    n = x.shape[0]
    per = max(1, batch_size // n)                       # evaluation points per pass
    total = torch.zeros_like(x)
    for k0 in range(0, len(weights), per):
        ks = range(k0, min(k0 + per, len(weights)))
        xs = torch.cat([point(k) for k in ks])
        ts = target.repeat(len(ks))
        g = torch.cat([input_gradients(model, a, b)
                       for a, b in zip(xs.split(batch_size), ts.split(batch_size))])
        if squared:
            g = g * g
        w = weights[k0:k0 + len(ks)].to(x.device, x.dtype).view(-1, 1, 1, 1, 1)
        total += (g.view(len(ks), *x.shape) * w).sum(0)
    return total


GRADIENT = dict(reduce="abs_max")       # every method here returns [N,C,H,W]


@register("gradient", "gradient", "gradient of the class score w.r.t. the pixels",
          "Simonyan, Vedaldi & Zisserman 2014, ICLR workshop", **GRADIENT)
def gradient(model, x, target=None, abs=False):
    """Vanilla gradient. ``abs=True`` returns |gradient| (Captum's Saliency default)."""
    g = input_gradients(model, x, resolve_target(model, x, target))
    return g.abs() if abs else g


@register("gradient_x_input", "gradient", "gradient times the input, pixel by pixel",
          "Shrikumar et al. 2016, arXiv:1605.01713", **GRADIENT)
def gradient_x_input(model, x, target=None):
    return input_gradients(model, x, resolve_target(model, x, target)) * x


@register("smoothgrad", "gradient", "gradient averaged over noisy copies of the input",
          "Smilkov et al. 2017, ICML workshop", cheap=dict(n_samples=4), **GRADIENT)
def smoothgrad(model, x, target=None, n_samples=25, noise=0.15, seed=0, squared=False, batch_size=64):
    """Mean gradient over ``n_samples`` copies x + e, e ~ N(0, sigma^2) with
    sigma = ``noise`` * (max - min of each image), as in the paper. ``squared=True``
    averages squared gradients (Captum's smoothgrad_sq). Noise is drawn one sample at a
    time as ``torch.randn(x.shape)`` from a generator seeded with ``seed`` (None: the
    global generator), so results do not depend on ``batch_size``."""
    positive_int(n_samples, "n_samples")
    positive_int(batch_size, "batch_size")
    if not noise >= 0:
        raise ValueError(f"noise is a fraction of the input range (e.g. 0.15), got {noise!r}")
    gen = None if seed is None else torch.Generator(x.device).manual_seed(int(seed))
    sigma = noise * (x.amax((1, 2, 3)) - x.amin((1, 2, 3))).view(-1, 1, 1, 1)

    def point(k):
        return x + sigma * torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)

    weights = torch.full((n_samples,), 1.0 / n_samples, dtype=torch.float64)
    return _gradient_sum(model, x, resolve_target(model, x, target), point, weights, batch_size, squared)


def ig_rule(rule: str, n_steps: int):
    """(alphas, weights) of a quadrature rule on [0, 1]: left, right, middle, trapezoid
    (Captum's riemann_* names are accepted too) or gausslegendre."""
    name = str(rule).removeprefix("riemann_")
    if name == "gausslegendre":
        nodes, w = np.polynomial.legendre.leggauss(n_steps)
        return torch.from_numpy((nodes + 1) / 2), torch.from_numpy(w / 2)
    if name == "trapezoid" and n_steps < 2:
        raise ValueError("the trapezoid rule needs n_steps >= 2")
    ends = {"left": (0, 1 - 1 / n_steps), "right": (1 / n_steps, 1), "trapezoid": (0, 1),
            "middle": (0.5 / n_steps, 1 - 0.5 / n_steps)}
    if name not in ends:
        raise ValueError(f"unknown rule {rule!r}; choose 'left', 'right', 'middle', "
                         "'trapezoid' or 'gausslegendre'")
    # float32 points, as Captum makes them: a max-pool tie can flip on a 1-ulp difference
    alphas = torch.linspace(*ends[name], n_steps, dtype=torch.float32).double()
    if name == "trapezoid":          # n points, n - 1 intervals, the ends count half
        weights = torch.full((n_steps,), 1 / (n_steps - 1), dtype=torch.float64)
        weights[[0, -1]] /= 2
    else:
        weights = torch.full((n_steps,), 1 / n_steps, dtype=torch.float64)
    return alphas, weights


def _baseline_like(x, baseline):
    if baseline is None:
        return torch.zeros_like(x)
    b = torch.as_tensor(baseline, dtype=x.dtype, device=x.device)
    try:
        return torch.broadcast_to(b, x.shape)
    except RuntimeError:
        raise ValueError(f"baseline of shape {tuple(b.shape)} does not fit images of shape "
                         f"{tuple(x.shape)}; pass a number, an image [C,H,W] or a batch [N,C,H,W]") from None


@register("integrated_gradients", "gradient", "gradients integrated along a path from a baseline",
          "Sundararajan, Taly & Yan 2017, ICML", cheap=dict(n_steps=8), **GRADIENT)
def integrated_gradients(model, x, target=None, baseline=None, n_steps=50, rule="gausslegendre",
                         batch_size=64):
    """(x - baseline) * integral_0^1 grad f(baseline + a (x - baseline)) da, by the
    quadrature ``rule`` with ``n_steps`` points (``baseline`` default: black image).
    Attributions sum to about f(x) - f(baseline) (completeness). The defaults (50 steps,
    Gauss-Legendre) are Captum's; "left", "right", "middle" and "trapezoid" are the
    Riemann rules.

    Captum's ``riemann_trapezoid`` weights the points by 1/n instead of 1/(n-1), which
    scales its result by (n-1)/n; our trapezoid rule integrates exactly."""
    positive_int(n_steps, "n_steps")
    positive_int(batch_size, "batch_size")
    alphas, weights = ig_rule(rule, n_steps)
    base = _baseline_like(x, baseline)
    delta = x - base
    g = _gradient_sum(model, x, resolve_target(model, x, target),
                      lambda k: base + float(alphas[k]) * delta, weights, batch_size)
    return g * delta


@register("guided_backprop", "gradient", "gradient with negative signals stopped at every ReLU",
          "Springenberg et al. 2015, ICLR workshop", **GRADIENT)
def guided_backprop(model, x, target=None):
    target = resolve_target(model, x, target)
    with _relu_rule(model, x, "guided"):
        return input_gradients(model, x, target)


@register("deconvnet", "gradient", "backward pass that applies ReLU to the signal, not the input",
          "Zeiler & Fergus 2014, ECCV", **GRADIENT)
def deconvnet(model, x, target=None):
    target = resolve_target(model, x, target)
    with _relu_rule(model, x, "deconvnet"):
        return input_gradients(model, x, target)
