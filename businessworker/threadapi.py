"""The Gateway API from threads other than the event loop's, in a worker process.

How this works
--------------
Everything a thread needs done on the loop goes through one :class:`Outbox`: a FIFO
of calls, drained on the loop. A post to an empty outbox wakes the loop with one
``call_soon_threadsafe``; what other threads post before the loop gets to it rides
along, so ten sends cost one wake-up, not ten. One FIFO for every hand-off is what
keeps order: the callback threads (``businessworker.threads``) report a callback's
completion through it too, behind the sends the callback made.

:class:`ThreadAPI` is the Gateway API for code that does not run on the loop's
thread (``api`` is one inside a callback thread, see ``businessworker.handle``):

* sends and state changes (``send_*``, ``bind_uid``, ``join_group``,
  ``set_session``...) are queued to the loop in call order and return at once, as
  they do on the loop (none of them waits for the gateway). An error met there (an
  unlinked gateway, a malformed argument) can no longer reach the caller: it is
  logged with the call, the client and the caller's file and line;
* queries block the calling thread until the answer: the coroutine runs on the loop,
  behind the thread's earlier sends, and the thread waits for its result (at most
  ``query_timeout`` + :data:`QUERY_MARGIN`), as with the synchronous
  ``GatewayClient``: ``count = api.get_all_client_count()``. On the loop's own
  thread a blocking query would wait for itself: it raises instead.

:class:`AnyThreadAPI` is what a worker binds process-wide: the plain API on the
loop's thread, the :class:`ThreadAPI` on any other (threads the app starts itself),
so ``api`` is safe from every thread of the process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

from pygatewayworker.businessworker.context import current_event
from pygatewayworker.businessworker.handle import WorkerAPI
from pygatewayworker.gatewayclient.errors import GatewayError
from pygatewayworker.gatewayclient.spec import BY_NAME, Kind

__all__ = ["QUERY_MARGIN", "AnyThreadAPI", "Outbox", "ThreadAPI"]

logger = logging.getLogger("businessworker")

QUERY_MARGIN = 5.0
"""Seconds a blocking query waits beyond ``query_timeout`` for the loop to answer
(the loop may be busy; the query itself is bounded by ``query_timeout``)."""


class Outbox:
    """Calls from other threads to run on ``loop``, in the order they were posted.

    Build it on the loop's thread. :meth:`post` is thread-safe; the calls run on the
    loop, one batch per wake-up. A call that raises is logged and the batch goes on.
    """

    __slots__ = ("_loop", "_lock", "_calls", "_scheduled", "loop_thread")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self._scheduled = False
        self.loop_thread = threading.get_ident()
        """The ident of the loop's thread."""

    def post(self, call: Callable[..., Any], *args: Any) -> None:
        """Run ``call(*args)`` on the loop after everything posted before it."""
        with self._lock:
            self._calls.append((call, args))
            if self._scheduled:
                return
            self._scheduled = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: the worker is gone
            self._loop.call_soon_threadsafe(self._run)

    def _run(self) -> None:
        with self._lock:
            calls, self._calls = self._calls, []
            self._scheduled = False
        for call, args in calls:
            try:
                call(*args)
            except Exception:
                logger.exception("a call handed to the event loop by a thread failed")


class ThreadAPI:
    """The Gateway API for threads other than the loop's (see the module
    docstring): every call of the worker's API, sends queued to the loop and queries
    blocking, as ``gatewayclient.spec`` classes them; other attributes as they are."""

    __slots__ = ("_api", "outbox", "_wait", "_methods", "_tasks")

    def __init__(self, api: WorkerAPI, outbox: Outbox, wait: float) -> None:
        self._api = api
        self.outbox = outbox
        self._wait = wait
        self._methods: dict[str, Callable[..., Any]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def __getattr__(self, name: str) -> Any:
        method = self._methods.get(name)
        if method is not None:
            return method
        target = getattr(self._api, name)
        call = BY_NAME.get(name)  # the Gateway API's table says what each call is
        if call is None:
            return target  # not a call of the API (query_timeout, sent...)
        if call.kind is Kind.QUERY:
            method = functools.partial(self._query, name)
        else:
            method = functools.partial(self._call, name)
        functools.update_wrapper(method, target)
        self._methods[name] = method
        return method

    def __repr__(self) -> str:
        return f"<ThreadAPI of {self._api!r}>"

    def _call(self, name: str, *args: Any, **kwargs: Any) -> None:
        caller = sys._getframe(1)
        self.outbox.post(
            _api_call,
            self._api,
            name,
            args,
            kwargs,
            contextvars.copy_context(),  # for the current-client calls
            caller.f_code.co_filename,
            caller.f_lineno,
        )

    def _query(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() == self.outbox.loop_thread:
            raise RuntimeError(
                f"api.{name}() waits for the event loop, and this is the event loop's "
                f"thread: await it in an async def callback instead"
            )
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.outbox.post(self._start_query, name, args, kwargs, future)
        try:
            return future.result(self._wait)
        except TimeoutError:
            if future.done():
                raise  # the query's own error
            raise GatewayError(
                f"api.{name}() got no answer within {self._wait:g} s: the worker's event "
                "loop is blocked or overloaded"
            ) from None

    def _start_query(
        self,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        future: concurrent.futures.Future[Any],
    ) -> None:
        """On the loop: start the query's coroutine; its outcome goes to ``future``."""
        if not future.set_running_or_notify_cancel():
            return
        try:
            task = asyncio.ensure_future(getattr(self._api, name)(*args, **kwargs))
        except Exception as exc:  # a malformed argument, raised before awaiting
            future.set_exception(exc)
            return
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._query_done, future))

    def _query_done(self, future: concurrent.futures.Future[Any], task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            future.set_exception(GatewayError("the query was cancelled: the worker is stopping"))
        elif (exc := task.exception()) is not None:
            future.set_exception(exc)
        else:
            future.set_result(task.result())


def _api_call(
    api: WorkerAPI,
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    context: contextvars.Context,
    filename: str,
    lineno: int,
) -> None:
    """On the loop: one send or state change queued by a thread."""
    try:
        context.run(getattr(api, name), *args, **kwargs)
    except Exception as exc:
        event = context.run(current_event)
        logger.error(
            "api.%s() called at %s:%d%s failed: %s: %s",
            name,
            filename,
            lineno,
            f" for client {event.client_id}" if event is not None else "",
            type(exc).__name__,
            exc,
        )


class AnyThreadAPI:
    """The worker's API on the loop's thread, its :class:`ThreadAPI` on any other."""

    __slots__ = ("_api", "_threads")

    def __init__(self, api: WorkerAPI, threads: ThreadAPI) -> None:
        self._api = api
        self._threads = threads

    def __getattr__(self, name: str) -> Any:
        if threading.get_ident() == self._threads.outbox.loop_thread:
            return getattr(self._api, name)
        return getattr(self._threads, name)

    def __repr__(self) -> str:
        return f"<AnyThreadAPI of {self._api!r}>"
