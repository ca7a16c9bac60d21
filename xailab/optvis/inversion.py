"""Inversion: an image whose representation at a layer matches a given image's
(Mahendran & Vedaldi 2015, ``invert``), with its helpers ``feature_error`` and
``conv_input`` (the least-squares input of a convolution), and the learned inverse
of Dosovitskiy & Brox 2016, scaled down (``Decoder``, ``train_decoder``, ``decode``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from .. import hooks
from ..runtime import batched, device_of, evaluating, positive_int
from ..solving import solves

from .objectives import Objective, feature_match, tv
from .param import Fourier
from .render import check_image, features, optimize, progress_bar, resolve_steps


def _largest_singular_value_squared(normal, shape, like: torch.Tensor) -> float:
    """The largest eigenvalue of the operator ``normal`` (= A^T A) by power iteration."""
    v = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(like)
    for _ in range(30):
        v = normal(v)
        v = v / v.norm().clamp_min(1e-30)
    return float(normal(v).norm().clamp_min(1e-30))


def conv_input(conv: nn.Conv2d, output: torch.Tensor, input_shape, nonnegative: bool = False,
               steps: int = 500) -> torch.Tensor:
    """The input r [1,C,h,w] (shape ``input_shape``) that best reproduces a convolution's
    ``output``: argmin ||conv(r) - output||^2, over r >= 0 if ``nonnegative`` (as after a ReLU).
    A convolution is linear, so this is least squares, solved by accelerated projected gradient
    descent (FISTA, step 1/L with L from a power iteration); no network is involved."""
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
    input_shape = tuple(input_shape)
    if len(input_shape) != 4 or input_shape[1] != conv.in_channels:
        raise ValueError(f"input_shape must be (N, {conv.in_channels}, H, W) for this convolution, "
                         f"got {input_shape}")
    w = conv.weight.detach()
    bias = 0.0 if conv.bias is None else conv.bias.detach().view(1, -1, 1, 1)
    y = output.detach().to(w) - bias

    def forward(r):
        return conv._conv_forward(r, w, None)
    zero = torch.zeros(input_shape, device=w.device, dtype=w.dtype)
    if forward(zero).shape != y.shape:
        raise ValueError(f"an input of shape {input_shape} gives an output of shape "
                         f"{tuple(forward(zero).shape)}, but output has shape {tuple(y.shape)}")
    _, vjp_fn = torch.func.vjp(forward, zero)

    def normal(r):                                        # A^T A r
        return vjp_fn(forward(r))[0]
    with torch.no_grad():
        step = 1.0 / _largest_singular_value_squared(normal, input_shape, w)
        aty = vjp_fn(y)[0]
        return _fista(lambda r: normal(r) - aty, step, zero, nonnegative, positive_int(steps, "steps"))


def _fista(gradient, step: float, start: torch.Tensor, nonnegative: bool, steps: int) -> torch.Tensor:
    """Accelerated (projected, if ``nonnegative``) gradient descent from ``start``."""
    r = start.clone()
    z, t = r.clone(), 1.0
    for _ in range(steps):
        r_next = z - step * gradient(z)
        if nonnegative:
            r_next = r_next.clamp_min(0)
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        z = r_next + ((t - 1) / t_next) * (r_next - r)
        r, t = r_next, t_next
    return r


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) [1,C,1,1] of a batch norm in eval mode: bn(c) = scale * c + shift."""
    scale = bn.running_var.add(bn.eps).rsqrt()
    shift = -bn.running_mean * scale
    if bn.affine:
        scale, shift = scale * bn.weight, shift * bn.weight + bn.bias
    return scale.detach().view(1, -1, 1, 1), shift.detach().view(1, -1, 1, 1)


def rectified_conv_input(conv: nn.Conv2d, bn: nn.BatchNorm2d, output: torch.Tensor, input_shape,
                         nonnegative: bool = False, steps: int = 500) -> torch.Tensor:
    """The input r (shape ``input_shape``) whose relu(bn(conv(r))) reproduces ``output`` (>= 0):
    where output > 0 the pre-activation z must equal it, elsewhere only z <= 0 is asked. The
    loss sum_{output>0} (z - output)^2 + sum_{output=0} relu(z)^2 is convex in r (z is affine
    in r), zero exactly when the rectified output matches, and solved by FISTA like
    ``conv_input``; unlike the ReLU output itself, it has a gradient at units that are off."""
    w = conv.weight.detach()
    bias = 0.0 if conv.bias is None else conv.bias.detach().view(1, -1, 1, 1)
    scale, shift = _bn_affine(bn)
    y = output.detach().to(w)

    def forward(r):
        return conv._conv_forward(r, w, None)
    zero = torch.zeros(tuple(input_shape), device=w.device, dtype=w.dtype)
    _, vjp_fn = torch.func.vjp(forward, zero)

    def gradient(r):
        z = scale * (forward(r) + bias) + shift
        return vjp_fn(scale * torch.where(y > 0, z - y, F.relu(z)))[0]
    with torch.no_grad():
        lipschitz = _largest_singular_value_squared(lambda r: vjp_fn(forward(r))[0], zero.shape, w)
        step = 1.0 / (lipschitz * float(scale.pow(2).max()))
        return _fista(gradient, step, zero, nonnegative, positive_int(steps, "steps"))


def _rectified_block(model: nn.Module, layer: str):
    """For a block that ends conv -> batch norm -> ReLU [-> max-pool with stride = kernel]:
    the names of its conv and batch norm and the pool (or None); else None."""
    module = hooks.get_layer(model, layer)
    if not isinstance(module, nn.Sequential):
        return None
    names, mods = zip(*module.named_children()) if len(module) else ((), ())
    pool = mods[-1] if mods and isinstance(mods[-1], nn.MaxPool2d) else None
    if pool is not None and (pool.kernel_size != pool.stride or pool.padding != 0 or pool.dilation != 1):
        return None
    body = len(mods) - (pool is not None)
    kinds = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU)
    if body < 3 or not all(isinstance(m, k) for m, k in zip(mods[body - 3:body], kinds)):
        return None
    return f"{layer}.{names[body - 3]}", f"{layer}.{names[body - 2]}", pool


def _smooth_block_match(bn_key: str, target: torch.Tensor, pool, temperature: float) -> Objective:
    """``feature_match`` of a block output with its ReLU replaced by a softplus and its
    max-pool by a log-sum-exp (mean-shifted) at ``temperature``: a smooth surrogate whose
    gradient reaches units that are off and all inputs of each pooling window."""
    target, t = target.detach(), temperature

    def fn(c):
        a = t * F.softplus(c.acts[bn_key] / t)
        if pool is not None:
            k = _pair(pool.kernel_size)
            n, ch, h, w = a.shape
            windows = F.unfold(a, k, stride=k).view(n, ch, k[0] * k[1], -1)
            pooled = t * (torch.logsumexp(windows / t, 2) - math.log(k[0] * k[1]))
            a = pooled.view(n, ch, h // k[0], w // k[1])
        y = target.to(a).expand_as(a)
        return -(a - y).pow(2).flatten(1).sum(1) / y.pow(2).flatten(1).sum(1).clamp_min(1e-12)
    return Objective(fn, [bn_key], f"smooth_block_match({bn_key})")


def _conv_input_probe(model: nn.Module, layer: str, size: int) -> tuple[tuple, bool]:
    """Shape of the input the convolution ``layer`` receives for one image of ``size``, and
    whether that input is non-negative for random images (it follows a ReLU): a property of
    the architecture, not of any image."""
    seen = []
    noise = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(0))
    with evaluating(model), hooks.forward_hooks(model, [(layer, lambda m, i, o: seen.append(i[0]))]):
        model(noise.to(device_of(model)))
    return (1, *seen[0].shape[1:]), bool(seen[0].min() >= 0)


def _first_stage(model: nn.Module, layer: str, target: torch.Tensor, size: int) -> list[Objective]:
    """Equivalent or smooth targets that gradient descent reaches faster than ``layer``'s own
    output (run one after the other), or [] when ``layer`` has none."""
    module = hooks.get_layer(model, layer)
    if isinstance(module, nn.Conv2d):
        shape, nonnegative = _conv_input_probe(model, layer, size)
        return [feature_match(layer, conv_input(module, target, shape, nonnegative), of_input=True)]
    block = _rectified_block(model, layer)
    if block is None:
        return []
    conv_key, bn_key, pool = block
    if pool is not None:
        return [_smooth_block_match(bn_key, target, pool, t) for t in SMOOTH_TEMPERATURES]
    shape, nonnegative = _conv_input_probe(model, conv_key, size)
    conv, bn = hooks.get_layer(model, conv_key), hooks.get_layer(model, bn_key)
    return [feature_match(conv_key, rectified_conv_input(conv, bn, target, shape, nonnegative),
                          of_input=True)]


SMOOTH_TEMPERATURES = (0.3, 0.1)    # of the softplus / log-sum-exp surrogate, in batch-norm units


@solves("optvis.invert")
def invert(model: nn.Module, layer: str, image: torch.Tensor, steps: int | None = None, seed: int = 0,
           tv_weight: float = 0.1, beta: float = 2.0, lr: float = 0.05, through_conv: bool = True,
           progress: bool = False) -> torch.Tensor:
    """Mahendran & Vedaldi 2015: an image [3,H,W] whose ``layer`` representation matches
    that of ``image``, minimising ||phi(x) - phi0||^2 / ||phi0||^2 + tv_weight * TV^beta(x).

    How: Adam (cosine-decaying learning rate) over a decorrelated Fourier image that starts
    near grey, in two stages. Stage 1 (two thirds of ``steps``), if ``through_conv``: a target
    that gradient descent reaches faster. For a convolution, its least-squares input
    (``conv_input``; non-negative if it follows a ReLU): a convolution can be badly
    conditioned, and its input is an equivalent target. For a block output that ends
    conv -> batch norm -> ReLU, the input of that conv which reproduces the rectified output
    (``rectified_conv_input``); if a max-pool follows, a smooth surrogate instead, with
    softplus for the ReLU and log-sum-exp for the max (temperature 0.3, then 0.1), so that
    the gradient reaches units that are off and every input of each pooling window.
    Stage 2 (the last third, learning rate lr/5): polish on the real objective,
    phi = ``layer``'s output. ``steps=None``: 600."""
    x0 = check_image(image).to(device_of(model))
    target = features(model, layer, x0[None])
    if float(target.pow(2).sum()) == 0:
        raise ValueError(f"the {layer} representation of this image is all zero; nothing to invert")
    steps, size = resolve_steps(steps, 600), x0.shape[-1]
    image_param = Fourier(1, size, size, 0.01, torch.Generator().manual_seed(seed)).to(x0.device)
    first = _first_stage(model, layer, target, size) if through_conv else []
    first = first or [feature_match(layer, target)]
    n1 = max(1, round(steps * 2 / 3))
    common = dict(param=image_param, regularizers=(tv(tv_weight, beta),), lr_decay=True, progress=progress)
    for k, objective in enumerate(first):
        part = n1 // len(first) + (k < n1 % len(first))
        if part:
            optimize(model, objective, steps=part, lr=lr, **common)
    if steps > n1:
        optimize(model, feature_match(layer, target), steps=steps - n1, lr=lr / 5, **common)
    with torch.no_grad():
        return image_param().detach().clamp(0, 1)[0]


def feature_error(model: nn.Module, layer: str, x: torch.Tensor, reference: torch.Tensor) -> float:
    """||phi(x) - phi(ref)|| / ||phi(ref)|| (relative feature error of a reconstruction)."""
    a = features(model, layer, x.view(-1, *x.shape[-3:]))
    b = features(model, layer, reference.view(-1, *reference.shape[-3:]))
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


# --------------------------------------------------------------------------- learned inversion
class Decoder(nn.Module):
    """A small up-convolutional decoder from a feature map [N,C,h,w] to an image
    [N,3,H,W] in [0,1] (Dosovitskiy & Brox 2016, scaled down): a 3x3 convolution to
    ``width`` channels, then one transposed convolution per doubling of the size,
    halving the width each time, then a 3x3 convolution to RGB and a sigmoid."""

    def __init__(self, in_channels: int, in_size: int, out_size: int = 64, width: int = 64):
        super().__init__()
        ups = int(round(math.log2(out_size / in_size)))
        if ups < 0 or 2 ** ups * in_size != out_size:
            raise ValueError(f"out_size / in_size must be a power of two >= 1, got {out_size}/{in_size}")
        layers, w = [nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU()], width
        for _ in range(ups):
            layers += [nn.ConvTranspose2d(w, max(8, w // 2), 4, stride=2, padding=1), nn.ReLU()]
            w = max(8, w // 2)
        layers += [nn.Conv2d(w, 3, 3, padding=1), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, f):
        return self.net(f)


def train_decoder(model: nn.Module, layer: str, images: torch.Tensor, epochs: int = 4,
                  batch_size: int = 32, lr: float = 3e-3, width: int = 64, seed: int = 0,
                  progress: bool = True, held_out: torch.Tensor | None = None,
                  history: dict | None = None, lr_decay: bool = False) -> Decoder:
    """Train a ``Decoder`` to map ``layer`` features of ``images`` [N,3,H,W] back to the
    images (mean squared pixel error, Adam). The classifier stays frozen and unchanged.

    ``held_out``: images the decoder never trains on; with ``history`` (a dict), each epoch
    appends the training loss (mean over the epoch's batches) to ``history["train"]`` and the
    mean squared error on ``held_out`` to ``history["held_out"]``. ``lr_decay``: the
    learning rate decays to 0 along a cosine over the run."""
    epochs, batch_size = positive_int(epochs, "epochs"), positive_int(batch_size, "batch_size")
    torch.manual_seed(seed)
    device = device_of(model)
    feats = _batched_features(model, layer, images)
    held = None if held_out is None else (_batched_features(model, layer, held_out), held_out.to(device))
    dec = Decoder(feats.shape[1], feats.shape[-1], images.shape[-1], width).to(device)
    opt = torch.optim.Adam(dec.parameters(), lr=lr)
    per_epoch = math.ceil(len(images) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * per_epoch) if lr_decay else None
    g = torch.Generator().manual_seed(seed)
    with torch.enable_grad(), progress_bar(epochs * per_epoch, progress, f"decoder({layer})") as bar:
        for _ in range(epochs):
            perm, total = torch.randperm(len(images), generator=g), 0.0
            for s in batched(len(images), batch_size):
                b = perm[s]
                loss = F.mse_loss(dec(feats[b]), images[b].to(device))
                opt.zero_grad()
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                total += float(loss.detach()) * len(b)
                bar.update(1)
            if history is not None:
                history.setdefault("train", []).append(total / len(images))
                if held is not None:
                    history.setdefault("held_out", []).append(_decoder_mse(dec, *held))
    return dec.eval()


def _batched_features(model: nn.Module, layer: str, images: torch.Tensor) -> torch.Tensor:
    """``layer`` features of ``images`` [N,3,H,W], 256 images per forward pass."""
    return torch.cat([features(model, layer, images[s]) for s in batched(len(images), 256)])


def _decoder_mse(decoder: Decoder, feats: torch.Tensor, images: torch.Tensor) -> float:
    """Mean squared pixel error of ``decoder`` on features ``feats`` of ``images``."""
    with evaluating(decoder):
        return float(sum(F.mse_loss(decoder(feats[s]), images[s], reduction="sum")
                         for s in batched(len(images), 256)) / images.numel())


def decode(model: nn.Module, layer: str, decoder: Decoder, images: torch.Tensor) -> torch.Tensor:
    """Reconstructions [N,3,H,W] of ``images`` from their ``layer`` features."""
    f = features(model, layer, images)
    wants = decoder.net[0].in_channels
    if f.shape[1] != wants:
        raise ValueError(f"this decoder takes {wants}-channel features, but {layer} gives {f.shape[1]}; "
                         f"train one for this layer with optvis.train_decoder(model, {layer!r}, images)")
    with torch.no_grad():
        return decoder(f)

