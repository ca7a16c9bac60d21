"""Dissect the shapesnet variants and ablate shapesnet's top detectors (lecture 06).

    OMP_NUM_THREADS=1 python scripts/dissection_variants.py            # every model, both tables
    python scripts/dissection_variants.py --models shapesnet-narrow --no-ablation   # re-run one model

Models without a checkpoint are skipped; rows of models not re-run are kept.

Writes ``data/results/dissection_variants.csv``: one row per model and layer with the
units, the detectors (best IoU > 0.04) and the unique concepts they detect, in all and
per category, the same two counts at a cutoff of 0.02 and the mean of each unit's best
IoU, on the lecture's synthetic Broden (480 images, seed 0, 64 px). And
``data/results/dissection_variants_ablation.csv``: for each of shapesnet's six object
concepts, the accuracy drop per class when its top-K block3 units by IoU are switched
off ("top" row) and when each of DRAWS seeded random sets of K units are ("random" rows).
Deterministic (seeded data, fixed draws); a few minutes on one CPU thread.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from xailab import data, dissect, models  # noqa: E402
from xailab.data import broden  # noqa: E402
from xailab.dissect import ablation  # noqa: E402

LAYERS = ["features.block1", "features.block2", "features.block3"]
VARIANTS = ["shapesnet", "shapesnet-base", "shapesnet-nobn", "shapesnet-narrow", "shapesnet-wide",
            *[f"shapesnet-base-step{s:04d}" for s in models.BASE_SNAPSHOTS]]
N_IMAGES, SEED, SIZE = 480, 0, 64               # the lecture's synthetic Broden
K, DRAWS, TEST_IMAGES = 8, 40, 600              # the ablation study
RESULTS = ROOT / "data" / "results"


def make_broden(folder: Path) -> Path:
    return broden.make_synthetic(folder, N_IMAGES, seed=SEED, size=SIZE)


def describe(name: str) -> dict:
    """What a variant is: block3 width, BatchNorm or not, training step, accuracy."""
    model = models.build(name)
    entry = models.manifest()[name]
    recipe = entry["recipe"]
    if "snapshot_of" in recipe:
        step = recipe["step"]
    else:
        step = recipe["epochs"] * -(-recipe["n_train"] // recipe["batch"])
    return dict(model=name, width=model.fc.in_features,
                batchnorm=any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()),
                step=step, val_accuracy=entry["val_accuracy"])


def dissection_rows(name: str, folder: Path) -> list[dict]:
    results = dissect.dissect(models.load(name), LAYERS, folder, batch_size=96, progress=False)
    rows = []
    for layer, r in results.items():
        s = r.summary()
        row = dict(describe(name), layer=layer, units=r.n_units, detectors=int(s.detectors.sum()),
                   unique=int(r.detectors().label.nunique()),
                   detectors_at_002=len(r.detectors(0.02)), unique_at_002=int(r.detectors(0.02).label.nunique()),
                   mean_best_iou=round(float(r.best()[1].mean()), 4), best_iou=round(float(r.iou.max()), 4))
        row.update({f"detectors_{c}": int(s.detectors[c]) for c in r.categories})
        row.update({f"unique_{c}": int(s.unique[c]) for c in r.categories})
        rows.append(row)
    return rows


def top_units(result, concept: str, k: int = K) -> list[int]:
    """The k units with the highest IoU for ``concept``."""
    j = result.concepts.index(concept)
    return sorted(result.iou[:, j].argsort(descending=True)[:k].tolist())


def ablation_rows(folder: Path, concepts=None, draws: int = DRAWS) -> list[dict]:
    model = models.load("shapesnet")
    result = dissect.dissect(model, "features.block3", folder, batch_size=96, progress=False)
    test = data.shapes("test", TEST_IMAGES, seed=0)
    images, labels = test.images(), test.labels
    acts = ablation.layer_activations(model, "features.block3", images)
    rows = []
    for concept in concepts or model.classes:
        units = top_units(result, concept)
        study = ablation.ablation_study(model, "features.block3", units, images, labels, draws=draws,
                                        seed=0, head=lambda a: model.fc(a.mean((2, 3))), activations=acts)
        target = model.classes.index(concept)
        sets = [("top", units, study.top)] + [
            (f"random{i}", ablation.random_units(result.n_units, K, 0, i), d) for i, d in enumerate(study.random)]
        for kind, chosen, drop in sets:
            others = torch.cat([drop[:target], drop[target + 1:]])
            rows.append(dict(concept=concept, draw=kind, units=" ".join(map(str, chosen)),
                             drop_class=round(float(drop[target]), 4), drop_others=round(float(others.mean()), 4)))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=VARIANTS)
    p.add_argument("--out", type=Path, default=RESULTS / "dissection_variants.csv")
    p.add_argument("--ablation-out", type=Path, default=RESULTS / "dissection_variants_ablation.csv")
    p.add_argument("--no-ablation", action="store_true")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_broden(Path(tmp) / "broden")
        names = [n for n in args.models if n in models.manifest()]
        for name in sorted(set(args.models) - set(names)):
            print(f"skipped {name}: no checkpoint (train it with `python -m xailab.train ...`)")
        table = pd.DataFrame([row for name in names for row in dissection_rows(name, folder)])
        if args.out.exists():           # keep the rows of the models not re-run, in VARIANTS order
            old = pd.read_csv(args.out)
            table = pd.concat([old[~old.model.isin(names)], table]).astype(table.dtypes.to_dict())
            table = table.sort_values("model", key=lambda m: m.map(VARIANTS.index), kind="stable")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False)
        print(f"wrote {args.out} ({len(table)} rows)")
        if not args.no_ablation:
            table = pd.DataFrame(ablation_rows(folder))
            table.to_csv(args.ablation_out, index=False)
            print(f"wrote {args.ablation_out} ({len(table)} rows)")


if __name__ == "__main__":
    main()
