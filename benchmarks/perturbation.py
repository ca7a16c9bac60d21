"""Black-box methods: our time / the reference's time, same model, images and settings,
measured in the same run (best of interleaved repeats).

- occlusion vs ``captum.attr.Occlusion`` at equal window, stride and baseline. Captum runs
  at its default (one perturbation per forward pass) and with every ``perturbations_per_eval``
  in PPE; the fastest is its best configuration. Ours runs at its default (incremental
  inference, ``xailab.attribution.incremental``) and, for scale, the plain method (one
  full forward pass per occluded image). Goal: ours <= 0.5x Captum's best, on shapesnet and
  resnet18 (weights=None), 64 and 128 px, 8- and 16-pixel windows.
- RISE batched vs a plain loop with one forward pass per mask; forward passes counted.

    python benchmarks/perturbation.py [--repeats 3] [--images 2] [--quick]
"""
import argparse
import math

import torch
import torch.nn.functional as F
from captum.attr import Occlusion
from torch import nn
from torch.overrides import TorchFunctionMode

import xailab
from xailab import models
from xailab.attribution.incremental import local_graph
from xailab.attribution.perturbation import _occlusion_raw, default_batch_size, rise_masks
from xailab.data import shapes
from timing import best_times

PPE = (1, 8, 16, 32, 64)          # Captum's perturbations_per_eval values tried (1 is its default)


class Counting(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x):
        self.calls += 1
        return self.model(x)


class ConvWork(TorchFunctionMode):
    """Counts the multiply-adds of every convolution run inside the ``with``."""

    def __enter__(self):
        self.macs = 0
        return super().__enter__()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (F.conv2d, torch.conv2d):
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            self.macs += out.numel() * weight[0].numel()
        return out


def conv_work_share(model, x, t, window, stride) -> float:
    """Convolution multiply-adds of incremental occlusion / those of the plain method (one
    full forward pass per occluded image): the floor of ours / plain in time, since only
    work outside the receptive fields of the windows can be skipped exactly."""
    work = {}
    for incremental in (True, False):
        with torch.no_grad(), ConvWork() as count:
            _occlusion_raw(model, x, t, window, stride, 0.0, None, False, incremental=incremental)
        work[incremental] = count.macs
    return work[True] / work[False]


def occlusion_case(name, model, x, t, window, stride, repeats, ppe_values=PPE):
    c = x.shape[1]
    with torch.no_grad():
        fused = local_graph(model.eval(), x) or model      # the engine's BatchNorm-folded graph

    def captum(ppe):
        return lambda: Occlusion(model).attribute(x, target=t, sliding_window_shapes=(c, window, window),
                                                  strides=(c, stride, stride), baselines=0.0,
                                                  perturbations_per_eval=ppe)

    fns = {"ours": lambda: xailab.explain(model, x, t, method="occlusion", window=window, stride=stride,
                                          reduce=None),
           "plain": lambda: _occlusion_raw(model, x, t, window, stride, 0.0, None, False,
                                           incremental=False),
           "plain fused": lambda: _occlusion_raw(fused, x, t, window, stride, 0.0, None, False,
                                                 incremental=False)}
    fns.update({f"captum ppe={p}": captum(p) for p in ppe_values})
    for fn in fns.values():
        fn()                                                   # warm up (caches, traced copies)
    best = best_times(fns, repeats)
    captum_best = min((k for k in best if k.startswith("captum")), key=best.get)
    positions = (math.ceil((x.shape[-1] - window) / stride) + 1) ** 2
    err = (fns["ours"]()[:, 0] - captum(max(ppe_values))()[:, 0]).abs().max()
    print(f"occlusion {name}, {len(x)} images {x.shape[-1]}px, window {window}, stride {stride}, "
          f"{positions} positions (max |ours - Captum| {err:.1e})")
    print("  " + "  ".join(f"{k} {v:.2f}s" for k, v in best.items()))
    share = conv_work_share(model, x, t, window, stride)
    fastest = min(best["plain"], best["plain fused"])
    print(f"  convolution work ours / plain = {share:.2f}, so ours / Captum best >= about "
          f"{share * fastest / best[captum_best]:.2f} (that share of the fastest plain method's time)")
    print(f"  ratio ours / Captum default = {best['ours'] / best['captum ppe=1']:.2f}   "
          f"ours / Captum best ({captum_best}) = {best['ours'] / best[captum_best]:.2f}  (goal <= 0.5)   "
          f"plain / Captum best = {best['plain'] / best[captum_best]:.2f}")
    return best['ours'] / best[captum_best]


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
    med = best_times({"ours": ours, "loop": loop}, repeats)
    counter = Counting(model)
    xailab.explain(counter, x, t, method="rise", n_masks=n_masks, batch_size=batch)
    print(f"RISE: {len(x)} images, {n_masks} masks ({len(x) * n_masks} masked images)")
    print(f"  ours {med['ours']:.2f} s in {counter.calls} forward passes of <= {batch} images")
    print(f"  per-mask loop {med['loop']:.2f} s in {n_masks} forward passes of {len(x)} images  "
          f"-> ratio ours/loop = {med['ours'] / med['loop']:.2f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as set)")
    ap.add_argument("--quick", action="store_true", help="one small case of each (for the tests)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.repeats = 1
    xailab.setup()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, best of {args.repeats}")
    net, resnet = models.load("shapesnet"), models.load_torchvision("resnet18")
    if args.quick:
        x = shapes("test", 1, seed=1).images()
        occlusion_case("shapesnet", net, x, torch.tensor([1]), 16, 16, 1, ppe_values=(1, 16))
        rise_case(net, x, torch.tensor([1]), 16, 8, 1)
        return
    ratios = {}
    for size in (64, 128):
        ds = shapes("test", args.images, seed=1, size=size)
        x, t = ds.images(), ds.labels
        for window in (8, 16):
            stride = window // 2 if size == 64 else window          # 128 px: fewer positions
            for name, model in (("shapesnet", net), ("resnet18 (weights=None)", resnet)):
                ratios[name, size, window] = occlusion_case(name, model, x, t, window, stride, args.repeats)
    print("\nours / Captum best: " + ", ".join(f"{n.split()[0]} {s}px w{w} {r:.2f}"
                                                for (n, s, w), r in ratios.items()))
    ds = shapes("test", 16, seed=1)
    rise_case(net, ds.images(), ds.labels, 500, default_batch_size(ds.images()), args.repeats)


if __name__ == "__main__":
    main()
