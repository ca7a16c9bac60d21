"""How long the Explorer takes to update its explanation view after a control
change (a new class), per method, on one 64x64 image: computation plus rendering.
Goal: under 1 s for gradient and CAM methods on a 2-core CPU.

    python benchmarks/widgets.py [--repeats 3]
"""
import argparse
import statistics
import time

import torch

import xailab
from xailab import data, models, widgets

p = argparse.ArgumentParser()
p.add_argument("--repeats", type=int, default=3)
args = p.parse_args()
torch.set_num_threads(2)
model = models.load("shapesnet")
images = data.shapes("test", 4, seed=0)
ex = widgets.Explorer(model, images, background=False)
print(f"{'method':22s} {'update (median)':>16s}")
for method in xailab.methods():
    ex.method.value = method
    times = []
    for r in range(args.repeats):
        start = time.perf_counter()
        ex.target.value = (r % 5) + 1 if ex.target.value != (r % 5) + 1 else 0
        times.append(time.perf_counter() - start)
    fast = xailab.attribution.get_method(method).family in ("gradient", "cam")
    t = statistics.median(times)
    verdict = ("ok" if t < 1 else "OVER 1 s") if fast else "(background, cancellable)"
    print(f"{method:22s} {t * 1000:13.0f} ms  {verdict}")
assert not ex.errors, ex.errors
