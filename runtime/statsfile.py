"""A child's stats file, written off its event loop.

Replacing a file (``mkstemp``, write, ``os.replace``) costs a few syscalls that can
take milliseconds on a busy disk, measured at ~20 ms under load: too long for the
loop that carries every client's messages. :class:`StatsWriter` takes the snapshot as
JSON text built on the loop (so no dict is read while the loop changes it) and
writes it from one daemon thread; only the newest snapshot waits, an older one not
yet written is dropped.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from pygatewayworker.runtime.spec import ChildSpec

__all__ = ["StatsWriter"]

log = logging.getLogger("child")


class StatsWriter:
    """One thread per child; :meth:`submit` never blocks on I/O."""

    def __init__(self, spec: ChildSpec) -> None:
        self._spec = spec
        self._pending: str | None = None
        self._closed = False
        self._failed = False
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, stats: dict[str, Any]) -> None:
        """Queue ``stats`` for writing (replacing a snapshot not yet written)."""
        text = json.dumps(stats)
        with self._wake:
            if self._closed:
                return
            self._pending = text
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="stats-writer", daemon=True)
                self._thread.start()
            self._wake.notify()

    def close(self, timeout: float = 1.0) -> None:
        """Write what is pending, then stop the thread (bounded by ``timeout``)."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._wake:
                while self._pending is None and not self._closed:
                    self._wake.wait()
                text, self._pending = self._pending, None
                closed = self._closed
            if text is not None:
                self._write(text)
            if closed:
                return

    def _write(self, text: str) -> None:
        try:
            self._spec.write_stats_text(text)
        except Exception as exc:
            if not self._failed:
                log.warning("cannot write stats file %s: %s", self._spec.stats_path(), exc)
            self._failed = True
        else:
            self._failed = False
