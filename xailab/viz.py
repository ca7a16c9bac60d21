"""Small plotting helpers shared by every lecture: images, feature-map grids, heat maps.

Tensor helpers (``summed_map``, ``upsample``, ``normalize``, ``heatmap``,
``strongest_channels``) compute on the tensor's own device; plotting helpers
move what they draw to the CPU. Figures stay small (a few inches, dpi from
``xailab.setup()``).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .solving import solves


def _tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def _one_image(activation, what: str = "activation") -> torch.Tensor:
    """[C,H,W] or [1,C,H,W] -> [C,H,W]; a larger batch is an error that says what to do."""
    a = _tensor(activation)
    if a.dim() == 4:
        if a.shape[0] != 1:
            raise ValueError(f"{what} holds {a.shape[0]} images (shape {tuple(a.shape)}); "
                             f"pick one, e.g. {what}[0]")
        a = a[0]
    if a.dim() == 2:
        a = a[None]
    if a.dim() != 3:
        raise ValueError(f"{what} must be [C,H,W] (one image's feature maps), got shape {tuple(a.shape)}")
    return a


def to_image(x) -> np.ndarray:
    """An image tensor [3,H,W] (or [1,3,H,W]) in [0, 1] -> HWC numpy array for ``imshow``.

    A single-channel map [H,W] or [1,H,W] comes back as a 2-D array.
    """
    a = _tensor(x).detach()
    if a.dim() == 4:
        if a.shape[0] != 1:
            raise ValueError(f"to_image takes one image, got a batch of {a.shape[0]}; use x[i]")
        a = a[0]
    if a.dim() == 3 and a.shape[0] == 1:
        a = a[0]
    if a.dim() == 2:
        return _numpy(a)
    if a.dim() != 3 or a.shape[0] != 3:
        raise ValueError(f"to_image expects [3,H,W] (channels first), got {tuple(a.shape)}")
    return np.clip(_numpy(a.permute(1, 2, 0)), 0.0, 1.0)


def summed_map(activation) -> torch.Tensor:
    """Sum over channels: [N,C,H,W] -> [N,H,W] (and [C,H,W] -> [H,W]).

    A first picture of *where* a layer responds, whatever the channel.
    """
    a = _tensor(activation)
    if a.dim() not in (3, 4):
        raise ValueError(f"summed_map expects [N,C,H,W] or [C,H,W], got {tuple(a.shape)}")
    return a.sum(dim=-3)


@solves("viz.upsample")
def upsample(maps, size) -> torch.Tensor:
    """Bilinear resize of the last two dims to ``size`` (an int or (H, W)).

    Accepts [H,W], [N,H,W] or [N,C,H,W] and returns the same rank.
    """
    m = _tensor(maps)
    size = (size, size) if isinstance(size, int) else tuple(size)
    if m.dim() < 2 or m.dim() > 4:
        raise ValueError(f"upsample expects [H,W], [N,H,W] or [N,C,H,W], got {tuple(m.shape)}")
    shape = m.shape
    flat = m.reshape(-1, 1, shape[-2], shape[-1])
    if not flat.is_floating_point():
        flat = flat.float()
    out = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return out.reshape(*shape[:-2], *size)


@solves("viz.normalize")
def normalize(maps, eps: float = 1e-8) -> torch.Tensor:
    """Scale each map (last two dims) to [0, 1] on its own; a constant map becomes 0."""
    m = _tensor(maps).float()
    lo = m.amin(dim=(-2, -1), keepdim=True)
    hi = m.amax(dim=(-2, -1), keepdim=True)
    return (m - lo) / (hi - lo).clamp_min(eps)


@solves("viz.heatmap")
def heatmap(activation, size) -> torch.Tensor:
    """Where a layer fires, at image size: summed over channels, upsampled
    bilinearly to ``size``, then each map scaled to [0, 1]. [N,C,h,w] -> [N,H,W]."""
    return normalize(upsample(summed_map(activation), size))


def strongest_channels(activation, k: int = 8) -> torch.Tensor:
    """Indices of the ``k`` channels with the largest mean activation, strongest first.

    [N,C,H,W] -> LongTensor[N,k] (one ranking per image); [C,H,W] -> LongTensor[k].
    Average over images first (``activation.mean(0)``) for one ranking of a set.
    """
    a = _tensor(activation)
    if a.dim() not in (3, 4):
        raise ValueError(f"strongest_channels expects [N,C,H,W] or [C,H,W], got {tuple(a.shape)}")
    k = min(int(k), a.shape[-3])
    return a.float().mean(dim=(-2, -1)).topk(k, dim=-1).indices


def tile(maps, ncols: int = 8, pad: int = 1, scale: bool = True) -> np.ndarray:
    """Lay out maps [C,H,W] in a grid: one 2-D array of ``ceil(C/ncols)`` rows.

    With ``scale`` each map is scaled to [0, 1] on its own (channels differ in
    range). Padding and empty cells are NaN, which ``imshow`` leaves blank.
    Result shape: ``(rows*(H+pad) - pad, cols*(W+pad) - pad)``.
    """
    m = _tensor(maps).detach()
    if m.dim() == 2:
        m = m[None]
    if m.dim() != 3:
        raise ValueError(f"tile expects maps [C,H,W], got {tuple(m.shape)}")
    if scale:
        m = normalize(m)
    m = _numpy(m)
    c, h, w = m.shape
    cols = max(1, min(int(ncols), c))
    rows = math.ceil(c / cols)
    out = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad), np.nan, dtype=np.float32)
    for i in range(c):
        r, q = divmod(i, cols)
        out[r * (h + pad): r * (h + pad) + h, q * (w + pad): q * (w + pad) + w] = m[i]
    return out


def _axes(ax, figsize):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def feature_grid(activation, n: int = 16, ax=None, title=None, ncols: int = 8,
                 channels=None, cmap: str = "viridis"):
    """Show the feature maps of ONE image as a grid (each map scaled on its own).

    ``activation``: [C,H,W] or [1,C,H,W]; ``n``: how many channels (the first n,
    or ``channels``: a list of indices). Returns the matplotlib axes.
    """
    a = _one_image(activation)
    idx = list(range(min(n, a.shape[0]))) if channels is None else [int(c) for c in channels]
    grid = tile(a[idx], ncols=ncols)
    cols = min(ncols, len(idx))
    rows = math.ceil(len(idx) / cols)
    ax = _axes(ax, (min(8.0, 0.5 * cols + 0.5), min(3.0, 0.5 * rows + 0.5)))
    ax.imshow(grid, cmap=cmap)
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title, fontsize=9)
    return ax


def show_images(x, titles=None, ncols: int = 8, size: float = 1.0, cmap: str = "viridis",
                suptitle: str | None = None):
    """A row (or grid) of images [N,3,H,W] (or maps [N,H,W], or a list of [3,H,W]) with
    optional titles and a title over the figure. Returns the figure."""
    import matplotlib.pyplot as plt

    if isinstance(x, (list, tuple)) and x and isinstance(x[0], torch.Tensor):
        x = torch.stack([t.detach().cpu() for t in x])
    x = _tensor(x).detach()
    if x.dim() not in (3, 4):
        raise ValueError(f"show_images expects [N,3,H,W] or [N,H,W], got {tuple(x.shape)}")
    n = x.shape[0]
    cols = max(1, min(ncols, n))
    rows = math.ceil(n / cols)
    height = (1.3 if titles is not None else 1.0) * size * rows + (0.25 if suptitle else 0.0)
    fig, axes = plt.subplots(rows, cols, figsize=(min(8.0, size * cols), min(6.0, height)), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= n:
            continue
        img = to_image(x[i])
        ax.imshow(img, cmap=cmap if img.ndim == 2 else None)
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=8)
    top = 1.0
    if suptitle:
        fig.suptitle(suptitle, fontsize=8)
        top = 1 - 0.25 / fig.get_size_inches()[1]          # keep the panel titles below it
    fig.tight_layout(pad=0.2, rect=(0, 0, 1, top))
    return fig


def overlay(image, heatmap, ax=None, alpha: float = 0.5, cmap: str = "jet", title=None):
    """Draw ``heatmap`` (any [h,w], resized to the image and scaled to [0, 1]) over
    ``image`` [3,H,W]. Returns the axes."""
    img = to_image(image)
    h = _tensor(heatmap).detach().float()
    while h.dim() > 2 and h.shape[0] == 1:
        h = h[0]
    if h.dim() != 2:
        raise ValueError(f"overlay expects one heat map [H,W], got {tuple(h.shape)}")
    if tuple(h.shape) != img.shape[:2]:
        h = upsample(h, img.shape[:2])
    ax = _axes(ax, (2, 2))
    ax.imshow(img)
    ax.imshow(_numpy(normalize(h)), cmap=cmap, alpha=alpha, vmin=0, vmax=1)
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title, fontsize=8)
    return ax
