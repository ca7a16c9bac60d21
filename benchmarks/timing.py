"""Timing helpers shared by the benchmark scripts (run as `python benchmarks/NAME.py`)."""
import statistics
import time


def timed(fn) -> float:
    """Wall time of one call of fn, in seconds."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_times(fns: dict, repeats: int) -> dict:
    """Median wall time of each function; calls are interleaved so that drifting
    machine load hits every contender alike."""
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(timed(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def best_times(fns: dict, repeats: int) -> dict:
    """Best (minimum) wall time of each function over interleaved repeats: on a shared
    machine the minimum is the time least disturbed by other load."""
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(timed(fn))
    return {k: min(v) for k, v in times.items()}
