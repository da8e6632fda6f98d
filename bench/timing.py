"""Wall-clock timing for the benches: the median of repeated calls after one warm-up."""
from __future__ import annotations

import statistics
import time
from typing import Callable


def median_time(fn: Callable[[], object], repeats: int = 5) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` (one untimed warm-up call first)."""
    fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)
