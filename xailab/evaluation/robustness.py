"""Robustness: max-sensitivity (Yeh, Hsieh, Suggala, Inouye & Ravikumar 2019, NeurIPS),
the largest relative change of an explanation under small input noise."""
from __future__ import annotations

import torch
from torch import nn

from ..runtime import positive_int
from .faithfulness import _target

def uniform_perturbation(radius: float = 0.02, seed: int = 0):
    """A function x -> x + U(-radius, radius) noise from a seeded generator, clipped to
    [0, 1] (the images stay valid)."""
    def perturb(x):
        g = torch.Generator().manual_seed(seed)
        noise = (torch.rand(x.shape, generator=g) * 2 - 1) * radius
        return (x + noise.to(x)).clamp(0, 1)
    return perturb


def max_sensitivity(model: nn.Module, x: torch.Tensor, method: str, target=None, n_perturbations: int = 10,
                    radius: float = 0.02, seed: int = 0, perturb=None, **options) -> torch.Tensor:
    """max over perturbed copies x' of ||E(x') - E(x)|| / ||E(x)|| (Frobenius norms), per
    image, for explanation E = xailab.explain(model, ., target, method). The target is
    fixed from x (the class explained does not change). ``perturb`` maps a batch in
    which every image is repeated ``n_perturbations`` times (image-major) to its
    perturbed copies; default: uniform noise of ``radius`` from a generator seeded
    with ``seed``. Other keyword options go to the method."""
    from .. import attribution

    attribution.check_input(x, model)
    n = positive_int(n_perturbations, "n_perturbations")
    t = _target(model, x, target)
    base = attribution.explain(model, x, t, method, **options)
    xs = (perturb or uniform_perturbation(radius, seed))(x.repeat_interleave(n, 0))
    pert = attribution.explain(model, xs, t.repeat_interleave(n), method, **options)
    diff = (pert - base.repeat_interleave(n, 0)).flatten(1).norm(dim=1)
    norm = base.flatten(1).norm(dim=1)
    norm = torch.where(norm == 0, torch.ones_like(norm), norm)
    return (diff.view(-1, n) / norm[:, None]).amax(1)
