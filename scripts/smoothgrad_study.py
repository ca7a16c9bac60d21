"""SmoothGrad convergence study for lecture 04: samples x noise level x model, per image.

For each model and noise level, SmoothGrad is run in chunks of 16 samples with seeds
0, 1, 2, ...; the mean of the first k chunks is SmoothGrad with n = 16 k samples. For
every n and every image the script writes

* ``share_abs``: share of the usual heat map max_c |mean gradient| that falls on the object;
* ``share_signed``: share of the positive part of the signed map (mean gradient summed
  over colour channels) that falls on the object;
* ``split_half``: rank correlation between the maps of two disjoint sets of n samples
  (chunks 0..k-1 and k..2k-1), i.e. how reproducible the n-sample map is (only for n
  up to half the largest n).

Rows with ``noise = 0`` and ``n = 1`` hold the plain gradient. Seeded and deterministic:
run it once (several minutes of one CPU core) with

    OMP_NUM_THREADS=1 .venv/bin/python scripts/smoothgrad_study.py

and it writes data/results/smoothgrad_study.csv. tests/test_smoothgrad_study.py re-runs
a subset and checks it against the file.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

import xailab
from xailab import data, models

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "data" / "results" / "smoothgrad_study.csv"
MODELS = ("shapesnet", "shapesvgg")
NOISES = (0.05, 0.15, 0.3)
CHUNK = 16                      # samples per seed
N_CHUNKS = 16                   # up to 256 samples
N_IMAGES = 32
FIELDS = ["model", "noise", "n_samples", "image", "share_abs", "share_signed", "split_half"]


def images(n: int = N_IMAGES):
    """The first n images of lecture 04's test set, and their object masks."""
    ds = data.shapes("test", 64, seed=0)
    return ds.images()[:n], ds.masks()[:n].float()


def share(heat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per image: share of a non-negative map [N,H,W] that lies on the mask."""
    return (heat * mask).sum((1, 2)) / heat.sum((1, 2)).clamp_min(1e-12)


def rank_corr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per image: Spearman correlation of two maps [N,H,W]."""
    ra, rb = (t.flatten(1).argsort(1).argsort(1).double() for t in (a, b))
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    return (ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1))


def maps(mean_grad: torch.Tensor, mask: torch.Tensor):
    """(share_abs, share_signed, abs map) of a raw mean gradient [N,C,H,W]."""
    absolute = mean_grad.abs().amax(1)
    signed = mean_grad.sum(1).clamp(min=0)
    return share(absolute, mask), share(signed, mask), absolute


def study(model_name: str, noises=NOISES, n_chunks: int = N_CHUNKS, n_images: int = N_IMAGES,
          batch_size: int = 64) -> list[dict]:
    """Rows of the study for one model (see the module docstring)."""
    model = models.load(model_name)
    x, mask = images(n_images)
    rows = []

    def add(noise, n, sa, ss, split):
        for i in range(len(x)):
            rows.append(dict(model=model_name, noise=noise, n_samples=n, image=i,
                             share_abs=round(float(sa[i]), 6), share_signed=round(float(ss[i]), 6),
                             split_half="" if split is None else round(float(split[i]), 6)))

    plain = xailab.explain(model, x, None, method="gradient", reduce=None)
    add(0.0, 1, *maps(plain, mask)[:2], None)
    for noise in noises:
        chunks = [xailab.explain(model, x, None, method="smoothgrad", n_samples=CHUNK, noise=noise,
                                 seed=s, batch_size=batch_size, reduce=None) for s in range(n_chunks)]
        k = 1
        while k <= n_chunks:
            sa, ss, first = maps(torch.stack(chunks[:k]).mean(0), mask)
            split = None
            if 2 * k <= n_chunks:
                split = rank_corr(first, torch.stack(chunks[k:2 * k]).mean(0).abs().amax(1))
            add(noise, CHUNK * k, sa, ss, split)
            k *= 2
        print(f"{model_name} noise {noise} done", flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--noises", nargs="*", type=float, default=list(NOISES))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    rows = [r for name in args.models for r in study(name, noises=args.noises)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=FIELDS).to_csv(args.out, index=False)
    print(f"wrote {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
