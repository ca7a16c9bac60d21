"""Pixel-space optimisation through a frozen network: feature visualisation,
DeepDream and inversion (lectures 03 and 07).

One engine, ``optimize``, ascends an ``Objective`` (what to make large) with
respect to an image given by a parametrisation (``pixels`` or the decorrelated
``fourier`` image), under random ``transforms`` (jitter, scale, rotate, blur)
and ``regularizers`` (L2, total variation, blur every k steps)::

    obj = optvis.channel("features.block2", 5) - 0.1 * optvis.layer("features.block1")
    img = optvis.optimize(model, obj, param=optvis.fourier(), steps=256)   # [1,3,H,W] in [0,1]

Objectives: ``channel``, ``neuron``, ``layer``, ``class_logit`` (Simonyan's class
model: score minus lambda ||I||^2), ``deepdream`` (squared norm of a layer's
activation) and ``feature_match`` (minus the relative distance to a target
representation, for inversion). They combine with ``+``, ``-`` and scalar ``*``.
Shortcuts with tested defaults: ``class_image``, ``channel_image``, ``invert``,
``dream``. Also: dataset examples (``top_k``, ``top_patches``,
``receptive_field``), the DeconvNet projection of a unit (``deconv_projection``)
and a small learned inverse (``Decoder``, ``train_decoder``, ``decode``). Inversion
helpers: ``features`` (a layer's activation), ``feature_error`` (relative distance of
two images' features) and ``conv_input`` (the least-squares input of a convolution,
which ``invert`` matches first when the layer is a convolution).

Step cap for CI: when the environment variable ``XAILAB_MAX_STEPS`` is set (e.g.
``XAILAB_MAX_STEPS=16``), every optimisation here runs at most that many steps,
whatever ``steps`` says; unset, ``steps=None`` means each function's documented
default. Notebooks respect it unchanged, so CI can execute them quickly; the
pictures are then rougher than in the committed notebooks, and the numbers their
``# NBVAL_CHECK_OUTPUT`` cells print (measured at the full step counts) change, so
compare outputs with nbval only when the variable is unset. The tests in
tests/test_optvis.py unset it and pass explicit step counts.

Activations are captured through ``xailab.hooks`` only; every function leaves the
model as found (``hooks.preserved``: mode, ``requires_grad`` flags, no hooks).
"""
from __future__ import annotations

import math
import operator
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import hooks
from .attribution import check_input
from .solving import solves

STEPS_ENV = "XAILAB_MAX_STEPS"


def resolve_steps(steps: int | None, default: int) -> int:
    """``steps`` (or ``default`` when None), capped by ``$XAILAB_MAX_STEPS`` if set."""
    n = default if steps is None else steps
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"steps must be a positive integer or None, got {steps!r}")
    cap = os.environ.get(STEPS_ENV, "").strip()
    if cap:
        try:
            cap_n = int(cap)
        except ValueError:
            raise ValueError(f"${STEPS_ENV} must be a positive integer, got {cap!r}") from None
        n = min(n, max(1, cap_n))
    return int(n)


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


# --------------------------------------------------------------------------- objectives
@dataclass
class Context:
    """What an objective sees at each step: the layer ``acts``, the model's ``logits``
    and the (untransformed) ``image`` [N,3,H,W] in [0,1]."""
    acts: dict
    logits: torch.Tensor
    image: torch.Tensor


class Objective:
    """A quantity to maximise, one value per image: ``obj(ctx) -> Tensor[N]``.
    Combine with ``+``, ``-`` and scalar ``*``; ``layers`` are the activations it reads."""

    def __init__(self, fn, layers=(), name="objective"):
        self.fn, self.layers, self.name = fn, tuple(dict.fromkeys(layers)), name

    def __call__(self, ctx: Context) -> torch.Tensor:
        return self.fn(ctx)

    def __add__(self, other):
        if isinstance(other, (int, float)) and other == 0:
            return self
        if not isinstance(other, Objective):
            return NotImplemented
        return Objective(lambda c: self(c) + other(c), self.layers + other.layers,
                         f"{self.name} + {other.name}")

    __radd__ = __add__            # so that sum([...]) works

    def __neg__(self):
        return Objective(lambda c: -self(c), self.layers, f"-{self.name}")

    def __sub__(self, other):
        return self + (-other)

    def __mul__(self, k):
        if not isinstance(k, (int, float)):
            return NotImplemented
        return Objective(lambda c: k * self(c), self.layers, f"{k:g} * {self.name}")

    __rmul__ = __mul__

    def __repr__(self):
        return f"<Objective {self.name}>"


def _act(ctx, layer):
    a = ctx.acts[layer]
    return a if a.dim() == 4 else a.view(*a.shape, 1, 1)


def _in_range(value, size: int, what: str) -> int:
    """``value`` as an int in 0..size-1, or a ValueError that names ``what`` and the range."""
    try:
        i = operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be a whole number, got {value!r}") from None
    if not 0 <= i < size:
        raise ValueError(f"{what} is {i}, out of range: use 0..{size - 1}")
    return i


def _channel(a: torch.Tensor, layer: str, index) -> torch.Tensor:
    """Channel ``index`` of an activation [N,C,...], with a clear error for a bad index."""
    return a[:, _in_range(index, a.shape[1], f"the channel of {layer} ({a.shape[1]} channels)")]


def channel(layer: str, index: int) -> Objective:
    """Mean activation of channel ``index`` of ``layer`` over all positions."""
    return Objective(lambda c: _channel(_act(c, layer), layer, index).mean((1, 2)), [layer],
                     f"channel({layer}:{index})")


def neuron(layer: str, index: int, y: int | None = None, x: int | None = None) -> Objective:
    """Activation of channel ``index`` at one position (default: the centre)."""
    def fn(c):
        a = _channel(_act(c, layer), layer, index)
        h, w = a.shape[-2:]
        yy = h // 2 if y is None else _in_range(y, h, f"y ({layer} is {h}x{w})")
        xx = w // 2 if x is None else _in_range(x, w, f"x ({layer} is {h}x{w})")
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
            s = c.logits[:, _in_range(index, n, f"the class index ({n} classes)")]
        else:
            for i in extremes:
                _in_range(i, n, f"a class index ({n} classes)")
            s = c.logits.gather(1, indices.to(c.logits.device))[:, 0]
        if l2:
            s = s - l2 * (c.image - 0.5).pow(2).flatten(1).mean(1)
        return s
    return Objective(fn, [], f"class({index})")


INPUT = ":input"   # suffix of an objective's layer key: read the layer's input, not its output


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


# --------------------------------------------------------------------------- parametrisations
class Pixels(nn.Module):
    """The image is the parameter (clamped to [0, 1] after every step)."""

    def __init__(self, init: torch.Tensor):
        super().__init__()
        self.x = nn.Parameter(init.detach().clone())

    def forward(self):
        return self.x

    def project(self):
        with torch.no_grad():
            self.x.clamp_(0, 1)


# Colour decorrelation: square root of the colour covariance of natural images (Olah et al. 2017)
_COLOR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
_COLOR_SQRT = _COLOR_SQRT / _COLOR_SQRT.norm(dim=0).max()


class Fourier(nn.Module):
    """Decorrelated image: Fourier coefficients scaled by 1/frequency (so low
    frequencies dominate), a decorrelated colour basis, then a sigmoid to [0, 1]."""

    def __init__(self, n, h, w, sd, generator, decay=1.0):
        super().__init__()
        fy = torch.fft.fftfreq(h)[:, None]
        fx = torch.fft.rfftfreq(w)[None]
        freqs = (fx ** 2 + fy ** 2).sqrt()
        self.register_buffer("scale", 1.0 / freqs.clamp_min(1.0 / max(h, w)) ** decay)
        self.h, self.w = h, w
        self.spectrum = nn.Parameter(sd * torch.randn(n, 3, h, w // 2 + 1, 2, generator=generator))

    def forward(self):
        spec = torch.view_as_complex(self.spectrum) * self.scale
        img = torch.fft.irfft2(spec, s=(self.h, self.w), norm="ortho") / 4.0
        img = torch.einsum("nchw,dc->ndhw", img, _COLOR_SQRT.to(img))
        return torch.sigmoid(img)

    def project(self):
        pass


def pixels(init: torch.Tensor | None = None, sd: float = 0.01):
    """Plain pixel parametrisation: start from ``init`` or from grey + N(0, sd^2)."""
    def make(n, h, w, device, generator):
        x0 = init if init is not None else 0.5 + sd * torch.randn(n, 3, h, w, generator=generator)
        x0 = x0.view(-1, 3, h, w).expand(n, 3, h, w) if x0.dim() == 3 else x0
        return Pixels(x0.clamp(0, 1)).to(device)
    return make


def fourier(sd: float = 0.01, decay: float = 1.0):
    """Decorrelated Fourier parametrisation (Olah, Mordvintsev & Schubert 2017)."""
    return lambda n, h, w, device, generator: Fourier(n, h, w, sd, generator, decay).to(device)


# --------------------------------------------------------------------------- transformations
def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a batch [N,C,H,W] (reflect padding); sigma <= 0: x."""
    if sigma <= 0:
        return x
    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    c = x.shape[1]
    r = min(r, x.shape[-1] - 1, x.shape[-2] - 1)
    k = k[len(k) // 2 - r: len(k) // 2 + r + 1]
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def jitter(d: int = 4):
    """Shift the image by a random (dy, dx) in [-d, d] (wrapping around)."""
    def t(x, g):
        dy, dx = (int(v) for v in torch.randint(-d, d + 1, (2,), generator=g))
        return torch.roll(x, (dy, dx), (2, 3))
    return t


def _affine(x, theta):
    grid = F.affine_grid(theta.to(x).expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="reflection", align_corners=False)


def scale(scales=(0.9, 0.95, 1.0, 1.05, 1.1)):
    """Zoom by a random factor from ``scales`` (same image size)."""
    def t(x, g):
        s = float(scales[int(torch.randint(len(scales), (1,), generator=g))])
        return _affine(x, torch.tensor([[1 / s, 0, 0], [0, 1 / s, 0]]))
    return t


def rotate(degrees=(-10, -5, 0, 5, 10)):
    """Rotate by a random angle from ``degrees``."""
    def t(x, g):
        a = math.radians(float(degrees[int(torch.randint(len(degrees), (1,), generator=g))]))
        return _affine(x, torch.tensor([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0]]))
    return t


def blur(sigma: float = 0.5):
    """Gaussian blur of the model's input (the image itself is not changed)."""
    return lambda x, g: gaussian_blur(x, sigma)


STANDARD_TRANSFORMS = (jitter(4), scale(), rotate(), jitter(2))


# --------------------------------------------------------------------------- regularisers
@solves("optvis.total_variation")
def total_variation(x: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """Mahendran & Vedaldi's TV^beta, one value per image: the mean over pixels of
    ((x[i,j+1]-x[i,j])^2 + (x[i+1,j]-x[i,j])^2)^(beta/2) (last row/column dropped)."""
    dx = x[:, :, :-1, 1:] - x[:, :, :-1, :-1]
    dy = x[:, :, 1:, :-1] - x[:, :, :-1, :-1]
    return (dx ** 2 + dy ** 2 + (1e-8 if beta < 2 else 0.0)).pow(beta / 2).flatten(1).mean(1)


def l2(weight: float = 1.0):
    """Penalty weight * mean (x - 0.5)^2 (keeps pixels near grey)."""
    return lambda x: weight * (x - 0.5).pow(2).flatten(1).mean(1)


def tv(weight: float = 1.0, beta: float = 2.0):
    """Penalty weight * total_variation(x, beta) (favours piecewise-smooth images)."""
    return lambda x: weight * total_variation(x, beta)


@dataclass
class BlurEvery:
    """Not a penalty: blur the pixels themselves every ``k`` steps (Yosinski et al. 2015)."""
    k: int = 4
    sigma: float = 0.5


def blur_every(k: int = 4, sigma: float = 0.5) -> BlurEvery:
    return BlurEvery(k, sigma)


# --------------------------------------------------------------------------- the loop
def _progress(total, show, desc):
    if not show:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, leave=False)


@solves("optvis.optimize")
def optimize(model: nn.Module, objective: Objective, param=None, transforms=(), regularizers=(),
             steps: int | None = None, lr: float = 0.05, size: int = 64, n: int = 1, seed: int = 0,
             progress: bool = True, history: list | None = None, lr_decay: bool = False) -> torch.Tensor:
    """Maximise ``objective`` minus the ``regularizers`` over an image; returns
    FloatTensor[n,3,size,size] in [0,1] (detached, on the model's device).

    param: ``pixels()`` (default) or ``fourier()``; transforms: random transformations
    applied to the image before the model (``jitter``, ``scale``, ``rotate``, ``blur``);
    regularizers: penalties ``f(image) -> Tensor[n]`` (``l2``, ``tv``) and ``blur_every``.
    Adam with learning rate ``lr`` (``lr_decay=True``: cosine decay to 0 over the run);
    ``steps=None`` means 128, capped by $XAILAB_MAX_STEPS.
    ``history``: a list that receives the objective value (mean over images) each step.
    """
    if not isinstance(objective, Objective):
        raise TypeError("objective must be an optvis Objective (channel, neuron, layer, class_logit, "
                        "deepdream, feature_match, or a sum of them)")
    steps = resolve_steps(steps, 128)
    device = _device(model)
    g = torch.Generator().manual_seed(seed)
    param = (param or pixels())(n, size, size, device, g)
    blurs = [r for r in regularizers if isinstance(r, BlurEvery)]
    penalties = [r for r in regularizers if not isinstance(r, BlurEvery)]
    acts: dict = {}

    def keep(key):
        def hook(module, inp, out):
            acts[key] = inp[0] if key.endswith(INPUT) else out
        return hook

    opt = torch.optim.Adam(param.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if lr_decay else None
    bar = _progress(steps, progress, objective.name)
    with hooks.frozen(model), \
            hooks.forward_hooks(model, [(k.removesuffix(INPUT), keep(k)) for k in objective.layers]):
        with torch.enable_grad():
            for i in range(steps):
                opt.zero_grad()
                img = param()
                x = img
                for t in transforms:
                    x = t(x, g)
                logits = model(x)
                value = objective(Context(acts, logits, img))
                loss = -value.sum()
                for r in penalties:
                    loss = loss + r(img).sum()
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                param.project()
                for b in blurs:
                    if (i + 1) % b.k == 0 and isinstance(param, Pixels):
                        with torch.no_grad():
                            param.x.copy_(gaussian_blur(param.x, b.sigma))
                if history is not None:
                    history.append(float(value.detach().mean()))
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        with torch.no_grad():
            return param().detach().clamp(0, 1)


@solves("optvis.ascent_step")
def ascent_step(model: nn.Module, image: torch.Tensor, score_fn, lr: float = 0.05,
                shift=(0, 0), blur_sigma: float = 0.0) -> torch.Tensor:
    """One step of plain gradient ascent (the lab's version of the loop): roll the
    image by ``shift``, take the gradient g of ``score_fn(model, rolled).sum()`` with
    respect to the image, step ``image + lr * g / mean|g|``, clamp to [0, 1], then blur
    with ``blur_sigma`` (0: no blur). ``image`` [N,3,H,W] is not modified."""
    with hooks.frozen(model):
        x = image.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            score = score_fn(model, torch.roll(x, tuple(int(s) for s in shift), (2, 3))).sum()
            (g,) = torch.autograd.grad(score, x)
    out = (image.detach() + lr * g / g.abs().mean().clamp_min(1e-12)).clamp(0, 1)
    return gaussian_blur(out, blur_sigma)


@solves("optvis.ascent")
def ascent(model: nn.Module, score_fn, steps: int | None = None, lr: float = 0.05, jitter: int = 1,
           blur_sigma: float = 0.0, size: int = 64, seed: int = 0) -> torch.Tensor:
    """The lab's loop: start from grey plus N(0, 0.01^2) noise (``torch.manual_seed(seed)``),
    then ``steps`` times draw a shift (dy, dx) uniformly from [-jitter, jitter]^2
    (``torch.randint``) and take one ``ascent_step``. Returns [1,3,size,size] in [0,1].
    ``steps=None``: 32, capped by $XAILAB_MAX_STEPS."""
    steps = resolve_steps(steps, 32)
    torch.manual_seed(seed)
    x = (0.5 + 0.01 * torch.randn(1, 3, size, size)).clamp(0, 1).to(_device(model))
    for _ in range(steps):
        shift = torch.randint(-jitter, jitter + 1, (2,)).tolist()
        x = ascent_step(model, x, score_fn, lr, shift, blur_sigma)
    return x


# --------------------------------------------------------------------------- shortcuts
def _single(img):
    return img[0]


def class_image(model: nn.Module, class_index: int, steps: int | None = None, seed: int = 0,
                l2_weight: float = 0.1, param=None, transforms=(), progress: bool = False) -> torch.Tensor:
    """Simonyan's class model: an image [3,H,W] in [0,1] that maximises the class
    score minus ``l2_weight`` * mean (I - 0.5)^2, by Adam on plain pixels from grey plus
    a little noise. ``steps=None``: 64. ``param``/``transforms`` as in ``optimize``."""
    if getattr(model, "classes", None) is not None:
        _in_range(class_index, len(model.classes), "class_index")
    return _single(optimize(model, class_logit(class_index, l2_weight), param=param or pixels(),
                            transforms=transforms, steps=resolve_steps(steps, 64), lr=0.05,
                            seed=seed, progress=progress))


def class_images(model: nn.Module, classes=None, steps: int | None = None, seed: int = 0,
                 l2_weight: float = 0.1, param=None, transforms=(), progress: bool = False) -> torch.Tensor:
    """``class_image`` for several classes at once (default: all), optimised as one batch:
    FloatTensor[len(classes),3,H,W]. Image k starts from the same noise as it would alone
    only for k = 0; the outcome is the same kind of image, computed several times faster."""
    names = getattr(model, "classes", None)
    if classes is None:
        if names is None:
            raise ValueError(f"{type(model).__name__} has no .classes list: pass classes=[...] "
                             "(the class indices to visualise)")
        classes = range(len(names))
    classes = [int(c) for c in classes]
    if names is not None:
        for c in classes:
            _in_range(c, len(names), "a class index")
    return optimize(model, class_logit(classes, l2_weight), param=param or pixels(), n=len(classes),
                    transforms=transforms, steps=resolve_steps(steps, 64), lr=0.05, seed=seed,
                    progress=progress)


def channel_image(model: nn.Module, layer: str, channel_index: int, steps: int | None = None,
                  seed: int = 0, param=None, transforms=(), progress: bool = False) -> torch.Tensor:
    """Feature visualisation of one channel: [3,H,W] in [0,1] maximising its mean
    activation, by Adam on plain pixels from grey plus noise (sd 0.1). A channel
    that is zero everywhere on the start image gets no gradient and stays dark.
    ``steps=None``: 32. ``param``/``transforms`` as in ``optimize``."""
    hooks.get_layer(model, layer)
    return _single(optimize(model, channel(layer, channel_index), param=param or pixels(sd=0.1),
                            transforms=transforms, steps=resolve_steps(steps, 32), lr=0.05,
                            seed=seed, progress=progress))


def dream(model: nn.Module, layer: str, image: torch.Tensor, steps: int | None = None,
          lr: float = 0.02, seed: int = 0, progress: bool = False) -> torch.Tensor:
    """DeepDream on a real image [3,H,W]: amplify what ``layer`` sees. ``steps=None``: 32."""
    x = _check_image(image)
    return _single(optimize(model, deepdream(layer), param=pixels(init=x[None]), transforms=(jitter(2),),
                            regularizers=(blur_every(4, 0.5),), steps=resolve_steps(steps, 32), lr=lr,
                            size=x.shape[-1], seed=seed, progress=progress))


def _check_image(image):
    if not isinstance(image, torch.Tensor) or image.dim() not in (3, 4) or image.shape[-3] != 3:
        raise ValueError("image must be a FloatTensor[3,H,W] (or [1,3,H,W]) in [0,1]")
    if image.dim() == 4:
        if image.shape[0] != 1:
            raise ValueError("pass one image [3,H,W]; loop over a batch yourself")
        image = image[0]
    if image.shape[-1] != image.shape[-2]:
        raise ValueError(f"image must be square, got {tuple(image.shape[-2:])}")
    check_input(image[None])
    return image.detach().float()


def features(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    """The activation of ``layer`` for a batch x [N,3,H,W] in [0, 1] (no gradient)."""
    check_input(x)
    with hooks.preserved(model), hooks.record(model, layer) as rec, torch.no_grad():
        model.eval()
        model(x.to(_device(model)))
    return rec.activations[layer]


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
    v = torch.randn(input_shape, generator=torch.Generator().manual_seed(0)).to(w)
    with torch.no_grad():
        for _ in range(30):
            v = normal(v)
            v = v / v.norm().clamp_min(1e-30)
        step = 1.0 / float(normal(v).norm().clamp_min(1e-30))
        aty = vjp_fn(y)[0]
        r = torch.zeros(input_shape, device=w.device, dtype=w.dtype)
        z, t = r.clone(), 1.0
        for _ in range(steps):
            r_next = z - step * (normal(z) - aty)
            if nonnegative:
                r_next = r_next.clamp_min(0)
            t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
            z = r_next + ((t - 1) / t_next) * (r_next - r)
            r, t = r_next, t_next
    return r


def _conv_input_probe(model: nn.Module, layer: str, size: int) -> tuple[tuple, bool]:
    """Shape of the input the convolution ``layer`` receives for one image of ``size``, and
    whether that input is non-negative for random images (it follows a ReLU): a property of
    the architecture, not of any image."""
    seen = []
    noise = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(0))
    with hooks.preserved(model), torch.no_grad(), \
            hooks.forward_hooks(model, [(layer, lambda m, i, o: seen.append(i[0]))]):
        model.eval()
        model(noise.to(_device(model)))
    return (1, *seen[0].shape[1:]), bool(seen[0].min() >= 0)


@solves("optvis.invert")
def invert(model: nn.Module, layer: str, image: torch.Tensor, steps: int | None = None, seed: int = 0,
           tv_weight: float = 0.1, beta: float = 2.0, lr: float = 0.05, through_conv: bool = True,
           progress: bool = False) -> torch.Tensor:
    """Mahendran & Vedaldi 2015: an image [3,H,W] whose ``layer`` representation matches
    that of ``image``, minimising ||phi(x) - phi0||^2 / ||phi0||^2 + tv_weight * TV^beta(x).

    How: Adam (cosine-decaying learning rate) over a decorrelated Fourier image that starts
    near grey, in two stages. Stage 1 (two thirds of ``steps``): if ``layer`` is a
    convolution and ``through_conv``, undo it first by least squares (``conv_input``;
    non-negative if its input follows a ReLU) and match that input instead: a convolution
    can be badly conditioned, and its input is an equivalent target that gradient descent
    reaches much faster. Stage 2 (the last third, learning rate lr/5): polish on the real
    objective, phi = ``layer``'s output. ``steps=None``: 600. Invert pre-ReLU layers (conv
    or batch-norm outputs): they keep the sign information that a ReLU output throws away."""
    x0 = _check_image(image).to(_device(model))
    target = features(model, layer, x0[None])
    if float(target.pow(2).sum()) == 0:
        raise ValueError(f"the {layer} representation of this image is all zero; nothing to invert")
    steps, size = resolve_steps(steps, 600), x0.shape[-1]
    image_param = fourier(sd=0.01)(1, size, size, x0.device, torch.Generator().manual_seed(seed))
    first, module = feature_match(layer, target), hooks.get_layer(model, layer)
    if through_conv and isinstance(module, nn.Conv2d):
        shape, nonnegative = _conv_input_probe(model, layer, size)
        first = feature_match(layer, conv_input(module, target, shape, nonnegative), of_input=True)
    n1 = max(1, round(steps * 2 / 3))
    common = dict(param=lambda *a: image_param, regularizers=(tv(tv_weight, beta),), lr_decay=True,
                  size=size, progress=progress)
    optimize(model, first, steps=n1, lr=lr, **common)
    if steps > n1:
        optimize(model, feature_match(layer, target), steps=steps - n1, lr=lr / 5, **common)
    with torch.no_grad():
        return _single(image_param().detach().clamp(0, 1))


def feature_error(model: nn.Module, layer: str, x: torch.Tensor, reference: torch.Tensor) -> float:
    """||phi(x) - phi(ref)|| / ||phi(ref)|| (relative feature error of a reconstruction)."""
    a = features(model, layer, x.view(-1, *x.shape[-3:]))
    b = features(model, layer, reference.view(-1, *reference.shape[-3:]))
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


# --------------------------------------------------------------------------- dataset examples
def _batches(data, batch_size: int):
    """(start index, images [b,3,H,W]) for ``data``: a shapes dataset or a tensor [N,3,H,W]."""
    n = len(data)
    for i in range(0, n, batch_size):
        yield i, (data[i:i + batch_size] if isinstance(data, torch.Tensor)
                  else data.images(slice(i, min(n, i + batch_size))))


def channel_activations(model: nn.Module, layer: str, channel_index: int, data, batch_size: int = 256,
                        reduce: str = "mean") -> torch.Tensor:
    """The mean (or ``reduce="max"``) activation of one channel for every image of ``data``
    (a shapes dataset or a tensor [N,3,H,W]), streamed in batches."""
    out = []
    for _, b in _batches(data, batch_size):
        a = _channel(features(model, layer, b), layer, channel_index)
        out.append(a.flatten(1).mean(1) if reduce == "mean" else a.flatten(1).max(1).values)
    return torch.cat(out).cpu()


def top_k(model: nn.Module, layer: str, channel_index: int, data, k: int = 8, batch_size: int = 256):
    """Indices and mean activations of the ``k`` images of ``data`` that excite the channel most."""
    v = channel_activations(model, layer, channel_index, data, batch_size)
    vals, idx = v.topk(min(k, len(v)))
    return idx, vals


def receptive_field(model: nn.Module, layer: str, size: int = 64) -> tuple[int, int, float]:
    """(size r, stride j, offset of the first unit's centre) of ``layer``'s units in input
    pixels, from the convolutions and poolings that fire before it. Exact for chain
    networks like shapesnet; for branching networks (ResNets) an approximation."""
    order, shapes, _ = hooks._dry_run(model, size)
    modules = dict(model.named_modules())
    target = hooks.get_layer(model, layer)
    end = max(i for i, nme in enumerate(order) if modules[nme] is target)
    r, j, start = 1, 1, 0.5
    for nme in dict.fromkeys(order[:end + 1]):
        m = modules[nme]
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
            s = m.stride if isinstance(m.stride, int) else m.stride[0]
            p = m.padding if isinstance(m.padding, int) else m.padding[0]
            d = getattr(m, "dilation", 1)
            d = d if isinstance(d, int) else d[0]
            start = start + ((k - 1) * d / 2 - p) * j
            r = r + (k - 1) * d * j
            j = j * s
    return r, j, start


def top_patches(model: nn.Module, layer: str, channel_index: int, data, k: int = 8,
                batch_size: int = 256):
    """The ``k`` image patches that excite one unit of the channel most: for each image,
    the position of its strongest activation and that unit's receptive field.
    Returns (patches FloatTensor[k,3,r,r], boxes list of (image index, x0, y0, x1, y1),
    values). Patches at the border are padded with grey."""
    best = []
    for i, b in _batches(data, batch_size):
        a = _channel(features(model, layer, b), layer, channel_index).cpu()
        v, pos = a.flatten(1).max(1)
        for t in range(len(b)):
            best.append((float(v[t]), i + t, int(pos[t]) // a.shape[-1], int(pos[t]) % a.shape[-1]))
    best.sort(key=lambda e: -e[0])
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


# --------------------------------------------------------------------------- DeconvNet
def deconv_projection(model: nn.Module, layer: str, channel_index: int, image: torch.Tensor,
                      keep: str = "max") -> torch.Tensor:
    """Zeiler & Fergus 2014: project one channel of ``layer`` back to pixel space with
    the DeconvNet (ReLU applied to the backward signal, max-pool switches, transposed
    convolutions = the conv backward pass). ``keep="max"``: only the strongest
    activation of the channel is projected; ``"all"``: the whole channel map.
    Returns FloatTensor[3,H,W] (signed; show it with viz.normalize or abs)."""
    x0 = _check_image(image).to(_device(model))
    if keep not in ("max", "all"):
        raise ValueError("keep must be 'max' or 'all'")
    with hooks.frozen(model):
        x = x0[None].clone().requires_grad_(True)
        with hooks.modified_relu_backward(model, "deconvnet"), \
                hooks.record(model, layer, detach=False) as rec, torch.enable_grad():
            model(x)
            a = _channel(rec.activations[layer], layer, channel_index)[0]
            if keep == "max":
                sel = torch.zeros_like(a).view(-1)
                sel[a.detach().view(-1).argmax()] = 1
                sel = sel.view_as(a)
            else:
                sel = torch.ones_like(a)
            (g,) = torch.autograd.grad((a * sel).sum(), x)
    return g[0].detach()


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
                  progress: bool = True) -> Decoder:
    """Train a ``Decoder`` to map ``layer`` features of ``images`` [N,3,H,W] back to the
    images (mean squared pixel error, Adam). The classifier stays frozen and unchanged."""
    torch.manual_seed(seed)
    device = _device(model)
    feats = torch.cat([features(model, layer, images[i:i + 256]) for i in range(0, len(images), 256)])
    dec = Decoder(feats.shape[1], feats.shape[-1], images.shape[-1], width).to(device)
    opt = torch.optim.Adam(dec.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    bar = _progress(epochs * math.ceil(len(images) / batch_size), progress, f"decoder({layer})")
    with torch.enable_grad():
        for _ in range(epochs):
            perm = torch.randperm(len(images), generator=g)
            for i in range(0, len(images), batch_size):
                b = perm[i:i + batch_size]
                loss = F.mse_loss(dec(feats[b]), images[b].to(device))
                opt.zero_grad()
                loss.backward()
                opt.step()
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    return dec.eval()


def decode(model: nn.Module, layer: str, decoder: Decoder, images: torch.Tensor) -> torch.Tensor:
    """Reconstructions [N,3,H,W] of ``images`` from their ``layer`` features."""
    f = features(model, layer, images)
    wants = decoder.net[0].in_channels
    if f.shape[1] != wants:
        raise ValueError(f"this decoder takes {wants}-channel features, but {layer} gives {f.shape[1]}; "
                         f"train one for this layer with optvis.train_decoder(model, {layer!r}, images)")
    with torch.no_grad():
        return decoder(f)
