"""Measuring explanations: localisation, faithfulness, robustness, sanity checks.

Sections: weakly supervised localisation (the CAM paper's protocol, below);
deletion and insertion; pointing game, relevance mass and rank; max-sensitivity;
model and data randomisation; shortcut exposure; the comparison table.

Weakly supervised localisation (Zhou et al. 2016, the CAM paper): a heat map
"localises" the object when the box around its strongest region overlaps the true
box. The protocol, for one image:

1. threshold the map at ``threshold`` (20%) of its maximum;
2. take the largest connected region of what is left (8-connected);
3. its bounding box counts as a hit when its IoU with the ground-truth box is at
   least ``iou`` (0.5).

Boxes are ``(x0, y0, x1, y1)`` in pixels with exclusive ends, as
``xailab.data.shapes(...).ground_truth(i)["bbox"]``: ``mask[y0:y1, x0:x1]`` is the
box. Work streams over the data in batches on the model's device.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import torch
from torch import nn

from . import hooks
from .attribution.perturbation import fast_layout
from .models import inference_copy
from .solving import solves

Box = tuple[int, int, int, int]


@solves("evaluation.box_iou")
def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1) with exclusive ends."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(iw, 0) * max(ih, 0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@solves("evaluation.largest_region")
def largest_region(mask) -> np.ndarray:
    """The largest 8-connected component of a boolean [H,W] mask (empty mask: all False)."""
    from skimage.measure import label

    mask = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask, dtype=bool)
    labels = label(mask, connectivity=2)
    if labels.max() == 0:
        return np.zeros_like(mask)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == sizes.argmax()     # ties: the first region in raster order


@solves("evaluation.box_from_map")
def box_from_map(heatmap, threshold: float = 0.2) -> Box | None:
    """Bounding box (x0, y0, x1, y1), exclusive ends, of the largest connected region
    where ``heatmap >= threshold * heatmap.max()``; None when the map has no positive
    value (nothing to localise)."""
    h = torch.as_tensor(heatmap).detach().float().cpu()
    if h.dim() != 2:
        raise ValueError(f"heatmap must be one map [H,W], got shape {tuple(h.shape)}")
    peak = float(h.max())
    if not peak > 0:
        return None
    region = largest_region(h >= threshold * peak)
    ys, xs = np.nonzero(region)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _data(data, boxes, labels):
    """(images [N,3,H,W], boxes list, labels LongTensor) from a dataset or tensors."""
    if isinstance(data, torch.Tensor):
        if boxes is None or labels is None:
            raise ValueError("with a tensor of images, pass boxes=[(x0, y0, x1, y1), ...] and labels=")
        images = data
    elif hasattr(data, "ground_truth"):
        if boxes is not None or labels is not None:
            raise ValueError("the dataset has its own ground truth: do not pass boxes= or labels=")
        images = data.images() if hasattr(data, "images") else torch.stack([data[i][0] for i in range(len(data))])
        gts = [data.ground_truth(i) for i in range(len(data))]
        boxes, labels = [g["bbox"] for g in gts], [g["label"] for g in gts]
    else:
        raise TypeError("data must be a dataset with ground_truth(i) (e.g. xailab.data.shapes('test', 200)) "
                        "or a tensor of images [N,3,H,W] with boxes= and labels=")
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if not (len(images) == len(boxes) == len(labels)):
        raise ValueError(f"{len(images)} images, {len(boxes)} boxes and {len(labels)} labels: "
                         "one box and one label per image")
    return images, [tuple(int(v) for v in b) for b in boxes], labels


def localisation(model: nn.Module, data, method: str | Callable = "gradcam", threshold: float = 0.2,
                 iou: float = 0.5, target: str = "label", boxes=None, labels=None,
                 batch_size: int = 64, progress: bool = False, **options) -> dict:
    """The localisation protocol image by image: ``dict(accuracy, hits, ious, boxes)``.

    ``method`` is a registered method name (any of ``xailab.methods()``, ``options`` go
    to it) or a function ``fn(model, x, target) -> [N,H,W]``. ``target="label"``
    explains the true class (ground-truth-known localisation); ``target="predicted"``
    explains the predicted class and also requires it to be right (top-1 localisation,
    the number in the CAM paper's tables).
    """
    from .attribution import explain

    if target not in ("label", "predicted"):
        raise ValueError("target must be 'label' (explain the true class) or 'predicted' "
                         "(explain the predicted class; a hit also needs it to be right)")
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold is a fraction of the map's maximum (e.g. 0.2), got {threshold!r}")
    images, gt_boxes, gt_labels = _data(data, boxes, labels)
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    hits, ious, found = [], [], []
    starts = range(0, len(images), batch_size)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc="localisation")
    for s in starts:
        x = images[s:s + batch_size].to(device)
        y = gt_labels[s:s + batch_size].to(device)
        if target == "predicted":
            with hooks.preserved(model), torch.no_grad():
                model.eval()
                t = model(x).argmax(1)
        else:
            t = y
        maps = (method(model, x, t) if callable(method)
                else explain(model, x, t, method=method, **options))
        if maps.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"the maps have shape {tuple(maps.shape)}, the images {tuple(x.shape)}: "
                             "localisation needs one map per image at the input resolution")
        for j in range(len(x)):
            box = box_from_map(maps[j], threshold)
            v = 0.0 if box is None else box_iou(box, gt_boxes[s + j])
            ok = v >= iou and (target == "label" or bool(t[j] == y[j]))
            found.append(box)
            ious.append(v)
            hits.append(ok)
    return dict(accuracy=float(np.mean(hits)), hits=torch.tensor(hits), ious=torch.tensor(ious),
                boxes=found)


def localisation_accuracy(model: nn.Module, data, method: str | Callable = "gradcam",
                          threshold: float = 0.2, iou: float = 0.5, **kwargs) -> float:
    """Share of images localised by ``method`` (the CAM paper's protocol, see the module
    docstring): threshold at ``threshold`` x max, box the largest connected region,
    hit when IoU >= ``iou``. ``data``: a dataset with ``ground_truth(i)`` (e.g.
    ``xailab.data.shapes("test", 200)``) or images [N,3,H,W] with ``boxes=`` and
    ``labels=``. Other keywords as in ``localisation``."""
    return localisation(model, data, method, threshold, iou, **kwargs)["accuracy"]


# ===================================================================== faithfulness
# Deletion and insertion (Petsiuk, Das & Saenko 2018, BMVC): change the pixels in order of
# importance, `step` at a time, and follow the target class probability.

@contextlib.contextmanager
def _evaluating(model):
    """Eval mode and no autograd for the body; modes and flags restored afterwards."""
    with hooks.preserved(model), torch.no_grad():
        model.eval()
        yield


def _target(model, x, target) -> torch.Tensor:
    """``resolve_target`` in eval mode (a None target costs a forward pass)."""
    from . import attribution

    with _evaluating(model):
        return attribution.resolve_target(model, x, target)


def _order(heatmaps: torch.Tensor) -> torch.Tensor:
    """Rank of every pixel, 0 = most important; ties broken by the flattened index."""
    h = heatmaps.flatten(1)
    order = torch.sort(h, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h.shape[1], device=h.device).expand_as(order))
    return rank


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
    from . import attribution

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
    with _evaluating(model):
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
    from . import attribution

    attribution.check_input(x, model)
    t = _target(model, x, target)     # the class of the original image
    # image k shows x where the rank is below k*step and the blurred copy elsewhere
    curves, frac = _perturbation_curves(model, blurred(x), heatmaps, t, step, x, batch_size)
    auc = _curve_auc(curves, frac)
    return (auc, curves, frac) if return_curves else auc


# ===================================================================== localisation
# Pointing game (Zhang et al. 2016, ECCV / IJCV 2018); relevance mass and rank accuracy
# (Arras, Osman & Samek 2022, Information Fusion).

def _maps_and_masks(heatmaps, masks):
    h = torch.as_tensor(heatmaps).detach().float()
    m = torch.as_tensor(masks).detach().bool().to(h.device)
    if h.dim() == 2:
        h, m = h[None], m[None] if m.dim() == 2 else m
    if h.dim() != 3 or m.shape != h.shape:
        raise ValueError(f"heatmaps [N,H,W] and masks [N,H,W] must match, got {tuple(h.shape)} "
                         f"and {tuple(m.shape)}")
    _finite(h)
    return h, m


def _finite(h):
    if not torch.isfinite(h).all():
        bad = int((~torch.isfinite(h)).flatten(1).any(1).sum())
        raise ValueError(f"{bad} heat map(s) contain NaN or inf values: the explanation itself failed "
                         "(check the images and the method's options) before scoring it")


@solves("evaluation.pointing_game")
def pointing_game(heatmaps, masks, tolerance: int = 15) -> torch.Tensor:
    """BoolTensor[N]: a hit when some pixel within ``tolerance`` pixels (Euclidean) of
    the map's maximum (the first one in raster order) lies in the object mask.
    The default of 15 px is the paper's, for ImageNet-sized images; on 64x64 shapes
    use a few pixels."""
    h, m = _maps_and_masks(heatmaps, masks)
    n, hgt, wid = h.shape
    peak = h.flatten(1).argmax(1)
    py, px = (peak // wid).view(-1, 1, 1), (peak % wid).view(-1, 1, 1)
    yy = torch.arange(hgt, device=h.device).view(1, -1, 1)
    xx = torch.arange(wid, device=h.device).view(1, 1, -1)
    near = (yy - py) ** 2 + (xx - px) ** 2 <= tolerance ** 2
    return (near & m).flatten(1).any(1)


def _non_negative(h):
    if (h < 0).any():
        raise ValueError("relevance scores need non-negative maps; pass heatmaps.clamp(min=0) "
                         "or heatmaps.abs() (xailab.explain's default heat maps are non-negative)")


@solves("evaluation.relevance_mass")
def relevance_mass(heatmaps, masks) -> torch.Tensor:
    """Share of the (non-negative) relevance that falls inside the mask, per image."""
    h, m = _maps_and_masks(heatmaps, masks)
    _non_negative(h)
    total = h.flatten(1).sum(1)
    inside = (h * m).flatten(1).sum(1)
    return torch.where(total > 0, inside / total.clamp_min(1e-30), torch.zeros_like(total))


def relevance_rank(heatmaps, masks) -> torch.Tensor:
    """Of the K most relevant pixels (K = mask size), the share inside the mask."""
    h, m = _maps_and_masks(heatmaps, masks)
    _non_negative(h)
    flat, mflat = h.flatten(1), m.flatten(1)
    rank = _order(flat)
    k = mflat.sum(1, keepdim=True)
    top = rank < k
    return (top & mflat).sum(1).float() / k.squeeze(1).clamp_min(1).float()


# ===================================================================== robustness
# Max-sensitivity (Yeh, Hsieh, Suggala, Inouye & Ravikumar 2019, NeurIPS).

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
    from . import attribution

    attribution.check_input(x, model)
    n = n_perturbations
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n_perturbations must be a positive integer, got {n!r}")
    t = _target(model, x, target)
    base = attribution.explain(model, x, t, method, **options)
    xs = (perturb or uniform_perturbation(radius, seed))(x.repeat_interleave(n, 0))
    pert = attribution.explain(model, xs, t.repeat_interleave(n), method, **options)
    diff = (pert - base.repeat_interleave(n, 0)).flatten(1).norm(dim=1)
    norm = base.flatten(1).norm(dim=1)
    norm = torch.where(norm == 0, torch.ones_like(norm), norm)
    return (diff.view(-1, n) / norm[:, None]).amax(1)


# ===================================================================== sanity checks
# Model and data randomisation (Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim 2018,
# NeurIPS): an explanation that does not change when the model's weights are destroyed
# cannot be explaining the model.

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
    from . import attribution

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
    from . import attribution

    t = _target(model, x, target)
    a = attribution.explain(model, x, t, method, **options)
    b = attribution.explain(random_model, x, t, method, **options)
    return {s: round(float(SIMILARITIES[s](a, b).mean()), 4) for s in similarities}


# ===================================================================== the shortcut

def shortcut_exposure(model: nn.Module, method: str, n: int = 32, seed: int = 0, target=None,
                      **options) -> dict:
    """How much of an explanation lands on the watermark of the shortcut data
    (``xailab.data.shapes("test", n, shortcut=True, watermark="all")``): the mean share
    of the non-negative attribution mass on the watermark, and the watermark's share of
    the image area for comparison. On ``shapesnet-shortcut`` a faithful method puts
    far more than the area share there."""
    from . import attribution
    from .data import shapes

    ds = shapes("test", n, seed=seed, shortcut=True, watermark="all")
    x = ds.images()
    marks = torch.stack([torch.as_tensor(ds.ground_truth(i)["watermark"]) for i in range(n)]).bool()
    heat = attribution.explain(model, x, target, method, **options).clamp_min(0)
    return {"mass": round(float(relevance_mass(heat, marks).mean()), 4),
            "area": round(float(marks.float().mean()), 4)}


# ===================================================================== the table

def comparison_table(models: dict, x: torch.Tensor, masks: torch.Tensor, methods=None, options=None,
                     shortcut_model: nn.Module | None = None, step: int = 256, tolerance: int = 3,
                     n_sensitivity: int = 3, randomise_layers: int = 1, progress: bool = True) -> list[dict]:
    """One row per (model, method): deletion AUC (lower is better), insertion AUC
    (higher), pointing game and relevance mass on the object masks (higher), max-
    sensitivity (lower), Spearman similarity to the same method after randomising the
    top ``randomise_layers`` parameter layers (lower), watermark mass on
    ``shortcut_model`` (same for every model; higher = exposes the shortcut) and the
    seconds per image of the explanation itself. A last row per model scores a
    random map: the baseline every method should beat.

    ``models``: {name: model}; ``x`` [N,3,H,W] with object ``masks`` [N,H,W];
    ``methods``: default every registered one; ``options``: {method: {option: value}}
    (cheap settings for the slow perturbation methods keep the table quick).
    """
    import time

    from tqdm.auto import tqdm

    from . import attribution
    from .attribution.cam import CAMNotApplicableError

    methods = list(methods or attribution.methods())
    options = options or {}
    exposure = {}
    rows = []
    bar = tqdm(total=len(models) * len(methods), disable=not progress, desc="comparison table")
    for mname, model in models.items():
        top = parameter_layers(model)[:randomise_layers]
        rand = randomise(model, top)
        t = _target(model, x, None)
        for method in methods:
            opts = options.get(method, {})
            row = {"model": mname, "method": method}
            try:
                start = time.perf_counter()
                heat = attribution.explain(model, x, t, method, **opts)
                row["s/image"] = round((time.perf_counter() - start) / len(x), 4)
            except CAMNotApplicableError:          # CAM on a head without GAP: a note, not a row
                row["note"] = "not applicable: CAM needs global average pooling + one linear layer; use gradcam"
                rows.append(row)
                bar.update()
                continue
            row.update(_map_scores(model, x, t, heat, masks, step, tolerance))
            row["sensitivity"] = round(float(max_sensitivity(model, x, method, t, n_sensitivity, **opts).mean()), 3)
            row["randomised"] = round(float(spearman(heat, attribution.explain(rand, x, t, method, **opts)).mean()), 3)
            if shortcut_model is not None:
                if method not in exposure:
                    exposure[method] = shortcut_exposure(shortcut_model, method, n=len(x), **opts)["mass"]
                row["shortcut"] = round(exposure[method], 3)
            rows.append(row)
            bar.update()
        noise = torch.rand(x.shape[0], *x.shape[-2:], generator=torch.Generator().manual_seed(0)).to(x)
        rows.append({"model": mname, "method": "(random map)",
                     **_map_scores(model, x, t, noise, masks, step, tolerance)})
    bar.close()
    return rows


def _map_scores(model, x, t, heat, masks, step, tolerance) -> dict:
    return {"deletion": round(float(deletion(model, x, heat, t, step).mean()), 3),
            "insertion": round(float(insertion(model, x, heat, t, step).mean()), 3),
            "pointing": round(float(pointing_game(heat, masks, tolerance).float().mean()), 3),
            "mass": round(float(relevance_mass(heat.clamp_min(0), masks).mean()), 3)}


def format_table(rows: list[dict], columns=None) -> str:
    """Rows of dicts as an aligned plain-text table (missing cells blank)."""
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    cells = [[str(c) for c in columns]] + [["" if r.get(c) is None else str(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells)
