"""Localisation against ground truth: boxes from maps (the CAM paper's weakly supervised
localisation), the pointing game, relevance mass and relevance rank.

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

from typing import Callable

import numpy as np
import torch
from torch import nn

from ..runtime import device_of, evaluating
from ..solving import solves

Box = tuple[int, int, int, int]


@solves("evaluation.box_iou")
def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1) with exclusive ends."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(iw, 0) * max(ih, 0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _largest(mask):
    """(labels, the largest 8-connected region's properties) of a boolean [H,W] mask, with
    scikit-image; None for an empty mask. Ties: the first region in raster order."""
    from skimage.measure import label, regionprops

    mask = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask, dtype=bool)
    labels = label(mask, connectivity=2)
    regions = regionprops(labels)
    return labels, (max(regions, key=lambda r: r.area) if regions else None)


@solves("evaluation.largest_region")
def largest_region(mask) -> np.ndarray:
    """The largest 8-connected component of a boolean [H,W] mask (empty mask: all False)."""
    labels, best = _largest(mask)
    return labels == best.label if best is not None else np.zeros(labels.shape, dtype=bool)


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
    y0, x0, y1, x1 = _largest(h >= threshold * peak)[1].bbox
    return int(x0), int(y0), int(x1), int(y1)


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
    from ..attribution import explain

    if target not in ("label", "predicted"):
        raise ValueError("target must be 'label' (explain the true class) or 'predicted' "
                         "(explain the predicted class; a hit also needs it to be right)")
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold is a fraction of the map's maximum (e.g. 0.2), got {threshold!r}")
    images, gt_boxes, gt_labels = _data(data, boxes, labels)
    device = device_of(model)
    hits, ious, found = [], [], []
    starts = range(0, len(images), batch_size)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc="localisation")
    for s in starts:
        x = images[s:s + batch_size].to(device)
        y = gt_labels[s:s + batch_size].to(device)
        if target == "predicted":
            with evaluating(model):
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


# ===================================================================== localisation
# Pointing game (Zhang et al. 2016, ECCV / IJCV 2018); relevance mass and rank accuracy
# (Arras, Osman & Samek 2022, Information Fusion).

def _order(heatmaps: torch.Tensor) -> torch.Tensor:
    """Rank of every pixel, 0 = most important; ties broken by the flattened index."""
    h = heatmaps.flatten(1)
    order = torch.sort(h, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h.shape[1], device=h.device).expand_as(order))
    return rank


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
def relevance_mass(heatmaps, masks, above_mean: bool = False) -> torch.Tensor:
    """Share of the (non-negative) relevance that falls inside the mask, per image.

    ``above_mean=True`` scores the part of each map above its own mean,
    ``(h - mean(h)).clamp(min=0)``: for maps with no zero point, such as RISE's, where
    a pixel that does not matter sits at the image's average probability."""
    h, m = _maps_and_masks(heatmaps, masks)
    if above_mean:
        h = (h - h.mean((1, 2), keepdim=True)).clamp_min(0)
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
