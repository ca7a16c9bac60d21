"""Attention methods on shapesvit: our time / the reference's time, same model, batch and
targets, measured in the same run (median of interleaved repeats).

- token_gradcam against pytorch-grad-cam's ``GradCAM`` with the ViT ``reshape_transform``
  of its tutorial (CLS dropped, tokens put on the 8x8 patch grid), both returning maps
  upsampled to the image. Goal: <= 1.0x.
- attention and attention_rollout have no package reference: they are timed against
  their lower bound, one forward pass of the model without gradients (``model(x)``);
  attention_gradient against one forward and one backward pass (``model(x)`` with
  gradients, then the target scores' gradient with respect to the input).

    python benchmarks/attention.py [--repeats 7] [--batch 16] [--quick]
"""
import argparse
import warnings

import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

import xailab
from xailab import hooks, models
from xailab.data import shapes
from timing import median_times


def patch_grid(tokens):
    """pytorch-grad-cam's reshape_transform for a ViT: CLS dropped, [N,T,D] -> [N,D,s,s]."""
    tokens = tokens[:, 1:, :]
    side = int(tokens.shape[1] ** 0.5)
    return tokens.reshape(tokens.shape[0], side, side, tokens.shape[2]).permute(0, 3, 1, 2)


def forward_only(model, x):
    def run():
        with torch.no_grad():
            return model(x)
    return run


def forward_backward(model, x, t):
    def run():
        xin = x.detach().requires_grad_(True)
        return torch.autograd.grad(model(xin).gather(1, t[:, None]).sum(), xin)[0]
    return run


def cases(model, x, t):
    """method -> (ours, reference name, reference): zero-argument callables."""
    layer = hooks.get_layer(model, model.default_layer)
    targets = [ClassifierOutputTarget(int(c)) for c in t]

    def ours(method, **kw):
        return lambda: xailab.explain(model, x, t, method=method, **kw)

    def pgc_gradcam():
        with GradCAM(model, [layer], reshape_transform=patch_grid) as cam:
            return cam(x, targets)

    return {"token_gradcam": (ours("token_gradcam"), "pytorch-grad-cam GradCAM", pgc_gradcam),
            "attention": (ours("attention"), "bound: forward", forward_only(model, x)),
            "attention_rollout": (ours("attention_rollout"), "bound: forward", forward_only(model, x)),
            "attention_gradient": (ours("attention_gradient"), "bound: forward+backward",
                                   forward_backward(model, x, t))}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="4 images, one repeat (for the tests)")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.repeats = 4, 1
    torch.manual_seed(0)
    warnings.filterwarnings("ignore")
    model = models.load("shapesvit")
    x = shapes("test", args.batch, seed=1).images()
    t = torch.arange(args.batch) % len(model.classes)
    print(f"shapesvit, {args.batch} images of 64 px, torch threads {torch.get_num_threads()}, "
          f"median of {args.repeats} interleaved repeats")
    print(f"{'method':20s} {'reference':26s} {'ours s':>8s} {'ref s':>8s} {'ratio':>6s}")
    for method, (ours, ref_name, ref) in cases(model, x, t).items():
        ours(), ref()                                    # warm-up
        times = median_times({"ours": ours, "ref": ref}, args.repeats)
        ratio = times["ours"] / times["ref"]
        goal = "  (goal <= 1.0)" if not ref_name.startswith("bound") else ""
        print(f"{method:20s} {ref_name:26s} {times['ours']:8.4f} {times['ref']:8.4f} {ratio:5.2f}x{goal}",
              flush=True)


if __name__ == "__main__":
    main()
