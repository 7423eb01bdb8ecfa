"""Short cycle-collector pauses in a process that holds many long-lived objects.

A gateway holds about eight objects the collector tracks per client (the record,
its connection, the WebSocket state, the writer...). CPython's collector walks all of
them in a full collection, which it starts by itself whenever the objects that
survived the younger generations reach a quarter of the old ones: 16-20 ms with
15,000 clients on one gateway (measured), about 1 ms per 1,000 clients, in one go,
while every client waits.

:class:`FrozenHeap` moves everything that has lived through one housekeeping tick
(about a second) into the collector's permanent generation (``gc.freeze()``, which
costs the same for any number of objects). The automatic collections then only
walk objects younger than that: a fraction of a millisecond however many clients.

What this gives up: garbage *cycles* whose objects are older than a tick are not
collected by the automatic collections. The gateway's own objects form none when a
client goes (the connection and its record are unlinked, ``gateway.connection``),
so they are freed as before by their reference counts (``tests/test_gcfreeze.py``
churns clients through a real gateway and finds no cyclic garbage left). As a
bound for what is not foreseen, a full collection still runs when the process's
resident memory has doubled, and grown by at least :data:`FULL_MIN_GROWTH`
bytes, since the last one (read from ``/proc/self/statm``: counting the frozen
objects instead, ``gc.get_freeze_count()``, walks all of them, some 2 ms for
20,000 cold objects): a gateway growing from 0 to 50,000 clients runs a few; one
whose memory is flat runs none. Such a pass is one pause of about 1 ms per 1,000
clients, so once due it waits for a quiet tick (at most :data:`QUIET_ACTIVITY`
messages and connects since the last one), or :data:`MAX_DELAY` seconds. Each
logs one line with what it found (a warning when it found cycles: something to
look into) and is counted (``gc_full_collections``, ``gc_reclaimed_objects``).

A full collection unfreezes everything, including what the master froze before it
forked the process (``cluster.master``): the collector then writes to the headers
of the objects the process shares with the master, which copies those pages once.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from typing import Any

from pygatewayworker.runtime.footprint import rss_bytes

__all__ = ["FrozenHeap", "FULL_MIN_GROWTH", "QUIET_ACTIVITY", "MAX_DELAY"]

log = logging.getLogger("cluster")

FULL_MIN_GROWTH = 32 * 1024 * 1024
"""Bytes of resident memory the process must have grown by (as well as doubled)
since the last full collection before the next one: some 15,000 clients."""

QUIET_ACTIVITY = 100
"""A tick is quiet when the gateway handled at most this many messages and connects
since the one before: a due full collection runs then."""

MAX_DELAY = 600.0
"""Seconds a due full collection waits for a quiet tick at most."""


class FrozenHeap:
    """Call :meth:`tick` about once a second from the event loop."""

    __slots__ = ("base", "full_collections", "reclaimed", "clock", "rss", "due", "activity")

    def __init__(self, clock: Any = time.perf_counter, rss: Callable[[], int] = rss_bytes) -> None:
        self.clock = clock
        self.rss = rss
        self.base = -1
        """Resident bytes after the last full collection, or at the first tick (-1
        before it: the process's boot garbage is collected before anything is
        frozen, ``runtime.service``)."""
        self.full_collections = 0
        self.reclaimed = 0
        self.due: float | None = None
        """When a full collection became due (it waits for a quiet tick)."""
        self.activity = 0

    def tick(self, activity: int = 0) -> None:
        """Freeze what has survived until now; a full collection when due and the
        tick is quiet. ``activity``: a count that grows with the work done
        (messages and connects so far)."""
        gc.freeze()
        quiet = activity - self.activity <= QUIET_ACTIVITY
        self.activity = activity
        if self.base < 0:
            self.base = self.rss()
            return
        if self.due is None:
            if self.rss() <= max(2 * self.base, self.base + FULL_MIN_GROWTH):
                return
            self.due = self.clock()
        if quiet or self.clock() - self.due >= MAX_DELAY:
            self.due = None
            self.collect_all()

    def collect_all(self) -> int:
        """Unfreeze, collect every generation, freeze again; the objects found in
        cycles (freed)."""
        frozen = gc.get_freeze_count()  # a walk, as the collection's own
        gc.unfreeze()
        start = self.clock()
        found = gc.collect()
        took = self.clock() - start
        gc.freeze()
        self.base = self.rss()
        self.full_collections += 1
        self.reclaimed += found
        report = log.warning if found else log.info
        report(
            "full garbage collection: %d of %d tracked objects were in cycles (%.1f ms)",
            found,
            frozen,
            took * 1000,
        )
        return found

    def stats(self) -> dict[str, int]:
        """``gc_full_collections``, ``gc_reclaimed_objects``."""
        return {
            "gc_full_collections": self.full_collections,
            "gc_reclaimed_objects": self.reclaimed,
        }
