"""Per-connection token buckets for client events. Pure: the caller gives the time."""

from __future__ import annotations

__all__ = ["RateLimiter"]


class RateLimiter:
    """``rate`` events per second per key, with bursts of up to ``rate`` events.

    A client's events all run on one worker (sticky routing), so one limiter per
    worker process sees every event of the clients it serves.
    """

    __slots__ = ("_buckets",)

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, key: str, rate: int, now: float) -> bool:
        """Take one token from ``key``'s bucket; ``False`` when it is empty."""
        if rate <= 0:
            return False
        tokens, last = self._buckets.get(key, (float(rate), now))
        tokens = min(float(rate), tokens + (now - last) * rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1.0, now)
        return True

    def forget(self, key: str) -> None:
        """Drop ``key``'s bucket (the connection closed)."""
        self._buckets.pop(key, None)

    def __len__(self) -> int:
        return len(self._buckets)
