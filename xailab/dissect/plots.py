"""Pictures of a dissection: detectors per category and layer, and each unit's
top images with everything outside its mask dimmed."""
from __future__ import annotations

import torch

from ..data import broden as _broden
from ..runtime import device_of, evaluating
from .passes import _forward, unit_masks
from .result import Dissection


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

    data = _broden.read(folder or result.folder) if not isinstance(folder, _broden.Broden) else folder
    units = [int(u) for u in units]
    col, score = result.best()
    device = device_of(model)
    fig, axes = plt.subplots(len(units), k, figsize=(k * size, len(units) * size * 1.05), squeeze=False)
    with evaluating(model):
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
