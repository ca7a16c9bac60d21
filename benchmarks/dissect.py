"""Network dissection speed and memory, measured in the same run:

- ``dissect.dissect`` against a one-pass reference (``one_pass_reference`` below, about 40
  lines: one unbatched forward pass per image with the layer's activations cached in
  memory, numpy quantiles, vectorised numpy IoU per image). Goal: ours <= 0.33x its time.
- against the lower bound of any dissection: one batched forward pass up to the layer plus
  one bilinear upsampling of every unit's map to the segmentation size. Goal: <= 1.5x.
- peak resident memory of ``dissect`` for two dataset sizes at the same batch size (each
  in a fresh process): it should not grow with the number of images.

    python benchmarks/dissect.py [--n 300] [--size 128] [--memory 300 3000] [--quick]
"""
import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from xailab import dissect, hooks, models
from xailab.runtime import evaluating, named_inference_copy
from xailab.data import broden
from timing import best_times


def one_pass_reference(model, layer, folder, quantile=0.005):
    """IoU [units, concepts] the straightforward way: cache every image's activations,
    numpy quantiles, then per image the upsampled masks against each concept's pixels."""
    ds = broden.open(folder)
    with torch.no_grad():
        acts = []
        for i in range(len(ds)):
            with hooks.record(model, layer) as rec:
                model(ds.image(i)[None])
            acts.append(rec.activations[layer][0].numpy())
    acts = np.stack(acts)                                             # [N, U, h, w]
    units, labels = acts.shape[1], ds.n_labels + 1
    thresholds = np.quantile(acts.transpose(1, 0, 2, 3).reshape(units, -1), 1 - quantile, axis=1)
    inter = np.zeros((units, labels))
    act = np.zeros((units, len(ds.categories)))
    truth = np.zeros(labels)
    for i in range(len(ds)):
        row = ds.rows[i]
        up = F.interpolate(torch.from_numpy(acts[i][None]), size=(row["sh"], row["sw"]),
                           mode="bilinear", align_corners=False)[0].numpy()
        masks = (up > thresholds[:, None, None]).reshape(units, -1)     # [U, P]
        onehot = np.zeros((masks.shape[1], labels), dtype=np.float32)   # [P, labels]
        for c, cat in enumerate(ds.categories):
            for item in row[cat]:
                if isinstance(item, int):
                    onehot[:, item] = 1
                else:
                    onehot[np.arange(masks.shape[1]), ds._png(i, item).reshape(-1)] = 1
            if row[cat]:
                act[:, c] += masks.sum(1)
        onehot[:, 0] = 0
        inter += masks.astype(np.float32) @ onehot
        truth += onehot.sum(0)
    primary = np.asarray(ds.label_category)
    a = np.where(primary >= 0, act[:, np.maximum(primary, 0)], 0)
    union = a + truth - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1e-12), 0)
    return torch.from_numpy(iou[:, 1:])


def lower_bound(model, layer, folder, batch_size=64):
    """One forward pass up to ``layer`` and one upsampling of its maps, at the fastest of a
    few images per forward pass, memory layouts, and the model or the BatchNorm-folded copy
    that ``dissect`` runs (the images are read beforehand: reading them is not part of the
    bound)."""
    ds = broden.open(folder)
    images = [b.images for b in ds.batches(batch_size, segmentations=False)]
    size = (ds.rows[0]["sh"], ds.rows[0]["sw"])
    fast = torch.channels_last                    # oneDNN's fast layout on the CPU

    def run(step, layout, copy=False):
        batches = [x.contiguous(memory_format=layout) for x in images]
        with evaluating(model):
            net = named_inference_copy(model, keep=[layer]) if copy else model
            for x in batches:
                for s in range(0, len(x), step):
                    with hooks.record(net, layer) as rec:
                        net(x[s:s + step])
                    a = rec.activations[layer].contiguous(memory_format=fast)
                    F.interpolate(a, size=size, mode="bilinear", align_corners=False)

    variants = [(8, torch.contiguous_format, "NCHW"), (1, fast, "NHWC"), (8, fast, "NHWC"), (64, fast, "NHWC")]
    fns = {f"bound ({step} per pass, {name})": (lambda step=step, layout=layout: run(step, layout))
           for step, layout, name in variants}
    fns["bound (8 per pass, NHWC, BatchNorm folded)"] = lambda: run(8, fast, copy=True)   # dissect's own copy
    return fns


def peak_rss(folder, batch_size: int) -> tuple[float, float]:
    """Resident memory (MB) of a fresh process before ``dissect`` on ``folder`` (made by this
    process, so making the data does not count) and its peak during it, sampled every 5 ms
    from /proc/self/statm (Linux)."""
    code = ("import os, sys, threading, time\nfrom xailab import dissect, models\n"
            "def rss():\n"
            "    return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20\n"
            "model = models.load('shapesnet')\nbefore = peak = rss()\nrunning = True\n"
            "def watch():\n    global peak\n    while running:\n"
            "        peak = max(peak, rss())\n        time.sleep(0.005)\n"
            "t = threading.Thread(target=watch)\nt.start()\n"
            f"dissect.dissect(model, 'features.block3', sys.argv[1], batch_size={batch_size}, progress=False)\n"
            "running = False\nt.join()\nprint(before, peak)\n")
    out = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, check=True)
    return tuple(float(v) for v in out.stdout.split())


def timing(args):
    print(f"{args.n} synthetic images at {args.size}x{args.size}, torch threads {torch.get_num_threads()}, "
          f"best of {args.repeats}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = broden.make_synthetic(Path(tmp) / "synthetic", args.n, size=args.size)
        cases = [("shapesnet", models.load("shapesnet"), "features.block3"),
                 ("resnet18", models.load_torchvision("resnet18"), "net.layer2")]
        print(f"{'model':10s} {'layer':16s} {'ours':>7s} {'1-pass ref':>10s} {'bound':>7s} "
              f"{'ours/ref':>8s} {'ours/bound':>10s} {'max |dIoU|':>10s}")
        for name, model, layer in cases:
            result = {}
            fns = {"ours": lambda: result.update(ours=dissect.dissect(model, layer, folder, progress=False)),
                   "ref": lambda: result.update(ref=one_pass_reference(model, layer, folder))}
            fns.update(lower_bound(model, layer, folder))
            fns["read files"] = lambda: [b for b in broden.open(folder).batches(64)]   # images and segmentations, once
            best = best_times(fns, args.repeats)
            bound = min(v for k, v in best.items() if k.startswith("bound"))
            err = float((result["ours"].iou.double() - result["ref"]).abs().max())
            print(f"{name:10s} {layer:16s} {best['ours']:6.2f}s {best['ref']:9.2f}s {bound:6.2f}s "
                  f"{best['ours'] / best['ref']:8.2f} {best['ours'] / bound:10.2f} {err:10.1e}")
            print("  " + "  ".join(f"{k} {v:.2f}s" for k, v in best.items() if k.startswith("bound")))
            print(f"  reading the files once takes {best['read files']:.2f}s (part of ours, not of the bound): "
                  f"(ours - reading) / bound = {(best['ours'] - best['read files']) / bound:.2f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--memory", type=int, nargs="*", default=[300, 3000])
    ap.add_argument("--memory-only", action="store_true", help="skip the timings")
    ap.add_argument("--quick", action="store_true", help="a small run (for the tests)")
    args = ap.parse_args()
    if args.quick:
        args.n, args.size, args.repeats, args.memory = 16, 64, 1, [16]
    torch.manual_seed(0)
    if not args.memory_only:
        timing(args)
    print("resident memory of dissect (shapesnet, features.block3, batch 64, fresh process):")
    for n in args.memory:
        with tempfile.TemporaryDirectory() as tmp:
            before, peak = peak_rss(broden.make_synthetic(Path(tmp) / "synthetic", n, size=args.size), 64)
        print(f"  {n:5d} images: peak {peak:6.0f} MB during dissect, {before:.0f} MB before "
              f"(torch, xailab and the model loaded): +{peak - before:.0f} MB")


if __name__ == "__main__":
    main()
