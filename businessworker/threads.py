"""Plain callbacks in threads (``BusinessWorker(callbacks="thread")``).

How this works
--------------
In thread mode the dispatcher hands every plain-function callback to
:class:`CallbackThreads`: ``threads`` daemon threads that take jobs from one queue.
Blocking code there (the Django ORM, an HTTP client, a database driver) holds up
one thread, never the event loop, which keeps the links, the per-client queues,
coroutine callbacks and the session write-back. Order per client stays the
dispatcher's business: it hands a client's next event over only once the previous
one has reported back, so one client's events run in order and never two at once,
while different clients' events run at the same time, up to ``threads``.

A job's result goes back to the loop through the same
:class:`~businessworker.threadapi.Outbox` as the Gateway API calls the callback
made (``businessworker.threadapi``), behind them: a callback's sends reach the links
before its completion is reported, hence before its session write-back and before
its client's next event. Inside the thread, ``api`` is the thread-safe
:class:`~businessworker.threadapi.ThreadAPI` and the event's context is entered.

``on_worker_start`` and ``on_worker_stop``, when plain functions, run in a thread of
their own (:meth:`CallbackThreads.call`), so a stop is never held up by busy
callback threads.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from pygatewayworker.businessworker.context import EventContext, enter_event
from pygatewayworker.businessworker.handle import WorkerAPI, use_api
from pygatewayworker.businessworker.threadapi import Outbox, ThreadAPI

__all__ = ["FAILED", "CallbackThreads", "Running", "resolve"]

logger = logging.getLogger("businessworker")


class _Failed:
    __slots__ = ()

    def __repr__(self) -> str:
        return "FAILED"


FAILED: Any = _Failed()
"""What a job returns (or is taken to return) when it raised; already logged."""


@dataclass(slots=True, frozen=True)
class Running:
    """What a callback thread is running, and since when (for the watchdog)."""

    started: float
    """``time.monotonic()`` when it started."""
    what: str
    """The callback, e.g. ``"Events.on_message"``."""
    client_id: str | None


@dataclass(slots=True, frozen=True)
class _Job:
    run: Callable[[], Any]
    done: Callable[[Any], None]
    what: str
    client_id: str | None


class CallbackThreads:
    """``size`` daemon threads running jobs for the dispatcher (see the module
    docstring); ``api`` is what ``api`` is inside them. Daemon threads, so that a callback that never returns cannot keep
    the process from exiting once the worker has stopped."""

    def __init__(self, api: ThreadAPI, size: int, name: str) -> None:
        self.api = api
        self.outbox: Outbox = api.outbox
        self.size = size
        self.running: list[Running | None] = [None] * size
        """Per thread: the job it runs, ``None`` when idle (read by the watchdog)."""
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._stopped = False
        self._loop: asyncio.AbstractEventLoop | None = None
        """The worker's loop, kept: ``asyncio.get_running_loop()`` costs a
        ``getpid()`` system call on Python 3.11, and :meth:`run` runs per event."""
        self._threads = [
            threading.Thread(target=self._work, args=(i,), name=f"{name}.cb{i}", daemon=True)
            for i in range(size)
        ]

    @property
    def busy(self) -> int:
        """Threads running a job right now."""
        return sum(job is not None for job in self.running)

    @property
    def queued(self) -> int:
        """Jobs waiting for a free thread."""
        return self._jobs.qsize()

    def start(self) -> None:
        """Start the threads; they wait for jobs."""
        for thread in self._threads:
            thread.start()

    def submit(
        self,
        run: Callable[[], Any],
        done: Callable[[Any], None],
        what: str,
        client_id: str | None = None,
    ) -> None:
        """Run ``run()`` in one of the threads, then ``done(result)`` on the loop
        (``done(FAILED)`` if ``run`` raised, which it should not: it is logged; and
        once the threads are stopped, without running it)."""
        if self._stopped:
            logger.warning("%s: %s of client %s not run: stopping", self._name, what, client_id)
            self.outbox.post(done, FAILED)
            return
        self._jobs.put(_Job(run, done, what, client_id))

    async def run(
        self,
        callback: Callable[..., Any],
        args: tuple[Any, ...],
        event: EventContext,
        what: str,
        on_error: Callable[[], None],
    ) -> Any:
        """``callback(*args)`` for a client event, in one of the threads, awaited:
        its result, or :data:`FAILED` when it raised (``on_error()`` then logs the
        exception, in the thread). It runs in a copy of the caller's context with
        ``event`` entered and ``api`` the thread-safe one; ``what`` names it for
        the watchdog."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        job = functools.partial(
            contextvars.copy_context().run, self._run_event, future, callback, args, event, on_error
        )
        self.submit(job, functools.partial(resolve, future), what, event.client_id)
        return await future

    def stop(self) -> None:
        """Drop the jobs no thread has started and let every thread end after the
        job it is running. Call it once nothing waits for a job any more."""
        self._stopped = True
        while True:
            try:
                self._jobs.get_nowait()
            except queue.Empty:
                break
        for _ in self._threads:
            self._jobs.put(None)

    async def join(self, timeout: float) -> int:
        """Wait until every thread has ended, at most ``timeout`` seconds; return
        how many are still running a job (they are left behind)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while any(thread.is_alive() for thread in self._threads) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        return sum(thread.is_alive() for thread in self._threads)

    async def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)`` in a new thread of its own (``on_worker_start`` and
        ``on_worker_stop``: never held up by busy callback threads); the caller
        awaits its result or exception. ``api`` there is the thread-safe one."""
        future = asyncio.get_running_loop().create_future()
        context = contextvars.copy_context()

        def run() -> None:
            try:
                outcome = (True, context.run(self._hook, function, args))
            except BaseException as exc:
                outcome = (False, exc)
            self.outbox.post(resolve, future, outcome)

        name = getattr(function, "__name__", "hook")
        threading.Thread(target=run, name=f"{self._name}.{name}", daemon=True).start()
        ok, value = await future
        if not ok:
            raise value
        return value

    # ---- internals -----------------------------------------------------------------

    def _run_event(
        self,
        waiter: asyncio.Future[Any],
        callback: Callable[..., Any],
        args: tuple[Any, ...],
        event: EventContext,
        on_error: Callable[[], None],
    ) -> Any:
        if waiter.cancelled():  # dropped while queued (a stop past its drain bound)
            return FAILED
        enter_event(event)
        use_api(cast(WorkerAPI, self.api))
        try:
            return callback(*args)
        except BaseException:  # in a thread even SystemExit is only this event's failure
            on_error()
            return FAILED

    def _hook(self, function: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        use_api(cast(WorkerAPI, self.api))
        return function(*args)

    def _work(self, index: int) -> None:
        jobs, running, outbox = self._jobs, self.running, self.outbox
        while True:
            job = jobs.get()
            if job is None:
                return
            running[index] = Running(time.monotonic(), job.what, job.client_id)
            try:
                result = job.run()
            except BaseException:  # the job's own bug; a thread must survive it
                logger.exception("%s: a job of %s failed", self._name, job.what)
                result = FAILED
            finally:
                running[index] = None
            outbox.post(job.done, result)


def resolve(future: asyncio.Future[Any], outcome: Any) -> None:
    """Set ``future``'s result, unless it is done already (cancelled: nobody waits)."""
    if not future.done():
        future.set_result(outcome)
