"""The longest event-loop stall of every cluster process during a measurement.

Each child probes its own loop (``runtime.service``: a 50 ms timer, how late it
fires) and writes the longest lag of each one-second stats interval to its stats
file as ``loop_lag_max_ms``. :class:`StallSampler` reads those files from a thread
while a measurement runs and keeps, per process, the highest figure seen, so a
stall caused by our own housekeeping (stats, heartbeat sweeps, ROUTES reports)
shows up next to the figure it may have spoiled. Beside it, the same of
``loop_lag_own_max_ms``: the lag less the time the loop waited for a CPU, which is
what our own work per loop turn costs when the machine has more runnable processes
than cores (as in M4 at capacity on two cores).

Only intervals that began inside the measurement count (``loop_lag_since`` of the
snapshot, where the cluster writes it): on entry the sampler asks every process
for a fresh interval (``SIGUSR2`` writes the stats and starts a new one), and on
exit once more, so the connect phase before a measurement is not charged to it
and its last fraction of a second is not lost.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["StallSampler"]

SAMPLE_INTERVAL = 0.3
FLUSH_WAIT = 0.2
"""Seconds given the processes to write their stats after a ``SIGUSR2``."""
STALE_AFTER = 5.0
"""A stats file older than this is a process that is gone: it is not signalled."""


class StallSampler:
    """Samples ``<run_dir>/stats/*.json`` every :data:`SAMPLE_INTERVAL` seconds."""

    def __init__(self, run_dir: Path | None) -> None:
        self._dir = run_dir / "stats" if run_dir is not None else None
        self._max: dict[str, float] = {}
        self._own: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._since = 0.0

    def __enter__(self) -> StallSampler:
        if self._dir is not None:
            self._since = time.time()
            self._kick()
            self._thread = threading.Thread(target=self._run, name="stall-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._sample()  # what was written since the last sample,
        if self._kick():  # and the interval that ended with the measurement
            time.sleep(FLUSH_WAIT)
        self._sample()

    def result(self) -> dict[str, Any]:
        """``{"max_ms": worst, "by_process": {name: ms}}`` and the same of the lag
        not spent waiting for a CPU (``own_max_ms``, ``own_by_process``; empty when
        not sampled)."""
        if not self._max:
            return {}
        found = {
            "max_ms": max(self._max.values()),
            "by_process": dict(sorted(self._max.items())),
        }
        if self._own:
            found["own_max_ms"] = max(self._own.values())
            found["own_by_process"] = dict(sorted(self._own.items()))
        return found

    def _kick(self) -> bool:
        """Ask every process with a stats file to write it now (and so start a new
        lag interval); True when any was asked."""
        asked = False
        now = time.time()
        for stats in self._read():
            pid, updated = stats.get("pid"), stats.get("updated_at")
            fresh = isinstance(updated, int | float) and now - updated < STALE_AFTER
            if fresh and isinstance(pid, int) and pid > 0:  # no signal to a reused pid
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGUSR2)
                    asked = True
        return asked

    def _read(self) -> list[dict[str, Any]]:
        if self._dir is None or not self._dir.is_dir():
            return []
        found = []
        for path in self._dir.glob("*.json"):
            try:
                stats = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # being replaced right now
            if isinstance(stats, dict):
                stats.setdefault("name", path.stem)
                found.append(stats)
        return found

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL):
            self._sample()

    def _sample(self) -> None:
        for stats in self._read():
            since = stats.get("loop_lag_since")
            if isinstance(since, int | float) and since < self._since:
                continue  # an interval that began before the measurement
            name = str(stats["name"])
            for key, table in (("loop_lag_max_ms", self._max), ("loop_lag_own_max_ms", self._own)):
                lag = stats.get(key)
                if isinstance(lag, int | float):
                    table[name] = max(table.get(name, 0.0), float(lag))
