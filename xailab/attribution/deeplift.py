"""DeepLIFT with the rescale rule (Shrikumar, Greenside & Kundaje 2017, ICML).

DeepLIFT explains the *difference* between the output for the image and for a reference
(``baseline``, default a black image): each non-linearity passes back the ratio of its
output change to its input change, Delta y / Delta x (the rescale rule), instead of its
local slope; linear layers keep their gradient. The attribution (x - baseline) times
these multipliers sums to f(x) - f(baseline) (summation-to-delta).

The pass follows Captum's ``DeepLift`` step by step, so the two agree: the image and the
reference run as one batch of 2N, both target logits are back-propagated, element-wise
non-linearities (ReLU, ELU, LeakyReLU, Sigmoid, Tanh, Softplus) use the local gradient
where |Delta x| < 1e-10, and max pooling splits Delta y between the image's and the
reference's maxima as Captum does. Two places where we follow the chain rule and Captum
0.9 does not, so that the attributions sum to f(x) - f(baseline) on every model here:
a position that is the maximum of two overlapping pooling windows (resnet's 3x3/2 pool)
receives the sum of their signals (Captum's ``max_unpool`` keeps one), and a non-linearity
that feeds a max pooling (ReLU -> MaxPool) rescales the signal that the pooling rule passed
back (Captum's hook on the shared tensor sees the plain gradient). On a model where
neither happens, or with a copy in which each max pool gets its own input tensor, the two
agree (tests/test_rules.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import hooks
from ..runtime import class_scores
from . import register
from .lrp import refuse_attention
from .rules import apply_rules
from .saliency import _baseline_like

ELEMENTWISE = (nn.ReLU, nn.ELU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.Softplus)
EPS = 1e-10


def _paired(t: torch.Tensor) -> torch.Tensor:
    """[image; reference] halves -> their difference, repeated for both halves."""
    image, reference = t.chunk(2)
    return torch.cat(2 * [image - reference])


def _local_gradient(module, x, grad):
    """The module's output and ordinary backward pass for the incoming signal ``grad``."""
    if type(module) is nn.ReLU:
        return x.clamp(min=0), grad * (x > 0)
    xin = x.detach().requires_grad_(True)
    with torch.enable_grad():
        y = module.forward(xin)         # (forward: without the hook that called us)
    (g,) = torch.autograd.grad(y, xin, grad)
    return y.detach(), g


def rescale(module, inputs, grad):
    """Rescale rule of an element-wise non-linearity: grad * Delta y / Delta x."""
    x = inputs[0]
    y, local = _local_gradient(module, x, grad)
    dx, dy = _paired(x), _paired(y)
    return (torch.where(dx.abs() < EPS, local, grad * dy / dx),)


_POOL_FUNCTIONS = {nn.MaxPool1d: F.max_pool1d, nn.MaxPool2d: F.max_pool2d, nn.MaxPool3d: F.max_pool3d}


def _route(signal, where, like):
    """Each output's signal added to the input position it came from (the max pooling's
    gradient, overlapping windows summed)."""
    flat = torch.zeros(like.shape[:2] + (like[0, 0].numel(),), dtype=signal.dtype, device=signal.device)
    return flat.scatter_add_(2, where.flatten(2), signal.flatten(2)).view(like.shape)


def rescale_max_pool(module, inputs, grad):
    """Max pooling: the output change Delta y, split as Captum does into the part up to the
    larger of the two maxima (routed to the image's maximum) and the rest (routed to the
    reference's), each passed back like the gradient, then divided by Delta x."""
    x = inputs[0]
    pool = _POOL_FUNCTIONS[type(module)]
    with torch.no_grad():
        y, where = pool(x, module.kernel_size, module.stride, module.padding, module.dilation,
                        module.ceil_mode, True)
        image, reference = y.chunk(2)
        top = torch.max(image, reference)
        routed = _route(grad * torch.cat([top - reference, image - top]), where, x)
        routed = torch.cat(2 * [sum(routed.chunk(2))])
        dx = _paired(x)
        return (torch.where(dx.abs() < EPS, _route(grad, where, x), routed / dx),)


def _rule_of(name, module):
    if type(module) in _POOL_FUNCTIONS:
        return rescale_max_pool
    if isinstance(module, ELEMENTWISE):
        return rescale
    return None


@register("deeplift", "rule", "DeepLIFT rescale rule: output change relative to a reference, "
          "shared out by the ratio of output to input change at every non-linearity",
          "Shrikumar, Greenside & Kundaje 2017, ICML", reduce="sum")
def deeplift(model, x, target=None, baseline=None):
    """DeepLIFT (rescale rule) of ``target`` against ``baseline`` (None: black image; a
    number, an image [C,H,W] or a batch [N,C,H,W]). Returns [N,C,H,W], summing over each
    image to about f(x) - f(baseline) for the target."""
    refuse_attention(model, "deeplift")
    base = _baseline_like(x, baseline).detach()
    xin = x.detach().requires_grad_(True)
    with hooks.HookSet() as hs:
        for m in model.modules():               # a rule needs its layer's input intact
            if getattr(m, "inplace", False) is True:
                m.inplace = False               # (the registry's wrapper restores the flags)
        apply_rules(hs, model, _rule_of)
        with torch.enable_grad():
            out = class_scores(model(torch.cat([xin, base])), "DeepLIFT needs")
            if target is None:
                target = out[:len(x)].argmax(1)
            seed = torch.zeros_like(out).scatter_(1, target.repeat(2).view(-1, 1), 1.0)
            (grad,) = torch.autograd.grad(out, xin, seed)
    return (x - base) * grad
