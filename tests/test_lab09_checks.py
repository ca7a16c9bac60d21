"""Lab 09's checks pass the solution's own functions and fail, naming the mistake, for
zeros, random values, the library's implementation, the input returned unchanged and
the common mistakes of the epsilon rule (linear and convolution) and of attention
rollout."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xailab
from xailab.attribution import attention, rules
from xailab.checks import lab09

from labtools import fails_saying, solution_function

NB = "09_beyond_gradients.ipynb"


@pytest.fixture(scope="module")
def sol():
    return {name: solution_function(NB, name)
            for name in ("lrp_epsilon_linear", "lrp_epsilon_conv", "my_rollout")}


def _affine(layer):
    return F.linear if isinstance(layer, nn.Linear) else layer._conv_forward


def _epsilon(layer, x, relevance, eps, sign=True, plus=False, times_x=True, abs_w=False, bias=True):
    """The epsilon rule written out with autograd, with switches for the common mistakes."""
    w = layer.weight.detach().abs() if abs_w else layer.weight.detach()
    b = layer.bias.detach() if bias else None
    x = x.detach().requires_grad_(True)
    z = _affine(layer)(x, w, b)
    zd = z.detach()
    den = zd + (eps if plus else torch.where(zd < 0, -eps, eps)) if sign or plus else zd
    (g,) = torch.autograd.grad(z, x, relevance / den)
    return x.detach() * g if times_x else g


def _zplus(layer, x, relevance, eps):
    """The z+ rule written out (positive contributions only), a rule of the wrong kind."""
    f, w = _affine(layer), layer.weight.detach()
    pos, neg = x.clamp(min=0).requires_grad_(True), x.clamp(max=0).requires_grad_(True)
    z = f(pos, w.clamp(min=0), layer.bias.detach().clamp(min=0)) + f(neg, w.clamp(max=0), None)
    zd = z.detach()
    g_pos, g_neg = torch.autograd.grad(z, (pos, neg), relevance / (zd + torch.where(zd < 0, -eps, eps)))
    return pos.detach() * g_pos + neg.detach() * g_neg


def _epsilon_transposed(layer, x, relevance, eps, output_padding=True, padding=None):
    """The convolution's epsilon rule by conv_transpose2d, optionally with the padding or
    the output padding wrong."""
    z = layer(x).detach()
    s = relevance / (z + torch.where(z < 0, -eps, eps))
    pad = layer.padding if padding is None else padding
    size = F.conv_transpose2d(s, layer.weight, stride=layer.stride, padding=pad).shape[-2:]
    extra = (x.shape[-2] - size[0], x.shape[-1] - size[1]) if output_padding else 0
    if output_padding and min(extra) < 0:
        extra = 0
    return x * F.conv_transpose2d(s, layer.weight.detach(), stride=layer.stride, padding=pad,
                                  output_padding=extra)


# --- exercises 1 and 2: the epsilon rule -------------------------------------------

def test_epsilon_checks_pass_the_solution_and_written_out_rules(sol):
    assert lab09.check_epsilon_linear(sol["lrp_epsilon_linear"], verbose=False).passed
    assert lab09.check_epsilon_conv(sol["lrp_epsilon_conv"], verbose=False).passed
    assert lab09.check_epsilon_linear(_epsilon, verbose=False).passed
    assert lab09.check_epsilon_conv(_epsilon, verbose=False).passed
    assert lab09.check_epsilon_conv(_epsilon_transposed, verbose=False).passed


@pytest.mark.parametrize("check", [lab09.check_epsilon_linear, lab09.check_epsilon_conv],
                         ids=["linear", "conv"])
def test_epsilon_checks_reject_degenerate_answers_and_the_library(check):
    fails_saying(check, lambda layer, x, r, eps: torch.zeros_like(x), "all zeros")
    fails_saying(check, lambda layer, x, r, eps: torch.randn_like(x), "unrelated")
    fails_saying(check, lambda layer, x, r, eps: x, "input", "unchanged")
    fails_saying(check, lambda layer, x, r, eps: r, "shape")
    fails_saying(check, lambda layer, x, r, eps: rules.epsilon(layer, x, r, eps), "write this one yourself")
    fails_saying(check, lambda layer, x, r, eps: x * _epsilon_grad(layer, x, r, eps),
                 "write this one yourself")


def _epsilon_grad(layer, x, r, eps):
    """The back-projected signal with the library's stabiliser (a partial library call)."""
    x = x.detach().requires_grad_(True)
    z = layer(x)
    (g,) = torch.autograd.grad(z, x, r / rules.stabilize(z.detach(), eps))
    return g


@pytest.mark.parametrize("check", [lab09.check_epsilon_linear, lab09.check_epsilon_conv],
                         ids=["linear", "conv"])
def test_epsilon_checks_name_the_common_mistakes(check):
    fails_saying(check, lambda l, x, r, eps: _epsilon(l, x, r, eps, sign=False), "stabiliser is missing")
    fails_saying(check, lambda l, x, r, eps: _epsilon(l, x, r, eps, plus=True), "sign of z")
    fails_saying(check, lambda l, x, r, eps: _epsilon(l, x, r, eps, times_x=False),
                 "did not multiply by the activation")
    fails_saying(check, lambda l, x, r, eps: _epsilon(l, x, r, eps, abs_w=True), "|w|")
    fails_saying(check, lambda l, x, r, eps: _epsilon(l, x, r, eps, bias=False), "include the bias")
    fails_saying(check, _zplus, "z+ rule")


def test_epsilon_linear_check_catches_sign_of_zero():
    def with_torch_sign(layer, x, r, eps):
        z = x @ layer.weight.T + layer.bias
        return x * ((r / (z + eps * torch.sign(z))) @ layer.weight)
    fails_saying(lab09.check_epsilon_linear, with_torch_sign, "torch.sign(0) is 0", "exactly 0")


def test_epsilon_conv_check_names_a_transposed_convolution_with_wrong_stride_or_padding():
    check = lab09.check_epsilon_conv
    fails_saying(check, lambda l, x, r, eps: _epsilon_transposed(l, x, r, eps, padding=0),
                 "size", "padding (1, 1)")
    fails_saying(check, lambda l, x, r, eps: _epsilon_transposed(l, x, r, eps, output_padding=False),
                 "size", "stride (2, 2)", "output_padding")

    def stride_one(l, x, r, eps):
        z = l(x).detach()
        s = r / (z + torch.where(z < 0, -eps, eps))
        return x * F.conv_transpose2d(s, l.weight.detach(), padding=l.padding)
    fails_saying(check, stride_one, "size", "stride (2, 2)")


def test_epsilon_checks_refuse_to_let_the_layer_change():
    def scribbles(layer, x, r, eps):
        layer.requires_grad_(False)
        return _epsilon(layer, x, r, eps)
    fails_saying(lab09.check_epsilon_linear, scribbles, "changed the layer", "requires_grad")


# --- exercise 3: attention rollout -------------------------------------------------

def _rollout(attentions, identity=True, normalise=True, later_left=True, heads_first=True):
    """Rollout written out, with switches for the common mistakes."""
    if not heads_first:
        h = attentions[0].shape[1]
        per_head = [_rollout([a[:, k:k + 1] for a in attentions], identity, normalise, later_left)
                    for k in range(h)]
        return torch.stack(per_head).mean(0)
    out = None
    for a in attentions:
        a = a.mean(1)
        if identity:
            a = a + torch.eye(a.shape[-1])
        if normalise:
            a = a / a.sum(-1, keepdim=True)
        out = a if out is None else (a @ out if later_left else out @ a)
    return out


def test_rollout_check_passes_the_solution(sol):
    assert lab09.check_rollout(sol["my_rollout"], verbose=False).passed
    assert lab09.check_rollout(_rollout, verbose=False).passed


def test_rollout_check_rejects_degenerate_answers_and_the_library():
    check = lab09.check_rollout
    n_t = lambda a: (a[0].shape[0], a[0].shape[-1], a[0].shape[-1])
    fails_saying(check, lambda a: torch.zeros(n_t(a)), "all zeros")
    fails_saying(check, lambda a: torch.rand(n_t(a)), "unrelated")
    fails_saying(check, lambda a: a[-1], "shape", "average the heads")
    fails_saying(check, lambda a: a[-1].mean(1), "only the last block")
    fails_saying(check, lambda a: attention.rollout(a), "write this one yourself")


def test_rollout_check_names_the_common_mistakes():
    check = lab09.check_rollout
    fails_saying(check, lambda a: _rollout(a, identity=False), "residual connection is missing")
    fails_saying(check, lambda a: _rollout(a, normalise=False), "re-normalise")
    fails_saying(check, lambda a: _rollout(a, later_left=False), "wrong order")
    fails_saying(check, lambda a: _rollout(a, heads_first=False), "averaged at the end")
    fails_saying(check, lambda a: _rollout(a).transpose(1, 2), "transposed")
    fails_saying(check, lambda a: _rollout(a)[:, 0], "shape", "whole rollout matrix")


def test_the_library_refuses_only_while_a_lab09_check_runs():
    x = xailab.data.shapes("test", 2).images()
    vit = xailab.models.load("shapesvit")
    assert xailab.explain(vit, x, method="attention_rollout").shape == (2, 64, 64)
    layer = nn.Linear(3, 2)
    assert rules.epsilon(layer, torch.rand(1, 3), torch.ones(1, 2)).shape == (1, 3)
