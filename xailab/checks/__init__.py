"""Lab feedback: ``xailab.checks.labNN.check_*`` compare a student's function with the
reference on fixed inputs and say in words what is right or wrong."""
import importlib as _importlib

from .core import Report, call, in_words, needs, relative_error  # noqa: F401

for _lab in ("lab01", "lab02", "lab03", "lab04", "lab05", "lab06", "lab07", "lab08"):
    try:
        globals()[_lab] = _importlib.import_module(f"{__name__}.{_lab}")
    except ModuleNotFoundError as _err:
        if _err.name != f"{__name__}.{_lab}":
            raise
