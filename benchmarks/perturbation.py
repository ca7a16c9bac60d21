"""Black-box methods: our time / the reference's time, same model, images and settings,
measured in the same run (median of interleaved repeats).

- occlusion vs ``captum.attr.Occlusion`` at equal window, stride and baseline, Captum both
  at its default (one perturbation per forward pass) and with ``perturbations_per_eval``
  set so that its forward passes hold as many images as ours. Goal: ratio <= 0.5 vs the
  default.
- RISE batched vs a plain loop with one forward pass per mask; forward passes counted.

    python benchmarks/perturbation.py [--repeats 3] [--images 16]
"""
import argparse
import math

import torch
from captum.attr import Occlusion
from torch import nn

import xailab
from xailab import models
from xailab.attribution.perturbation import default_batch_size, rise_masks
from xailab.data import shapes
from timing import median_times


class Counting(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x):
        self.calls += 1
        return self.model(x)


def occlusion_case(name, model, x, t, window, stride, batch, repeats):
    c = x.shape[1]
    ppe = max(1, batch // len(x))
    fns = {
        "ours": lambda: xailab.explain(model, x, t, method="occlusion", window=window, stride=stride,
                                       batch_size=batch, reduce=None),
        "captum": lambda: Occlusion(model).attribute(x, target=t, sliding_window_shapes=(c, window, window),
                                                    strides=(c, stride, stride), baselines=0.0),
        "captum_batched": lambda: Occlusion(model).attribute(
            x, target=t, sliding_window_shapes=(c, window, window), strides=(c, stride, stride),
            baselines=0.0, perturbations_per_eval=ppe),
    }
    med = median_times(fns, repeats)
    positions = (math.ceil((x.shape[-1] - window) / stride) + 1) ** 2
    print(f"occlusion {name}: {len(x)} images, window {window}, stride {stride}, {positions} positions")
    print(f"  ours {med['ours']:.2f} s ({math.ceil(len(x) * positions / batch) + 1} passes of <= {batch} images)")
    print(f"  captum default {med['captum']:.2f} s ({positions + 1} passes)  "
          f"-> ratio ours/captum = {med['ours'] / med['captum']:.2f}  (goal <= 0.5)")
    print(f"  captum perturbations_per_eval={ppe} {med['captum_batched']:.2f} s  "
          f"-> ratio ours/captum_batched = {med['ours'] / med['captum_batched']:.2f}")


def rise_case(model, x, t, n_masks, batch, repeats):
    masks = rise_masks(n_masks, x.shape[-2:], cell=8, p=0.5, seed=0)

    def loop():
        sal = torch.zeros(len(x), *x.shape[-2:])
        with torch.no_grad():
            for m in masks:                                  # one forward pass per mask
                prob = model(x * m).softmax(1).gather(1, t[:, None])[:, 0]
                sal += prob[:, None, None] * m
        return sal / (n_masks * 0.5)

    ours = lambda: xailab.explain(model, x, t, method="rise", n_masks=n_masks, batch_size=batch)  # noqa: E731
    torch.testing.assert_close(ours(), loop(), rtol=1e-4, atol=1e-5)
    med = median_times({"ours": ours, "loop": loop}, repeats)
    counter = Counting(model)
    xailab.explain(counter, x, t, method="rise", n_masks=n_masks, batch_size=batch)
    print(f"RISE: {len(x)} images, {n_masks} masks ({len(x) * n_masks} masked images)")
    print(f"  ours {med['ours']:.2f} s in {counter.calls} forward passes of <= {batch} images")
    print(f"  per-mask loop {med['loop']:.2f} s in {n_masks} forward passes of {len(x)} images  "
          f"-> ratio ours/loop = {med['ours'] / med['loop']:.2f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    xailab.setup()

    ds = shapes("test", args.images, seed=1)
    x, t = ds.images(), ds.labels
    net = models.load("shapesnet")
    batch = default_batch_size(x)                      # what xailab.explain uses by default
    occlusion_case("shapesnet", net, x, t, 8, 4, batch, args.repeats)
    resnet = models.load_torchvision("resnet18")
    occlusion_case("resnet18 (weights=None)", resnet, x[:4], t[:4], 16, 8, batch, args.repeats)
    rise_case(net, x, t, 500, batch, args.repeats)


if __name__ == "__main__":
    main()
