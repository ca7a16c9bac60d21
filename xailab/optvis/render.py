"""The optimisation loop (``optimize``), the lab's plain gradient ascent
(``ascent_step``, ``ascent``) and shortcuts with tested defaults (``class_image``,
``class_images``, ``channel_image``, ``dream``); ``features`` reads a layer.

Step cap for CI: ``$XAILAB_MAX_STEPS`` caps every optimisation of ``optvis``
(``resolve_steps``); see the package docstring.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

import torch
from torch import nn

from .. import hooks
from ..attribution import check_input
from ..runtime import device_of, evaluating, positive_int
from ..solving import solves
from .objectives import INPUT, Context, Objective, channel, class_logit, deepdream, image_penalty, in_range
from .param import build, pixels
from .transforms import BlurEvery, blur_every, gaussian_blur, jitter

STEPS_ENV = "XAILAB_MAX_STEPS"


def resolve_steps(steps: int | None, default: int) -> int:
    """``steps`` (or ``default`` when None), capped by ``$XAILAB_MAX_STEPS`` if set."""
    n = positive_int(default if steps is None else steps, "steps", " (or None for the default)")
    cap = os.environ.get(STEPS_ENV, "").strip()
    if cap:
        try:
            cap_n = int(cap)
        except ValueError:
            raise ValueError(f"${STEPS_ENV} must be a positive integer, got {cap!r}") from None
        n = min(n, max(1, cap_n))
    return n


def progress_bar(total: int, show: bool, desc: str):
    """A tqdm bar, or one that shows nothing when ``show`` is false."""
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, leave=False, disable=not show)


def _split_regularizers(regularizers):
    """(penalties as objectives, blur_every instructions) from the ``regularizers`` list."""
    penalties, blurs = [], []
    for r in regularizers:
        if isinstance(r, BlurEvery):
            blurs.append(r)
        else:
            penalties.append(r if isinstance(r, Objective) else image_penalty(r))
    return penalties, blurs


@contextmanager
def _capturing(model: nn.Module, keys):
    """Fill a dict with the activation (or, for ``layer:input`` keys, the input) of each layer."""
    acts: dict = {}

    def keep(key):
        def hook(module, inp, out):
            acts[key] = inp[0] if key.endswith(INPUT) else out
        return hook
    with hooks.forward_hooks(model, [(k.removesuffix(INPUT), keep(k)) for k in dict.fromkeys(keys)]):
        yield acts


def _loss(model, objective, penalties, image, transforms, g, acts):
    """(minus the objective plus the penalties, summed over images; the objective per image)."""
    x = image
    for t in transforms:
        x = t(x, g)
    ctx = Context(acts, model(x), image)
    value = objective(ctx)
    loss = -value.sum()
    for r in penalties:
        loss = loss + r(ctx).sum()
    return loss, value


@solves("optvis.optimize")
def optimize(model: nn.Module, objective: Objective, param=None, transforms=(), regularizers=(),
             steps: int | None = None, lr: float = 0.05, size: int = 64, n: int = 1, seed: int = 0,
             progress: bool = True, history: list | None = None, lr_decay: bool = False) -> torch.Tensor:
    """Maximise ``objective`` minus the ``regularizers`` over an image; returns
    FloatTensor[n,3,size,size] in [0,1] (detached, on the model's device).

    param: a recipe, ``pixels()`` (default) or ``fourier()``, or a built parametrisation
    (``Pixels``, ``Fourier``: then ``n`` and ``size`` are its own, and it keeps the result);
    transforms: random transformations applied to the image before the model (``jitter``,
    ``scale``, ``rotate``, ``blur``); regularizers: penalties to subtract (objectives such
    as ``l2()`` and ``tv()``, or functions ``f(image) -> Tensor[n]``) and ``blur_every``.
    Adam with learning rate ``lr`` (``lr_decay=True``: cosine decay to 0 over the run);
    ``steps=None`` means 128, capped by $XAILAB_MAX_STEPS.
    ``history``: a list that receives the objective value (mean over images) each step.
    """
    if not isinstance(objective, Objective):
        raise TypeError("objective must be an optvis Objective (channel, neuron, layer, class_logit, "
                        "deepdream, feature_match, or a sum of them)")
    steps, n, size = resolve_steps(steps, 128), positive_int(n, "n"), positive_int(size, "size")
    g = torch.Generator().manual_seed(seed)
    image = build(param or pixels(), n, size, device_of(model), g)
    penalties, blurs = _split_regularizers(regularizers)
    opt = torch.optim.Adam(image.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if lr_decay else None
    layers = objective.layers + tuple(k for r in penalties for k in r.layers)
    with hooks.frozen(model), _capturing(model, layers) as acts, torch.enable_grad(), \
            progress_bar(steps, progress, objective.name) as bar:
        for i in range(steps):
            opt.zero_grad()
            loss, value = _loss(model, objective, penalties, image(), transforms, g, acts)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            image.project()
            for b in blurs:
                if (i + 1) % b.k == 0:
                    with torch.no_grad():
                        image.set_image(gaussian_blur(image(), b.sigma))
            if history is not None:
                history.append(float(value.detach().mean()))
            bar.update(1)
    with torch.no_grad():
        return image().detach().clamp(0, 1)


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
    x = (0.5 + 0.01 * torch.randn(1, 3, size, size)).clamp(0, 1).to(device_of(model))
    for _ in range(steps):
        shift = torch.randint(-jitter, jitter + 1, (2,)).tolist()
        x = ascent_step(model, x, score_fn, lr, shift, blur_sigma)
    return x


# --------------------------------------------------------------------------- reading a layer
def check_image(image) -> torch.Tensor:
    """One square image as FloatTensor[3,H,W] in [0,1] (from [3,H,W] or [1,3,H,W]), or a clear error."""
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
    with evaluating(model), hooks.record(model, layer) as rec:
        model(x.to(device_of(model)))
    return rec.activations[layer]


# --------------------------------------------------------------------------- shortcuts
def class_image(model: nn.Module, class_index: int, steps: int | None = None, seed: int = 0,
                l2_weight: float = 0.1, param=None, transforms=(), progress: bool = False) -> torch.Tensor:
    """Simonyan's class model: an image [3,H,W] in [0,1] that maximises the class
    score minus ``l2_weight`` * mean (I - 0.5)^2, by Adam on plain pixels from grey plus
    a little noise. ``steps=None``: 64. ``param``/``transforms`` as in ``optimize``."""
    if getattr(model, "classes", None) is not None:
        in_range(class_index, len(model.classes), "class_index")
    return optimize(model, class_logit(class_index, l2_weight), param=param or pixels(),
                    transforms=transforms, steps=resolve_steps(steps, 64), lr=0.05,
                    seed=seed, progress=progress)[0]


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
            in_range(c, len(names), "a class index")
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
    return optimize(model, channel(layer, channel_index), param=param or pixels(sd=0.1),
                    transforms=transforms, steps=resolve_steps(steps, 32), lr=0.05,
                    seed=seed, progress=progress)[0]


def dream(model: nn.Module, layer: str, image: torch.Tensor, steps: int | None = None,
          lr: float = 0.02, seed: int = 0, progress: bool = False) -> torch.Tensor:
    """DeepDream on a real image [3,H,W]: amplify what ``layer`` sees. ``steps=None``: 32."""
    x = check_image(image)
    return optimize(model, deepdream(layer), param=pixels(init=x[None]), transforms=(jitter(2),),
                    regularizers=(blur_every(4, 0.5),), steps=resolve_steps(steps, 32), lr=lr,
                    size=x.shape[-1], seed=seed, progress=progress)[0]
