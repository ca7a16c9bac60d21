"""The library stays readable: short modules and functions, and every registered method
reached through the registry's one entry path."""
import ast
from pathlib import Path

import xailab

LIB = Path(xailab.__file__).parent
CHECKS = LIB / "checks"          # lab checks may run long: see the checks.core docstring


def _sources():
    return sorted(p for p in LIB.rglob("*.py"))


def test_no_module_over_400_lines():
    long = {str(p.relative_to(LIB)): n for p in _sources() if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}


def test_no_function_over_60_lines_outside_the_lab_checks():
    long = []
    for p in _sources():
        if CHECKS in p.parents:
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 60:
                    long.append(f"{p.relative_to(LIB)}:{node.lineno} {node.name} ({n} lines)")
    assert long == []


def test_registered_methods_are_exported_only_as_the_wrapped_function():
    from xailab.attribution import _REGISTRY
    for name, method in _REGISTRY.items():
        module = __import__(method.fn.__module__, fromlist=["_"])
        exported = getattr(module, name)
        assert exported is not method.fn and exported.method is method, name
