"""``dissect``: one forward pass over a Broden dataset (thresholds, top images, and the
layers' activations kept in memory or in a temporary file), then the IoU tallies from the
kept activations and the segmentations, streamed in batches, for one or several layers at
once (see ``xailab.dissect``)."""
from __future__ import annotations

import math
import tempfile
import warnings
from collections import Counter

import numpy as np

import torch
import torch.nn.functional as F

from .. import hooks
from ..data import broden as _broden
from ..runtime import batched, device_of, evaluating, fast_layout, named_inference_copy, positive_int
from ..solving import solves
from .result import Dissection


FORWARD_IMAGES_CPU = 8         # images per forward pass on the CPU (larger batches run slower there)


def _prefetched(batches):
    """The items of ``batches``, each read in a background thread while the previous one
    is used (decoding images and segmentations overlaps the model's work)."""
    from concurrent.futures import ThreadPoolExecutor

    it = iter(batches)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(next, it, None)
        while True:
            item = pending.result()
            if item is None:
                return
            pending = pool.submit(next, it, None)
            yield item


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
    # channels-last runs the CPU kernel 3-4x faster, with the same values
    a = activation.float().contiguous(memory_format=torch.channels_last)
    up = F.interpolate(a, size=tuple(size), mode="bilinear", align_corners=False)
    return up > thresholds.to(up).view(1, -1, 1, 1)


def _mask_pixels(activation: torch.Tensor, thresholds: torch.Tensor, size):
    """(image, unit, pixel) LongTensors listing every pixel of ``unit_masks``'s masks
    (pixel = row * width + column of ``size``). A bilinear value is a weighted mean of
    four map values, so only the maps whose peak reaches the threshold (less a margin
    for float rounding) can have mask pixels: only those are upsampled (as the channels
    of one image)."""
    t = thresholds.to(activation).float()
    image, unit = (activation.float().amax((2, 3)) >= t - 1e-6 * t.abs()).nonzero(as_tuple=True)
    if len(image) == 0:
        return image, unit, image
    masks = unit_masks(activation[image, unit][None], t[unit], size)[0]          # [maps, *size]
    k, pixel = masks.flatten(1).nonzero(as_tuple=True)
    return image[k], unit[k], pixel


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

    Forward pass (``add_to_top``, ``add_top_images``, then ``set_thresholds``): the top
    ``quantile`` share of each unit's activation values (every ``stride``-th value when
    the exact buffer would exceed ``max_top``) gives its threshold; per unit the images
    with the highest peaks. Tally (``add_tally``): per unit the mask pixels per labelled
    category and per concept.
    """

    def __init__(self, name: str, probe: torch.Tensor, values: int, stride: int, quantile: float):
        self.name, self.n_units, self.values, self.stride = name, probe.shape[1], values, stride
        self.q = 1.0 - quantile
        self.kept = -(-values // stride)                # values per unit in the threshold buffer
        self.need = self.kept - int(math.floor(self.q * (self.kept - 1)))
        self.seen = 0                                   # values per unit met so far (for the stride)
        self.top = None
        self.thresholds = None
        self.top_scores = torch.full((self.n_units, 0), -math.inf, device=probe.device)
        self.top_images = torch.zeros((self.n_units, 0), dtype=torch.long, device=probe.device)

    def add_to_top(self, a: torch.Tensor):
        """Merge a batch's activations [B, U, h, w] into the top buffer."""
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

    def add_top_images(self, a: torch.Tensor, rows: list, k: int):
        """Keep the ``k`` images (dataset ``rows``) with the highest peak activation per unit."""
        score = a.amax((2, 3)).t()                                          # [U, B]
        rows = torch.tensor(rows, device=a.device).expand_as(score)
        s = torch.cat([self.top_scores, score], 1)
        i = torch.cat([self.top_images, rows], 1)
        self.top_scores, pick = s.topk(min(k, s.shape[1]), dim=1)
        self.top_images = i.gather(1, pick)

    def start_tally(self, n_labels: int, n_categories: int, device):
        f64 = dict(dtype=torch.float64, device=device)
        self.intersection = torch.zeros(self.n_units, n_labels + 1, **f64)
        self.by_category = torch.zeros(self.n_units, n_categories, **f64)   # mask pixels per category

    def add_tally(self, a: torch.Tensor, labels: torch.Tensor, whole: torch.Tensor, labelled: torch.Tensor,
                  size):
        """Count a chunk's mask pixels per labelled category and per concept. ``labels``
        LongTensor[n, K, pixels] and ``whole`` [n, J] are the concepts each pixel shows,
        each at most once (see ``_concept_labels``). Only the mask pixels are visited."""
        n, units = a.shape[:2]
        image, unit, pixel = _mask_pixels(a, self.thresholds, size)
        counts = torch.bincount(image * units + unit, minlength=n * units).view(n, units).double()
        self.by_category += counts.t() @ labelled
        width = self.intersection.shape[1]
        flat = self.intersection.view(-1)
        for k in range(labels.shape[1]):
            flat += torch.bincount(unit * width + labels[image, k, pixel], minlength=flat.numel())
        column = torch.arange(units, device=a.device)[None].expand(n, units)
        for j in range(whole.shape[1]):                 # a whole-image label covers every pixel
            self.intersection.index_put_((column, whole[:, j:j + 1].expand(n, units)), counts, accumulate=True)

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


def _unique_rows(labels: torch.Tensor, dim: int) -> torch.Tensor:
    """``labels`` sorted along ``dim`` with repeated label numbers set to 0 (no concept)."""
    labels = labels.sort(dim).values
    if labels.shape[dim] > 1:
        later, earlier = labels.narrow(dim, 1, labels.shape[dim] - 1), labels.narrow(dim, 0, labels.shape[dim] - 1)
        later.masked_fill_(later == earlier, 0)
    return labels


def _concept_labels(pixels: torch.Tensor, whole: torch.Tensor):
    """The concepts of a chunk of images, each counted once per pixel: (pixel labels
    LongTensor[n, K, pixels], whole-image labels [n, J]); a pixel label that repeats
    another map's label or a whole-image label of its image becomes 0 (no concept)."""
    whole = _unique_rows(whole, 1)
    labels = _unique_rows(pixels.flatten(2), 1)
    covered = (labels[..., None] == whole[:, None, None, :]).any(-1)
    return labels.masked_fill_(covered, 0), whole


class _Activations:
    """The layers' activations of every batch, kept in memory when they fit in
    ``budget`` numbers, else written to a temporary file and read back batch by batch
    (memory stays bounded by the batch size)."""

    def __init__(self, total: int, budget: int):
        self.memory = [] if total <= budget else None
        self.file = None if self.memory is not None else tempfile.TemporaryFile()
        self.where = []                                 # per batch: {layer: (offset, shape, dtype, device)}

    def add(self, acts: dict):
        if self.memory is not None:
            self.memory.append(acts)
            return
        entry = {}
        for name, a in acts.items():
            arr = a.detach().cpu().contiguous().numpy()
            entry[name] = (self.file.tell(), arr.shape, arr.dtype, a.device)
            self.file.write(arr.tobytes())
        self.where.append(entry)

    def get(self, b: int) -> dict:
        if self.memory is not None:
            return self.memory[b]
        out = {}
        for name, (offset, shape, dtype, device) in self.where[b].items():
            self.file.seek(offset)
            arr = np.fromfile(self.file, dtype=dtype, count=int(np.prod(shape))).reshape(shape)
            out[name] = torch.from_numpy(arr).to(device)
        return out

    def close(self):
        self.memory = None
        if self.file is not None:
            self.file.close()


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


def _forward_pass(model, data, tallies, fires, device, batch_size, top_k, kept, bar):
    """The one forward pass: every unit's threshold and top images; the activations go to
    ``kept`` (an ``_Activations``) for the tally."""
    layers = [t.name for t in tallies]
    for batch in bar(_prefetched(data.batches(batch_size, segmentations=False)), "activations"):
        images = fast_layout(batch.images.to(device))        # channels-last: faster convolutions on the CPU
        # on the CPU a few images per forward pass keep the early maps in the caches
        step = FORWARD_IMAGES_CPU if images.device.type == "cpu" else len(images)
        parts = [_forward(model, layers, images[s], fires)[0] for s in batched(len(images), step)]
        acts = {n: torch.cat([p[n] for p in parts]) if len(parts) > 1 else parts[0][n] for n in layers}
        for t in tallies:
            t.add_to_top(acts[t.name])
            t.add_top_images(acts[t.name], batch.index, top_k)
        kept.add(acts)
    for t in tallies:
        t.set_thresholds()


def _tally(data, tallies, device, batch_size, kept, max_elements, bar):
    """Fill every layer's counts from the kept activations and the segmentations;
    returns the pixels per concept (float64 [labels + 1])."""
    layers = [t.name for t in tallies]
    for t in tallies:
        t.start_tally(data.n_labels, len(data.categories), device)
    truth = torch.zeros(data.n_labels + 1, dtype=torch.float64, device=device)
    u_max = max(t.n_units for t in tallies)
    batches = _prefetched(data.batches(batch_size, images=False))
    for b_no, batch in enumerate(bar(batches, f"IoU {', '.join(layers)}")):
        acts = kept.get(b_no)
        pixels, whole = batch.pixels.to(device), batch.whole.to(device)
        labelled = batch.labelled.to(device).double()
        size = pixels.shape[2:]
        # image chunks small enough for max_elements upsampled values per layer
        # (so memory does not grow with the batch either)
        chunk = max(1, max_elements // max(1, size.numel() * u_max))
        for part in batched(len(pixels), chunk):
            labels, whole_labels = _concept_labels(pixels[part], whole[part])
            truth += torch.bincount(labels.flatten(), minlength=truth.numel())[:truth.numel()].double()
            truth.index_put_((whole_labels.flatten(),), torch.full((whole_labels.numel(),), float(size.numel()),
                                                                  dtype=torch.float64, device=device),
                             accumulate=True)
            for t in tallies:
                t.add_tally(acts[t.name][part], labels, whole_labels, labelled[part], size)
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
    each unit's threshold. The data is forwarded once (stopping after the last
    requested layer): the layers' activations stay in memory when they fit in
    ``cache_elements`` numbers, else they go to a temporary file and are read back
    batch by batch. The tally upsamples chunks of at most ``max_elements`` values
    (images x units x pixels) and visits only the mask pixels. Thresholds are exact
    quantiles while the kept top values (units x quantile x values per unit) fit in
    ``max_top`` numbers; beyond, they are estimated from a fixed subsample with a
    warning, so memory never grows with the dataset.
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
        net = named_inference_copy(model, keep=layers)      # same layer names, fewer operations
        tallies, fires = _layer_tallies(net, layers, data, device, quantile, max_top)
        kept = _Activations(sum(t.values * t.n_units for t in tallies), cache_elements)
        try:
            _forward_pass(net, data, tallies, fires, device, batch_size, top_k, kept, bar)
            truth = _tally(data, tallies, device, batch_size, kept, max_elements, bar)
        finally:
            kept.close()
    results = {t.name: t.result(data, truth, quantile=quantile, iou_cutoff=iou_cutoff) for t in tallies}
    return results[layer] if isinstance(layer, str) else results
