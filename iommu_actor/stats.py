"""Fixed-bucket histograms, counted as observations happen (plain Python, no I/O).

The model records durations here (CMD_SYNC submission to retirement, unmap arrival to completion);
the exporters in ``cluster/results/metrics.py`` read the counts at scrape time. Bucket bounds are upper
bounds in seconds, inclusive, as in Prometheus (``le``); the last bucket is +Inf.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Final

#: 1 us to 120 s: healthy invalidation round trips (us), the AMD 100 ms and arm-smmu-v3 1 s
#: software timeouts and the 60 s hardware ATC_INV completion timeout each sit on a bound with a
#: bound just above it, so "at the timeout" and "past it" fall in different buckets.
DURATION_BUCKETS: Final[tuple[float, ...]] = (
    1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4,
    1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.5,
    1.0, 1.5, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 90.0, 120.0,
)


class Histogram:
    """Counts per bucket (non-cumulative; the last slot is +Inf), the sum and the count."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...] = DURATION_BUCKETS):
        if list(bounds) != sorted(set(bounds)):
            raise ValueError("histogram bounds must be strictly increasing")
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """``[(le, cumulative count)]`` ending with ``(inf, count)``, a consistent snapshot."""
        counts = list(self.counts)
        out, acc = [], 0
        for le, n in zip(self.bounds + (float("inf"),), counts):
            acc += n
            out.append((le, acc))
        return out
