"""Sanity checks (Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim 2018, NeurIPS): an
explanation that does not change when the model's weights are destroyed, or when the
model learnt random labels, cannot be explaining the model. Also: how much of an
explanation lands on the shortcut watermark."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .. import hooks
from ..solving import solves
from .faithfulness import _target
from .localisation import _order, relevance_mass


@solves("evaluation.spearman")
def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of |a| and |b| per map [N,H,W] -> [N] (ties by index)."""
    ra, rb = (_order(t.abs().flatten(1)).float() for t in (a, b))
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    return (ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1)).clamp_min(1e-12)


def _unit(m: torch.Tensor) -> np.ndarray:
    m = m.detach().float().cpu()
    lo, hi = m.min(), m.max()
    return ((m - lo) / (hi - lo) if hi > lo else torch.zeros_like(m)).numpy()


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Structural similarity (scikit-image) of min-max-normalised maps, per map."""
    from skimage.metrics import structural_similarity

    return torch.tensor([float(structural_similarity(_unit(p), _unit(q), data_range=1.0)) for p, q in zip(a, b)])


def hog_similarity(a: torch.Tensor, b: torch.Tensor, cell: int = 8) -> torch.Tensor:
    """Pearson correlation of the HOG descriptors (scikit-image) of normalised maps."""
    from skimage.feature import hog

    out = []
    for p, q in zip(a, b):
        hp, hq = (hog(_unit(m), pixels_per_cell=(cell, cell), cells_per_block=(2, 2)) for m in (p, q))
        out.append(float(np.corrcoef(hp, hq)[0, 1]) if hp.std() > 0 and hq.std() > 0 else 0.0)
    return torch.tensor(out)


SIMILARITIES = {"spearman": spearman, "ssim": ssim, "hog": hog_similarity}


def parameter_layers(model: nn.Module) -> list[str]:
    """Names of the modules that own parameters, from the output back to the input
    (registration order reversed): the order of cascading randomisation."""
    names = [n for n, m in model.named_modules() if n and any(True for _ in m.parameters(recurse=False))]
    return names[::-1]


def randomise(model: nn.Module, layers, seed: int = 0) -> nn.Module:
    """A copy of ``model`` whose modules named in ``layers`` (and everything under them)
    are re-initialised at random; the original is never touched."""
    import copy

    rand = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in layers:
            for m in hooks.get_layer(rand, name).modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
                elif any(True for _ in m.parameters(recurse=False)):
                    for p in m.parameters(recurse=False):
                        torch.nn.init.normal_(p.data, std=0.02)
    return rand


def model_randomisation(model: nn.Module, x: torch.Tensor, method: str, target=None, cascading: bool = True,
                        layers=None, similarities=("spearman", "ssim", "hog"), seed: int = 0, **options):
    """The model-randomisation test: explanations of ``x`` (class ``target``, fixed from
    the trained model) on copies of the model with more and more layers re-initialised
    (``cascading``, from the output down) or one layer at a time (independent).
    Returns a list of rows ``{"layer", "<similarity>": mean over images, ...}``; the
    first row is the trained model itself (similarity 1). Low similarity after
    randomisation is what a faithful method should show."""
    from .. import attribution

    attribution.check_input(x, model)
    unknown = [s for s in similarities if s not in SIMILARITIES]
    if unknown:
        raise ValueError(f"unknown similarity {unknown}; choose from {list(SIMILARITIES)}")
    layers = list(layers) if layers is not None else parameter_layers(model)
    t = _target(model, x, target)
    base = attribution.explain(model, x, t, method, **options)
    rows = [{"layer": "(trained)", **{s: 1.0 for s in similarities}}]
    for i, name in enumerate(layers):
        rand = randomise(model, layers[:i + 1] if cascading else [name], seed)
        e = attribution.explain(rand, x, t, method, **options)
        rows.append({"layer": name, **{s: round(float(SIMILARITIES[s](base, e).mean()), 4)
                                       for s in similarities}})
    return rows


def data_randomisation(model: nn.Module, random_model: nn.Module, x: torch.Tensor, method: str,
                       target=None, similarities=("spearman", "ssim", "hog"), **options) -> dict:
    """The data-randomisation test: similarity between the explanations of ``model`` and
    of ``random_model``, the same architecture trained on permuted labels
    (``xailab.models.load("shapesnet-random-labels")``), for the same images and class."""
    from .. import attribution

    t = _target(model, x, target)
    a = attribution.explain(model, x, t, method, **options)
    b = attribution.explain(random_model, x, t, method, **options)
    return {s: round(float(SIMILARITIES[s](a, b).mean()), 4) for s in similarities}


def shortcut_exposure(model: nn.Module, method: str, n: int = 32, seed: int = 0, target=None,
                      **options) -> dict:
    """How much of an explanation lands on the watermark of the shortcut data
    (``xailab.data.shapes("test", n, shortcut=True, watermark="all")``): the mean share
    of the non-negative attribution mass on the watermark, and the watermark's share of
    the image area for comparison. On ``shapesnet-shortcut`` a faithful method puts
    far more than the area share there."""
    from .. import attribution
    from ..data import shapes

    ds = shapes("test", n, seed=seed, shortcut=True, watermark="all")
    x = ds.images()
    marks = torch.stack([torch.as_tensor(ds.ground_truth(i)["watermark"]) for i in range(n)]).bool()
    heat = attribution.explain(model, x, target, method, **options).clamp_min(0)
    return {"mass": round(float(relevance_mass(heat, marks).mean()), 4),
            "area": round(float(marks.float().mean()), 4)}
