"""The slow-callback watchdog: one log line for each callback that runs longer than
``BusinessWorker.slow_callback``, while it is still running.

How this works
--------------
One daemon thread per worker process wakes every :attr:`SlowCallbackWatchdog.period`
(a quarter of the threshold, at most :data:`MAX_PERIOD`) and looks at two things:

* **The event loop.** The process's loop-lag probe (``runtime.service.PULSE``)
  notes when it is due next; a probe overdue by the threshold means that the loop
  has run nothing for at least that long: an inline callback blocks, or a coroutine
  callback called blocking code. The watchdog caps the probe's interval on an idle
  loop at its period, so a block is noticed at most a period late, as with a timer. Without a probe (a worker run outside
  ``run_service``, as in tests) a timer of the watchdog's own on the loop stamps
  the time every period instead; it stops once the probe runs, so an idle worker's
  loop is not woken four times a second for it. The watchdog then reads the loop thread's stack
  (``sys._current_frames``) and names the event it is in (:func:`describe_frame`:
  the dispatcher's frames that run a callback hold its ``cmd`` and ``client_id``)
  or, outside events, the innermost function. The inline path does no bookkeeping for this: a plain
  callback run inline costs the same with the watchdog as without it.
* **The callback threads** (thread mode). Each thread notes what it runs and since
  when (:attr:`~businessworker.threads.CallbackThreads.running`).

Each blocked stretch of the loop and each thread job is reported once, so a
callback that never returns is found too, and one that runs 10 s logs one line.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from types import FrameType

from pygatewayworker.businessworker.dispatch import Dispatcher
from pygatewayworker.businessworker.threads import CallbackThreads, Running
from pygatewayworker.runtime.service import LAG_PROBE_IDLE_INTERVAL, PULSE

__all__ = ["SlowCallbackWatchdog", "MAX_PERIOD", "describe_frame"]

logger = logging.getLogger("businessworker")

MAX_PERIOD = 0.25
"""Seconds between two looks at most (the reported times are that precise)."""

_EVENT_CODES = frozenset(
    {
        Dispatcher._call_inline.__code__,
        Dispatcher._drain.__code__,
        Dispatcher._settle.__code__,
    }
)
"""Code of the dispatcher's frames that run an event's callback on the loop; each
has the locals ``self``, ``cmd`` and ``client_id``."""


def describe_frame(dispatcher: Dispatcher, frame: FrameType | None) -> str | None:
    """``"<callback> of client <client_id>"`` when ``frame`` (a thread's innermost
    frame) is inside an event that ``dispatcher`` runs on the loop, else ``None``.
    Reads the frames from another thread: nothing is noted on the inline path."""
    while frame is not None:
        if frame.f_code in _EVENT_CODES:
            found = frame.f_locals
            cmd = found.get("cmd")
            if found.get("self") is dispatcher and cmd in dispatcher.names:
                return f"{dispatcher.names[cmd]} of client {found.get('client_id')}"
        frame = frame.f_back
    return None


class SlowCallbackWatchdog:
    """Watches the loop of the worker ``name`` running ``dispatcher`` (and its
    callback ``threads``, if any) for callbacks running longer than ``threshold``
    seconds."""

    def __init__(
        self,
        threshold: float,
        name: str,
        dispatcher: Dispatcher,
        threads: CallbackThreads | None = None,
    ) -> None:
        self.threshold = threshold
        self.period = min(threshold / 4, MAX_PERIOD)
        self.name = name
        self.reports = 0
        """Log lines written so far."""
        self._dispatcher = dispatcher
        self._threads = threads
        self._stamp = 0.0
        self._reported_stamp = -1.0
        self._reported_jobs: list[Running | None] = [None] * (threads.size if threads else 0)
        self._loop_thread = 0
        self._timer: asyncio.TimerHandle | None = None
        self._stopped = threading.Event()

    def start(self) -> None:
        """Start stamping (call it on the loop) and watching."""
        # The probe is how late a blocked loop is noticed: at most our period.
        PULSE.idle_interval = min(PULSE.idle_interval, self.period)
        self._loop_thread = threading.get_ident()
        self._beat()
        watcher = threading.Thread(target=self._watch, name=f"{self.name}.watchdog", daemon=True)
        watcher.start()

    def stop(self) -> None:
        """Stop stamping and watching (the thread ends at its next look)."""
        PULSE.idle_interval = LAG_PROBE_IDLE_INTERVAL
        self._stopped.set()
        if self._timer is not None:
            self._timer.cancel()

    # ---- internals -----------------------------------------------------------------

    def _beat(self) -> None:
        self._stamp = time.monotonic()
        if PULSE.due:  # the lag probe runs: its pulse says when the loop is blocked
            self._timer = None
            return
        self._timer = asyncio.get_running_loop().call_later(self.period, self._beat)

    def _watch(self) -> None:
        while not self._stopped.wait(self.period):
            now = time.monotonic()
            self._look_at_loop(now)
            if self._threads is not None:
                self._look_at_threads(now, self._threads.running)

    def _look_at_loop(self, now: float) -> None:
        due = PULSE.due
        if due:
            stamp = due  # names the blocked stretch: the probe that is overdue
            blocked = now - due  # at least this long: the probe has not run since
        elif self._timer is None:
            return  # the probe stopped (the worker stops), and so did our timer
        else:
            stamp = self._stamp
            blocked = now - stamp - self.period  # at least this long (a stamp per period)
        if blocked < self.threshold or stamp == self._reported_stamp:
            return
        self._reported_stamp = stamp
        frame = sys._current_frames().get(self._loop_thread)
        where = describe_frame(self._dispatcher, frame) or _innermost(frame)
        self.reports += 1
        logger.warning(
            "%s: slow callback: %s has blocked the event loop for %.1f s so far "
            "(slow_callback=%g s); no other client of this worker is served meanwhile",
            self.name,
            where,
            blocked,
            self.threshold,
        )

    def _look_at_threads(self, now: float, running: list[Running | None]) -> None:
        reported = self._reported_jobs
        for index, job in enumerate(running):
            if job is None or job is reported[index] or now - job.started < self.threshold:
                continue
            reported[index] = job
            self.reports += 1
            logger.warning(
                "%s: slow callback: %s of client %s has been running for %.1f s in a "
                "callback thread (slow_callback=%g s); that client's next events wait",
                self.name,
                job.what,
                job.client_id,
                now - job.started,
                self.threshold,
            )


def _innermost(frame: FrameType | None) -> str:
    """Where a thread is, for a log line: the innermost Python function."""
    if frame is None:
        return "code outside any event"
    code = frame.f_code
    return f"{code.co_qualname} ({code.co_filename}:{frame.f_lineno})"
