"""A fixed-bucket histogram that roles keep in memory and report in their stats file.

Pure and tiny on purpose: ``observe`` is one ``bisect`` and three additions, cheap
enough for every callback of a business worker and every push API request. The
snapshot is plain JSON (``{"le": [...], "counts": [...], "sum": s, "count": n}``,
``counts`` cumulative per upper bound, as Prometheus wants them); the metrics
service turns it into a Prometheus histogram (:mod:`metrics.collector`).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

__all__ = ["Histogram", "DURATION_BOUNDS"]

DURATION_BOUNDS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Upper bounds (seconds) for callback and request durations: half a millisecond
(an inline callback that only sends) to ten seconds (a query that timed out)."""


class Histogram:
    """Counts of observed values per bucket, their sum and their number."""

    __slots__ = ("bounds", "_counts", "sum", "count")

    def __init__(self, bounds: Sequence[float] = DURATION_BOUNDS) -> None:
        self.bounds = tuple(sorted(float(b) for b in bounds))
        self._counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Count ``value`` in the first bucket whose upper bound is >= it."""
        self._counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def count_above(self, bound: float) -> int:
        """Observations greater than ``bound`` (which must be one of the bounds)."""
        index = self.bounds.index(bound)
        return self.count - sum(self._counts[: index + 1])

    def snapshot(self) -> dict[str, Any]:
        """JSON-able: ``le`` (upper bounds), ``counts`` (cumulative), ``sum``, ``count``."""
        cumulative: list[int] = []
        total = 0
        for n in self._counts[:-1]:
            total += n
            cumulative.append(total)
        return {"le": list(self.bounds), "counts": cumulative, "sum": self.sum, "count": self.count}
