"""Occlusion by incremental inference (Krypton: Nakandala, Kumar & Papakonstantinou,
"Incremental and Approximate Inference for Faster Occlusion-based Deep CNN
Explanations", SIGMOD 2019).

An occluded window changes a convolution's output only inside the window's
receptive field. So the unoccluded image is run once and every intermediate map is
kept; for a batch of windows, each layer then recomputes only a box around the
changed region (a *patch*): it reads its input over that box plus the margin its
kernel needs, taking the recomputed values of the previous patch where they exist
and the cached values elsewhere, and runs the layer without padding on the crop
(the image border is padded exactly like the layer pads it). Once a patch would
cover most of its map, the layer runs on full maps instead (the plain method).

The model is read as a torch.fx graph (BatchNorm folded, see
``runtime.inference_copy``). Local nodes: convolutions, max and average pooling,
pointwise modules and functions (BatchNorm, activations, dropout in eval, identity,
per-channel arithmetic such as input normalisation) and the sum of two local
maps (residual blocks: their composed receptive field is handled node by node).
The first node that is not local (global pooling, flatten, linear, attention,
anything unknown) gets full maps and the rest of the network runs as usual, so
any such model is exact, only less incremental. ``window_scores`` returns None
(the caller falls back to the plain method) when the model cannot be traced as a
graph, carries hooks, or no layer right after the input is local.
"""
from __future__ import annotations

import functools
import operator
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from .. import hooks
from ..runtime import _PURE_MODULES, fast_layout, inference_copy

__all__ = ["window_scores", "local_graph"]

FULL_SHARE = 0.7          # a patch that would cover this share of its map is computed in full
CACHING_IMAGES = 8        # unoccluded images per caching pass (one image alone runs slower kernels)

POINTWISE_MODULES = (nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU,
                     nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Mish,
                     nn.Identity, nn.Dropout, nn.Dropout2d)
POINTWISE_FUNCTIONS = {torch.relu, F.relu, torch.sigmoid, torch.tanh, F.gelu, F.silu, F.leaky_relu,
                       F.hardtanh, F.relu6, F.dropout}
POINTWISE_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "relu_"}
ARITHMETIC = {operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub,
              torch.mul, torch.div, "add", "sub", "mul", "div"}


@dataclass
class Patch:
    """The map of a node for a batch of occluded images, stored as a box per image:
    ``values`` [B, C, h, w] at rows ``top + i`` and columns ``left + j`` (LongTensor[B]);
    outside the box every image equals ``cache``, the unoccluded map."""
    values: torch.Tensor
    top: torch.Tensor
    left: torch.Tensor
    cache: "Cached"


# ----------------------------------------------------------------------------- the graph
_CHAINS: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()   # children -> chain or None


def _child_chain(model: nn.Module, x: torch.Tensor) -> nn.Sequential | None:
    """The model's children as an ``nn.Sequential`` when its forward pass on ``x`` is
    exactly their composition in registration order (each child called once, on the
    previous child's output, the last output returned), else None. Checked once per
    model and set of children."""
    children = list(model.named_children())
    if not children:
        return None
    ids = [id(m) for _, m in children]
    known = _CHAINS.get(model)
    chain = known[1] if known is not None and known[0] == ids else _checked_chain(model, x, children)
    _CHAINS[model] = (ids, chain)
    if chain is not None:
        chain.training = model.training            # the wrapper's own flag (children are shared)
    return chain


def _checked_chain(model: nn.Module, x: torch.Tensor, children: list) -> nn.Sequential | None:
    """``_child_chain``'s check: one forward pass with a hook on every child."""
    calls = []
    record = {name: (lambda n: lambda m, i, o: calls.append((n, i, o)))(name) for name, _ in children}
    with hooks.forward_hooks(model, record):
        out = model(x)
    if [n for n, _, _ in calls] != [n for n, _ in children]:
        return None
    previous = x
    for _, inputs, output in calls:
        if len(inputs) != 1 or inputs[0] is not previous:
            return None
        previous = output
    if previous is not out:
        return None
    return nn.Sequential(*(m for _, m in children))


def local_graph(model: nn.Module, x: torch.Tensor) -> fx.GraphModule | None:
    """The traced, BatchNorm-folded inference copy of ``model`` (see ``inference_copy``),
    or of the chain of its children when only they can be traced; None when neither works
    (untraceable code, hooks, modules from outside torch/torchvision/xailab)."""
    net = inference_copy(model)
    if isinstance(net, fx.GraphModule):
        return net
    if (torch.is_grad_enabled() or hooks.count_hooks(model)
            or not type(model).__module__.startswith(_PURE_MODULES) or "forward" in vars(model)):
        return None                      # (a forward with side effects must see every pass)
    chain = _child_chain(model, x[:1])
    net = inference_copy(chain) if chain is not None else None
    return net if isinstance(net, fx.GraphModule) else None


# ----------------------------------------------------------------------------- reading patches
class Cached:
    """The unoccluded map of one node, [C, H, W], with its padded channels-last copies."""

    def __init__(self, chw: torch.Tensor):
        self.chw, self.shape, self._hwc = chw, chw.shape, {}

    def hwc(self, pad: int, fill: float) -> torch.Tensor:
        """[H + 2 pad, W + 2 pad, C], contiguous, the border filled with ``fill``."""
        key = (pad, fill)
        if key not in self._hwc:
            chw = F.pad(self.chw, (pad, pad, pad, pad), value=fill) if pad else self.chw
            self._hwc[key] = chw.permute(1, 2, 0).contiguous()
        return self._hwc[key]


def _read(p: Patch, top, left, h: int, w: int, pad: int = 0, fill: float = 0.0) -> torch.Tensor:
    """The patch's map over rows ``top .. top + h - 1`` and columns ``left .. left + w - 1``
    per image ([B, C, h, w], channels-last); positions up to ``pad`` outside the map
    read ``fill`` (the layer's padding). Rows of C values are copied with index_select
    and index_copy_ on [pixels, C] views, much faster than advanced indexing."""
    arange = functools.partial(torch.arange, device=top.device)
    cache = p.cache.hwc(pad, fill)
    rows, cols = top[:, None] + arange(h), left[:, None] + arange(w)       # [B, h], map coordinates
    where = ((rows + pad)[:, :, None] * cache.shape[1] + (cols + pad)[:, None, :]).view(-1)
    out = cache.view(-1, cache.shape[2]).index_select(0, where)             # [B * h * w, C]
    (b, c, ph, pw), dy, dx = p.values.shape, p.top - top, p.left - left     # the box inside the crop
    new = p.values.permute(0, 2, 3, 1)
    if bool((dy >= 0).all() and (dy + ph <= h).all() and (dx >= 0).all() and (dx + pw <= w).all()):
        into = (arange(b)[:, None, None] * (h * w) + (dy[:, None] + arange(ph))[:, :, None] * w
                + (dx[:, None] + arange(pw))[:, None, :]).view(-1)
        out.index_copy_(0, into, new.reshape(-1, c))
        return out.view(b, h, w, c).permute(0, 3, 1, 2)
    r, q = rows - p.top[:, None], cols - p.left[:, None]                    # box coordinates
    inside = (((r >= 0) & (r < ph))[:, :, None] & ((q >= 0) & (q < pw))[:, None, :])
    src = (arange(b)[:, None, None] * (ph * pw) + r.clamp(0, ph - 1)[:, :, None] * pw
           + q.clamp(0, pw - 1)[:, None, :]).view(-1)
    new = new.reshape(-1, c).index_select(0, src)
    return torch.where(inside.view(-1, 1), new, out).view(b, h, w, c).permute(0, 3, 1, 2)


def full(v):
    """A node's value with every patch turned into its full map [B, C, H, W]."""
    if not isinstance(v, Patch):
        return v
    zero = torch.zeros_like(v.top)
    return _read(v, zero, zero, *v.cache.shape[-2:]).contiguous()       # NCHW: faster on small maps


def _geometry(m: nn.Module):
    """(kernel, stride, padding, dilation, padding value) per side of a local window
    layer, or None when the layer is not one (string padding, ceil mode, ...)."""
    def pair(v):
        return tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    if isinstance(m, nn.Conv2d) and m.padding_mode == "zeros" and not isinstance(m.padding, str):
        return pair(m.kernel_size), pair(m.stride), pair(m.padding), pair(m.dilation), 0.0
    if isinstance(m, nn.MaxPool2d) and not m.ceil_mode and not m.return_indices:
        stride = m.stride or m.kernel_size
        return pair(m.kernel_size), pair(stride), pair(m.padding), pair(m.dilation), -float("inf")
    if (isinstance(m, nn.AvgPool2d) and not m.ceil_mode and m.divisor_override is None
            and (m.count_include_pad or pair(m.padding) == (0, 0))):
        stride = m.stride or m.kernel_size
        return pair(m.kernel_size), pair(stride), pair(m.padding), (1, 1), 0.0
    return None


def _box(start, size: int, k: int, s: int, pad: int, d: int, out_side: int):
    """Output box (start LongTensor[B], size) along one side that covers every output
    reading the input box [start, start + size): outputs o read o*s - pad .. o*s - pad + (k-1)*d."""
    n = min(out_side, (size - 1 + (k - 1) * d) // s + 1)
    first = torch.div(start + pad - (k - 1) * d + s - 1, s, rounding_mode="floor")
    return first.clamp(0, out_side - n), n


def _window_layer(m: nn.Module, geometry, p: Patch, out_cache: Cached) -> Patch | None:
    """A convolution or pooling layer on a patch: the output box of every changed
    output, computed from a crop of the input (no padding: the crop carries it).
    None when the box would cover most of the output map (compute it in full)."""
    (kh, kw), (sh, sw), (pad_h, pad_w), (dh, dw), fill = geometry
    out_h, out_w = out_cache.shape[-2:]
    top, nh = _box(p.top, p.values.shape[-2], kh, sh, pad_h, dh, out_h)
    left, nw = _box(p.left, p.values.shape[-1], kw, sw, pad_w, dw, out_w)
    if nh * nw >= FULL_SHARE * out_h * out_w:
        return None
    crop = _read(p, top * sh - pad_h, left * sw - pad_w, (nh - 1) * sh + (kh - 1) * dh + 1,
                 (nw - 1) * sw + (kw - 1) * dw + 1, max(pad_h, pad_w), fill)
    if isinstance(m, nn.Conv2d):
        out = F.conv2d(crop, m.weight, m.bias, m.stride, 0, m.dilation, m.groups)
    elif isinstance(m, nn.MaxPool2d):
        out = F.max_pool2d(crop, m.kernel_size, m.stride or m.kernel_size, 0, m.dilation)
    else:
        out = F.avg_pool2d(crop, m.kernel_size, m.stride or m.kernel_size, 0)
    return Patch(out, top, left, out_cache)


def _cover(start_a, na: int, start_b, nb: int, side: int):
    """The smallest box (start LongTensor[B], size) along one side holding both boxes of every image."""
    lo = torch.minimum(start_a, start_b)
    n = min(side, int((torch.maximum(start_a + na, start_b + nb) - lo).max()))
    return lo.clamp(0, side - n), n


def _union(a: Patch, b: Patch, out_cache: Cached, op) -> Patch:
    """``op`` (elementwise, e.g. the sum of a residual block) of two patches."""
    top, nh = _cover(a.top, a.values.shape[-2], b.top, b.values.shape[-2], out_cache.shape[-2])
    left, nw = _cover(a.left, a.values.shape[-1], b.left, b.values.shape[-1], out_cache.shape[-1])
    return Patch(op(_read(a, top, left, nh, nw), _read(b, top, left, nh, nw)), top, left, out_cache)


def _out_of_place(m: nn.Module, args, kwargs):
    """Call module ``m`` without modifying its input (cached maps must stay as they are)."""
    if isinstance(m, nn.ReLU):
        return torch.relu(args[0])
    if getattr(m, "inplace", False):
        args = (args[0].clone(),) + tuple(args[1:])
    return m(*args, **kwargs)


# ----------------------------------------------------------------------------- running the graph
class _Caching(fx.Interpreter):
    """Runs the graph on the unoccluded image and keeps every node's value (``env``)."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm, garbage_collect_values=False)

    def call_module(self, target, args, kwargs):
        return _out_of_place(self.fetch_attr(target), args, kwargs)

    def call_method(self, target, args, kwargs):
        if target.endswith("_"):                 # in-place tensor methods (relu_, add_, ...)
            args = (args[0].clone(),) + tuple(args[1:])
        return super().call_method(target, args, kwargs)


class _Incremental(fx.Interpreter):
    """Runs the graph on a batch of occluded images given as a ``Patch`` of the input,
    with patches through local nodes and full maps from the first non-local node on."""

    def __init__(self, gm: fx.GraphModule, cache: dict, varying: set):
        super().__init__(gm)
        self.cache, self.varying = cache, varying

    def run_node(self, n):
        self.node = n
        return super().run_node(n)

    def out_cache(self):
        return self.cache[self.node]

    def call_module(self, target, args, kwargs):
        m = self.fetch_attr(target)
        if len(args) == 1 and not kwargs and isinstance(args[0], Patch):
            p = args[0]
            if isinstance(m, POINTWISE_MODULES):
                return Patch(_out_of_place(m, (p.values,), {}), p.top, p.left, self.out_cache())
            geometry = _geometry(m)
            out = _window_layer(m, geometry, p, self.out_cache()) if geometry else None
            if out is not None:
                return out
        return _out_of_place(m, *_full_args(args, kwargs))

    def call_function(self, target, args, kwargs):
        out = self._local_function(target, args, kwargs)
        if out is not None:
            return out
        return super().call_function(target, *_full_args(args, kwargs))

    def call_method(self, target, args, kwargs):
        out = self._local_function(target, args, kwargs)
        if out is not None:
            return out
        args, kwargs = _full_args(args, kwargs)
        if target.endswith("_"):
            args = (args[0].clone(),) + tuple(args[1:])
        return super().call_method(target, args, kwargs)

    def _local_function(self, target, args, kwargs) -> Patch | None:
        """Pointwise functions and per-channel arithmetic on patches; None otherwise."""
        if not args or not isinstance(args[0], Patch) and not (len(args) == 2 and isinstance(args[1], Patch)):
            return None
        if any(isinstance(v, Patch) for v in kwargs.values()) or kwargs.get("inplace"):
            return None
        method = isinstance(target, str)
        call = (lambda a, *rest: getattr(a, target.rstrip("_"))(*rest)) if method else target
        if (target in POINTWISE_METHODS if method else target in POINTWISE_FUNCTIONS) and len(args) == 1:
            p = args[0]
            return Patch(call(p.values, **kwargs), p.top, p.left, self.out_cache())
        if target not in ARITHMETIC or len(args) != 2 or kwargs:
            return None
        a, b = args
        if isinstance(a, Patch) and isinstance(b, Patch):
            return _union(a, b, self.out_cache(), call)
        p, other, other_node = (a, b, self.node.args[1]) if isinstance(a, Patch) else (b, a, self.node.args[0])
        if isinstance(other_node, fx.Node) and other_node in self.varying:
            return None                                        # a full map: no longer local
        if isinstance(other, torch.Tensor) and other.dim() >= 2 and other.shape[-2:] != (1, 1):
            return None                                        # a constant that varies in space
        values = call(p.values, other) if p is a else call(other, p.values)
        return Patch(values, p.top, p.left, self.out_cache())

    def output(self, target, args, kwargs):
        return full(args[0])


def _full_args(args, kwargs):
    """Arguments with every patch made full, also inside lists and tuples (``torch.cat``)."""
    return fx.node.map_aggregate(args, full), fx.node.map_aggregate(kwargs, full)


def _varying(gm: fx.GraphModule) -> set:
    """The nodes whose value depends on the input image."""
    out = set()
    for n in gm.graph.nodes:
        if n.op == "placeholder" or any(a in out for a in n.all_input_nodes):
            out.add(n)
    return out


# ----------------------------------------------------------------------------- occlusion
def _input_patch(image: Cached, fill, boxes, size) -> Patch:
    """The occluded images' input patch: each window's box (the nominal window size,
    moved inside the image at the border) with the window set to ``fill``."""
    _, h, w = image.shape
    image, cached = image.chw, image
    (wh, ww), (y0, x0, y1, x1) = size, boxes.unbind(1)
    top, left = y0.clamp(max=h - wh), x0.clamp(max=w - ww)
    rows = top[:, None] + torch.arange(wh, device=image.device)
    cols = left[:, None] + torch.arange(ww, device=image.device)
    hidden = (((rows >= y0[:, None]) & (rows < y1[:, None]))[:, :, None]
              & ((cols >= x0[:, None]) & (cols < x1[:, None]))[:, None, :])
    index = (rows[:, :, None], cols[:, None, :])
    seen = image.permute(1, 2, 0)[index]
    hide = fill.expand_as(image).permute(1, 2, 0)[index]
    values = torch.where(hidden[..., None], hide, seen).permute(0, 3, 1, 2)
    return Patch(values, top, left, cached)


def window_scores(model: nn.Module, x: torch.Tensor, target: torch.Tensor, boxes: torch.Tensor, size,
                  baseline: torch.Tensor, batch_size: int, pick):
    """Model scores of every image, FloatTensor[N], and of every image with every window
    occluded, FloatTensor[N, windows], by incremental inference; None when the model
    cannot be run that way.

    ``boxes`` LongTensor[windows, 4]: (top, left, bottom, right) of each window, cut at
    the border; ``size`` the window's (height, width); ``baseline`` broadcastable to
    x (a scalar, [1|N, C, H, W]); ``pick(output, target)`` turns the model's output into
    scores. ``batch_size`` windows per pass. Call under ``torch.no_grad()``."""
    gm = local_graph(model, x)
    if gm is None:
        return None
    varying = _varying(gm)
    first = next(n for n in gm.graph.nodes if n.op == "placeholder")
    scores = torch.empty(len(x), len(boxes), device=x.device, dtype=x.dtype)
    base = torch.empty(len(x), device=x.device, dtype=x.dtype)
    for i in range(len(x)):
        if i % CACHING_IMAGES == 0:                  # the unoccluded maps of the next few images
            part = slice(i, i + CACHING_IMAGES)
            caching = _Caching(gm)
            base[part] = pick(caching.run(fast_layout(x[part])), target[part])
            maps = {n: v for n, v in caching.env.items()
                    if n in varying and isinstance(v, torch.Tensor) and v.dim() == 4}
            del caching
        cache = {n: Cached(v[i % CACHING_IMAGES]) for n, v in maps.items()}
        fill = baseline[i if baseline.dim() == 4 and baseline.shape[0] > 1 else 0] if baseline.dim() == 4 \
            else baseline
        image = Cached(x[i])
        for start in range(0, len(boxes), batch_size):
            part = boxes[start:start + batch_size]
            patch = _input_patch(image, fill, part, size)
            out = _Incremental(gm, cache, varying).run(patch)
            scores[i, start:start + len(part)] = pick(out, target[i].expand(len(part)))
        del cache
    return base, scores
