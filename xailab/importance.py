"""Permutation importance of image patches: a global, model-agnostic explanation.

Breiman's permutation importance asks how much a model's score drops when one
feature's values are shuffled across the dataset, so that the feature no longer
carries information about the label while its distribution stays the same. For
images the features are patches: for each cell of a grid, swap that cell's pixels
between the images of a set (a random permutation of the images) and measure the
accuracy lost. One number per patch for the whole dataset, unlike the local maps of
occlusion or Grad-CAM, which explain one image at a time.
"""
from __future__ import annotations

import torch
from torch import nn

from .runtime import batched, default_batch_size, device_of, evaluating, fast_layout, inference_copy, positive_int


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    correct = sum((model(fast_layout(x[s])).argmax(1) == y[s]).sum() for s in batched(len(x), batch_size))
    return correct.float() / len(x)


def _checked(x, y, patch):
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"x must be a batch of RGB images [N,3,H,W], got shape {tuple(x.shape)}")
    if y.shape != (len(x),):
        raise ValueError(f"y needs one label per image: got shape {tuple(y.shape)} for {len(x)} images")
    if len(x) < 2:
        raise ValueError("permutation importance shuffles patches between images: pass at least 2 images")
    patch = positive_int(patch, "patch")
    if x.shape[-1] % patch or x.shape[-2] % patch:
        raise ValueError(f"patch={patch} must divide the image size {tuple(x.shape[-2:])}")
    return patch


def permutation_importance(model: nn.Module, x: torch.Tensor, y: torch.Tensor, patch: int = 8,
                           n_repeats: int = 3, seed: int = 0, batch_size: int | None = None) -> torch.Tensor:
    """Accuracy lost when each ``patch`` x ``patch`` cell is shuffled across the images:
    [H/patch, W/patch], averaged over ``n_repeats`` seeded permutations (0 = unused cell,
    negative = noise or a cell whose shuffling happens to help)."""
    patch = _checked(x, y, patch)
    n_repeats = positive_int(n_repeats, "n_repeats")
    batch_size = batch_size or default_batch_size(x)
    device = device_of(model)
    x, y = x.to(device), y.to(device)
    generator = torch.Generator().manual_seed(seed)
    shuffled_sets = [x[torch.randperm(len(x), generator=generator).to(device)] for _ in range(n_repeats)]
    rows, cols = x.shape[-2] // patch, x.shape[-1] // patch
    drop = torch.zeros(rows, cols)
    with evaluating(model):
        model = inference_copy(model)       # folded BatchNorm: the same predictions, faster
        base = _accuracy(model, x, y, batch_size)
        for r in range(rows):
            for c in range(cols):
                cell = (..., slice(r * patch, (r + 1) * patch), slice(c * patch, (c + 1) * patch))
                for other in shuffled_sets:
                    shuffled = x.clone()
                    shuffled[cell] = other[cell]
                    drop[r, c] += float(base - _accuracy(model, shuffled, y, batch_size)) / n_repeats
    return drop
