"""Fragile explanations: a small, label-preserving perturbation that moves a saliency map.

Ghorbani, Abid & Zou (AAAI 2019) showed that an imperceptible change to the input,
chosen on purpose, can move a gradient map somewhere else while the prediction stays
the same. A ReLU network's input gradient is piecewise constant, so its own
derivative is zero almost everywhere; Dombrowski et al. (NeurIPS 2019) attack a copy
in which every ReLU is replaced by a softplus with a large ``beta`` and then measure
the true map. The attack here does that: signed steps of one grey level that lower
the share of the gradient map's mass on a region (the object mask, or the top-k
pixels of the original map), projected onto an L-infinity ball of ``epsilon`` and
the valid image range, with every step that would change the predicted class undone.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..runtime import evaluating
from .sanity import spearman


@dataclass
class Attack:
    """The perturbed images and what the attack did to the gradient map."""
    x: torch.Tensor                # [N,3,H,W] perturbed images
    target: torch.Tensor           # [N] the class whose map was attacked (the prediction)
    prediction_kept: torch.Tensor  # [N] bool: the model still predicts ``target``
    mass_before: torch.Tensor      # [N] share of |gradient| on the region, original image
    mass_after: torch.Tensor       # [N] the same on the perturbed image
    linf: torch.Tensor             # [N] largest change of any pixel value


def smooth_copy(model: nn.Module, beta: float = 10.0) -> nn.Module:
    """A copy of ``model`` with every ``nn.ReLU`` replaced by ``nn.Softplus(beta)``."""
    smooth = copy.deepcopy(model).eval()
    relus = [name for name, m in smooth.named_modules() if isinstance(m, nn.ReLU)]
    if not relus:
        raise ValueError("the model has no nn.ReLU modules to smooth; the attack needs a model whose "
                         "ReLUs are modules (functional relu calls cannot be replaced)")
    for name in relus:
        parent, _, child = name.rpartition(".")
        setattr(smooth.get_submodule(parent) if parent else smooth, child, nn.Softplus(beta))
    for p in smooth.parameters():
        p.requires_grad_(False)
    return smooth


def gradient_map(model: nn.Module, x: torch.Tensor, target: torch.Tensor, graph: bool = False) -> torch.Tensor:
    """|d score / d x| summed over colour channels: [N,H,W] (differentiable when ``graph``)."""
    x = x if x.requires_grad else x.detach().requires_grad_(True)
    score = model(x).gather(1, target[:, None]).sum()
    grad, = torch.autograd.grad(score, x, create_graph=graph)
    return grad.abs().sum(1)


def region_mass(heat: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Share of each map's total on its region: [N]."""
    return (heat * region).flatten(1).sum(1) / heat.flatten(1).sum(1).clamp_min(1e-12)


def top_k_region(heat: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean [N,H,W] masks of each map's ``k`` largest pixels."""
    flat = heat.flatten(1)
    region = torch.zeros_like(flat, dtype=torch.bool)
    region.scatter_(1, flat.topk(k, dim=1).indices, True)
    return region.view_as(heat)


def top_k_intersection(a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
    """Fraction of the top-``k`` pixels of ``a`` that are also top-``k`` in ``b``: [N]."""
    return (top_k_region(a, k) & top_k_region(b, k)).flatten(1).sum(1).float() / k


def _checked(model, x, epsilon, steps, k):
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"x must be a batch of RGB images [N,3,H,W], got shape {tuple(x.shape)}")
    if not 0 < epsilon <= 1:
        raise ValueError(f"epsilon is an L-infinity budget in [0, 1] image units (4/255 = four grey "
                         f"levels), got {epsilon}")
    if steps < 1 or k < 1 or k > x.shape[-1] * x.shape[-2]:
        raise ValueError(f"need steps >= 1 and 1 <= k <= H*W, got steps={steps}, k={k}")


def fragility_attack(model: nn.Module, x: torch.Tensor, region: torch.Tensor | None = None,
                     epsilon: float = 4 / 255, steps: int = 40, step_size: float = 1 / 255,
                     k: int = 400, beta: float = 10.0) -> Attack:
    """Move the gradient map off ``region`` (default: the top-``k`` pixels of the original
    map) within an L-infinity ball of ``epsilon``, keeping the predicted class."""
    _checked(model, x, epsilon, steps, k)
    x = x.detach()
    with evaluating(model):
        target = model(x).argmax(1)
        with torch.enable_grad():
            before = gradient_map(model, x, target)
        region = (top_k_region(before, k) if region is None else region.to(x.device).bool()).float()
        smooth = smooth_copy(model, beta)
        adv = x.clone()
        for _ in range(steps):
            with torch.enable_grad():
                moving = adv.clone().requires_grad_(True)
                loss = region_mass(gradient_map(smooth, moving, target, graph=True), region).sum()
                step, = torch.autograd.grad(loss, moving)
            candidate = torch.min(torch.max(adv - step_size * step.sign(), x - epsilon), x + epsilon).clamp(0, 1)
            kept = model(candidate).argmax(1) == target
            adv = torch.where(kept[:, None, None, None], candidate, adv)
        with torch.enable_grad():
            after = gradient_map(model, adv, target)
        kept = model(adv).argmax(1) == target
    return Attack(adv, target, kept, region_mass(before, region), region_mass(after, region),
                  (adv - x).abs().flatten(1).amax(1))


def map_shift(before: torch.Tensor, after: torch.Tensor, k: int = 400) -> dict:
    """How far a method's maps moved: top-k intersection and Spearman rank correlation
    per image (1 = unchanged for both)."""
    return {"top_k": top_k_intersection(before, after, k), "spearman": spearman(before, after)}
