"""Gradient saliency: our time / Captum's time per method, same model, batch and settings,
measured in the same run (median of interleaved repeats). Captum runs at its default and,
where it has a batching option (IG's ``internal_batch_size``, NoiseTunnel's
``nt_samples_batch_size``), at each value tried; the ratio is to its best. Goal: every
ratio to Captum's best <= 1.0.

    python benchmarks/saliency.py [--repeats 5]
"""
import argparse

import torch
from captum.attr import (Deconvolution, GuidedBackprop, InputXGradient, IntegratedGradients,
                         NoiseTunnel, Saliency)

import xailab
from xailab import hooks, models
from xailab.data import shapes
from timing import median_times


def cases(model, x, t, steps, samples, batch):
    """method -> (ours, Captum's), two zero-argument callables computing the same thing."""
    n = len(x)

    def ours(method, **kw):
        return lambda: xailab.explain(model, x, t, method=method, reduce=None, **kw)

    def captum_relu(cls):
        def run():
            with hooks.out_of_place_relus(model):        # Captum refuses in-place ReLUs
                return cls(model).attribute(x, target=t)
        return run

    def captum_ig(internal_batch_size):
        return lambda: IntegratedGradients(model).attribute(x, target=t, n_steps=steps,
                                                            internal_batch_size=internal_batch_size)

    def captum_smoothgrad(nt_samples_batch_size):
        return lambda: NoiseTunnel(Saliency(model)).attribute(
            x, nt_type="smoothgrad", nt_samples=samples, stdevs=0.15,
            nt_samples_batch_size=nt_samples_batch_size, target=t, abs=False)

    return {   # method -> (ours, {Captum configuration: callable}), Captum's default first
        "gradient": (ours("gradient"), {"default": lambda: Saliency(model).attribute(x, target=t, abs=False)}),
        "gradient_x_input": (ours("gradient_x_input"),
                             {"default": lambda: InputXGradient(model).attribute(x, target=t)}),
        "smoothgrad": (ours("smoothgrad", n_samples=samples, noise=0.15, batch_size=batch),
                       {f"nt_samples_batch_size={b}": captum_smoothgrad(b)
                        for b in (None, 1, max(1, batch // n), samples)}),
        "integrated_gradients": (ours("integrated_gradients", n_steps=steps, batch_size=batch),
                                 {f"internal_batch_size={b}": captum_ig(b)
                                  for b in (None, batch // 2, batch, 2 * batch)}),
        "guided_backprop": (ours("guided_backprop"), {"default": captum_relu(GuidedBackprop)}),
        "deconvnet": (ours("deconvnet"), {"default": captum_relu(Deconvolution)}),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    setups = [
        ("shapesnet, 16 images 64x64", models.load("shapesnet"), shapes("test", 16, seed=1).images(),
         dict(steps=50, samples=25, batch=64)),
        ("resnet18 (weights=None), 4 images 128x128", models.load_torchvision("resnet18"),
         torch.rand(4, 3, 128, 128), dict(steps=16, samples=8, batch=32)),
    ]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}")
    for title, model, x, kw in setups:
        t = torch.arange(len(x)) % 6
        print(f"\n{title} (IG {kw['steps']} steps, SmoothGrad {kw['samples']} samples, "
              f"{kw['batch']} images per pass)")
        print(f"  {'method':22s} {'ours':>9s} {'Captum':>9s} {'best':>9s}  ratio to default, to best "
              "(Captum's best configuration)")
        for name, (ours, theirs) in cases(model, x, t, **kw).items():
            ours(), [fn() for fn in theirs.values()]          # warm up (and caches)
            med = median_times({"ours": ours, **theirs}, args.repeats)
            default = med[next(iter(theirs))]
            best = min(theirs, key=med.get)
            print(f"  {name:22s} {med['ours'] * 1e3:7.1f}ms {default * 1e3:7.1f}ms {med[best] * 1e3:7.1f}ms  "
                  f"{med['ours'] / default:5.2f}x {med['ours'] / med[best]:5.2f}x  ({best})")


if __name__ == "__main__":
    main()
