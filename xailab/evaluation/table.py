"""The comparison table: every method on every model, scored by every metric."""
from __future__ import annotations

import torch
from torch import nn

from .faithfulness import _target, deletion, insertion
from .localisation import pointing_game, relevance_mass
from .robustness import max_sensitivity
from .sanity import parameter_layers, randomise, shortcut_exposure, spearman

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

    from .. import attribution
    from ..attribution.cam import CAMNotApplicableError

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
