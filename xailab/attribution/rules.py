"""Rule-based backward passes: the machinery behind LRP and excitation backprop.

A *rule* says how the relevance ``R`` at a layer's output is shared out among the
layer's inputs. The rules here are written for an affine layer ``z = W x + b``
(``nn.Linear`` or a convolution) and mean what zennit's rules of the same name mean:

- ``epsilon``:   R_i = x_i sum_j w_ij R_j / (z_j + eps sign z_j)
- ``zplus``:     the same with only the positive contributions: w+ for x >= 0, w- for
  x < 0 and the positive part of the bias in the denominator
- ``alpha_beta``: alpha times the positive share minus beta times the negative share
- ``gamma``:     w + gamma w+ (w + gamma w- for negative outputs)
- ``zbox``:      for a first layer whose inputs lie in a box [low, high]
- ``flat``:      every input in the receptive field gets the same share
- ``norm``:      the epsilon rule of a layer without weights (average pooling, the
  residual sum): each input gets its share of the output, R_i = x_i R / z
- ``pass``:      an element-wise layer hands the relevance on unchanged

The stabiliser adds ``eps`` with the sign of the denominator (+eps at zero), as zennit does.

How a rule replaces the gradient: ``apply_rules`` registers (through ``xailab.hooks``)
a forward hook on each layer that has a rule; the hook returns the layer's output
wrapped in an autograd function whose backward is the rule. Layers without a rule
(ReLU, max pooling, flatten, dropout) keep their gradient, so a single
``torch.autograd.grad`` call from the output to the input runs the whole rule-based pass,
residual branches included.

``canonical_copy`` prepares a model for the rules without touching it: a copy that
shares every weight, with each BatchNorm merged into the convolution or linear layer
before it and torchvision's residual additions made a module (``ResidualSum``), so
that the ``norm`` rule can split relevance between the two branches.
"""
from __future__ import annotations

import copy as _copy
import functools

import torch
import torch.nn.functional as F
from torch import nn

from .. import hooks
from ..solving import solves

AFFINE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
         nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


# ----------------------------------------------------------------------------- the rules
@solves("lab09.epsilon")
def stabilize(z: torch.Tensor, eps: float) -> torch.Tensor:
    """z + eps * sign(z), with sign(0) = +1: a denominator that is never zero."""
    return z + torch.where(z < 0, -eps, eps)


def _affine(layer: nn.Module):
    """The layer's map as a function of (input, weight, bias)."""
    if isinstance(layer, nn.Linear):
        return F.linear
    return layer._conv_forward


def _part(t, positive: bool):
    """The positive (or negative) part of a weight or bias (None stays None)."""
    if t is None:
        return None
    return t.clamp(min=0) if positive else t.clamp(max=0)


@solves("lab09.epsilon")
def _shares(layer, terms, signals):
    """sum_k input_k * (gradient of <signal_k, f(input_k; weight_k, bias_k)> w.r.t. input_k):
    each term's input times the relevance signal projected back through its weights."""
    f = _affine(layer)
    ins = [x.detach().requires_grad_(True) for x, _, _ in terms]
    with torch.enable_grad():
        outs = [f(i, w, b) for i, (_, w, b) in zip(ins, terms)]
    grads = torch.autograd.grad(outs, ins, signals(outs))
    return sum(i * g for i, g in zip(ins, grads))


def _signed_terms(x, pos_weight, pos_bias, neg_weight):
    """(x+, W_a, b_a) and, when x has negative entries, (x-, W_b, no bias): the two terms of
    the positive-contribution rules (the x- term is exactly zero after a ReLU, so skipped)."""
    terms = [(x.clamp(min=0), pos_weight, pos_bias)]
    if bool((x < 0).any()):
        terms.append((x.clamp(max=0), neg_weight, None))
    return terms


@solves("lab09.epsilon")
def epsilon(layer, x, relevance, eps=1e-6):
    """LRP-epsilon: R_i = x_i sum_j w_ij R_j / stab(z_j) (eps=0 would be LRP-0)."""
    return _shares(layer, [(x, layer.weight, layer.bias)],
                   lambda outs: [relevance / stabilize(outs[0], eps)])


def zplus(layer, x, relevance, eps=1e-6, sign=1.0):
    """LRP-z+ as zennit defines it: x+ with w+ and b+, x- with w- (``sign=-1``: the same
    for the layer with negated weights and bias, the dual unit of contrastive EB)."""
    w, b = sign * layer.weight, None if layer.bias is None else sign * layer.bias
    terms = _signed_terms(x, _part(w, True), _part(b, True), _part(w, False))
    return _shares(layer, terms, lambda outs: [relevance / stabilize(sum(outs), eps)] * len(outs))


def alpha_beta(layer, x, relevance, alpha=2.0, beta=1.0, eps=1e-6):
    """LRP-alpha-beta: alpha times the share of the positive contributions minus beta
    times the share of the negative ones (alpha - beta = 1 conserves relevance)."""
    w, b = layer.weight, layer.bias
    pos = _signed_terms(x, _part(w, True), _part(b, True), _part(w, False))
    neg = _signed_terms(x, _part(w, False), _part(b, False), _part(w, True))
    return (alpha * _shares(layer, pos, lambda o: [relevance / stabilize(sum(o), eps)] * len(o))
            - beta * _shares(layer, neg, lambda o: [relevance / stabilize(sum(o), eps)] * len(o)))


def gamma(layer, x, relevance, gamma=0.25, eps=1e-6):
    """LRP-gamma: weights w + gamma w+ (and bias b + gamma b+) share the relevance of positive
    outputs; w + gamma w- (b + gamma b-) that of negative outputs."""
    w, b = layer.weight, layer.bias
    up_w, down_w = w + gamma * w.clamp(min=0), w + gamma * w.clamp(max=0)
    up_b = None if b is None else b + gamma * b.clamp(min=0)
    down_b = None if b is None else b + gamma * b.clamp(max=0)
    with torch.no_grad():
        z = _affine(layer)(x, w, b)
    total = 0
    for kept, terms in ((z > 0, _signed_terms(x, up_w, up_b, down_w)),
                        (z < 0, _signed_terms(x, down_w, down_b, up_w))):
        signal = relevance * kept
        total = total + _shares(layer, terms,
                                lambda o, s=signal: [s / stabilize(sum(o), eps)] * len(o))
    return total


def zbox(layer, x, relevance, low, high, eps=1e-6):
    """LRP-z^B for inputs bounded by ``low`` <= x <= ``high`` (tensors broadcastable to x)."""
    w, b = layer.weight, layer.bias
    low, high = low.expand_as(x), high.expand_as(x)
    terms = [(x, w, b), (low, _part(w, True), _part(b, True)), (high, _part(w, False), _part(b, False))]

    def signals(outs):
        s = relevance / stabilize(outs[0] - outs[1] - outs[2], eps)
        return [s, -s, -s]
    return _shares(layer, terms, signals)


def flat(layer, x, relevance, eps=1e-6):
    """LRP-flat: relevance spread evenly over each output's receptive field (all weights
    one, no bias, input ignored)."""
    ones = torch.ones_like(x).requires_grad_(True)
    with torch.enable_grad():
        z = _affine(layer)(ones, torch.ones_like(layer.weight), None)
    (g,) = torch.autograd.grad(z, ones, relevance / stabilize(z, eps))
    return g


def norm(layer, inputs, relevance, eps=1e-6):
    """Each input's share of the output: R_i = x_i * d<R / stab(z), z>/dx_i, for a layer
    without weights (average pooling: z = mean of x; the residual sum: z = a + b)."""
    ins = [t.detach().requires_grad_(True) for t in inputs]
    with torch.enable_grad():
        z = layer.forward(*ins)             # (forward: without the hook that called us)
    grads = torch.autograd.grad(z, ins, relevance / stabilize(z, eps))
    return tuple(i * g for i, g in zip(ins, grads))


# ----------------------------------------------------------------------------- applying them
class _RuleBackward(torch.autograd.Function):
    """Identity in the forward pass (returns the layer's output); in the backward pass the
    layer's rule maps the relevance at its output to relevance at its inputs."""

    @staticmethod
    def forward(ctx, rule, output, *inputs):
        ctx.rule = rule
        ctx.save_for_backward(*inputs)
        return output[0]

    @staticmethod
    def backward(ctx, relevance):
        shares = ctx.rule(ctx.saved_tensors, relevance)
        return (None, None, *shares)


def _rule_hook(rule):
    def hook(module, inputs, output):
        return _RuleBackward.apply(functools.partial(rule, module), [output.detach()], *inputs)
    return hook


def apply_rules(hookset: hooks.HookSet, model: nn.Module, rule_of) -> int:
    """Register ``rule_of(name, module)`` (a function ``(module, inputs, relevance) ->
    tuple of input relevances``, or None for the gradient) on every module; returns how
    many modules got a rule."""
    count = 0
    for name, module in model.named_modules():
        rule = rule_of(name, module)
        if rule is not None:
            hookset.forward(module, _rule_hook(rule))
            count += 1
    return count


def one_input(rule, **kwargs):
    """A rule written for one input tensor, in the ``(module, inputs, relevance)`` form."""
    def run(module, inputs, relevance):
        return (rule(module, inputs[0], relevance, **kwargs),)
    return run


def passing(module, inputs, relevance):
    """The pass rule: an element-wise layer hands relevance on unchanged."""
    return (relevance,)


# ----------------------------------------------------------------------------- the copy
class ResidualSum(nn.Module):
    """a + b as a module, so that a rule can split relevance between the two branches."""

    def forward(self, a, b):
        return a + b


@functools.cache
def _residual_blocks():
    from torchvision.models.resnet import BasicBlock, Bottleneck

    class BasicBlockWithSum(BasicBlock):
        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
            return self.relu(self.residual_sum(identity, out))

    class BottleneckWithSum(Bottleneck):
        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn3(self.conv3(self.relu(self.bn2(self.conv2(out)))))
            return self.relu(self.residual_sum(identity, out))

    return {BasicBlock: BasicBlockWithSum, Bottleneck: BottleneckWithSum}


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
               "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called")


def _shallow_copy(model: nn.Module) -> nn.Module:
    """A copy of the module tree that shares every parameter and buffer and carries none of
    the original's hooks."""
    memo = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    for m in model.modules():
        for attr in _HOOK_DICTS:
            d = getattr(m, attr, None)
            if d is not None:
                memo[id(d)] = type(d)()
    return _copy.deepcopy(model, memo)


def merge_batch_norms(model: nn.Module) -> int:
    """Fold every BatchNorm that directly follows a convolution or linear layer (in the
    order the modules are registered, as zennit's SequentialMergeBatchNorm does, and only
    when its channels are the layer's outputs) into that layer's weight and bias, and
    replace it by ``nn.Identity``. New weight tensors are made;
    shared ones are never written. Returns the number of merged BatchNorms."""
    leaves = [(n, m) for n, m in model.named_modules() if not any(True for _ in m.children())]
    merged, previous = 0, None
    for name, m in leaves:
        if (isinstance(m, BATCH_NORMS) and isinstance(previous, AFFINE) and m.running_var is not None
                and m.num_features == previous.weight.shape[0]):      # (densenet: a BN of a concat)
            scale = torch.rsqrt(m.running_var + m.eps)
            if m.weight is not None:
                scale = m.weight * scale
            shape = (-1,) + (1,) * (previous.weight.dim() - 1)
            bias = previous.bias if previous.bias is not None else torch.zeros_like(m.running_mean)
            new_bias = (bias - m.running_mean) * scale + (m.bias if m.bias is not None else 0)
            previous.weight = nn.Parameter(previous.weight * scale.view(shape), requires_grad=False)
            previous.bias = nn.Parameter(new_bias.detach(), requires_grad=False)
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, nn.Identity())
            merged += 1
        previous = m
    return merged


def canonical_copy(model: nn.Module) -> nn.Module:
    """The model as the rules need it, leaving ``model`` untouched: a copy sharing its
    weights, BatchNorms merged, torchvision's residual additions made ``ResidualSum``
    modules, no in-place operations (a rule needs its layer's input intact)."""
    net = _shallow_copy(model)
    merge_batch_norms(net)
    blocks = _residual_blocks()
    for m in net.modules():
        if type(m) in blocks:
            m.__class__ = blocks[type(m)]
            m.residual_sum = ResidualSum()
        if getattr(m, "inplace", False) is True:
            m.inplace = False
    return net.eval()


def first_affine(model: nn.Module, kinds=AFFINE) -> nn.Module | None:
    """The first module of one of ``kinds`` in registration order (zennit's "first layer")."""
    return next((m for m in model.modules() if isinstance(m, kinds)), None)


def last_affine(model: nn.Module) -> nn.Module | None:
    """The last convolution or linear layer in registration order (the output layer)."""
    found = [m for m in model.modules() if isinstance(m, AFFINE)]
    return found[-1] if found else None


__all__ = ["stabilize", "epsilon", "zplus", "alpha_beta", "gamma", "zbox", "flat", "norm",
           "passing", "one_input", "apply_rules", "canonical_copy", "merge_batch_norms",
           "ResidualSum", "first_affine", "last_affine"]
