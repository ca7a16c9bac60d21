"""The benchmark scripts still start: their imports (shared helpers in benchmarks/timing.py,
the dissection reference from tests/test_dissect.py, Captum, pytorch-grad-cam) resolve and
their options parse. The measurements themselves run by hand, never in tests."""
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
