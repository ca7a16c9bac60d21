"""Network dissection speed: images per second for one layer of shapesnet and of
torchvision resnet18 (weights=None) on the synthetic Broden folder, and the ratio
against a straightforward per-image reference (one image per forward pass, one
concept at a time), measured in the same run. Goal: ratio >= 10.

    python benchmarks/dissect.py [--n 256] [--size 64]
"""
import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from xailab import dissect, hooks, models
from xailab.data import broden


def reference(model, layer, folder, quantile=0.005):
    """Per image, per concept: the paper's rule without vectorisation over images or concepts."""
    ds = broden.open(folder)
    acts = []
    with torch.no_grad():
        for i in range(len(ds)):
            with hooks.record(model, layer) as rec:
                model(ds.image(i)[None])
            acts.append(rec.activations[layer][0])
    units = acts[0].shape[0]
    thr = torch.quantile(torch.stack(acts).transpose(0, 1).reshape(units, -1).double(), 1 - quantile, dim=1).float()
    L = ds.n_labels
    inter = torch.zeros(units, L + 1, dtype=torch.float64)
    act = torch.zeros(units, L + 1, dtype=torch.float64)
    truth = torch.zeros(L + 1, dtype=torch.float64)
    for i in range(len(ds)):
        seg = ds.segmentation(i)
        sh, sw = ds.rows[i]["sh"], ds.rows[i]["sw"]
        mask = F.interpolate(acts[i][None], size=(sh, sw), mode="bilinear", align_corners=False)[0] > thr[:, None, None]
        for n in range(1, L + 1):
            if seg[ds.category_of(n)]:
                act[:, n] += mask.sum((1, 2))
            where = torch.zeros(sh, sw, dtype=torch.bool)
            for items in seg.values():
                for x in items:
                    where |= (torch.ones_like(where) if x == n else torch.zeros_like(where)) \
                        if isinstance(x, int) else x == n
            truth[n] += where.sum()
            inter[:, n] += (mask & where).sum((1, 2))
    union = act + truth - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(union))[:, 1:]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = broden.make_synthetic(Path(tmp) / "synthetic", args.n, size=args.size)
        cases = [("shapesnet", models.load("shapesnet"), "features.block3"),
                 ("resnet18", models.load_torchvision("resnet18"), "net.layer2")]
        print(f"{args.n} synthetic images at {args.size}x{args.size}, torch threads {torch.get_num_threads()}")
        print(f"{'model':10s} {'layer':16s} {'ours img/s':>10s} {'ref img/s':>10s} {'ratio':>6s} {'max |dIoU|':>10s}")
        for name, model, layer in cases:
            t = time.perf_counter()
            ours = dissect.dissect(model, layer, folder, batch_size=64, progress=False)
            t_ours = time.perf_counter() - t
            t = time.perf_counter()
            ref = reference(model, layer, folder)
            t_ref = time.perf_counter() - t
            err = float((ours.iou - ref).abs().max())
            print(f"{name:10s} {layer:16s} {args.n / t_ours:10.1f} {args.n / t_ref:10.1f} "
                  f"{t_ref / t_ours:6.1f} {err:10.1e}")


if __name__ == "__main__":
    main()
