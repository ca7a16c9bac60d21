"""How long the shapes generator takes for 10,000 images (target: <= 10 s).

    python benchmarks/data.py
"""
import time

from xailab.data import shapes

for split, shortcut in [("train", False), ("test", True)]:
    start = time.perf_counter()
    ds = shapes(split, 10_000, seed=0, shortcut=shortcut)
    print(f"{split:5s} shortcut={shortcut!s:5s}: {len(ds)} images in {time.perf_counter() - start:.1f} s")
