"""xailab: look inside convolutional networks (the library behind the course)."""
from __future__ import annotations

import random
import warnings

import numpy as np
import torch

from . import checks, data, evaluation, hooks, models  # noqa: F401

__version__ = "0.1.0"


def setup(seed: int = 0, threads: int | None = None) -> None:
    """Call at the top of every notebook: seeds, quiet warnings, small PNG figures."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)
    warnings.filterwarnings("ignore")
    try:
        import matplotlib
        matplotlib.rcParams.update({"figure.dpi": 80, "savefig.dpi": 80, "figure.figsize": (6, 3),
                                    "image.interpolation": "nearest"})
        from IPython import get_ipython
        ip = get_ipython()
        if ip is not None:
            ip.run_line_magic("config", "InlineBackend.figure_formats = ['png']")
            ip.run_line_magic("matplotlib", "inline")
    except ImportError:
        pass

from .attribution import describe, explain, methods  # noqa: E402,F401
