"""Loading a script of ``scripts/`` as a module, for the tests that re-run part of a
precomputed study and compare it with the CSV the lectures load."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_script(name: str):
    """``scripts/NAME.py`` imported as the module ``NAME`` (scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
