"""Faithfulness: deletion and insertion curves (Petsiuk, Das & Saenko 2018, BMVC).
Change the pixels in order of importance, ``step`` at a time, and follow the target
class probability; the area under the curve scores the map."""
from __future__ import annotations

import torch
from torch import nn

from ..runtime import evaluating, fast_layout, inference_copy
from ..solving import solves
from .localisation import _finite, _order

def _target(model, x, target) -> torch.Tensor:
    """``resolve_target`` in eval mode (a None target costs a forward pass)."""
    from .. import attribution

    with evaluating(model):
        return attribution.resolve_target(model, x, target)


def _check_maps(x, heatmaps):
    if heatmaps.dim() == 4 and heatmaps.shape[1] == 1:
        heatmaps = heatmaps[:, 0]
    if heatmaps.dim() != 3 or heatmaps.shape[0] != x.shape[0] or heatmaps.shape[-2:] != x.shape[-2:]:
        raise ValueError(f"heatmaps must be [N,H,W] matching the images {tuple(x.shape)}, got "
                         f"{tuple(heatmaps.shape)}; reduce channels first (xailab.explain does)")
    _finite(heatmaps)
    return heatmaps.detach().to(x.device, torch.float32)


def _curve_auc(curves: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    """Area under each curve [N,S+1] over x = fractions (from 0 to 1), trapezoid rule."""
    return torch.trapezoid(curves, fractions.to(curves), dim=1)


@solves("evaluation.deletion", "evaluation.insertion")
def _perturbation_curves(model, x, heatmaps, target, step, start, batch_size):
    """Shared by deletion and insertion: image k of the curve shows ``x`` where the rank
    is at least k*step and ``start`` elsewhere (deletion: start = zeros)."""
    from .. import attribution

    attribution.check_input(x, model)
    heatmaps = _check_maps(x, heatmaps)
    if not isinstance(step, int) or step < 1:
        raise ValueError(f"step must be a positive number of pixels, got {step!r}")
    n, _, hgt, wid = x.shape
    pixels = hgt * wid
    t = _target(model, x, target)
    counts = torch.arange(0, pixels + step, step, device=x.device).clamp(max=pixels)   # pixels changed
    counts = torch.unique_consecutive(counts)
    rank = _order(heatmaps).view(n, 1, hgt, wid)
    curves = torch.empty(n, len(counts), device=x.device)
    per = max(1, batch_size // len(counts))                         # images per chunk
    with evaluating(model):
        net = inference_copy(model)
        for i in range(0, n, per):
            xi, si, ri = x[i:i + per], start[i:i + per], rank[i:i + per]
            changed = ri[:, None] < counts.view(1, -1, 1, 1, 1)     # [b,S+1,1,H,W]
            imgs = torch.where(changed, si[:, None], xi[:, None]).flatten(0, 1)
            probs = torch.cat([torch.softmax(net(fast_layout(c)), 1) for c in imgs.split(batch_size)])
            ti = t[i:i + per].repeat_interleave(len(counts))
            curves[i:i + per] = probs.gather(1, ti[:, None]).view(-1, len(counts))
    return curves, counts.float() / pixels


@solves("evaluation.deletion")
def deletion(model: nn.Module, x: torch.Tensor, heatmaps: torch.Tensor, target=None, step: int = 64,
             batch_size: int = 256, return_curves: bool = False):
    """Deletion AUC per image: pixels set to 0 (black, in [0, 1] space), most important
    first, ``step`` at a time; the curve is the softmax probability of the target class,
    from the unmodified image (point 0) to the all-black one; AUC by the trapezoid rule
    over the fraction of pixels removed. Lower is better (the map found what matters).
    ``return_curves=True`` also returns the curves [N,S+1] and their x positions."""
    curves, frac = _perturbation_curves(model, x, heatmaps, target, step, torch.zeros_like(x), batch_size)
    auc = _curve_auc(curves, frac)
    return (auc, curves, frac) if return_curves else auc


def blurred(x: torch.Tensor, kernel: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """The Gaussian-blurred copy insertion starts from."""
    from torchvision.transforms.functional import gaussian_blur

    return gaussian_blur(x, [kernel, kernel], [sigma, sigma])


@solves("evaluation.insertion")
def insertion(model: nn.Module, x: torch.Tensor, heatmaps: torch.Tensor, target=None, step: int = 64,
              batch_size: int = 256, return_curves: bool = False):
    """Insertion AUC per image: start from a blurred copy (kernel 11, sigma 5) and put the
    original pixels back, most important first. Higher is better. Same curve and AUC
    conventions as :func:`deletion` (point 0 is the blurred image)."""
    from .. import attribution

    attribution.check_input(x, model)
    t = _target(model, x, target)     # the class of the original image
    # image k shows x where the rank is below k*step and the blurred copy elsewhere
    curves, frac = _perturbation_curves(model, blurred(x), heatmaps, t, step, x, batch_size)
    auc = _curve_auc(curves, frac)
    return (auc, curves, frac) if return_curves else auc
