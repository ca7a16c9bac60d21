"""Fragility study for lecture 08: can a perturbation of 8 grey levels move a map off the object?

For each of 32 test images (lecture 08's set: ``data.shapes("test", 64, seed=8)``, the
first 32) and each method (gradient, SmoothGrad, integrated gradients, Grad-CAM) on
shapesnet, three perturbations of the same L-infinity budget (8/255) are made:

* ``targeted``: ``evaluation.fragility_attack`` on that method's own map (a softplus
  copy of the model, a differentiable rebuild of the map; SmoothGrad and integrated
  gradients with a cheaper surrogate of 8 samples / 8 steps), pushing the map's mass
  off the object mask while the prediction is kept;
* ``transfer``: the images of the gradient attack, explained with this method (not
  written for the gradient itself, where it is the targeted attack);
* ``random``: every pixel value moved by +-8/255 at random (seeded), the control.

The maps are measured with ``xailab.explain`` on the real model (SmoothGrad: 16
samples, noise 0.15, seed 0; integrated gradients: 16 steps), explaining the original
prediction. Per image the script writes whether the prediction held, the largest
change in grey levels, the share of the map on the object before and after, and how
far the map moved: the top-400 intersection and the Spearman rank correlation of the
maps before and after (1 = unchanged).

Seeded and deterministic: run it once (about 20 minutes of one CPU core) with

    OMP_NUM_THREADS=1 .venv/bin/python scripts/fragility_study.py

and it writes data/results/fragility_study.csv. tests/test_fragility_study.py re-runs
the first batch of images for two methods and checks it against the file.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

import xailab
from xailab import data, models
from xailab.evaluation import fragility

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "data" / "results" / "fragility_study.csv"
MODEL = "shapesnet"
METHODS = ("gradient", "smoothgrad", "integrated_gradients", "gradcam")
ATTACKS = ("targeted", "transfer", "random")
EXPLAIN = {"smoothgrad": dict(n_samples=16, noise=0.15, seed=0), "integrated_gradients": dict(n_steps=16)}
SURROGATE = {"smoothgrad": dict(n_samples=8, noise=0.15, seed=0), "integrated_gradients": dict(n_steps=8)}
EPSILON = 8 / 255
STEPS = 16
K = 400                         # top-k pixels compared (about a tenth of a 64 x 64 map)
N_IMAGES = 32
BATCH = 8                       # images attacked together (the test re-runs the first batch)
FIELDS = ["model", "method", "attack", "image", "label", "prediction_kept", "linf_grey",
          "mass_before", "mass_after", "top_k", "spearman"]


def images(n: int = N_IMAGES):
    """The first n images of lecture 08's test set, their labels and object masks."""
    ds = data.shapes("test", 64, seed=8)
    return ds.images()[:n], torch.as_tensor(ds.labels[:n]), ds.masks()[:n]


def explain(model, x, target, method):
    """The library's map of ``method`` (the settings the lecture reports)."""
    return xailab.explain(model, x, target, method, **EXPLAIN.get(method, {}))


def attack(model, x, masks, method, steps=STEPS):
    """Images of the targeted attack on ``method``'s map (object masks as the region)."""
    return fragility.fragility_attack(model, x, region=masks, epsilon=EPSILON, steps=steps, method=method,
                                      batch_size=BATCH, **SURROGATE.get(method, {})).x


def scores(model, method, x, adv, masks, target):
    """Per-image measurements of one method on original and perturbed images."""
    before, after = explain(model, x, target, method), explain(model, adv, target, method)
    with torch.no_grad():
        kept = model(adv).argmax(1) == target
    shift = fragility.map_shift(before, after, k=K)
    mask = masks.float()
    return dict(prediction_kept=kept.int(), linf_grey=((adv - x).abs().flatten(1).amax(1) * 255).round(),
                mass_before=fragility.region_mass(before, mask), mass_after=fragility.region_mass(after, mask),
                top_k=shift["top_k"], spearman=shift["spearman"])


def study(methods=METHODS, n_images: int = N_IMAGES, steps: int = STEPS, log=print) -> list[dict]:
    """Rows of the study (see the module docstring)."""
    model = models.load(MODEL)
    x, labels, masks = images(n_images)
    with torch.no_grad():
        target = model(x).argmax(1)
    noisy = fragility.random_perturbation(x, EPSILON, seed=0)
    adversarial = {}
    for method in dict.fromkeys(["gradient", *methods]):
        start = time.time()
        adversarial[method] = attack(model, x, masks, method, steps)
        log(f"{method}: attacked {n_images} images in {time.time() - start:.0f} s")
    rows = []
    for method in methods:
        inputs = {"targeted": adversarial[method], "transfer": adversarial["gradient"], "random": noisy}
        for name in ATTACKS:
            if name == "transfer" and method == "gradient":
                continue
            values = scores(model, method, x, inputs[name], masks, target)
            for i in range(n_images):
                row = dict(model=MODEL, method=method, attack=name, image=i, label=int(labels[i]))
                row.update({key: round(float(v[i]), 6) for key, v in values.items()})
                row["prediction_kept"], row["linf_grey"] = int(row["prediction_kept"]), int(row["linf_grey"])
                rows.append(row)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    start = time.time()
    rows = study(args.methods, log=lambda s: print(s, flush=True))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=FIELDS).to_csv(args.out, index=False)
    print(f"wrote {len(rows)} rows to {args.out} in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
