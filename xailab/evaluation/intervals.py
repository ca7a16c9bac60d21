"""Bootstrap 95% intervals for scores averaged over images, and paired comparisons.

A ranking of two methods is only as good as the images it was measured on. These
helpers resample the images (with replacement, seeded) so every mean carries an
interval, and two methods scored on the same images are compared through the
interval of their per-image difference: when it contains zero, the honest word is
"tie".
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats


@dataclass(frozen=True)
class Interval:
    """A mean and its bootstrap interval."""
    mean: float
    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"


def _as_array(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().float().cpu().numpy()
    array = np.asarray(values, dtype=float).reshape(-1)
    if array.size < 2:
        raise ValueError(f"a bootstrap interval needs at least 2 per-image scores, got {array.size}; "
                         "score more images")
    if not np.isfinite(array).all():
        raise ValueError("the scores contain NaN or inf; drop or fix those images before the interval")
    return array


def bootstrap_interval(values, level: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> Interval:
    """Mean of per-image ``values`` with its percentile bootstrap interval."""
    array = _as_array(values)
    if np.ptp(array) == 0:                        # every image scored the same: no spread to resample
        return Interval(float(array[0]), float(array[0]), float(array[0]))
    result = stats.bootstrap((array,), np.mean, confidence_level=level, n_resamples=n_resamples,
                             method="percentile", rng=np.random.default_rng(seed))
    return Interval(float(array.mean()), float(result.confidence_interval.low),
                    float(result.confidence_interval.high))


def paired_difference(a, b, level: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> Interval:
    """Mean of ``a - b`` over the same images, with its bootstrap interval."""
    a, b = _as_array(a), _as_array(b)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need one value per image in both: got {a.size} and {b.size}")
    return bootstrap_interval(a - b, level, n_resamples, seed)


def verdict(a, b, higher_is_better: bool = True, names=("A", "B"), **options) -> str:
    """``"A"`` or ``"B"`` when the paired interval excludes zero in its favour, else ``"tie"``."""
    diff = paired_difference(a, b, **options)
    if diff.contains(0.0):
        return "tie"
    a_wins = (diff.mean > 0) == higher_is_better
    return names[0] if a_wins else names[1]
