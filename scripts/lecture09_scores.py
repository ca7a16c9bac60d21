"""Per-image scores behind lecture 09 (beyond the gradient), seeded and deterministic.

Three files in data/results/, each scored exactly as lecture 08's comparison table
(``xailab.evaluation.table``: its 64 test images, settings and cheap options):

* ``lecture09_rule_scores.csv``: the variants of the rule-based methods that
  ``comparison_scores.csv`` does not hold, on shapesnet and shapesvgg: the LRP
  composites other than the default ``epsilon_plus`` and contrastive excitation
  backprop;
* ``lecture09_vit_scores.csv``: shapesvit under the attention methods, the gradient,
  integrated gradients and occlusion, plus the random map;
* ``lecture09_vit_shortcut.csv``: shapesvit-shortcut and the clean shapesvit on the 64
  watermarked test images of lecture 08's shortcut table, explained for the predicted
  class: the share of each map's mass on the watermark's pixels, on the patch tokens
  that hold it, and in the bottom-right quarter.

Every row carries the first 12 hex digits of its model's checkpoint sha256, so a stale
file is noticed (tests/test_lecture09_results.py). A few minutes of one core:

    OMP_NUM_THREADS=1 .venv/bin/python scripts/lecture09_scores.py [--only rules vit shortcut] [--stale]

(``--stale``: only the models whose checkpoint changed since the files were written.)
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

import xailab
from xailab import data, models
from xailab.evaluation import table

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "data" / "results"
RULES_CSV = RESULTS / "lecture09_rule_scores.csv"
VIT_CSV = RESULTS / "lecture09_vit_scores.csv"
SHORTCUT_CSV = RESULTS / "lecture09_vit_shortcut.csv"

CNNS = ("shapesnet", "shapesvgg")
VITS = ("shapesvit-shortcut", "shapesvit")
# label -> (registered method, options); the default variants are in comparison_scores.csv
RULE_VARIANTS = {
    "lrp epsilon_plus_flat": ("lrp", dict(composite="epsilon_plus_flat")),
    "lrp epsilon_alpha2_beta1": ("lrp", dict(composite="epsilon_alpha2_beta1")),
    "lrp epsilon_gamma_box": ("lrp", dict(composite="epsilon_gamma_box")),
    "excitation_backprop contrastive": ("excitation_backprop", dict(contrastive=True)),
}
VIT_METHODS = ("attention", "attention_rollout", "attention_gradient", "token_gradcam", "gradient",
               "integrated_gradients", "occlusion")
SETTINGS = {k: table.SETTINGS[k] for k in ("step", "tolerance", "n_sensitivity", "randomise_layers", "seed")}


def checkpoint(name: str) -> str:
    """First 12 hex digits of the shipped checkpoint's sha256 (from the manifest)."""
    return models.manifest()[name]["sha256"][:12]


def rule_scores(names=CNNS, n: int | None = None) -> pd.DataFrame:
    """Every variant of ``RULE_VARIANTS`` on every model, one row per image."""
    x, _, masks = table.course_data()
    x, masks = x[:n], masks[:n]
    frames = []
    for name in names:
        model = models.load(name)
        for label, (method, options) in RULE_VARIANTS.items():
            scores = table.image_scores(model, x, masks, method, None, options,
                                        range(len(x)), **SETTINGS)
            frames.append(table._frame(name, label, scores, range(len(x))).assign(checkpoint=checkpoint(name)))
    return pd.concat(frames, ignore_index=True)


def vit_scores(methods=VIT_METHODS, n: int | None = None) -> pd.DataFrame:
    """shapesvit on the comparison table's images under ``methods`` and the random map."""
    x, _, masks = table.course_data()
    x, masks = x[:n], masks[:n]
    vit = models.load("shapesvit")
    out = table.score_images({"shapesvit": vit}, x, masks, list(methods), progress=False, **SETTINGS)
    return out.assign(checkpoint=checkpoint("shapesvit"))


def watermark_patches(marks: torch.Tensor, patch: int = 8) -> torch.Tensor:
    """The patch tokens that hold any watermark pixel, as pixel masks [N,H,W]."""
    n, h, w = marks.shape
    touched = marks.float().view(n, h // patch, patch, w // patch, patch).amax((2, 4)) > 0
    return touched.repeat_interleave(patch, 1).repeat_interleave(patch, 2)


def shortcut_data(n: int | None = None):
    """Lecture 08's shortcut images: 64 test images (seed 0), every one watermarked."""
    n_all = table.SETTINGS["n_images"]
    ds = data.shapes("test", n_all, seed=table.SETTINGS["shortcut_seed"], shortcut=True, watermark="all")
    marks = torch.stack([torch.as_tensor(ds.ground_truth(i)["watermark"]) for i in range(n_all)]).bool()
    return ds.images()[:n], marks[:n]


def shortcut_scores(names=VITS, methods=VIT_METHODS, n: int | None = None) -> pd.DataFrame:
    """Mass shares on the watermark, its patches and the bottom-right quarter, per image,
    for the predicted class of each model; the random map as baseline."""
    x, marks = shortcut_data(n)
    regions = {"watermark": marks, "patches": watermark_patches(marks),
               "quarter": table.quarter_mask(x.shape[-1]).expand_as(marks)}
    frames = []
    for name in names:
        model = models.load(name)
        with torch.no_grad():
            predicted = model(x).argmax(1)
        for method in [*methods, table.RANDOM_MAP]:
            heat = table.random_maps(x) if method == table.RANDOM_MAP else xailab.explain(
                model, x, predicted, method, **table.OPTIONS.get(method, {}))
            scores = {k: table.mass(heat, m, method) for k, m in regions.items()}
            scores["predicted"] = predicted.double()
            frames.append(table._frame(name, method, scores, range(len(x))).assign(checkpoint=checkpoint(name)))
    return pd.concat(frames, ignore_index=True)


JOBS = {"rules": (RULES_CSV, rule_scores), "vit": (VIT_CSV, vit_scores), "shortcut": (SHORTCUT_CSV, shortcut_scores)}
MODELS_OF = {"rules": CNNS, "vit": ("shapesvit",), "shortcut": VITS}


def stale_models(job: str) -> list[str]:
    """The job's models whose rows are missing or stamped with another checkpoint."""
    path = JOBS[job][0]
    old = pd.read_csv(path) if path.exists() else pd.DataFrame(columns=["model", "checkpoint"])
    return [m for m in MODELS_OF[job]
            if set(old.loc[old.model == m, "checkpoint"].astype(str)) != {checkpoint(m)}]


def compute(job: str, names) -> pd.DataFrame:
    """The job's rows for ``names``, merged into its file's rows for the other models."""
    path, fn = JOBS[job]
    new = fn(names=names) if job != "vit" else fn()
    if path.exists() and set(names) != set(MODELS_OF[job]):
        old = pd.read_csv(path)
        new = pd.concat([old[~old.model.isin(names)], new], ignore_index=True)
    order = {m: i for i, m in enumerate(MODELS_OF[job])}
    return new.sort_values("model", key=lambda c: c.map(order), kind="stable")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", choices=list(JOBS), default=list(JOBS))
    parser.add_argument("--stale", action="store_true",
                        help="recompute only the models whose checkpoint changed since the files were written")
    args = parser.parse_args(argv)
    torch.manual_seed(table.SETTINGS["seed"])
    for job in args.only:
        names = stale_models(job) if args.stale else list(MODELS_OF[job])
        if not names:
            print(f"{JOBS[job][0].name}: up to date")
            continue
        start = time.perf_counter()
        frame = compute(job, names)
        frame.to_csv(JOBS[job][0], index=False, float_format="%.6g")
        print(f"{JOBS[job][0].name}: {', '.join(names)} in {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
