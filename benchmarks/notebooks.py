"""Execution time of every lecture and solution notebook, against the course budget
(90 s per notebook, 10 minutes for the whole course). Notebooks are executed without
saving, so the committed outputs stay as they are.

    python benchmarks/notebooks.py [PATHS...]
"""
import sys
from pathlib import Path

from xailab import course

PER_NOTEBOOK, COURSE = 90.0, 600.0

paths = [Path(p) for p in sys.argv[1:]] or (sorted((course.ROOT / "lectures").glob("*.ipynb"))
                                            + sorted((course.ROOT / "solutions").glob("*.ipynb")))
times = course.execute(paths, save=False)
print(f"\n{'notebook':45s} {'seconds':>8s}  budget {PER_NOTEBOOK:.0f} s")
for path, sec in times.items():
    name = path.relative_to(course.ROOT) if path.is_relative_to(course.ROOT) else path
    print(f"{str(name):45s} {sec:8.1f}  {'ok' if sec <= PER_NOTEBOOK else 'OVER BUDGET'}")
total = sum(times.values())
print(f"{'whole course':45s} {total:8.1f}  {'ok' if total <= COURSE else 'OVER BUDGET'} (budget {COURSE:.0f} s)")
