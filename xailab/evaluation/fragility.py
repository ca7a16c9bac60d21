"""Fragile explanations: a small, label-preserving perturbation that moves a saliency map.

Ghorbani, Abid & Zou (AAAI 2019) showed that an imperceptible change to the input,
chosen on purpose, can move a saliency map somewhere else while the prediction stays
the same. A ReLU network's input gradient is piecewise constant, so its own
derivative is zero almost everywhere; Dombrowski et al. (NeurIPS 2019) attack a copy
in which every ReLU is replaced by a softplus with a large ``beta`` and then measure
the true map. The attack here does that: signed steps of one grey level that lower
the share of the attacked method's map on a region (the object mask, or the top-k
pixels of the original map), projected onto an L-infinity ball of ``epsilon`` and
the valid image range, with every step that would change the predicted class undone.
Each method is attacked on its own map (``method=``: the gradient, SmoothGrad,
integrated gradients or Grad-CAM, each rebuilt here so that it can be differentiated
with respect to the input), and the perturbation kept is the one whose true map
(ReLU model) has the least mass on the region.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .. import hooks
from ..attribution.cam import resolve_layer
from ..attribution.saliency import ig_rule
from ..runtime import batched, default_batch_size, evaluating
from .sanity import spearman


@dataclass
class Attack:
    """The perturbed images and what the attack did to the attacked method's map."""
    x: torch.Tensor                # [N,3,H,W] perturbed images
    target: torch.Tensor           # [N] the class whose map was attacked (the prediction)
    prediction_kept: torch.Tensor  # [N] bool: the model still predicts ``target``
    mass_before: torch.Tensor      # [N] share of the map on the region, original image
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


# ------------------------------------------------------------ maps that can be differentiated
# Each returns a non-negative map [N,H,W]; with ``graph=True`` it stays in the autograd
# graph of ``x`` (used on the smooth copy), otherwise it is a detached map of ``model``.

def _input_gradients(model, points, target, graph):
    """d score / d points for a batch of evaluation points [M,C,H,W] (target repeated)."""
    points = points if points.requires_grad else points.detach().requires_grad_(True)
    reps = points.shape[0] // target.shape[0]
    score = model(points).gather(1, target.repeat(reps)[:, None]).sum()
    grad, = torch.autograd.grad(score, points, create_graph=graph)
    return grad


def gradient_map(model: nn.Module, x: torch.Tensor, target: torch.Tensor, graph: bool = False) -> torch.Tensor:
    """|d score / d x| summed over colour channels: [N,H,W] (differentiable when ``graph``)."""
    with torch.enable_grad():
        return _input_gradients(model, x, target, graph).abs().sum(1)


def smoothgrad_map(model, x, target, graph=False, n_samples=8, noise=0.15, seed=0):
    """|mean gradient| over ``n_samples`` noisy copies (the same seeded noise at every call)."""
    gen = torch.Generator(x.device).manual_seed(int(seed))
    sigma = noise * (x.amax((1, 2, 3)) - x.amin((1, 2, 3))).detach().view(-1, 1, 1, 1)
    eps = torch.stack([torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
                       for _ in range(n_samples)])
    with torch.enable_grad():
        points = (x[None] + sigma * eps).flatten(0, 1)
        grads = _input_gradients(model, points, target, graph).view(n_samples, *x.shape)
    return grads.mean(0).abs().sum(1)


def integrated_gradients_map(model, x, target, graph=False, n_steps=8):
    """|x * integral of the gradient from black to x| (Gauss-Legendre, ``n_steps`` points)."""
    alphas, weights = ig_rule("gausslegendre", n_steps)
    alphas, weights = (t.to(x.device, x.dtype).view(-1, 1, 1, 1, 1) for t in (alphas, weights))
    with torch.enable_grad():
        points = (alphas * x[None]).flatten(0, 1)
        grads = _input_gradients(model, points, target, graph).view(n_steps, *x.shape)
    return ((grads * weights).sum(0) * x).abs().sum(1)


def gradcam_map(model, x, target, graph=False, layer=None):
    """Grad-CAM at ``layer`` (default: the model's), bilinearly upsampled to the image."""
    name = resolve_layer(model, layer)
    with torch.enable_grad(), hooks.out_of_place_relus(model), \
            hooks.record(model, name, detach=False) as rec:
        xin = x if x.requires_grad else x.detach().requires_grad_(True)
        score = model(xin).gather(1, target[:, None]).sum()
        a = rec.activations[name]
        g, = torch.autograd.grad(score, a, create_graph=graph)
    cam = (a * g.mean((2, 3), keepdim=True)).sum(1).clamp_min(0)
    cam = F.interpolate(cam[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return cam if graph else cam.detach()


MAPS = {"gradient": (gradient_map, ()),
        "smoothgrad": (smoothgrad_map, ("n_samples", "noise", "seed")),
        "integrated_gradients": (integrated_gradients_map, ("n_steps",)),
        "gradcam": (gradcam_map, ("layer",))}


def attacked_map(method: str, **options):
    """The differentiable map function of ``method`` with its ``options`` bound."""
    if method not in MAPS:
        raise ValueError(f"the fragility attack knows the maps of {', '.join(MAPS)}; got {method!r}")
    fn, names = MAPS[method]
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise ValueError(f"{method} takes the options {list(names) or 'none'}; got {unknown}")
    return partial(fn, **options)


# ------------------------------------------------------------ the attack

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


def _attack_batch(model, smooth, heat, x, region, epsilon, steps, step_size, k):
    """The attack on one batch of images (see ``fragility_attack``)."""
    target = model(x).argmax(1)
    before = heat(model, x, target)
    region = (top_k_region(before, k) if region is None else region.to(x.device).bool()).float()
    adv, best = x.clone(), x.clone()
    mass_before = region_mass(before, region)
    best_mass = mass_before.clone()
    for _ in range(steps):
        with torch.enable_grad():
            moving = adv.clone().requires_grad_(True)
            loss = region_mass(heat(smooth, moving, target, graph=True), region).sum()
            step, = torch.autograd.grad(loss, moving)
        candidate = torch.min(torch.max(adv - step_size * step.sign(), x - epsilon), x + epsilon).clamp(0, 1)
        kept = model(candidate).argmax(1) == target
        adv = torch.where(kept[:, None, None, None], candidate, adv)
        mass = region_mass(heat(model, adv, target), region)
        better = mass < best_mass
        best = torch.where(better[:, None, None, None], adv, best)
        best_mass = torch.where(better, mass, best_mass)
    kept = model(best).argmax(1) == target
    return best, target, kept, mass_before, best_mass, (best - x).abs().flatten(1).amax(1)


def fragility_attack(model: nn.Module, x: torch.Tensor, region: torch.Tensor | None = None,
                     epsilon: float = 4 / 255, steps: int = 40, step_size: float = 1 / 255,
                     k: int = 400, beta: float = 10.0, method: str = "gradient",
                     batch_size: int | None = None, **options) -> Attack:
    """Move ``method``'s map off ``region`` within an L-infinity ball of ``epsilon``,
    keeping the predicted class.

    ``x``: images [N,3,H,W] in [0, 1]. ``region``: boolean masks [N,H,W] (e.g. the
    object masks); default: the top-``k`` pixels of each original map. ``method``: one
    of ``MAPS`` (gradient, smoothgrad, integrated_gradients, gradcam); ``options`` are
    its settings (smoothgrad: n_samples, noise, seed; integrated_gradients: n_steps;
    gradcam: layer). The maps are |.| summed over colour channels for the gradient
    family and Grad-CAM upsampled. Each of ``steps`` steps moves every pixel by
    ``step_size`` against the sign of the gradient of the region's share of the map
    computed on the softplus copy (``beta``); a step that would change the prediction
    is undone for that image. Of all iterates, the one whose map on the ReLU model has
    the least mass on the region is returned, so ``mass_after <= mass_before`` and
    ``prediction_kept`` is True for every image. Images are attacked ``batch_size``
    at a time (default 32 on the CPU). The model is left as it was: mode, flags,
    parameters; no hooks stay behind.
    """
    _checked(model, x, epsilon, steps, k)
    heat = attacked_map(method, **options)
    x = x.detach()
    parts = []
    with evaluating(model):
        smooth = smooth_copy(model, beta)
        for s in batched(len(x), batch_size or default_batch_size(x)):
            parts.append(_attack_batch(model, smooth, heat, x[s], None if region is None else region[s],
                                       epsilon, steps, step_size, k))
    return Attack(*(torch.cat(field) for field in zip(*parts)))


def random_perturbation(x: torch.Tensor, epsilon: float, seed: int = 0) -> torch.Tensor:
    """The control: every pixel value moved by +-``epsilon`` at random (seeded), clipped
    to [0, 1]; the largest random change within the same L-infinity ball."""
    gen = torch.Generator().manual_seed(int(seed))
    sign = torch.randint(0, 2, x.shape, generator=gen).to(x.device, x.dtype) * 2 - 1
    return (x.detach() + epsilon * sign).clamp(0, 1)


def map_shift(before: torch.Tensor, after: torch.Tensor, k: int = 400) -> dict:
    """How far a method's maps moved: top-k intersection and Spearman rank correlation
    per image (1 = unchanged for both)."""
    return {"top_k": top_k_intersection(before, after, k), "spearman": spearman(before, after)}
