"""Dataset examples of a unit: the images (``top_k``) and patches (``top_patches``)
that excite a channel most, the receptive field of a layer's units, and the
DeconvNet projection of a unit back to pixels (``deconv_projection``).

Work that scales with the dataset streams in batches (``batch_size`` images at a time).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import hooks
from ..runtime import batched, device_of, positive_int
from .objectives import channel_of
from .render import check_image, features


def _batches(data, batch_size: int):
    """(start index, images [b,3,H,W]) for ``data``: a shapes dataset or a tensor [N,3,H,W]."""
    for s in batched(len(data), batch_size):
        yield s.start, (data[s] if isinstance(data, torch.Tensor) else data.images(s))


def channel_activations(model: nn.Module, layer: str, channel_index: int, data, batch_size: int = 256,
                        reduce: str = "mean") -> torch.Tensor:
    """The mean (or ``reduce="max"``) activation of one channel for every image of ``data``
    (a shapes dataset or a tensor [N,3,H,W]), streamed in batches."""
    if reduce not in ("mean", "max"):
        raise ValueError(f"reduce must be 'mean' or 'max', got {reduce!r}")
    out = []
    for _, b in _batches(data, batch_size):
        a = channel_of(features(model, layer, b), layer, channel_index)
        out.append(a.flatten(1).mean(1) if reduce == "mean" else a.flatten(1).max(1).values)
    return torch.cat(out).cpu()


def top_k(model: nn.Module, layer: str, channel_index: int, data, k: int = 8, batch_size: int = 256):
    """Indices and mean activations of the ``k`` images of ``data`` that excite the channel most."""
    k = positive_int(k, "k")
    v = channel_activations(model, layer, channel_index, data, batch_size)
    vals, idx = v.topk(min(k, len(v)))
    return idx, vals


def _first(value) -> int:
    return value if isinstance(value, int) else value[0]


def receptive_field(model: nn.Module, layer: str, size: int = 64) -> tuple[int, int, float]:
    """(size r, stride j, offset of the first unit's centre) of ``layer``'s units in input
    pixels, from the convolutions and poolings that fire before it. Exact for chain
    networks like shapesnet; for branching networks (ResNets) an approximation."""
    order, _, _ = hooks._dry_run(model, size)
    modules = dict(model.named_modules())
    target = hooks.get_layer(model, layer)
    end = max(i for i, name in enumerate(order) if modules[name] is target)
    r, j, start = 1, 1, 0.5
    for name in dict.fromkeys(order[:end + 1]):
        m = modules[name]
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            k, s, p = _first(m.kernel_size), _first(m.stride), _first(m.padding)
            d = _first(getattr(m, "dilation", 1))
            start = start + ((k - 1) * d / 2 - p) * j
            r = r + (k - 1) * d * j
            j = j * s
    return r, j, start


def _strongest_units(model, layer, channel_index, data, batch_size):
    """(value, image index, y, x) of each image's strongest unit of the channel, best first."""
    best = []
    for i, b in _batches(data, batch_size):
        a = channel_of(features(model, layer, b), layer, channel_index).cpu()
        v, pos = a.flatten(1).max(1)
        for t in range(len(b)):
            best.append((float(v[t]), i + t, int(pos[t]) // a.shape[-1], int(pos[t]) % a.shape[-1]))
    best.sort(key=lambda e: -e[0])
    return best


def top_patches(model: nn.Module, layer: str, channel_index: int, data, k: int = 8,
                batch_size: int = 256):
    """The ``k`` image patches that excite one unit of the channel most: for each image,
    the position of its strongest activation and that unit's receptive field.
    Returns (patches FloatTensor[k,3,r,r], boxes list of (image index, x0, y0, x1, y1),
    values). Patches at the border are padded with grey."""
    k = positive_int(k, "k")
    best = _strongest_units(model, layer, channel_index, data, batch_size)
    side = data.shape[-1] if isinstance(data, torch.Tensor) else data.size
    r, j, start = receptive_field(model, layer, side)
    patches, boxes, vals = [], [], []
    for v, idx, yy, xx in best[:k]:
        img = data[idx] if isinstance(data, torch.Tensor) else data.images(slice(idx, idx + 1))[0]
        cy, cx = start + yy * j, start + xx * j
        y0, x0 = int(round(cy - r / 2)), int(round(cx - r / 2))
        pad = F.pad(img[None], (r, r, r, r), value=0.5)[0]
        patches.append(pad[:, y0 + r:y0 + 2 * r, x0 + r:x0 + 2 * r])
        boxes.append((idx, max(0, x0), max(0, y0), min(side, x0 + r), min(side, y0 + r)))
        vals.append(v)
    return torch.stack(patches), boxes, torch.tensor(vals)


def deconv_projection(model: nn.Module, layer: str, channel_index: int, image: torch.Tensor,
                      keep: str = "max") -> torch.Tensor:
    """Zeiler & Fergus 2014: project one channel of ``layer`` back to pixel space with
    the DeconvNet (ReLU applied to the backward signal, max-pool switches, transposed
    convolutions = the conv backward pass). ``keep="max"``: only the strongest
    activation of the channel is projected; ``"all"``: the whole channel map.
    Returns FloatTensor[3,H,W] (signed; show it with viz.normalize or abs)."""
    x0 = check_image(image).to(device_of(model))
    if keep not in ("max", "all"):
        raise ValueError("keep must be 'max' or 'all'")
    with hooks.frozen(model):
        x = x0[None].clone().requires_grad_(True)
        with hooks.modified_relu_backward(model, "deconvnet"), \
                hooks.record(model, layer, detach=False) as rec, torch.enable_grad():
            model(x)
            a = channel_of(rec.activations[layer], layer, channel_index)[0]
            if keep == "max":
                sel = torch.zeros_like(a).view(-1)
                sel[a.detach().view(-1).argmax()] = 1
                sel = sel.view_as(a)
            else:
                sel = torch.ones_like(a)
            (g,) = torch.autograd.grad((a * sel).sum(), x)
    return g[0].detach()
