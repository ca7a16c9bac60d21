"""Layer-wise relevance propagation (LRP) and excitation backprop: relevance shared out
layer by layer with the rules of ``rules.py`` instead of being differentiated.

``lrp(model, x, target, composite=...)`` starts from the target's logit and hands it
down: each layer passes on what its inputs contributed, so the relevance of the input
pixels sums to the logit, less what the biases and the stabiliser keep (conservation).
A *composite* says which rule each layer gets; the four here are zennit's (0.5.1):

| composite              | first layer          | other convolutions | linear layers |
|------------------------|----------------------|--------------------|---------------|
| epsilon_plus           | (as the others)      | z+                 | epsilon       |
| epsilon_plus_flat      | flat (conv or linear)| z+                 | epsilon       |
| epsilon_alpha2_beta1   | (as the others)      | alpha=2, beta=1    | epsilon       |
| epsilon_gamma_box      | z^B (first conv)     | gamma=0.25         | epsilon       |

with epsilon = 1e-6 (also the stabiliser of the other rules); average pooling and
residual sums get the ``norm`` rule, BatchNorm is merged into the layer before it, the
model's input normalisation passes relevance through unchanged, ReLU, max pooling and
reshapes keep their gradient (for ReLU the same as zennit's pass rule: every rule above it
multiplies by its input, so a unit that ReLU set to zero receives no relevance). The z^B box is the range that [0, 1] images take at the
first convolution's input (the model normalises inside): it is found by running a
black and a white image up to that layer. "First layer" means the first matching module
in registration order, as in zennit.

``excitation_backprop`` (Zhang et al. 2016) is the same machinery with the z+ rule on every
convolution and linear layer, started from probability 1 on the target: the result is
the marginal winning probability of each input (zennit's ExcitationBackprop composite).
``contrastive=True`` subtracts the winning probability of the target's dual unit (the
output unit with negated weights and bias), which removes what all classes share.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import hooks
from ..models import Normalize
from ..runtime import class_scores
from . import register
from .rules import (AFFINE, BATCH_NORMS, CONVOLUTIONS, POOLS, ResidualSum, alpha_beta, apply_rules,
                    canonical_copy, epsilon, first_affine, flat, gamma, last_affine, norm, one_input,
                    passing, zbox, zplus)

COMPOSITES = {              # name -> (rule of the convolutions, rule of the first layer, its kinds)
    "epsilon_plus": (zplus, None, None),
    "epsilon_plus_flat": (zplus, flat, AFFINE),
    "epsilon_alpha2_beta1": (alpha_beta, None, None),
    "epsilon_gamma_box": (gamma, zbox, CONVOLUTIONS),
}
RULE = dict(reduce="sum")   # [N,C,H,W] relevance; the default map sums the colour channels


class _Reached(Exception):
    """Stops a forward pass once the layer of interest has seen its input."""


def input_box(net: nn.Module, layer: nn.Module, x: torch.Tensor):
    """(low, high): the range of ``layer``'s input over all images in [0, 1], from a black
    and a white image (exact when the layers before it act pixel by pixel and monotonically,
    like the model's input normalisation)."""
    seen = {}

    def grab(module, inputs):
        seen["input"] = inputs[0].detach()
        raise _Reached

    probe = torch.stack([torch.zeros_like(x[0]), torch.ones_like(x[0])])
    with hooks.HookSet() as hs, torch.no_grad():
        hs.forward_pre(layer, grab)
        try:
            net(probe)
        except _Reached:
            pass
    if "input" not in seen:
        raise ValueError(f"the box rule's first layer {layer} is never called in the forward pass")
    black, white = seen["input"]
    return torch.minimum(black, white)[None], torch.maximum(black, white)[None]


def refuse_attention(model: nn.Module, method: str):
    """A clear error for a transformer: the rules here are defined for convolutional networks
    (attention's softmax and products of activations would only get their gradient)."""
    if any(isinstance(m, nn.MultiheadAttention) for m in model.modules()):
        raise ValueError(f"{method} has rules for convolutional networks only; {type(model).__name__} "
                         "has attention layers. For a vision transformer use attention_rollout, "
                         "attention_gradient or token_gradcam")


def _check_supported(net: nn.Module):
    odd = [type(m).__name__ for m in net.modules()
           if isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d))]
    if odd:
        raise ValueError(f"the relevance rules here cover Linear and Conv layers, not {odd[0]}")
    if last_affine(net) is None:
        raise ValueError(f"{type(net).__name__} has no convolution or linear layer to apply rules to")


def relevance_pass(net: nn.Module, x: torch.Tensor, target, rule_of, start: str) -> torch.Tensor:
    """Run the rule-based backward pass on ``net`` (a canonical copy) for ``target`` (None:
    the predicted class), starting from the target's logit (``start="logit"``) or from 1
    (``start="one"``). Returns the relevance of the input [N,C,H,W]."""
    with hooks.HookSet() as hs:
        apply_rules(hs, net, rule_of)
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            out = class_scores(net(x), "relevance methods need")
            if target is None:
                target = out.argmax(1)
            seed = torch.zeros_like(out).scatter_(1, target.view(-1, 1), 1.0)
            if start == "logit":
                seed = seed * out.detach()
            (relevance,) = torch.autograd.grad(out, x, seed)
    return relevance


def _shared_rules(m: nn.Module):
    """The rules every composite shares: norm for pooling and residual sums, pass for the
    input normalisation."""
    if isinstance(m, POOLS + (ResidualSum,)):
        return norm
    if isinstance(m, Normalize):
        return passing
    return None


def lrp_rules(net: nn.Module, x: torch.Tensor, composite: str):
    """rule_of(name, module) for ``composite`` on a canonical copy ``net``."""
    if composite not in COMPOSITES:
        raise ValueError(f"unknown composite {composite!r}; choose one of {', '.join(COMPOSITES)}")
    conv_rule, first_rule, first_kinds = COMPOSITES[composite]
    first = first_affine(net, first_kinds) if first_rule is not None else None
    first_fn = None
    if first_rule is zbox:
        low, high = input_box(net, first, x)
        first_fn = one_input(zbox, low=low, high=high)
    elif first_rule is not None:
        first_fn = one_input(first_rule)

    def rule_of(name, m):
        if first is not None and m is first:
            return first_fn
        if isinstance(m, CONVOLUTIONS):
            return one_input(conv_rule)
        if isinstance(m, nn.Linear):
            return one_input(epsilon)
        if isinstance(m, BATCH_NORMS):        # one that follows no layer it could merge into
            return passing
        return _shared_rules(m)
    return rule_of


@register("lrp", "rule", "layer-wise relevance propagation: the logit shared out layer by layer by "
          "a composite of rules", "Bach et al. 2015, PLoS ONE; Montavon et al. 2019, LNCS 11700", **RULE)
def lrp(model, x, target=None, composite="epsilon_plus"):
    """LRP with one of zennit's composites: "epsilon_plus" (default), "epsilon_plus_flat",
    "epsilon_alpha2_beta1" or "epsilon_gamma_box" (see the module's table). Returns the
    relevance [N,C,H,W]. Each layer keeps the share its bias and the stabiliser add to the
    denominator, sum_in R = sum_out R (z - b) / (z + eps sign z), so without biases the pixels
    hold the logit to about 1e-4 (alpha2-beta1: exactly only where a unit has both positive
    and negative contributions)."""
    refuse_attention(model, "lrp")
    net = canonical_copy(model)
    _check_supported(net)
    return relevance_pass(net, x, target, lrp_rules(net, x, composite), start="logit")


def _contrastive_zplus(layer, x, relevance):
    return zplus(layer, x, relevance) - zplus(layer, x, relevance, sign=-1.0)


@register("excitation_backprop", "rule", "marginal winning probability: the target's probability "
          "passed down along positive connections", "Zhang et al. 2016, ECCV (IJCV 2018)", **RULE)
def excitation_backprop(model, x, target=None, contrastive=False):
    """Excitation backprop: every convolution and linear layer passes probability down with
    the z+ rule, pooling and residual sums with the norm rule. ``contrastive=True`` subtracts
    the map of the target's dual unit (negated output weights): what is specific to the class."""
    refuse_attention(model, "excitation_backprop")
    net = canonical_copy(model)
    _check_supported(net)
    top = last_affine(net)

    def rule_of(name, m):
        if contrastive and m is top:
            return one_input(_contrastive_zplus)
        if isinstance(m, AFFINE):
            return one_input(zplus)
        return _shared_rules(m)
    return relevance_pass(net, x, target, rule_of, start="one")
