"""Network dissection (Bau, Zhou, Khosla, Oliva & Torralba, CVPR 2017).

For every unit (channel) of a layer:

1. the threshold T_u is the top-``quantile`` level of its activations over every
   image and position of the dataset (0.995 quantile for ``quantile=0.005``);
2. each activation map is upsampled bilinearly (``align_corners=False``) to the
   segmentation size, and the unit's mask is ``upsampled > T_u``;
3. per concept c, IoU(u, c) = sum |M_u & L_c| / sum |M_u | L_c| over the dataset,
   where the activation total counts only images in which c's (primary) category
   is labelled, and a whole-image label covers every pixel.

A unit is a *detector* of its best concept when that IoU exceeds ``iou_cutoff``
(0.04 in the paper). Everything is vectorised in torch and streamed in batches:
memory depends on the batch size, the number of units and the quantile's top
buffer, never on the number of images beyond that buffer.

    result = dissect(model, "features.block3", folder)
    result.iou          # FloatTensor[units, concepts]
    result.tally()      # NetDissect's tally.csv as a DataFrame
"""
from __future__ import annotations

import csv
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from . import hooks
from .data import broden as _broden
from .solving import solves

__all__ = ["Dissection", "dissect", "plot_summary", "show_top_images", "unit_masks"]


@dataclass
class Dissection:
    """What ``dissect`` found for one layer (see the module docstring).

    ``iou`` FloatTensor[units, concepts]; ``concepts`` label names in column order
    (column j is Broden label number j + 1); ``concept_categories`` their primary
    categories; ``thresholds`` FloatTensor[units]; ``intersection``, ``activation``,
    ``truth`` the summed pixel counts behind each IoU (float64); ``top_images``
    LongTensor[units, k], dataset rows where each unit's peak activation is highest.
    """
    layer: str
    iou: torch.Tensor
    concepts: list
    concept_categories: list
    categories: list
    thresholds: torch.Tensor
    intersection: torch.Tensor
    activation: torch.Tensor
    truth: torch.Tensor
    top_images: torch.Tensor
    top_scores: torch.Tensor
    quantile: float
    iou_cutoff: float
    n_images: int
    folder: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def n_units(self) -> int:
        return self.iou.shape[0]

    @solves("dissect.best")
    def best(self, category: str | None = None):
        """Best concept per unit (overall, or within ``category``): (column LongTensor[U], IoU FloatTensor[U])."""
        iou = self.iou
        if category is not None:
            if category not in self.categories:
                raise ValueError(f"unknown category {category!r}; choose one of {self.categories}")
            keep = torch.tensor([c == category for c in self.concept_categories])
            iou = torch.where(keep, iou, torch.full_like(iou, -1.0))
        score, col = iou.max(1)
        return col, score.clamp_min(0)

    def labels(self) -> list[str]:
        """Best concept name per unit."""
        return [self.concepts[int(c)] for c in self.best()[0]]

    def tally(self):
        """NetDissect's tally table as a pandas DataFrame, one row per unit sorted by
        score: ``unit`` (0-based channel), ``category``, ``label``, ``score`` (IoU of
        the best concept overall), then per category ``<cat>-label``, ``-truth``,
        ``-activation``, ``-intersect``, ``-iou`` for the unit's best concept there."""
        import pandas as pd

        col, score = self.best()
        rows = []
        per_cat = {c: self.best(c)[0] for c in self.categories}
        for u in range(self.n_units):
            j = int(col[u])
            row = {"unit": u, "category": self.concept_categories[j], "label": self.concepts[j],
                   "score": float(score[u])}
            for c in self.categories:
                k = int(per_cat[c][u])
                ok = self.concept_categories[k] == c
                row[f"{c}-label"] = self.concepts[k] if ok else ""
                row[f"{c}-truth"] = int(self.truth[k]) if ok else 0
                row[f"{c}-activation"] = int(self.activation[u, k]) if ok else 0
                row[f"{c}-intersect"] = int(self.intersection[u, k]) if ok else 0
                row[f"{c}-iou"] = float(self.iou[u, k]) if ok else 0.0
            rows.append(row)
        return pd.DataFrame(rows).sort_values("score", ascending=False, kind="stable").reset_index(drop=True)

    def detectors(self, cutoff: float | None = None):
        """Tally rows of the units whose best IoU exceeds ``cutoff`` (default: ``iou_cutoff``)."""
        cutoff = self.iou_cutoff if cutoff is None else cutoff
        t = self.tally()
        return t[t.score > cutoff].reset_index(drop=True)

    def summary(self, cutoff: float | None = None):
        """Per category: ``detectors`` = units whose best concept overall is in the
        category with IoU > cutoff (each unit counted once), ``unique`` = distinct
        concepts those units detect."""
        import pandas as pd

        d = self.detectors(cutoff)
        return pd.DataFrame([{"category": c, "detectors": int((d.category == c).sum()),
                              "unique": int(d.label[d.category == c].nunique())}
                             for c in self.categories]).set_index("category")

    def to_csv(self, path) -> Path:
        """Write the tally table (NetDissect's tally.csv columns) to ``path``."""
        path = Path(path)
        t = self.tally()
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(list(t.columns))
            for row in t.itertuples(index=False):
                w.writerow([f"{v:.6f}" if isinstance(v, float) else v for v in row])
        return path

    def __repr__(self):
        n = int((self.best()[1] > self.iou_cutoff).sum())
        return (f"Dissection({self.layer!r}: {self.n_units} units x {len(self.concepts)} concepts, "
                f"{self.n_images} images, {n} detectors with IoU > {self.iou_cutoff})")


def _device(model):
    p = next(model.parameters(), None)
    if p is None:
        p = next(model.buffers(), None)
    return p.device if p is not None else torch.device("cpu")


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
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    from tqdm.auto import tqdm

    data = folder if isinstance(folder, _broden.Broden) else _broden.open(folder)
    single = isinstance(layer, str)
    layers = [layer] if single else list(layer)
    for name in layers:
        hooks.get_layer(model, name)          # unknown names fail before any work
    device = _device(model)
    n_batches = sum(1 for _ in _batch_plan(data, batch_size))
    q = 1.0 - quantile

    with hooks.preserved(model), torch.no_grad():
        model.eval()
        # feature-map size per image size -> number of values per unit
        totals = {n: 0 for n in layers}
        by_size = {}
        for r in data.rows:
            by_size[(r["ih"], r["iw"])] = by_size.get((r["ih"], r["iw"]), 0) + 1
        for (ih, iw), count in by_size.items():
            acts, fires = _forward(model, layers, torch.zeros(1, 3, ih, iw, device=device))
            for n in layers:
                totals[n] += count * acts[n].shape[2] * acts[n].shape[3]
        n_units = {n: acts[n].shape[1] for n in layers}
        # exact thresholds keep each unit's top `quantile` share of values; when that
        # exceeds max_top numbers, every stride-th value (a fixed subsample) is used
        stride = {n: _stride(n_units[n] * (quantile * totals[n] + 2) * len(layers) / max_top, acts[n])
                  for n in layers}
        if any(v > 1 for v in stride.values()):
            warnings.warn("the dataset is large for exact thresholds within max_top="
                          f"{max_top}: estimating them from every {max(stride.values())}-th activation "
                          "value (raise max_top for exact quantiles)")
        kept = {n: -(-totals[n] // stride[n]) for n in layers}
        need = {n: kept[n] - int(math.floor(q * (kept[n] - 1))) for n in layers}
        offset = {n: 0 for n in layers}

        # pass 1: the top activations of every unit -> exact quantile thresholds
        top = {n: None for n in layers}
        cache, cached = [], 0
        for batch in tqdm(data.batches(batch_size, segmentations=False), total=n_batches, desc="thresholds",
                          disable=not progress, leave=False):
            acts, _ = _forward(model, layers, batch.images.to(device), fires)
            if cache is not None:         # keep activations for pass 2 while they fit
                cached += sum(a.numel() for a in acts.values())
                cache = cache + [acts] if cached <= cache_elements else None
            for n in layers:
                a = acts[n]
                vals = a.transpose(0, 1).reshape(a.shape[1], -1).float()
                if stride[n] > 1:        # global positions offset, offset + stride, ...
                    first = (-offset[n]) % stride[n]
                    offset[n] += vals.shape[1]
                    vals = vals[:, first::stride[n]]
                merged = vals if top[n] is None else torch.cat([top[n], vals], 1)
                k = min(need[n], merged.shape[1])
                top[n] = merged.topk(k, dim=1, sorted=False).values
        thresholds = {}
        for n in layers:
            t = top[n].sort(dim=1, descending=True).values
            thresholds[n] = _quantile_from_top(t, kept[n], q)
        del top

        # pass 2: intersections, activation and truth totals
        L, C = data.n_labels, len(data.categories)
        primary = data.label_category.to(device)
        inter = {n: torch.zeros(n_units[n], L + 1, dtype=torch.float64, device=device) for n in layers}
        act_cat = {n: torch.zeros(n_units[n], C, dtype=torch.float64, device=device) for n in layers}
        truth = torch.zeros(L + 1, dtype=torch.float64, device=device)
        best_s = {n: torch.full((n_units[n], 0), -math.inf, device=device) for n in layers}
        best_i = {n: torch.zeros((n_units[n], 0), dtype=torch.long, device=device) for n in layers}
        lut = torch.full((L + 1,), -1, dtype=torch.long, device=device)
        u_max = max(n_units.values())
        for b_no, batch in enumerate(tqdm(data.batches(batch_size, images=cache is None), total=n_batches,
                                          desc=f"IoU {', '.join(layers)}", disable=not progress, leave=False)):
            acts = cache[b_no] if cache is not None else _forward(model, layers, batch.images.to(device), fires)[0]
            pixels, whole = batch.pixels.to(device), batch.whole.to(device)
            labelled = batch.labelled.to(device).double()
            B, K, sh, sw = pixels.shape
            P = sh * sw
            for n in layers:
                score = acts[n].amax((2, 3)).t()                                   # [U, B]
                rows = torch.tensor(batch.index, device=device).expand_as(score)
                s = torch.cat([best_s[n], score], 1)
                i = torch.cat([best_i[n], rows], 1)
                kk = min(top_k, s.shape[1])
                best_s[n], pick = s.topk(kk, dim=1)
                best_i[n] = i.gather(1, pick)
            # unit masks and concept one-hot per pixel, in image chunks small enough
            # for max_elements (so memory does not grow with the batch either)
            chunk = max(1, max_elements // max(1, P * (L + u_max)))
            for b0 in range(0, B, chunk):
                b1 = min(B, b0 + chunk)
                masks = {}
                for n in layers:
                    m = unit_masks(acts[n][b0:b1], thresholds[n], (sh, sw)).view(b1 - b0, n_units[n], P)
                    act_cat[n] += m.sum(2).double().t() @ labelled[b0:b1]
                    masks[n] = m
                pix, wh = pixels[b0:b1], whole[b0:b1]
                seen = torch.bincount(pix.flatten(), minlength=L + 1)[:L + 1] > 0
                seen[wh.flatten()] = True
                seen[0] = False
                present = torch.nonzero(seen).flatten()
                if present.numel() == 0:
                    continue
                nb, lb = b1 - b0, present.numel()
                lut.fill_(lb)                                                      # 0 / absent -> dump column
                lut[present] = torch.arange(lb, device=device)
                onehot = torch.zeros(nb, P, lb + 1, device=device)
                onehot.scatter_(2, lut[pix].view(nb, K, P).transpose(1, 2), 1.0)
                onehot.scatter_(2, lut[wh].view(nb, 1, -1).expand(nb, P, wh.shape[1]), 1.0)
                onehot = onehot[..., :lb].reshape(nb * P, lb)
                truth[present] += onehot.sum(0).double()
                for n in layers:
                    m = masks[n].transpose(0, 1).reshape(n_units[n], nb * P).float()
                    inter[n][:, present] += (m @ onehot).double()
        del cache
        results = {}
        cats = list(data.categories)
        names = data.label_names[1:]
        concept_cat = [cats[int(c)] if c >= 0 else "" for c in data.label_category[1:]]
        for n in layers:
            has_cat = primary[1:] >= 0
            act = torch.where(has_cat, act_cat[n][:, primary[1:].clamp_min(0)],
                              torch.zeros((), dtype=torch.float64, device=device))
            it = inter[n][:, 1:]
            union = act + truth[1:] - it
            iou = torch.where(union > 0, it / union.clamp_min(1e-12), torch.zeros_like(union))
            results[n] = Dissection(
                layer=n, iou=iou.float().cpu(), concepts=list(names), concept_categories=concept_cat,
                categories=cats, thresholds=thresholds[n].cpu(), intersection=it.cpu(),
                activation=act.cpu(), truth=truth[1:].cpu(), top_images=best_i[n].cpu(),
                top_scores=best_s[n].cpu(), quantile=quantile, iou_cutoff=iou_cutoff,
                n_images=len(data), folder=str(data.folder))
    return results[layer] if single else results


def _batch_plan(data, batch_size):
    """The batch boundaries ``Broden.batches`` will use (without reading any file)."""
    group = []
    for i, r in enumerate(data.rows):
        if group:
            g = data.rows[group[0]]
            if len(group) == batch_size or (r["ih"], r["iw"], r["sh"], r["sw"]) != \
                    (g["ih"], g["iw"], g["sh"], g["sw"]):
                yield group
                group = []
        group.append(i)
    if group:
        yield group


# ----------------------------------------------------------------------------- plots

def plot_summary(results: dict, cutoff: float | None = None, ax=None):
    """Bar chart: detectors per category for each layer of ``{layer: Dissection}``."""
    import matplotlib.pyplot as plt
    import numpy as np

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 2.8))
    layers = list(results)
    cats = results[layers[0]].categories
    counts = np.array([[int(results[n].summary(cutoff).loc[c, "detectors"]) for c in cats] for n in layers])
    width = 0.8 / len(cats)
    for j, c in enumerate(cats):
        ax.bar(np.arange(len(layers)) + (j - (len(cats) - 1) / 2) * width, counts[:, j], width, label=c)
    ax.set_xticks(np.arange(len(layers)), [n.split(".")[-1] for n in layers], fontsize=8)
    ax.set_ylabel("detectors")
    ax.legend(fontsize=7, loc="upper left")
    return ax


def show_top_images(model, result: Dissection, units, folder=None, k: int = 4, size: float = 1.1):
    """For each unit (a row): its top-``k`` images with everything outside the unit's
    mask dimmed, titled with the unit's best concept and IoU."""
    import matplotlib.pyplot as plt

    data = _broden.open(folder or result.folder) if not isinstance(folder, _broden.Broden) else folder
    units = [int(u) for u in units]
    col, score = result.best()
    device = _device(model)
    fig, axes = plt.subplots(len(units), k, figsize=(k * size, len(units) * size * 1.05), squeeze=False)
    with hooks.preserved(model), torch.no_grad():
        model.eval()
        for r, u in enumerate(units):
            rows = result.top_images[u, :k].tolist()
            x = torch.stack([data.image(i) for i in rows]).to(device)
            a = _forward(model, [result.layer], x)[0][result.layer][:, u:u + 1]
            m = unit_masks(a, result.thresholds[u:u + 1], x.shape[-2:]).float()
            shown = x * (0.25 + 0.75 * m)
            for j in range(k):
                ax = axes[r, j]
                if j < len(rows):
                    ax.imshow(shown[j].permute(1, 2, 0).cpu().numpy())
                ax.set_xticks([])
                ax.set_yticks([])
            axes[r, 0].set_ylabel(f"unit {u}\n{result.concepts[int(col[u])]}\nIoU {float(score[u]):.2f}",
                                  fontsize=7)
    fig.tight_layout()
    return fig
