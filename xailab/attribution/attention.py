"""Explanations of a vision transformer: attention maps, attention rollout,
gradient-weighted attention and Grad-CAM on the token grid.

A vision transformer cuts the image into patches, one token each, plus a class
token (CLS) whose final state feeds the classifier. Every encoder block mixes the
tokens with attention ``A = softmax(Q K^T / sqrt(d))`` [N, heads, T, T]; row ``i``
says how much token ``i`` takes from every token ``j``.

==================  ==============================================================
attention           the CLS row of ``A`` at one block (one head or the mean); no class
attention_rollout   products of ``0.5 A + 0.5 I`` over the blocks (Abnar & Zuidema 2020)
attention_gradient  ``R <- R + mean_h[(dS/dA * A)^+] R`` over the blocks (Chefer et al. 2021)
token_gradcam       Grad-CAM on a layer's tokens, CLS dropped, patches put back on their
                    grid (pytorch-grad-cam's ``reshape_transform`` for a ViT); a block
                    name means its ``ln_1`` (default: the last block's, whose patch
                    tokens still reach the class token)
==================  ==============================================================

torchvision's ``MultiheadAttention`` is called with ``need_weights=False``, so the
weights never exist. ``attention_weights`` recomputes each block's attention from
the module's own input and in-projection inside a forward hook and returns the same
output from it, so ``A`` is part of the graph and gradients reach it. These methods
work on models whose encoder blocks hold a ``self_attention`` module (torchvision's
``VisionTransformer``, xailab's ``shapesvit``); any other model gets a clear error.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import hooks
from ..solving import solves
from . import register, resolve_target
from .cam import finish

ATTENTION = dict(layer=True)


class NotATransformerError(ValueError):
    """An attention method was asked for on a model without attention blocks."""


def encoder_blocks(model: nn.Module) -> list[str]:
    """Names of the model's encoder blocks (modules with a ``self_attention``
    ``nn.MultiheadAttention``), in forward order."""
    return [name for name, m in model.named_modules()
            if isinstance(getattr(m, "self_attention", None), nn.MultiheadAttention)]


def _blocks_or_raise(model: nn.Module, method: str) -> list[str]:
    blocks = encoder_blocks(model)
    if not blocks:
        raise NotATransformerError(
            f"{method} needs a vision transformer (encoder blocks with self_attention, e.g. "
            f"xailab.models.load('shapesvit')); {type(model).__name__} has none. For a CNN use "
            "gradcam or another CAM method")
    return blocks


def resolve_block(model: nn.Module, layer=None, method: str = "attention") -> str:
    """The encoder block that ``layer`` names: None (the last block), an index, a
    block's name, or the name of any module inside a block (e.g. its ``ln_1``)."""
    blocks = _blocks_or_raise(model, method)
    if layer is None:
        return blocks[-1]
    if isinstance(layer, int):
        if not -len(blocks) <= layer < len(blocks):
            raise ValueError(f"layer={layer} is out of range: the model has {len(blocks)} blocks")
        return blocks[layer]
    hooks.get_layer(model, layer)          # unknown names raise with close matches
    for block in blocks:
        if layer == block or str(layer).startswith(block + "."):
            return block
    raise ValueError(f"layer {layer!r} is not an encoder block; choose one of {blocks} (or an index)")


def attend(mha: nn.MultiheadAttention, query, key, value):
    """What ``mha(query, key, value)`` computes (batch first, no mask, eval mode),
    with the attention weights made explicit: (output [N,T,E], A [N,heads,T,T])."""
    if not (mha.batch_first and mha._qkv_same_embed_dim and mha.in_proj_weight is not None):
        raise NotImplementedError("attention weights are recomputed for batch-first attention "
                                  "with one in-projection (torchvision's ViT) only")
    n, t, e = query.shape
    heads = mha.num_heads
    w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
    b_q, b_k, b_v = (None, None, None) if mha.in_proj_bias is None else mha.in_proj_bias.chunk(3)

    def split(z):                                     # [N,T,E] -> [N,heads,T,d]
        return z.reshape(n, -1, heads, e // heads).transpose(1, 2)
    q, k, v = split(F.linear(query, w_q, b_q)), split(F.linear(key, w_k, b_k)), split(F.linear(value, w_v, b_v))
    a = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(e // heads), dim=-1)
    out = (a @ v).transpose(1, 2).reshape(n, t, e)
    return mha.out_proj(out), a


@contextlib.contextmanager
def attention_weights(model: nn.Module, method: str = "attention"):
    """While the ``with`` lasts, every forward pass stores each block's attention
    weights [N,heads,T,T] (in the graph) in the yielded dict, block name -> A."""
    blocks = _blocks_or_raise(model, method)
    store: dict[str, torch.Tensor] = {}

    def make(name):
        def hook(mha, args, output):
            out, a = attend(mha, *args[:3])
            store[name] = a
            return out, None
        return hook
    with hooks.forward_hooks(model, {f"{b}.self_attention": make(b) for b in blocks}):
        yield store


def token_grid(tokens: torch.Tensor) -> torch.Tensor:
    """Patch tokens [N,P,...] (CLS already dropped) -> [N,...,s,s] on the patch grid."""
    p = tokens.shape[1]
    s = math.isqrt(p)
    if s * s != p:
        raise ValueError(f"{p} patch tokens do not form a square grid")
    return tokens.reshape(tokens.shape[0], s, s, *tokens.shape[2:]).movedim((1, 2), (-2, -1))


def _forward(model, x, target, method, grad: bool):
    """One forward pass recording every block's attention; with ``grad`` also
    the gradient of the summed target scores with respect to each of them."""
    blocks = _blocks_or_raise(model, method)
    with attention_weights(model, method) as store, torch.enable_grad() if grad else torch.no_grad():
        xin = x.detach().requires_grad_(grad)
        logits = model(xin)
        attn = [store[b] for b in blocks]
        grads = None
        if grad:
            t = logits.detach().argmax(1) if target is None else target
            grads = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), attn)
            grads = [g.detach() for g in grads]
    return [a.detach() for a in attn], grads


def fuse_heads(a: torch.Tensor, head_fusion: str = "mean") -> torch.Tensor:
    """[N,heads,T,T] -> [N,T,T]: the mean, max or min over heads."""
    if head_fusion == "mean":
        return a.mean(1)
    if head_fusion in ("max", "min"):
        return getattr(a, f"a{head_fusion}")(1)
    raise ValueError(f"unknown head_fusion={head_fusion!r}; choose 'mean', 'max' or 'min'")


@solves("lab09.rollout")
def rollout(attentions, head_fusion: str = "mean") -> torch.Tensor:
    """Attention rollout: the product over blocks (first block rightmost) of each
    block's head-fused attention mixed with the residual, ``0.5 A + 0.5 I`` with rows
    renormalised. ``attentions``: a list of [N,heads,T,T]; returns [N,T,T]."""
    out = None
    for a in attentions:
        a = fuse_heads(a, head_fusion)
        a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = a / a.sum(-1, keepdim=True)
        out = a if out is None else a @ out
    return out


@register("attention", "attention", "the class token's attention to each patch at one block "
          "(one head or the mean over heads); class-independent",
          "Dosovitskiy et al. 2021, An image is worth 16x16 words", **ATTENTION)
def attention(model, x, target=None, layer=None, head=None, upsample=True):
    block = resolve_block(model, layer, "attention")
    attn, _ = _forward(model, x, None, "attention", grad=False)
    a = attn[encoder_blocks(model).index(block)]
    if head is None:
        a = a.mean(1)
    elif isinstance(head, int) and -a.shape[1] <= head < a.shape[1]:
        a = a[:, head]
    else:
        raise ValueError(f"head must be None (mean over heads) or an index below {a.shape[1]}, got {head!r}")
    return finish(token_grid(a[:, 0, 1:]), x, upsample)


@register("attention_rollout", "attention", "attention multiplied through the blocks, "
          "the residual path counted as half of each block; class-independent",
          "Abnar & Zuidema 2020, Quantifying attention flow in transformers")
def attention_rollout(model, x, target=None, head_fusion="mean", upsample=True):
    fuse_heads(torch.zeros(1, 1, 1, 1), head_fusion)      # unknown names fail before the pass
    attn, _ = _forward(model, x, None, "attention_rollout", grad=False)
    return finish(token_grid(rollout(attn, head_fusion)[:, 0, 1:]), x, upsample)


@register("attention_gradient", "attention", "attention weighted by the gradient of the class "
          "score, positive part averaged over heads, accumulated through the blocks",
          "Chefer, Gur & Wolf 2021, Generic attention-model explainability")
def attention_gradient(model, x, target=None, upsample=True):
    t = resolve_target(model, x, target)
    attn, grads = _forward(model, x, t, "attention_gradient", grad=True)
    tokens = attn[0].shape[-1]
    r = torch.eye(tokens, dtype=x.dtype, device=x.device).expand(len(x), tokens, tokens)
    for a, g in zip(attn, grads):
        r = r + (g * a).clamp_min(0).mean(1) @ r
    return finish(token_grid(r[:, 0, 1:]), x, upsample)


@register("token_gradcam", "attention", "Grad-CAM on a block's tokens put back on the patch "
          "grid (class token dropped)",
          "Selvaraju et al. 2017; pytorch-grad-cam's reshape_transform for ViTs", **ATTENTION)
def token_gradcam(model, x, target=None, layer=None, upsample=True, relu=True):
    blocks = _blocks_or_raise(model, "token_gradcam")
    name = layer or getattr(model, "default_layer", None) or ""
    if name in blocks:                               # a block: its normalised input tokens
        name = f"{name}.ln_1"
    elif not any(name.startswith(b + ".") for b in blocks):
        name = layer or f"{blocks[-1]}.ln_1"        # the last block's input: its patch tokens count
    t = resolve_target(model, x, target)
    with hooks.record(model, name, detach=False) as rec, torch.enable_grad():
        logits = model(x.detach().requires_grad_(True))
        a = rec.activations.get(name)
        if a is None or a.dim() != 3:
            raise ValueError(f"token_gradcam needs a layer that outputs tokens [N,T,D]; {name!r} "
                             f"gives {None if a is None else tuple(a.shape)}")
        (g,) = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), a)
    a, g = token_grid(a.detach()[:, 1:]), token_grid(g[:, 1:])     # [N,D,s,s]
    cam = (a * g.mean((2, 3), keepdim=True)).sum(1)
    return finish(cam.clamp_min(0) if relu else cam, x, upsample)
