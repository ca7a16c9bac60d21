"""Ablation-CAM: our time against pytorch-grad-cam's AblationCAM at its default batch size
(32) and at its best of 16, 32, 64, 128, on the same model, images and targets, measured
in the same run (best of interleaved repeats). Goal: ours <= 0.5x pytorch-grad-cam's best.

    python benchmarks/ablationcam.py [--repeats 3] [--images 8]

Both zero one channel of the layer per forward pass, C passes per image. pytorch-grad-cam
runs the whole model for each pass (its layer returns the cached, ablated activations);
ours runs only the layers after the ablated one when torch.fx can cut the model there.
The maps agree (tests/test_cam_family.py); the correlation is printed as a check.
"""
import os

os.environ.setdefault("TQDM_DISABLE", "1")      # pytorch-grad-cam shows a bar per image

import argparse
import warnings

import torch
from pytorch_grad_cam import AblationCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

import xailab
from xailab import hooks, models
from xailab.data import shapes
from timing import timed


def correlation(a, b):
    a, b = torch.as_tensor(a).flatten(1).double(), torch.as_tensor(b).flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return float(((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-300)).min())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    warnings.filterwarnings("ignore")
    x = shapes("test", args.images, seed=1).images()
    t = torch.arange(len(x)) % 6
    targets = [ClassifierOutputTarget(int(c)) for c in t]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(x)} images 64x64, "
          f"best of {args.repeats}")
    zoo = {"shapesnet": models.load("shapesnet"), "shapesvgg": models.load("shapesvgg"),
           "resnet18 (weights=None)": models.load_torchvision("resnet18")}
    for name, model in zoo.items():
        layer = hooks.get_layer(model, model.default_layer)

        def pgc(batch_size):
            def run():
                with AblationCAM(model, [layer], batch_size=batch_size) as cam:
                    return cam(x, targets)
            return run

        # pytorch-grad-cam at its best batch size (one timing each, then the best is re-timed)
        sizes = {b: timed(pgc(b)) for b in (16, 32, 64, 128)}
        best_size = min(sizes, key=sizes.get)
        libs = {"ours": lambda: xailab.explain(model, x, t, method="ablationcam"),
                "pytorch-grad-cam": pgc(best_size), "pgc default": pgc(32)}
        times = {lib: [] for lib in libs}
        for _ in range(args.repeats):                     # interleaved: same machine load
            for lib, fn in libs.items():
                times[lib].append(timed(fn))
        best = {lib: min(v) for lib, v in times.items()}
        r = correlation(libs["ours"](), libs["pytorch-grad-cam"]())
        print(f"{name:24s} layer {model.default_layer:15s} ours {best['ours'] * 1e3:8.1f}ms   "
              f"pgc best {best['pytorch-grad-cam'] * 1e3:8.1f}ms (batch_size={best_size}), "
              f"default {best['pgc default'] * 1e3:8.1f}ms   ratio to best "
              f"{best['ours'] / best['pytorch-grad-cam']:.3f}x, to default {best['ours'] / best['pgc default']:.3f}x"
              f"   min correlation {r:.5f}")
        model.zero_grad(set_to_none=True)
        assert hooks.count_hooks(model) == 0


if __name__ == "__main__":
    main()
