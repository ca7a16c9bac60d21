"""``dissect``: the two passes over a Broden dataset (thresholds, then IoU tallies),
streamed in batches, for one or several layers at once (see ``xailab.dissect``)."""
from __future__ import annotations

import math
import warnings
from collections import Counter

import torch
import torch.nn.functional as F

from .. import hooks
from ..data import broden as _broden
from ..runtime import batched, device_of, evaluating, positive_int
from ..solving import solves
from .result import Dissection


class _Stop(Exception):
    """Raised by a hook to end a forward pass once every wanted layer has fired."""


def _forward(model, layers, x, fires: dict | None = None) -> tuple[dict, dict]:
    """Outputs of ``layers`` for ``model(x)`` and how often each fired. With ``fires`` (layer -> times it fires
    in one forward pass), the pass stops as soon as each layer has fired that often:
    the rest of the network is never computed."""
    count = {n: 0 for n in layers}

    def stop(name):
        def hook(module, inp, out):
            count[name] += 1
            if fires is not None and all(count[n] >= fires[n] for n in layers):
                raise _Stop
        return hook

    with hooks.record(model, layers) as rec, hooks.forward_hooks(model, {n: stop(n) for n in layers}):
        try:
            model(x)
        except _Stop:
            pass
    out = {}
    for name in layers:
        if name not in rec.activations:
            raise ValueError(f"layer {name!r} did not run in the forward pass")
        a = rec.activations[name]
        if a.dim() != 4:
            raise ValueError(f"layer {name!r} outputs shape {tuple(a.shape)}; dissection needs a "
                             "spatial map [N, C, H, W] (see xailab.hooks.spatial_layers(model))")
        out[name] = a
    return out, count


@solves("dissect.unit_masks")
def unit_masks(activation: torch.Tensor, thresholds: torch.Tensor, size) -> torch.Tensor:
    """BoolTensor[N, U, *size]: activations upsampled bilinearly (align_corners=False)
    to ``size`` and compared with the per-unit ``thresholds``."""
    up = F.interpolate(activation.float(), size=tuple(size), mode="bilinear", align_corners=False)
    return up > thresholds.to(up).view(1, -1, 1, 1)


def _quantile_from_top(top: torch.Tensor, total: int, q: float) -> torch.Tensor:
    """torch.quantile(values, q) per row (linear interpolation) from the values' top
    entries sorted descending; ``total`` = number of values per row."""
    pos = torch.tensor(q, dtype=torch.float64) * (total - 1)
    lo = int(torch.floor(pos))
    hi = min(lo + 1, total - 1)
    w = float(pos - lo)
    v_lo, v_hi = top[:, total - 1 - lo], top[:, total - 1 - hi]
    return torch.lerp(v_lo, v_hi, torch.full_like(v_lo, w))


def _stride(ratio: float, act: torch.Tensor) -> int:
    """1 when ``ratio`` <= 1, else the smallest prime >= ratio that does not divide
    the feature map's size (so the subsample does not lock onto one column)."""
    if ratio <= 1:
        return 1
    hw = act.shape[2] * act.shape[3]
    p = max(2, math.ceil(ratio))
    while any(p % d == 0 for d in range(2, int(p ** 0.5) + 1)) or hw % p == 0 or act.shape[3] % p == 0:
        p += 1
    return p


class _LayerTally:
    """The running state of one layer's dissection.

    Threshold pass (``add_to_top``, then ``set_thresholds``): the top ``quantile``
    share of each unit's activation values (every ``stride``-th value when the exact
    buffer would exceed ``max_top``) gives its threshold. Tally pass
    (``add_top_images``, ``add_masks``, ``add_intersections``): per unit the images with
    the highest peaks, the mask pixels per category and the mask pixels per concept.
    """

    def __init__(self, name: str, probe: torch.Tensor, values: int, stride: int, quantile: float):
        self.name, self.n_units, self.values, self.stride = name, probe.shape[1], values, stride
        self.q = 1.0 - quantile
        self.kept = -(-values // stride)                # values per unit in the threshold buffer
        self.need = self.kept - int(math.floor(self.q * (self.kept - 1)))
        self.seen = 0                                   # values per unit met so far (for the stride)
        self.top = None
        self.thresholds = None

    def add_to_top(self, a: torch.Tensor):
        """Threshold pass: merge a batch's activations [B, U, h, w] into the top buffer."""
        vals = a.transpose(0, 1).reshape(a.shape[1], -1).float()
        if self.stride > 1:                             # global positions offset, offset + stride, ...
            first = (-self.seen) % self.stride
            self.seen += vals.shape[1]
            vals = vals[:, first::self.stride]
        merged = vals if self.top is None else torch.cat([self.top, vals], 1)
        self.top = merged.topk(min(self.need, merged.shape[1]), dim=1, sorted=False).values

    def set_thresholds(self):
        top = self.top.sort(dim=1, descending=True).values
        self.thresholds = _quantile_from_top(top, self.kept, self.q)
        self.top = None

    def start_tally(self, n_labels: int, n_categories: int, device):
        f64 = dict(dtype=torch.float64, device=device)
        self.intersection = torch.zeros(self.n_units, n_labels + 1, **f64)
        self.by_category = torch.zeros(self.n_units, n_categories, **f64)   # mask pixels per category
        self.top_scores = torch.full((self.n_units, 0), -math.inf, device=device)
        self.top_images = torch.zeros((self.n_units, 0), dtype=torch.long, device=device)

    def add_top_images(self, a: torch.Tensor, rows: list, k: int):
        """Keep the ``k`` images (dataset ``rows``) with the highest peak activation per unit."""
        score = a.amax((2, 3)).t()                                          # [U, B]
        rows = torch.tensor(rows, device=a.device).expand_as(score)
        s = torch.cat([self.top_scores, score], 1)
        i = torch.cat([self.top_images, rows], 1)
        self.top_scores, pick = s.topk(min(k, s.shape[1]), dim=1)
        self.top_images = i.gather(1, pick)

    def add_masks(self, a: torch.Tensor, labelled: torch.Tensor, size) -> torch.Tensor:
        """Count the unit masks' pixels per labelled category; the masks as float [U, N * pixels]."""
        m = unit_masks(a, self.thresholds, size).view(a.shape[0], self.n_units, -1)
        self.by_category += m.sum(2).double().t() @ labelled
        return m.transpose(0, 1).reshape(self.n_units, -1).float()

    def add_intersections(self, masks: torch.Tensor, present: torch.Tensor, onehot: torch.Tensor):
        self.intersection[:, present] += (masks @ onehot).double()

    def result(self, data, truth: torch.Tensor, **info) -> Dissection:
        """The ``Dissection``: per concept, the mask pixels counted in its primary category."""
        primary = data.label_category[1:].to(truth.device)
        act = torch.where(primary >= 0, self.by_category[:, primary.clamp_min(0)],
                          torch.zeros((), dtype=torch.float64, device=truth.device))
        inter = self.intersection[:, 1:]
        union = act + truth[1:] - inter
        iou = torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(union))
        cats = list(data.categories)
        return Dissection(
            layer=self.name, iou=iou.float().cpu(), concepts=list(data.label_names[1:]),
            concept_categories=[cats[int(c)] if c >= 0 else "" for c in data.label_category[1:]],
            categories=cats, thresholds=self.thresholds.cpu(), intersection=inter.cpu(),
            activation=act.cpu(), truth=truth[1:].cpu(), top_images=self.top_images.cpu(),
            top_scores=self.top_scores.cpu(), n_images=len(data), folder=str(data.folder), **info)


def _concepts(pixels: torch.Tensor, whole: torch.Tensor, n_labels: int):
    """The concepts present in a chunk of images and, per pixel, which of them it shows:
    (label numbers LongTensor[C'], float one-hot [N * pixels, C']), or None when no
    concept is present. A whole-image label covers every pixel; label 0 is no concept."""
    seen = torch.bincount(pixels.flatten(), minlength=n_labels + 1)[:n_labels + 1] > 0
    seen[whole.flatten()] = True
    seen[0] = False
    present = torch.nonzero(seen).flatten()
    if present.numel() == 0:
        return None
    (nb, K), P, lb = pixels.shape[:2], pixels.shape[2] * pixels.shape[3], present.numel()
    column = torch.full((n_labels + 1,), lb, dtype=torch.long, device=pixels.device)   # absent -> dump
    column[present] = torch.arange(lb, device=pixels.device)
    onehot = torch.zeros(nb, P, lb + 1, device=pixels.device)
    onehot.scatter_(2, column[pixels].view(nb, K, P).transpose(1, 2), 1.0)
    onehot.scatter_(2, column[whole].view(nb, 1, -1).expand(nb, P, whole.shape[1]), 1.0)
    return present, onehot[..., :lb].reshape(nb * P, lb)


def _layer_tallies(model, layers, data, device, quantile: float, max_top: int):
    """One ``_LayerTally`` per layer, sized by dry runs at each image size, and how
    often each layer fires in one forward pass."""
    values = dict.fromkeys(layers, 0)                   # activation values per unit over the dataset
    for (ih, iw), count in Counter((r["ih"], r["iw"]) for r in data.rows).items():
        probe, fires = _forward(model, layers, torch.zeros(1, 3, ih, iw, device=device))
        for n in layers:
            values[n] += count * probe[n].shape[2] * probe[n].shape[3]
    # exact thresholds keep each unit's top `quantile` share of values; when that
    # exceeds max_top numbers, every stride-th value (a fixed subsample) is used
    stride = {n: _stride(probe[n].shape[1] * (quantile * values[n] + 2) * len(layers) / max_top, probe[n])
              for n in layers}
    if any(v > 1 for v in stride.values()):
        warnings.warn("the dataset is large for exact thresholds within max_top="
                      f"{max_top}: estimating them from every {max(stride.values())}-th activation "
                      "value (raise max_top for exact quantiles)")
    return [_LayerTally(n, probe[n], values[n], stride[n], quantile) for n in layers], fires


def _threshold_pass(model, data, tallies, fires, device, batch_size, cache_elements, bar):
    """Every unit's threshold; returns the activations of every batch when they fit in
    ``cache_elements`` numbers (so the tally pass need not run the model), else None."""
    layers = [t.name for t in tallies]
    cache, cached = [], 0
    for batch in bar(data.batches(batch_size, segmentations=False), "thresholds"):
        acts, _ = _forward(model, layers, batch.images.to(device), fires)
        if cache is not None:                 # keep activations for the tally pass while they fit
            cached += sum(a.numel() for a in acts.values())
            if cached <= cache_elements:
                cache.append(acts)
            else:
                cache = None
        for t in tallies:
            t.add_to_top(acts[t.name])
    for t in tallies:
        t.set_thresholds()
    return cache


def _tally_pass(model, data, tallies, fires, device, batch_size, cache, top_k, max_elements, bar):
    """Fill every layer's counts; returns the pixels per concept (float64 [labels + 1])."""
    layers = [t.name for t in tallies]
    for t in tallies:
        t.start_tally(data.n_labels, len(data.categories), device)
    truth = torch.zeros(data.n_labels + 1, dtype=torch.float64, device=device)
    u_max = max(t.n_units for t in tallies)
    batches = data.batches(batch_size, images=cache is None)
    for b_no, batch in enumerate(bar(batches, f"IoU {', '.join(layers)}")):
        acts = cache[b_no] if cache is not None else _forward(model, layers, batch.images.to(device), fires)[0]
        pixels, whole = batch.pixels.to(device), batch.whole.to(device)
        labelled = batch.labelled.to(device).double()
        for t in tallies:
            t.add_top_images(acts[t.name], batch.index, top_k)
        # image chunks small enough for max_elements numbers per concept and mask tensor
        # (so memory does not grow with the batch either)
        size = pixels.shape[2:]
        chunk = max(1, max_elements // max(1, size.numel() * (data.n_labels + u_max)))
        for part in batched(len(pixels), chunk):
            concepts = _concepts(pixels[part], whole[part], data.n_labels)
            if concepts is not None:
                truth[concepts[0]] += concepts[1].sum(0).double()
            for t in tallies:
                masks = t.add_masks(acts[t.name][part], labelled[part], size)
                if concepts is not None:
                    t.add_intersections(masks, *concepts)
    return truth


@solves("dissect.dissect")
def dissect(model, layer, folder, batch_size: int = 64, quantile: float = 0.005,
            iou_cutoff: float = 0.04, top_k: int = 8, progress: bool = True,
            max_elements: int = 2 ** 24, cache_elements: int = 2 ** 25, max_top: int = 2 ** 25):
    """Dissect ``layer`` (a name, or a list of names: one result per layer, from the
    same two passes over the data) of ``model`` on the Broden folder ``folder`` (a
    path or an opened ``xailab.data.broden.Broden``). Returns a ``Dissection`` (or a
    dict layer -> ``Dissection``).

    Images are fed at their stored size as float RGB in [0, 1], on the model's
    device; the model is left as found. ``quantile`` is the top fraction that sets
    each unit's threshold; ``max_elements`` bounds the size of the per-chunk
    concept tensors (pixels x (concepts + units)); when all activations of the
    layers fit in ``cache_elements`` numbers they are kept from the first pass
    instead of running the model twice. Thresholds are exact quantiles while the
    kept top values (units x quantile x values per unit) fit in ``max_top``
    numbers; beyond, they are estimated from a fixed subsample with a warning, so
    memory never grows with the dataset. The forward pass stops after the last
    requested layer.
    """
    if not 0 < quantile < 0.5:
        raise ValueError(f"quantile is the top fraction of activations that pass the threshold "
                         f"(0.005 for the paper's 0.995 quantile), between 0 and 0.5; got {quantile}")
    batch_size = positive_int(batch_size, "batch_size")
    from tqdm.auto import tqdm

    data = folder if isinstance(folder, _broden.Broden) else _broden.read(folder)
    layers = [layer] if isinstance(layer, str) else list(layer)
    for name in layers:
        hooks.get_layer(model, name)          # unknown names fail before any work
    device = device_of(model)
    n_batches = len(data.batch_plan(batch_size))

    def bar(batches, desc):
        return tqdm(batches, total=n_batches, desc=desc, disable=not progress, leave=False)

    with evaluating(model):
        tallies, fires = _layer_tallies(model, layers, data, device, quantile, max_top)
        cache = _threshold_pass(model, data, tallies, fires, device, batch_size, cache_elements, bar)
        truth = _tally_pass(model, data, tallies, fires, device, batch_size, cache, top_k, max_elements, bar)
    del cache
    results = {t.name: t.result(data, truth, quantile=quantile, iou_cutoff=iou_cutoff) for t in tallies}
    return results[layer] if isinstance(layer, str) else results
