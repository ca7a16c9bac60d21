"""Pixel-space optimisation speed: steps per second of ``optvis.optimize`` for one 64x64
image on shapesnet and on torchvision resnet18 (weights=None), against a bare PyTorch loop
doing the same work (Adam on the pixels, forward, backward, clamp) measured in the same
run; then the wall time of the optimisation work each notebook does (lectures 03 and 07).

    python benchmarks/optvis.py [--steps 32] [--repeats 3] [--skip-notebooks]

Respects $XAILAB_MAX_STEPS like the library (unset it to measure the real notebook work).
"""
import argparse
import os

import torch

from xailab import hooks, models, optvis
from xailab.data import shapes
from timing import median_times, timed


def bare_loop(model, layer, channel, steps):
    """What optimize does for a channel objective on plain pixels, with no library code."""
    acts = {}
    with hooks.preserved(model), hooks.forward_hooks(model, {layer: lambda m, i, o: acts.__setitem__("a", o)}):
        for p in model.parameters():
            p.requires_grad_(False)
        g = torch.Generator().manual_seed(0)
        x = (0.5 + 0.01 * torch.randn(1, 3, 64, 64, generator=g)).requires_grad_(True)
        opt = torch.optim.Adam([x], lr=0.05)
        for _ in range(steps):
            opt.zero_grad()
            model(x)
            (-acts["a"][:, channel].mean()).backward()
            opt.step()
            with torch.no_grad():
                x.clamp_(0, 1)


def ours(model, layer, channel, steps, **kw):
    optvis.optimize(model, optvis.channel(layer, channel), steps=steps, progress=False, **kw)


def steps_per_second(args):
    nets = {"shapesnet": (models.load("shapesnet"), "features.block3"),
            "resnet18": (models.load_torchvision("resnet18"), "net.layer3")}
    print(f"steps per second, one 64x64 image, channel objective, {args.steps} steps "
          f"(median of {args.repeats})")
    print(f"{'model':10s} {'bare loop':>10s} {'optimize':>10s} {'+fourier+jitter':>16s} {'time ours/bare':>16s}")
    for name, (model, layer) in nets.items():
        med = median_times({
            "bare": lambda: bare_loop(model, layer, 0, args.steps),
            "ours": lambda: ours(model, layer, 0, args.steps),
            "fancy": lambda: ours(model, layer, 0, args.steps, param=optvis.fourier(),
                                  transforms=list(optvis.STANDARD_TRANSFORMS))}, args.repeats)
        sps = {k: args.steps / v for k, v in med.items()}
        print(f"{name:10s} {sps['bare']:10.1f} {sps['ours']:10.1f} {sps['fancy']:16.1f} "
              f"{sps['bare'] / sps['ours']:16.2f}")


def notebook_work():
    model = models.load("shapesnet")
    sample = shapes("test", 1000, seed=1)
    x0 = shapes("test", 1, seed=3).images()[0]
    work = {
        "03 class models (6 x 64 steps, one batch)": lambda: optvis.class_images(model),
        "03 channel images (4 x 32 steps)": lambda: [optvis.channel_image(model, l, c) for l, c in
                                                     [("features.block1", 0), ("features.block2", 0),
                                                      ("features.block3", 2), ("features.block3", 12)]],
        "03 ablation grid (8 x 32 steps)": lambda: [
            optvis.optimize(model, optvis.channel("features.block3", 12), steps=32, progress=False, param=p,
                            transforms=t) for p, t in [(optvis.pixels(sd=0.1), ())] * 6
            + [(optvis.fourier(), ()), (optvis.fourier(), list(optvis.STANDARD_TRANSFORMS))]],
        "03 recipe (10 x 256 steps, Fourier + all)": lambda: [
            optvis.optimize(model, obj, param=optvis.fourier(), lr=0.05, steps=256, progress=False,
                            transforms=list(optvis.STANDARD_TRANSFORMS))
            for obj in [optvis.class_logit(c) for c in range(6)]
            + [optvis.channel(l, c) for l, c in [("features.block1", 0), ("features.block2", 0),
                                                  ("features.block3", 2), ("features.block3", 12)]]],
        "03 DeepDream (3 x 24 steps)": lambda: [optvis.dream(model, l, sample.images([0])[0], steps=24)
                                                for l in ["features.block1", "features.block2",
                                                          "features.block3"]],
        "07 inversions (4 x 600 steps)": lambda: [optvis.invert(model, l, x0) for l in
                                                  ["features.block1.conv2", "features.block2.conv2",
                                                   "features.block3.conv1", "features.block3.conv2"]],
        "07 decoders (3 blocks, 1,500 images, 2 epochs)": lambda: [optvis.train_decoder(
            model, l, shapes("train", 1500, seed=5).images(), epochs=2, width=32, progress=False)
            for l in ["features.block1", "features.block2", "features.block3"]],
    }
    print("\nnotebook optimisation work (wall time, seconds)")
    for name, fn in work.items():
        print(f"{name:46s} {timed(fn):6.1f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-notebooks", action="store_true")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    if os.environ.get(optvis.STEPS_ENV):
        print(f"note: ${optvis.STEPS_ENV}={os.environ[optvis.STEPS_ENV]} caps the library's steps")
    steps_per_second(args)
    if not args.skip_notebooks:
        notebook_work()


if __name__ == "__main__":
    main()
