"""Checks for lab 09 (beyond the gradient): the LRP epsilon rule for a linear layer and
for a convolution, and attention rollout.

    from xailab.checks import lab09
    lab09.check_epsilon_linear(fn)   # fn(layer, x, relevance, eps) -> relevance of x, [N, in]
    lab09.check_epsilon_conv(fn)     # fn(layer, x, relevance, eps) -> relevance of x, [N, C, H, W]
    lab09.check_rollout(fn)          # fn(attentions: list of [N, heads, T, T]) -> [N, T, T]

The epsilon checks run the student's rule on real layers of shapesnet (BatchNorm merged
in, as LRP sees them), on made-up layers and on random inputs, and compare it with
``xailab.attribution.rules.epsilon``; the rollout check runs it on the attention of
shapesvit and of a made-up transformer and compares it with
``xailab.attribution.attention.rollout``. Neither depends on a checkpoint's exact
numbers: each reference is computed on the spot. While the student's code runs, the
library's rules, LRP methods and rollout refuse to run.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import hooks
from ..attribution import rules
from ..attribution.attention import rollout as reference_rollout
from ..solving import solves
from .core import (Report, call, degenerate, diagnose, finish as _done, name_of as _name,
                   relative_error, tensor_result)

SEED = 9
EPS = 0.1                       # large enough that forgetting it, or its sign, shows

EPSILON_FAMILY = ("lab09.epsilon", "lrp", "excitation_backprop", "deeplift")
ROLLOUT_FAMILY = ("lab09.rollout", "attention", "attention_rollout", "attention_gradient")


# ----------------------------------------------------------------------------- epsilon rule
@solves("lab09.epsilon")
def _epsilon_variant(layer, x, relevance, eps, stab="sign", times_x=True, weight="w", bias=True,
                     divide=True):
    """The epsilon rule with one of the common mistakes switched on (for diagnosis):
    ``stab`` "sign" (right), "none", "plus" (+eps) or "abs" (|z| + eps); ``weight`` "w"
    or "abs" (|W| in z and in the sum); ``bias`` False leaves b out of z; ``times_x``
    False forgets the activation; ``divide`` False forgets the denominator."""
    f = F.linear if isinstance(layer, nn.Linear) else layer._conv_forward
    w = layer.weight.detach().abs() if weight == "abs" else layer.weight.detach()
    b = layer.bias.detach() if (bias and layer.bias is not None) else None
    xin = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        z = f(xin, w, b)
        zd = z.detach()
        den = {"sign": zd + torch.where(zd < 0, -eps, eps), "none": zd, "plus": zd + eps,
               "abs": zd.abs() + eps}[stab]
        (g,) = torch.autograd.grad(z, xin, relevance / den if divide else relevance)
    return (xin.detach() * g) if times_x else g


def _epsilon_mistakes(layer, x, relevance, eps):
    """(result, what it says) for each common mistake of the epsilon rule."""
    v = lambda **kw: _epsilon_variant(layer, x, relevance, eps, **kw)
    zplus = rules.zplus(layer, x, relevance, eps).detach()
    return [
        (v(stab="none"), "you divided by z alone: the stabiliser is missing. Divide by "
                         "z + eps * sign(z), with the `eps` you are given"),
        (v(stab="plus"), "you added +eps whatever the sign of z: for a negative z that pulls the "
                         "denominator towards zero. Add eps with the sign of z, z + eps * sign(z)"),
        (v(stab="abs"), "you divided by |z| + eps: the sign of z is lost, so negative outputs hand on "
                        "relevance with the wrong sign. Use z + eps * sign(z)"),
        (v(times_x=False), "you divided by z but did not multiply by the activation: input i's share "
                           "is x_i * w_ji / z_j, so multiply the back-projected signal by x"),
        (v(weight="abs"), "you used |W|: the epsilon rule keeps the sign of every weight (a negative "
                          "weight makes a negative contribution)"),
        (v(weight="abs", stab="none"), "you used |W| and left out eps: keep the weights' signs and "
                                       "divide by z + eps * sign(z)"),
        (v(bias=False), "z must include the bias: z_j = sum_i x_i w_ji + b_j (the bias takes its "
                        "share of the relevance, so leaving it out of z breaks the rule)"),
        (v(divide=False), "you did not divide by z: the relevance of an output is shared in "
                          "proportion to each input's contribution x_i w_ji / z_j"),
        (v(divide=False, times_x=False), "that is the relevance sent back through W^T alone: divide "
                                         "by z + eps * sign(z) and multiply by x"),
        (zplus, "that is the z+ rule (positive contributions only); the epsilon rule keeps "
                "every contribution, positive and negative"),
    ]


def _named(report: Report, got, want, inputs, mistakes) -> bool:
    """A known mistake when the answer equals one (never for an all-zero or constant
    answer), else a degenerate answer (zeros, constant, an input, unrelated values)."""
    if float(got.abs().max()) > 0 and float(got.std()) > 0 and diagnose(report, got, mistakes):
        return True
    return degenerate(report, got, want, inputs=inputs)


def _linear_cases():
    """(what, layer, x, relevance, eps): shapesnet's fc layer as LRP sees it, then a tiny
    layer with one output exactly zero (where sign(0) matters)."""
    from .. import models
    from ..data import shapes
    net = rules.canonical_copy(models.load("shapesnet"))
    fc = net.fc
    gen = torch.Generator().manual_seed(SEED)
    cases = [("shapesnet's fc layer (64 -> 6), random non-negative inputs and relevances",
              fc, torch.rand(4, 64, generator=gen), torch.randn(4, 6, generator=gen), EPS),
             ("shapesnet's fc layer, signed random inputs and a larger eps",
              fc, torch.randn(4, 64, generator=gen), torch.randn(4, 6, generator=gen), 1.0)]
    x = shapes("test", 4, seed=SEED).images()
    with hooks.record(net, "avgpool") as rec, torch.no_grad():
        logits = net(x)
    top = torch.zeros_like(logits).scatter_(1, logits.argmax(1, keepdim=True), logits.max(1, keepdim=True).values)
    cases.append(("shapesnet's fc layer on 4 test images, relevance = the predicted logit, eps = 1e-6",
                  fc, rec.activations["avgpool"].flatten(1), top, 1e-6))
    tiny = nn.utils.skip_init(nn.Linear, 4, 3)         # (no draw from the global random state)
    with torch.no_grad():
        tiny.weight.copy_(torch.tensor([[1.0, -1.0, 0.0, 0.0], [0.5, 0.25, -1.0, 2.0], [-1.0, 0.0, 0.5, 0.5]]))
        tiny.bias.copy_(torch.tensor([0.0, 0.1, -0.2]))
    cases.append(("a 4 -> 3 layer whose first output is exactly 0",
                  tiny, torch.tensor([[0.5, 0.5, 1.0, 0.25], [1.0, 2.0, 0.5, 0.0]]),
                  torch.tensor([[1.0, 0.5, -0.5], [0.25, 1.0, 1.0]]), EPS))
    return cases


def _conv_cases():
    """(what, layer, x, relevance, eps): a real convolution of shapesnet (BatchNorm merged
    in), shapesnet's first layer on real images, and a convolution with stride 2."""
    from .. import models
    from ..data import shapes
    net = rules.canonical_copy(models.load("shapesnet"))
    gen = torch.Generator().manual_seed(SEED)
    cases = [("shapesnet's features.block2.conv1 (16 -> 32 channels, 3x3, padding 1), random input",
              net.features.block2.conv1, torch.rand(2, 16, 32, 32, generator=gen),
              torch.randn(2, 32, 32, 32, generator=gen), EPS)]
    images = net.normalize(shapes("test", 2, seed=SEED).images())
    cases.append(("shapesnet's first convolution on 2 normalised test images (signed inputs)",
                  net.features.block1.conv1, images, torch.randn(2, 16, 64, 64, generator=gen), EPS))
    strided = nn.utils.skip_init(nn.Conv2d, 8, 4, 3, stride=2, padding=1)
    with torch.no_grad():
        strided.weight.copy_(0.2 * torch.randn(strided.weight.shape, generator=gen))
        strided.bias.copy_(0.1 * torch.randn(4, generator=gen))
    cases.append(("a convolution with stride 2 and padding 1 (8 -> 4 channels, 16x16 -> 8x8)",
                  strided, torch.rand(2, 8, 16, 16, generator=gen), torch.randn(2, 4, 8, 8, generator=gen), EPS))
    return cases


def _transposition_advice(layer, x) -> str:
    return (f" (the input is {tuple(x.shape[2:])}: a transposed convolution must use the layer's "
            f"stride {tuple(layer.stride)} and padding {tuple(layer.padding)}, and output_padding to "
            "reach the input's size exactly; or let autograd do the transposition)")


def _conv_shape_hint(layer, x):
    def hint(got) -> str:
        if got.dim() == 4 and got.shape[:2] == x.shape[:2] and got.shape[2:] != x.shape[2:]:
            return _transposition_advice(layer, x)
        if got.dim() == 4 and got.shape[1] == layer.out_channels:
            return " (that has the output's channels: send the relevance back to the input's channels)"
        return " (the relevance of the input has the input's shape)"
    return hint


def _linear_shape_hint(layer, x):
    def hint(got) -> str:
        if got.dim() == 2 and got.shape[1] == layer.out_features:
            return " (that has the output's size: send the relevance back through W to the inputs)"
        if got.dim() == 3:
            return " (you kept one share per input and output, [N, out, in]: sum over the outputs j)"
        return " (the relevance of the input has the input's shape)"
    return hint


def _check_rule(report: Report, fn, cases, shape_hint) -> Report:
    for what, layer, x, relevance, eps in cases:
        before = hooks.Snapshot.of(layer)
        got = call(report, fn, layer, x.clone(), relevance.clone(), eps)
        if not report.passed:
            if isinstance(layer, nn.Conv2d) and "must match the size" in report.lines[-1]:
                report.lines[-1] += _transposition_advice(layer, x)
            return report
        got = tensor_result(report, fn, got, x.shape, f"a tensor shaped like x, {list(x.shape)}",
                            " (a division by zero? torch.sign(0) is 0: where z is 0 the denominator "
                            "must still be +eps)", shape_hint=shape_hint(layer, x))
        if got is None:
            report.lines[-1] += f" [{what}]"
            return report
        changed = before.diff(layer)
        if changed:
            report.fail(f"{_name(fn)} changed the layer ({'; '.join(changed)}) [{what}]")
            return report
        want = rules.epsilon(layer, x, relevance, eps).detach()
        if relative_error(got, want) > 1e-4:
            if _named(report, got, want, (x,), _epsilon_mistakes(layer, x, relevance, eps)):
                report.lines[-1] += f" [{what}]"
                return report
        if not report.compare(what, got, want):
            return report
    return report


def check_epsilon_linear(fn, verbose: bool = True) -> Report:
    """``fn(layer, x, relevance, eps)`` for an ``nn.Linear`` layer must return the
    relevance of its input, R_i = x_i sum_j w_ji R_j / (z_j + eps sign z_j) with
    z = x W^T + b and sign(0) = +1, shaped like x [N, in]."""
    report = Report("check_epsilon_linear", exercise="lrp_epsilon_linear", forbid=EPSILON_FAMILY)
    with torch.random.fork_rng(devices=[]):       # loading a model draws its initial weights
        cases = _linear_cases()
    return _done(_check_rule(report, fn, cases, _linear_shape_hint), verbose)


def check_epsilon_conv(fn, verbose: bool = True) -> Report:
    """``fn(layer, x, relevance, eps)`` for an ``nn.Conv2d`` must return the relevance of
    its input by the same epsilon rule, shaped like x [N, C, H, W]."""
    report = Report("check_epsilon_conv", exercise="lrp_epsilon_conv", forbid=EPSILON_FAMILY)
    with torch.random.fork_rng(devices=[]):       # loading a model draws its initial weights
        cases = _conv_cases()
    return _done(_check_rule(report, fn, cases, _conv_shape_hint), verbose)


# ----------------------------------------------------------------------------- rollout
@solves("lab09.rollout")
def _rollout_variant(attentions, identity=True, normalise=True, order="later_left", fusion="before",
                     transpose=False):
    """Rollout with one of the common mistakes switched on (for diagnosis)."""
    if fusion == "after":
        per_head = [a.transpose(0, 1).reshape(-1, 1, *a.shape[-2:]) for a in attentions]
        out = _rollout_variant(per_head, identity, normalise, order)
        return out.reshape(attentions[0].shape[1], -1, *out.shape[-2:]).mean(0)
    out = None
    for a in attentions:
        a = a.max(1).values if fusion == "max" else a.mean(1)
        if identity:
            a = a + torch.eye(a.shape[-1], dtype=a.dtype)
        if normalise:
            a = a / a.sum(-1, keepdim=True)
        out = a if out is None else (a @ out if order == "later_left" else out @ a)
    return out.transpose(-2, -1) if transpose else out


def _rollout_mistakes(attentions):
    v = lambda **kw: _rollout_variant(attentions, **kw)
    blocks = len(attentions)
    return [
        (v(identity=False), "the residual connection is missing: mix each block's attention with the "
                            "identity, 0.5 A + 0.5 I, before multiplying"),
        (v(normalise=False), f"each row of your result sums to 2^{blocks} = {2 ** blocks}: after adding "
                             "the identity, re-normalise every row to sum to 1 (or take 0.5 A + 0.5 I)"),
        (v(order="earlier_left"), "you multiplied in the wrong order: a later block's matrix goes on the "
                                  "left, rollout = A_L ... A_2 A_1 (new = A_block @ rollout so far)"),
        (v(fusion="after"), "you rolled out every head on its own and averaged at the end: average "
                            "each block's heads first (dim 1), then roll out the averaged matrices"),
        (v(fusion="max"), "you fused the heads with max; this exercise averages them (mean over dim 1)"),
        (v(transpose=True), "your result is transposed: row i must say how much token i draws from "
                            "every token j (keep the rows of A as rows)"),
        (v(fusion="after", order="earlier_left"), "you multiplied in the wrong order and averaged the "
                                                  "heads at the end: average each block's heads first, "
                                                  "and put a later block's matrix on the left"),
        (_rollout_variant(attentions[-1:]), "that is only the last block's attention (with the "
                                            "residual): multiply the matrices of all blocks"),
        (attentions[-1].mean(1), "that is only the last block's attention, averaged over heads: mix in "
                                 "the residual and multiply the matrices of all blocks"),
        (_rollout_variant(attentions[:1]), "that is only the first block's attention (with the "
                                           "residual): multiply the matrices of all blocks"),
        (attentions[0].mean(1), "that is only the first block's attention, averaged over heads: mix in "
                                "the residual and multiply the matrices of all blocks"),
        (torch.eye(attentions[0].shape[-1]).expand_as(attentions[0][:, 0]),
         "that is the identity matrix: the rollout must come from the attention matrices"),
    ]


def _rollout_cases():
    """(what, attentions): shapesvit's attention on 4 test images, then a made-up
    transformer of another size (3 blocks, 2 heads, 5 tokens)."""
    from .. import models
    from ..attribution.attention import attention_weights, encoder_blocks
    from ..data import shapes
    vit = models.load("shapesvit")
    x = shapes("test", 4, seed=SEED).images()
    with attention_weights(vit) as store, torch.no_grad():
        vit(x)
    real = [store[b].detach() for b in encoder_blocks(vit)]
    gen = torch.Generator().manual_seed(SEED)
    made_up = [torch.softmax(2 * torch.randn(2, 2, 5, 5, generator=gen), -1) for _ in range(3)]
    return [(f"shapesvit's attention on 4 test images ({len(real)} blocks, {real[0].shape[1]} heads, "
             f"{real[0].shape[-1]} tokens)", real),
            ("a made-up transformer with 3 blocks, 2 heads and 5 tokens", made_up)]


def _rollout_shape_hint(attentions):
    n, heads, t, _ = attentions[0].shape

    def hint(got) -> str:
        if tuple(got.shape) == (n, heads, t, t):
            return " (average the heads, dim 1, of each block's attention)"
        if tuple(got.shape) in ((n, t), (n, t - 1)):
            return " (return the whole rollout matrix [N, T, T]; the lab takes its class-token row later)"
        if tuple(got.shape) == (t, t):
            return " (keep one matrix per image: [N, T, T])"
        if got.dim() == 3:
            return (" (take the sizes from the matrices you are given: the number of blocks, heads and "
                    "tokens differs between models)")
        return ""
    return hint


def check_rollout(fn, verbose: bool = True) -> Report:
    """``fn(attentions)``, ``attentions`` a list of the blocks' attention weights
    [N, heads, T, T] (first block first), must return the rollout [N, T, T]: per block
    the mean over heads, mixed with the identity (0.5 A + 0.5 I, rows summing to 1),
    multiplied with a later block's matrix on the left."""
    report = Report("check_rollout", exercise="my_rollout", forbid=ROLLOUT_FAMILY)
    with torch.random.fork_rng(devices=[]):       # loading a model draws its initial weights
        cases = _rollout_cases()
    for what, attentions in cases:
        n, _, t, _ = attentions[0].shape
        got = call(report, fn, [a.clone() for a in attentions])
        if not report.passed:
            return _done(report, verbose)
        got = tensor_result(report, fn, got, (n, t, t), f"a tensor [N, T, T] = {[n, t, t]}",
                            shape_hint=_rollout_shape_hint(attentions))
        if got is None:
            report.lines[-1] += f" [{what}]"
            return _done(report, verbose)
        want = reference_rollout(attentions)
        if relative_error(got, want) > 1e-4:
            if _named(report, got, want, (), _rollout_mistakes(attentions)):
                report.lines[-1] += f" [{what}]"
                return _done(report, verbose)
        if not report.compare(what, got, want):
            return _done(report, verbose)
    return _done(report, verbose)
