"""Network dissection speed: images per second for one layer of shapesnet and of
torchvision resnet18 (weights=None) on the synthetic Broden folder, and the ratio
against a straightforward per-image reference (one image per forward pass, one
concept at a time), measured in the same run. Goal: ratio >= 10.

    python benchmarks/dissect.py [--n 256] [--size 64]
"""
import argparse
import sys
import tempfile
from pathlib import Path

import torch

from xailab import dissect, models
from xailab.data import broden
from timing import timed

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_dissect import reference  # noqa: E402  (the reference the tests check against)


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
            result = {}
            t_ours = timed(lambda: result.update(ours=dissect.dissect(model, layer, folder, batch_size=64,
                                                                      progress=False)))
            t_ref = timed(lambda: result.update(ref=reference(model, layer, folder)[0]))
            ours, ref = result["ours"], result["ref"]
            err = float((ours.iou - ref).abs().max())
            print(f"{name:10s} {layer:16s} {args.n / t_ours:10.1f} {args.n / t_ref:10.1f} "
                  f"{t_ref / t_ours:6.1f} {err:10.1e}")


if __name__ == "__main__":
    main()
