"""CAM family: our time against pytorch-grad-cam's and Captum's on the same model, the
same 16 images and the same targets, measured in the same run (best of interleaved
repeats: the minimum is the time least disturbed by other load on a shared machine).
Goals: Grad-CAM <= 1.0x the faster reference; Score-CAM <= 0.5x pytorch-grad-cam's time at
its best ``batch_size`` (16 by default; 16, 32, 64 and 128 are tried, the default's time is
printed too). The other methods make one forward and one backward pass: the libraries have
no batching option for them.

    python benchmarks/cam.py [--repeats 5] [--scorecam-repeats 2]

pytorch-grad-cam returns min-max normalised maps upsampled with OpenCV, Captum's
LayerGradCam the raw map at layer resolution; we time what each library does by
default for an upsampled map (ours: ``xailab.explain(..., method=...)``).
"""
import os

os.environ.setdefault("TQDM_DISABLE", "1")      # pytorch-grad-cam's Score-CAM shows a bar per image

import argparse
import warnings

import torch
from captum.attr import GuidedGradCam, LayerAttribution, LayerGradCam
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM, ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

import xailab
from xailab import hooks, models
from xailab.data import shapes
from timing import timed


def cases(model, x, t):
    """method -> {library: zero-argument callable}, all computing the same maps."""
    layer = hooks.get_layer(model, model.default_layer)
    targets = [ClassifierOutputTarget(int(c)) for c in t]

    def ours(method, **kw):
        return lambda: xailab.explain(model, x, t, method=method, **kw)

    def pgc(cls, batch_size=None):
        def run():
            with cls(model, [layer]) as cam:
                if batch_size is not None:
                    cam.batch_size = batch_size          # Score-CAM's masked images per forward pass
                return cam(x, targets)
        return run

    scorecam_sizes = {b: timed(pgc(ScoreCAM, b)) for b in (16, 32, 64, 128)}
    best_size = min(scorecam_sizes, key=scorecam_sizes.get)

    def captum_gradcam():
        a = LayerGradCam(model, layer).attribute(x, target=t, relu_attributions=True)
        return LayerAttribution.interpolate(a, x.shape[-2:], interpolate_mode="bilinear")

    def captum_guided():
        with hooks.out_of_place_relus(model):           # Captum refuses in-place ReLUs
            return GuidedGradCam(model, layer).attribute(x, target=t, interpolate_mode="bilinear")

    return {
        "gradcam": {"ours": ours("gradcam"), "pytorch-grad-cam": pgc(GradCAM), "Captum": captum_gradcam},
        "gradcam_pp": {"ours": ours("gradcam_pp", eps=1e-6), "pytorch-grad-cam": pgc(GradCAMPlusPlus)},
        "hirescam": {"ours": ours("hirescam"), "pytorch-grad-cam": pgc(HiResCAM)},
        "scorecam": {"ours": ours("scorecam", align_corners=True),
                     "pytorch-grad-cam": pgc(ScoreCAM, best_size)},
        "scorecam vs pgc default": {"ours": ours("scorecam", align_corners=True),
                                    "pytorch-grad-cam": pgc(ScoreCAM)},
        "guided_gradcam": {"ours": ours("guided_gradcam", reduce=None), "Captum": captum_guided},
        "cam": {"ours": ours("cam")},
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scorecam-repeats", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    warnings.filterwarnings("ignore")           # Captum's notes about requires_grad and ReLU hooks
    x = shapes("test", 16, seed=1).images()
    t = torch.arange(len(x)) % 6
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, 16 images 64x64, "
          f"best of {args.repeats} ({args.scorecam_repeats} for Score-CAM)")
    for name in ("shapesnet", "shapesvgg"):
        model = models.load(name)
        print(f"\n{name} (layer {model.default_layer})")
        print(f"  {'method':15s} {'ours':>9s} {'pgc':>9s} {'Captum':>9s}  ratio to pgc  to Captum  to faster")
        for method, libs in cases(model, x, t).items():
            if method == "cam" and name != "shapesnet":
                continue
            reps = args.scorecam_repeats if method.startswith("scorecam") else args.repeats
            for fn in libs.values():
                fn()                                      # warm up
            times = {lib: [] for lib in libs}
            for _ in range(reps):                         # interleaved: same machine load
                for lib, fn in libs.items():
                    times[lib].append(timed(fn))
            best = {lib: min(v) for lib, v in times.items()}
            ours = best["ours"]
            cols = [f"{best[lib] * 1e3:7.1f}ms" if lib in best else f"{'-':>9s}"
                    for lib in ("ours", "pytorch-grad-cam", "Captum")]
            refs = [best[lib] for lib in ("pytorch-grad-cam", "Captum") if lib in best]
            ratios = [f"{ours / best[lib]:10.2f}x" if lib in best else f"{'-':>11s}"
                      for lib in ("pytorch-grad-cam", "Captum")]
            faster = f"{ours / min(refs):8.2f}x" if refs else f"{'-':>9s}"
            print(f"  {method:15s} {' '.join(cols)}  {ratios[0]} {ratios[1]}  {faster}")
        print(f"  (pytorch-grad-cam Score-CAM at batch_size {best_size}, its fastest of 16, 32, 64, 128; "
              "the row 'vs pgc default' at its default 16)")
        assert hooks.count_hooks(model) == 0


if __name__ == "__main__":
    main()
