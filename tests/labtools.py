"""Helpers for the lab-check tests: the solution's own function, taken from the
solution notebook, and the verdict of a check in words."""
from __future__ import annotations

import re
from pathlib import Path

import nbformat

from xailab.checks import core

ROOT = Path(__file__).resolve().parent.parent


def solution_function(notebook: str, name: str):
    """The function ``name`` as written in ``solutions/<notebook>``: the notebook's first
    code cell (imports, setup) and the cell defining it are run in a fresh namespace
    (lines with ``plt``/figures are harmless under the Agg backend)."""
    nb = nbformat.read(ROOT / "solutions" / notebook, as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    namespace: dict = {}
    exec(compile(code[0], f"<{notebook} setup>", "exec"), namespace)
    for src in code:
        if re.search(rf"^def {name}\(", src, re.M):
            exec(compile(src, f"<{notebook} {name}>", "exec"), namespace)
            return namespace[name]
    raise LookupError(f"no function {name} in solutions/{notebook}")


def verdict(report) -> str:
    """Everything a check said, as one lower-case string (for asserting on words)."""
    return "\n".join(report.lines).lower()


def fails_saying(check, fn, *words: str, passed=()) -> str:
    """Run ``check(fn, verbose=False)`` (with the exercises named in ``passed`` counted as
    done); assert it fails and says every one of ``words``."""
    core.reset()
    core._PASSED.update(passed)
    report = check(fn, verbose=False)
    said = verdict(report)
    assert not report.passed, f"{check.__name__} passed {fn!r}"
    for w in words:
        assert w.lower() in said, f"{check.__name__}: expected {w!r} in:\n{said}"
    return said
