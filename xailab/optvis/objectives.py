"""Objectives: what the optimisation makes large, one value per image.

An objective reads what a ``Context`` holds at each step: the activations of the
layers it names, the model's logits and the (untransformed) image. Objectives add,
subtract and scale, as in lucid::

    obj = channel("features.block2", 5) - 0.1 * tv()

Penalties on the image (``l2``, ``tv``) are objectives too; an objective that reads
only the image can also be called on an image tensor directly: ``tv()(x)``.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np
import torch

from ..solving import solves

INPUT = ":input"   # suffix of an objective's layer key: read the layer's input, not its output


@dataclass
class Context:
    """What an objective sees at each step: the layer ``acts``, the model's ``logits``
    and the (untransformed) ``image`` [N,3,H,W] in [0,1]."""
    acts: dict
    logits: torch.Tensor | None
    image: torch.Tensor


class Objective:
    """A quantity to maximise, one value per image: ``obj(ctx) -> Tensor[N]``.
    Combine with ``+``, ``-`` and scalar ``*``; ``layers`` are the activations it reads;
    ``image_only``: it reads nothing but the image (so ``obj(image)`` works too)."""

    def __init__(self, fn, layers=(), name="objective", image_only=False):
        self.fn, self.layers, self.name = fn, tuple(dict.fromkeys(layers)), name
        self.image_only = image_only

    def __call__(self, ctx) -> torch.Tensor:
        if isinstance(ctx, torch.Tensor):
            if not self.image_only:
                raise TypeError(f"{self.name} reads the model's activations or logits: call it on an "
                                "optvis.Context, or pass it to optvis.optimize")
            ctx = Context({}, None, ctx)
        return self.fn(ctx)

    def __add__(self, other):
        if isinstance(other, (int, float)) and other == 0:
            return self
        if not isinstance(other, Objective):
            return NotImplemented
        return Objective(lambda c: self(c) + other(c), self.layers + other.layers,
                         f"{self.name} + {other.name}", self.image_only and other.image_only)

    __radd__ = __add__            # so that sum([...]) works

    def __neg__(self):
        return Objective(lambda c: -self(c), self.layers, f"-{self.name}", self.image_only)

    def __sub__(self, other):
        return self + (-other)

    def __mul__(self, k):
        if not isinstance(k, (int, float)):
            return NotImplemented
        return Objective(lambda c: k * self(c), self.layers, f"{k:g} * {self.name}", self.image_only)

    __rmul__ = __mul__

    def __repr__(self):
        return f"<Objective {self.name}>"


def _act(ctx, layer):
    a = ctx.acts[layer]
    return a if a.dim() == 4 else a.view(*a.shape, 1, 1)


def in_range(value, size: int, what: str) -> int:
    """``value`` as an int in 0..size-1, or a ValueError that names ``what`` and the range."""
    try:
        i = operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be a whole number, got {value!r}") from None
    if not 0 <= i < size:
        raise ValueError(f"{what} is {i}, out of range: use 0..{size - 1}")
    return i


def channel_of(a: torch.Tensor, layer: str, index) -> torch.Tensor:
    """Channel ``index`` of an activation [N,C,...], with a clear error for a bad index."""
    return a[:, in_range(index, a.shape[1], f"the channel of {layer} ({a.shape[1]} channels)")]


def channel(layer: str, index: int) -> Objective:
    """Mean activation of channel ``index`` of ``layer`` over all positions."""
    return Objective(lambda c: channel_of(_act(c, layer), layer, index).mean((1, 2)), [layer],
                     f"channel({layer}:{index})")


def neuron(layer: str, index: int, y: int | None = None, x: int | None = None) -> Objective:
    """Activation of channel ``index`` at one position (default: the centre)."""
    def fn(c):
        a = channel_of(_act(c, layer), layer, index)
        h, w = a.shape[-2:]
        yy = h // 2 if y is None else in_range(y, h, f"y ({layer} is {h}x{w})")
        xx = w // 2 if x is None else in_range(x, w, f"x ({layer} is {h}x{w})")
        return a[:, yy, xx]
    return Objective(fn, [layer], f"neuron({layer}:{index})")


def layer(name: str) -> Objective:
    """Mean activation of the whole layer (every channel, every position)."""
    return Objective(lambda c: _act(c, name).flatten(1).mean(1), [name], f"layer({name})")


def deepdream(name: str) -> Objective:
    """DeepDream (Mordvintsev et al. 2015): mean squared activation of a layer, i.e.
    amplify whatever the layer already sees."""
    return Objective(lambda c: _act(c, name).pow(2).flatten(1).mean(1), [name], f"deepdream({name})")


def class_logit(index, l2: float = 0.0) -> Objective:
    """Simonyan et al.'s class model: S_c(I) - l2 * ||I - 0.5||^2 / (number of pixels),
    with the raw (pre-softmax) class score S_c and the image centred on grey.
    ``index``: one class for every image, or a sequence with one class per image."""
    many = not isinstance(index, (int, np.integer))
    indices = torch.as_tensor(index).view(-1, 1) if many else None
    extremes = (int(indices.min()), int(indices.max())) if many and len(indices) else ()

    def fn(c):
        n = c.logits.shape[1]
        if not many:
            s = c.logits[:, in_range(index, n, f"the class index ({n} classes)")]
        else:
            for i in extremes:
                in_range(i, n, f"a class index ({n} classes)")
            s = c.logits.gather(1, indices.to(c.logits.device))[:, 0]
        if l2:
            s = s - l2 * (c.image - 0.5).pow(2).flatten(1).mean(1)
        return s
    return Objective(fn, [], f"class({index})")


@solves("optvis.feature_match")
def feature_match(name: str, target: torch.Tensor, of_input: bool = False) -> Objective:
    """Minus ||phi(x) - phi0||^2 / ||phi0||^2 (Mahendran & Vedaldi's loss), with phi the
    output of layer ``name`` (``of_input=True``: the tensor that goes *into* it)."""
    target = target.detach()
    key = name + INPUT if of_input else name

    def fn(c):
        a = c.acts[key]
        if target.dim() != a.dim() or target.shape[1:] != a.shape[1:] or target.shape[0] not in (1, len(a)):
            raise ValueError(f"feature_match target has shape {tuple(target.shape)} but {key} gives "
                             f"{tuple(a.shape)}; compute the target with optvis.features(model, "
                             f"{name!r}, image) at the same image size")
        t = target.to(a.device, a.dtype).expand_as(a)
        return -(a - t).pow(2).flatten(1).sum(1) / t.pow(2).flatten(1).sum(1).clamp_min(1e-12)
    return Objective(fn, [key], f"feature_match({key})")


# --------------------------------------------------------------------------- penalties on the image
@solves("optvis.total_variation")
def total_variation(x: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """Mahendran & Vedaldi's TV^beta, one value per image: the mean over pixels of
    ((x[i,j+1]-x[i,j])^2 + (x[i+1,j]-x[i,j])^2)^(beta/2) (last row/column dropped)."""
    dx = x[:, :, :-1, 1:] - x[:, :, :-1, :-1]
    dy = x[:, :, 1:, :-1] - x[:, :, :-1, :-1]
    return (dx ** 2 + dy ** 2 + (1e-8 if beta < 2 else 0.0)).pow(beta / 2).flatten(1).mean(1)


def _weighted(name: str, weight: float) -> str:
    return name if weight == 1 else f"{weight:g} * {name}"


def l2(weight: float = 1.0) -> Objective:
    """weight * mean (x - 0.5)^2 of the image (subtract it to keep pixels near grey)."""
    return Objective(lambda c: weight * (c.image - 0.5).pow(2).flatten(1).mean(1), [],
                     _weighted("l2", weight), image_only=True)


def tv(weight: float = 1.0, beta: float = 2.0) -> Objective:
    """weight * total_variation(image, beta) (subtract it to favour piecewise-smooth images)."""
    return Objective(lambda c: weight * total_variation(c.image, beta), [],
                     _weighted("tv", weight), image_only=True)


def image_penalty(fn) -> Objective:
    """A function ``f(image) -> Tensor[N]`` as an objective on the image."""
    return Objective(lambda c: fn(c.image), [], getattr(fn, "__name__", "penalty"), image_only=True)
