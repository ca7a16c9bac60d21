"""Perturbation (model-agnostic, black-box) attribution: occlusion and RISE, and the
batched scoring of perturbed images that every black-box method shares.

These methods only call the model forward: they change parts of the input and
watch the output move. No gradients, no hooks, any architecture. What they cost
is forward passes, so every method here evaluates its perturbed images in
batches (``batch_size`` images per forward pass).

- ``occlusion`` (Zeiler & Fergus 2014): slide a window of ``baseline`` over the
  image; a pixel's score is the average drop of the target logit over all window
  positions that cover it. Identical to ``captum.attr.Occlusion``.
- ``rise`` (Petsiuk, Das & Saenko 2018): random smooth masks; saliency is the
  mask average weighted by the class probability of each masked image.
LIME and Kernel SHAP work on superpixels (``xailab.attribution.superpixel``);
anchors (Ribeiro et al. 2018) live in ``xailab.attribution.anchors``.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..runtime import class_scores, default_batch_size, fast_layout, inference_copy, positive_int
from ..solving import solves
from . import register, resolve_target
from .incremental import window_scores

__all__ = ["occlusion", "occlusion_windows", "rise", "rise_masks", "target_scores"]


# ----------------------------------------------------------------------------- helpers
OUTPUTS = ("logit", "probability")


def _probs(output: str) -> bool:
    """True for output="probability", False for "logit"; anything else is an error."""
    if output not in OUTPUTS:
        raise ValueError(f"output must be 'logit' or 'probability', got {output!r}")
    return output == "probability"


def _pair(v, name: str) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name} must be an int or a pair (height, width), got {v!r}")
        a, b = v
    else:
        a = b = v
    for k in (a, b):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"{name} must be a whole number of pixels, got {v!r}")
    return int(a), int(b)


def target_scores(model: nn.Module, x: torch.Tensor, target: torch.Tensor, output: str = "logit") -> torch.Tensor:
    """The model's score for ``target[i]`` on image ``x[i]``: a logit, or with
    ``output="probability"`` a softmax probability. Returns FloatTensor[N]."""
    return _scores(inference_copy(model), x, target, _probs(output))


def _scores(net: nn.Module, x: torch.Tensor, target: torch.Tensor, probs: bool) -> torch.Tensor:
    """``target_scores`` with ``net`` already resolved (loops resolve it once, not per batch)."""
    return _pick(net(fast_layout(x)), target, probs)


def _pick(out: torch.Tensor, target: torch.Tensor, probs: bool) -> torch.Tensor:
    """The target's score in each row of the model's output [N, classes]."""
    out = class_scores(out, "perturbation methods need")
    if probs:
        out = out.softmax(1)
    return out.gather(1, target.view(-1, 1)).squeeze(1)


def _baseline(baseline, x: torch.Tensor) -> torch.Tensor:
    """A baseline broadcastable to x: a number, [C,H,W], [1|N,C,H,W] (or [C,1,1] colours)."""
    if isinstance(baseline, (int, float)):
        return torch.tensor(float(baseline), device=x.device, dtype=x.dtype)
    if not isinstance(baseline, torch.Tensor):
        raise TypeError(f"baseline must be a number or a tensor, got {type(baseline).__name__}")
    b = baseline.to(device=x.device, dtype=x.dtype)
    if b.dim() == 3:
        b = b.unsqueeze(0)
    try:
        torch.broadcast_shapes(b.shape, x.shape)
    except RuntimeError:
        raise ValueError(f"baseline of shape {tuple(baseline.shape)} does not broadcast to the "
                         f"images {tuple(x.shape)}; use a number, [C,H,W] or [N,C,H,W]") from None
    if b.dim() == 4 and b.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"baseline has {b.shape[0]} images but x has {x.shape[0]}")
    return b


def _per_image(b: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Select the baselines of images ``idx`` (a scalar or shared baseline is returned as is)."""
    if b.dim() == 4 and b.shape[0] > 1:
        return b[idx]
    return b


def _pair_scores(model, x, target, n_variants: int, make, batch_size: int, probs: bool) -> torch.Tensor:
    """Target score of every (image i, perturbation k) pair, FloatTensor[N, n_variants], with
    ``batch_size`` pairs per forward pass; ``make(img, k)`` builds the perturbed images for
    index tensors ``img`` and ``k``. Call under ``torch.no_grad()``."""
    net = inference_copy(model)
    scores = torch.empty(len(x), n_variants, device=x.device, dtype=x.dtype)
    flat = scores.view(-1)
    total = len(x) * n_variants
    for start in range(0, total, batch_size):
        idx = torch.arange(start, min(start + batch_size, total), device=x.device)
        img, k = idx // n_variants, idx % n_variants
        flat[start:start + len(idx)] = _scores(net, make(img, k), target[img], probs)
    return scores


# ----------------------------------------------------------------------------- occlusion
@solves("perturbation.occlusion_windows")
def occlusion_windows(height: int, width: int, window=8, stride=4, device=None):
    """Every window position of a sliding-window occlusion, as masks.

    Along each side the window starts at 0, stride, 2*stride, ... for
    ceil((side - window) / stride) + 1 positions, so the whole image is covered;
    the last window is cut at the border when the stride does not divide
    (side - window) (Captum's convention). Returns ``(masks BoolTensor[P,H,W],
    counts FloatTensor[H,W])`` with the number of windows covering each pixel.
    """
    wh, ww = _pair(window, "window")
    sh, sw = _pair(stride, "stride")
    if min(sh, sw) < 1:
        raise ValueError(f"stride must be at least 1 pixel, got {stride!r}")
    if min(wh, ww) < 1:
        raise ValueError(f"window must be at least 1 pixel, got {window!r}")
    if wh > height or ww > width:
        raise ValueError(f"window {(wh, ww)} is larger than the image ({height}x{width}); "
                         f"use a window of at most {min(height, width)} pixels")
    for s, w, side in ((sh, wh, height), (sw, ww, width)):
        if w < side and s > w:
            raise ValueError(f"stride {s} is larger than the window {w}: some pixels would never be "
                             "occluded; use stride <= window")
    ys, xs = _starts(height, width, wh, ww, sh, sw)
    rows = torch.zeros(len(ys), height, dtype=torch.bool, device=device)
    cols = torch.zeros(len(xs), width, dtype=torch.bool, device=device)
    for i, y in enumerate(ys):
        rows[i, y:y + wh] = True
    for j, x0 in enumerate(xs):
        cols[j, x0:x0 + ww] = True
    masks = (rows[:, None, :, None] & cols[None, :, None, :]).reshape(-1, height, width)
    counts = masks.sum(0, dtype=torch.float32)
    return masks, counts


def _starts(height: int, width: int, wh: int, ww: int, sh: int, sw: int):
    """Window start rows and columns (see ``occlusion_windows``)."""
    ys = [k * sh for k in range(math.ceil((height - wh) / sh) + 1)]
    xs = [k * sw for k in range(math.ceil((width - ww) / sw) + 1)]
    return ys, xs


def _window_boxes(height, width, window, stride, device) -> torch.Tensor:
    """(top, left, bottom, right) of every window, cut at the border, LongTensor[P, 4]
    in the order of ``occlusion_windows``' masks."""
    (wh, ww), (sh, sw) = _pair(window, "window"), _pair(stride, "stride")
    ys, xs = _starts(height, width, wh, ww, sh, sw)
    y = torch.tensor(ys, device=device).repeat_interleave(len(xs))
    x = torch.tensor(xs, device=device).repeat(len(ys))
    return torch.stack([y, x, (y + wh).clamp(max=height), (x + ww).clamp(max=width)], 1)


INCREMENTAL_BATCH = 4          # incremental passes: this many times default_batch_size windows each


def _occlusion_raw(model, x, target, window, stride, baseline, batch_size, probs, incremental=True):
    """[N, H, W] per-pixel attribution (the same for every channel). With ``incremental``
    the occluded images are scored by incremental inference where the model allows
    (``xailab.attribution.incremental``), else by full forward passes (the plain method).
    ``batch_size`` None: ``INCREMENTAL_BATCH`` times the default for incremental passes."""
    n, c, h, w = x.shape
    masks, counts = occlusion_windows(h, w, window, stride, device=x.device)
    p = masks.shape[0]
    b = _baseline(baseline, x)
    with torch.no_grad():
        fast = None
        if incremental:
            windows = batch_size or INCREMENTAL_BATCH * default_batch_size(x)
            fast = window_scores(model, x, target, _window_boxes(h, w, window, stride, x.device),
                                 _pair(window, "window"), b, windows,
                                 lambda out, t: _pick(out, t, probs))
        if fast is not None:
            drops = fast[0][:, None] - fast[1]
        else:
            base = _scores(inference_copy(model), x, target, probs)           # [N]
            drops = base[:, None] - _pair_scores(
                model, x, target, p, batch_size=batch_size or default_batch_size(x), probs=probs,
                make=lambda img, pos: torch.where(masks[pos].unsqueeze(1), _per_image(b, img), x[img]))
        attr = drops @ masks.view(p, -1).to(drops.dtype)                  # [N, H*W]
        attr = attr / counts.view(1, -1).to(drops.dtype)
    return attr.view(n, h, w)


@register("occlusion", "perturbation",
          "slide a grey/black window over the image; a pixel scores the average drop of the "
          "target logit over the windows that cover it",
          "Zeiler & Fergus 2014, Visualizing and Understanding Convolutional Networks, ECCV",
          cost="slow", reduce="mean", cheap=dict(window=16, stride=16))
def occlusion(model: nn.Module, x: torch.Tensor, target=None, window=8, stride=4, baseline=0.0,
              batch_size: int | None = None, output: str = "logit") -> torch.Tensor:
    """Occlusion sensitivity.

    For every position of a ``window`` x ``window`` patch (moved by ``stride``;
    see ``occlusion_windows``) the patch is set to ``baseline`` on all channels
    and the drop ``f_t(x) - f_t(x_occluded)`` of the target logit (``output="probability"``:
    probability) is spread over the patch; each pixel gets the average drop of
    the windows that cover it. ``batch_size`` occluded images share a forward
    pass (default: 32 on the CPU, 256 on a GPU; four times that for incremental
    passes, whose early layers see only small patches and whose late layers, small
    maps with most of the weights, run faster in large batches). When torch.fx can trace the
    model, each pass recomputes only the region every window changes, layer by
    layer, from the unoccluded image's cached maps (incremental inference,
    ``xailab.attribution.incremental``; same values up to float rounding, several
    times faster); otherwise (untraceable code, hooks, modules from outside
    torch/torchvision/xailab) it runs the whole model: ``ceil(N * positions /
    batch_size)`` passes plus one for ``f(x)``.

    Returns FloatTensor[N,H,W] (``reduce="mean"``: the per-pixel value, which is
    the same on every channel). ``reduce=None`` returns the raw [N,C,H,W]
    attribution, equal to ``captum.attr.Occlusion(model).attribute(x, target=t,
    sliding_window_shapes=(C, window, window), strides=(C, stride, stride),
    baselines=baseline)``. Positive: hiding the pixel lowers the score.
    """
    batch_size = None if batch_size is None else positive_int(batch_size, "batch_size")
    target = resolve_target(model, x, target)
    heat = _occlusion_raw(model, x, target, window, stride, baseline, batch_size, _probs(output))
    return heat.unsqueeze(1).expand(-1, x.shape[1], -1, -1)


# ----------------------------------------------------------------------------- RISE
@solves("perturbation.rise_masks")
def rise_masks(n_masks: int = 1000, size=64, cell=8, p: float = 0.5, seed: int = 0,
               device=None) -> torch.Tensor:
    """RISE's random masks, FloatTensor[n_masks, H, W] with values in [0, 1].

    Petsiuk et al. 2018: draw a binary grid of ceil(H / cell) x ceil(W / cell)
    cells, each on with probability ``p``; upsample it bilinearly to
    (rows + 1) * cell x (cols + 1) * cell pixels; crop H x W at a random shift
    of 0..cell-1 pixels in each direction (so cell borders do not always fall
    in the same place). Masks depend only on (n_masks, size, cell, p, seed) and
    are made once and cached (the same tensor object is returned again).
    """
    n_masks = positive_int(n_masks, "n_masks", " (RISE needs at least one mask; try 1000)")
    h, w = _pair(size, "size")
    ch, cw = _pair(cell, "cell")
    if ch < 1 or cw < 1:
        raise ValueError(f"cell must be at least 1 pixel, got {cell!r}")
    if ch > h or cw > w:
        raise ValueError(f"cell {(ch, cw)} is larger than the image {(h, w)}; use a cell of a few pixels "
                         f"(the mask grid has ceil(size / cell) cells per side)")
    if not 0.0 < float(p) <= 1.0:
        raise ValueError(f"p (probability that a cell is kept) must be in (0, 1], got {p!r}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    return _masks_on(n_masks, h, w, ch, cw, float(p), int(seed), str(device))


@lru_cache(maxsize=6)
def _masks_on(n_masks, h, w, ch, cw, p, seed, device) -> torch.Tensor:
    """``rise_masks`` on ``device``, made once (the CPU masks are made first, then moved)."""
    if device != "cpu":
        return _masks_on(n_masks, h, w, ch, cw, p, seed, "cpu").to(device)
    gen = torch.Generator().manual_seed(seed)
    rows, cols = math.ceil(h / ch), math.ceil(w / cw)
    grid = (torch.rand(n_masks, 1, rows, cols, generator=gen) < p).float()
    dy = torch.randint(0, ch, (n_masks,), generator=gen)
    dx = torch.randint(0, cw, (n_masks,), generator=gen)
    masks = torch.empty(n_masks, h, w)
    for s in range(0, n_masks, 256):     # chunks keep the upsampled grids small
        up = F.interpolate(grid[s:s + 256], size=((rows + 1) * ch, (cols + 1) * cw),
                           mode="bilinear", align_corners=False)[:, 0]
        k = torch.arange(up.shape[0])
        yy = (dy[s:s + 256, None] + torch.arange(h)[None])[:, :, None]        # [k,H,1]
        xx = (dx[s:s + 256, None] + torch.arange(w)[None])[:, None, :]        # [k,1,W]
        masks[s:s + 256] = up[k[:, None, None], yy, xx]
    return masks


@register("rise", "perturbation",
          "average of random smooth masks, each weighted by the class probability of the "
          "image seen through it",
          "Petsiuk, Das & Saenko 2018, RISE: Randomized Input Sampling for Explanation of "
          "Black-box Models, BMVC", cost="slow", cheap=dict(n_masks=32))
def rise(model: nn.Module, x: torch.Tensor, target=None, n_masks: int = 1000, cell=8, p: float = 0.5,
         seed: int = 0, batch_size: int | None = None, output: str = "probability",
         baseline=0.0) -> torch.Tensor:
    """RISE saliency: S_t(pixel) = 1 / (N p) * sum_i f_t(x * M_i + b * (1 - M_i)) M_i(pixel).

    ``M_i`` are ``rise_masks(n_masks, (H, W), cell, p, seed)`` (cached, shared by
    all images); ``f_t`` is the softmax probability of the target (``output="logit"``:
    the logit); ``b`` the ``baseline`` (0: black, as in the paper). Costs
    ``ceil(N * n_masks / batch_size)`` forward passes (plus one when target is None).
    Returns FloatTensor[N,H,W].
    """
    n_masks = positive_int(n_masks, "n_masks", " (RISE needs at least one mask; try 1000)")
    batch_size = positive_int(default_batch_size(x) if batch_size is None else batch_size, "batch_size")
    target = resolve_target(model, x, target)
    probs = _probs(output)
    n, _, h, w = x.shape
    masks = rise_masks(n_masks, (h, w), cell, p, seed, device=x.device).to(x.dtype)
    b = _baseline(baseline, x)
    def seen(img, k):
        m = masks[k].unsqueeze(1)
        return x[img] * m + _per_image(b, img) * (1 - m)
    with torch.no_grad():
        scores = _pair_scores(model, x, target, n_masks, seen, batch_size, probs)
        sal = scores @ masks.view(n_masks, -1) / (n_masks * float(p))
    return sal.view(n, h, w)
