"""Lab feedback: ``xailab.checks.labNN.check_*`` compare a student's function with the
reference on fixed inputs and say in words what is right or wrong."""
from . import lab01, lab02, lab03, lab04, lab05, lab06, lab07, lab08, lab09  # noqa: F401
from .core import Report, call, in_words, needs, relative_error  # noqa: F401
