"""A log that a flood cannot flood: at most ``burst`` lines per ``window`` seconds,
then one line with the count of those skipped."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """Log at most ``burst`` lines per ``window`` seconds to ``logger``; the lines
    over that are counted and reported in one line when the window ends (at the next
    call, or at :meth:`flush`, which a periodic sweep calls so that the count comes
    out even when the flood has stopped)."""

    __slots__ = ("_logger", "_burst", "_window", "_clock", "_start", "_count", "_skipped")

    def __init__(
        self,
        burst: int = 20,
        window: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger | None = None,
    ) -> None:
        self._logger = logger or logging.getLogger("gateway")
        self._burst = burst
        self._window = window
        self._clock = clock
        self._start = -window
        self._count = 0
        self._skipped = 0

    def __call__(self, level: int, msg: str, *args: object) -> None:
        self.flush()
        if self._count < self._burst:
            self._count += 1
            self._logger.log(level, msg, *args)
        else:
            self._skipped += 1

    def flush(self) -> None:
        """End the window if it is over: report what it skipped."""
        now = self._clock()
        if now - self._start < self._window:
            return
        if self._skipped:
            self._logger.warning(
                "%d similar log lines were skipped in the last %g s", self._skipped, self._window
            )
        self._start, self._count, self._skipped = now, 0, 0
