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
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

__all__ = ["StallSampler"]

SAMPLE_INTERVAL = 0.3


class StallSampler:
    """Samples ``<run_dir>/stats/*.json`` every :data:`SAMPLE_INTERVAL` seconds."""

    def __init__(self, run_dir: Path | None) -> None:
        self._dir = run_dir / "stats" if run_dir is not None else None
        self._max: dict[str, float] = {}
        self._own: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> StallSampler:
        if self._dir is not None:
            self._thread = threading.Thread(target=self._run, name="stall-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._sample()  # the interval that ended with the measurement

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

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL):
            self._sample()

    def _sample(self) -> None:
        if self._dir is None or not self._dir.is_dir():
            return
        for path in self._dir.glob("*.json"):
            try:
                stats = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # being replaced right now
            name = str(stats.get("name", path.stem))
            for key, table in (("loop_lag_max_ms", self._max), ("loop_lag_own_max_ms", self._own)):
                lag = stats.get(key)
                if isinstance(lag, int | float):
                    table[name] = max(table.get(name, 0.0), float(lag))
