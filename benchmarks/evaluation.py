"""Cost of each evaluation metric per image, for a cheap map (Grad-CAM) on shapesnet,
with the explanation's own cost beside it for scale, and max-sensitivity against
Captum's ``sensitivity_max`` given the same perturbations (ratio, same run), Captum at
its default and at its best ``max_examples_per_batch``.

    python benchmarks/evaluation.py [--images 16] [--repeats 3]
"""
import argparse

import torch
from captum.metrics import sensitivity_max

import xailab
from xailab import data, evaluation, models
from timing import median_times

p = argparse.ArgumentParser()
p.add_argument("--images", type=int, default=16)
p.add_argument("--repeats", type=int, default=3)
args = p.parse_args()

net = models.load("shapesnet")
ds = data.shapes("test", args.images, seed=0)
x, y = ds.images(), ds.labels
masks = torch.stack([ds.ground_truth(i)["mask"] for i in range(len(ds))])
heat = xailab.explain(net, x, y, "gradcam")
perturb = evaluation.uniform_perturbation(0.02, seed=0)


def captum_sensitivity(max_examples_per_batch=None):
    def explain(inp, target):
        return (xailab.explain(net, inp[0] if isinstance(inp, tuple) else inp, target, "gradcam"),)
    return lambda: sensitivity_max(explain, x, perturb_func=perturb, n_perturb_samples=5, target=y,
                                   max_examples_per_batch=max_examples_per_batch)


# Captum's batching option: None (its default: every perturbation of every image at once)
captum_options = median_times({b: captum_sensitivity(b) for b in (None, args.images, 2 * args.images,
                                                                    5 * args.images)}, 1)
captum_best = min(captum_options, key=captum_options.get)


tasks = {
    "explanation (gradcam)": lambda: xailab.explain(net, x, y, "gradcam"),
    "deletion (step 64)": lambda: evaluation.deletion(net, x, heat, y, step=64),
    "insertion (step 64)": lambda: evaluation.insertion(net, x, heat, y, step=64),
    "pointing game": lambda: evaluation.pointing_game(heat, masks, 3),
    "relevance mass": lambda: evaluation.relevance_mass(heat, masks),
    "relevance rank": lambda: evaluation.relevance_rank(heat, masks),
    "max-sensitivity (5 perturbations)": lambda: evaluation.max_sensitivity(net, x, "gradcam", y, 5, perturb=perturb),
    "  captum sensitivity_max (default)": captum_sensitivity(),
    f"  captum sensitivity_max (max_examples_per_batch={captum_best})": captum_sensitivity(captum_best),
    "model randomisation (4 blocks)": lambda: evaluation.model_randomisation(
        net, x, "gradcam", y, layers=["fc", "features.block3", "features.block2", "features.block1"]),
    "shortcut exposure": lambda: evaluation.shortcut_exposure(net, "gradcam", n=args.images),
}
med = median_times(tasks, args.repeats)
print(f"{args.images} images 64x64, shapesnet, median of {args.repeats}")
print(f"{'metric':36s} {'ms / image':>10s}")
for name, t in med.items():
    print(f"{name:36s} {1000 * t / args.images:10.2f}")
ours = med["max-sensitivity (5 perturbations)"]
print(f"max-sensitivity: ours / Captum default = {ours / med['  captum sensitivity_max (default)']:.2f}x, "
      f"ours / Captum best = "
      f"{ours / med[f'  captum sensitivity_max (max_examples_per_batch={captum_best})']:.2f}x")
