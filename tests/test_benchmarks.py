"""The benchmark scripts still start: their imports (shared helpers in benchmarks/timing.py,
Captum, pytorch-grad-cam) resolve and their options parse; the occlusion, dissection and
attention benchmarks also run end to end in their quick mode (tiny inputs, one repeat).
The full measurements run by hand, never in tests."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
WITH_OPTIONS = sorted(p.name for p in BENCHMARKS.glob("*.py") if "argparse" in p.read_text())


def test_every_benchmark_is_valid_python():
    scripts = sorted(BENCHMARKS.glob("*.py"))
    assert len(scripts) >= 8
    for p in scripts:
        ast.parse(p.read_text(), filename=str(p))


@pytest.mark.parametrize("script", WITH_OPTIONS)
def test_benchmark_starts(script):
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


@pytest.mark.parametrize("script,expect", [("perturbation.py", "ours / Captum best"),
                                           ("dissect.py", "resident memory"),
                                           ("attention.py", "token_gradcam")])
def test_quick_mode_runs(script, expect):
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), "--quick"], capture_output=True,
                          text=True, timeout=600, cwd=BENCHMARKS)
    assert done.returncode == 0, done.stderr[-2000:]
    assert expect in done.stdout
