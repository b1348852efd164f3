"""Wall-clock timing and peak memory of repeated calls: ``efficientdet bench`` and the scripts in
benchmarks/ (through benchmarks/common.py) use these same functions; :func:`time_interleaved`
is the one timing loop.

Standard library only, and nothing from this package: benchmarks/common.py loads this file by
path inside the peer's virtual environment, where efficientdet is not installed.
"""

from __future__ import annotations

import gc
import math
import os
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence


def time_interleaved(
    parts: Mapping[str, Callable[[], object]],
    warmup: int = 3,
    repeats: int = 10,
    rounds: Callable[[range], Iterable[int]] | None = None,
) -> dict[str, list[float]]:
    """The one timing loop. ``{part: fn}`` -> ``{part: wall times in ms}``: every part called
    ``warmup`` times untimed, a garbage collection, then ``repeats`` rounds that each time every
    part once, so all parts see the same machine state and their medians compare (timed one
    after the other, a part that ran while the machine was busier would look slower).
    ``rounds`` wraps the round range (e.g. a progress bar)."""
    for fn in parts.values():
        for _ in range(max(0, warmup)):
            fn()
    gc.collect()
    times: dict[str, list[float]] = {part: [] for part in parts}
    span = range(max(1, repeats))
    for _ in rounds(span) if rounds is not None else span:
        for part, fn in parts.items():
            t0 = time.perf_counter()
            fn()
            times[part].append((time.perf_counter() - t0) * 1e3)
    return times


def time_calls(fn: Callable[[], object], warmup: int = 3, repeats: int = 10) -> list[float]:
    """``warmup`` untimed calls of ``fn()``, a garbage collection, then ``repeats`` timed calls;
    returns their wall times in ms (:func:`time_interleaved` with one part)."""
    return time_interleaved({"fn": fn}, warmup, repeats)["fn"]


def nearest_rank(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0 < q <= 1) of ascending ``sorted_values`` by nearest rank: the
    smallest value with at least ``q`` of them at or below it."""
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def summarize(times_ms: Sequence[float]) -> dict:
    """median / p90 (nearest rank) / min / mean of times in ms, and the number of runs."""
    xs = sorted(float(t) for t in times_ms)
    if not xs:
        raise ValueError("no timings")
    return {
        "median_ms": statistics.median(xs),
        "p90_ms": nearest_rank(xs, 0.9),
        "min_ms": xs[0],
        "mean_ms": statistics.fmean(xs),
        "runs": len(xs),
    }


def peak_rss_mb() -> float | None:
    """Peak resident set size of this process so far, MiB (VmHWM; ru_maxrss fallback)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    except Exception:
        return None


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
