"""Client events -> the app's Events callbacks, in order per client.

How this works
--------------
The link reader calls :meth:`Dispatcher.on_event` for every ``EV_*`` packet.

* When the client has events queued or running, the event is appended to its queue.
* Otherwise, when the callback is a plain function (not ``async def``) and the
  worker is in inline mode (``BusinessWorker(callbacks="inline")``), it is run at
  once, inline in the reader: no task, no queue. Most apps' callbacks are plain
  functions that only send, and this saves the cost of a task per event (about a
  sixth of a round trip). Should the plain function return an awaitable, the rest of
  the event continues in a task, and the client's later events queue behind it.
* Otherwise (a coroutine callback) a queue and one task to drain it are created. The
  task runs the client's events one after another and ends, dropping the queue,
  when the queue is empty: an idle client costs nothing. A coroutine always runs in
  a task (``asyncio.timeout()`` and HTTP clients' timeouts need
  ``asyncio.current_task()``). On Python 3.12+ that task starts eagerly
  (``eager_start``): it runs at once, in the reader's turn of the loop, until the
  coroutine first really suspends, so an ``on_message`` that only sends finishes
  without being scheduled (no extra turn of the loop, no ``epoll_wait``); on 3.11
  it starts at the next turn.
* In thread mode (``BusinessWorker(callbacks="thread")``, ``threads`` given as a
  :class:`~businessworker.threads.CallbackThreads`), plain functions are never run
  inline: their events go through the queue and task like coroutines, and the task
  hands each one to a callback thread and awaits its completion
  (``businessworker.threads``), so blocking code never stops the event loop.

Either way one client's events are handled strictly in order, one at a time: its
next event starts only once the previous one has finished (its awaitable done, its
thread reported back). Different clients run concurrently only where nothing
blocks: coroutine callbacks interleave where they await, thread-mode callbacks
run in parallel up to the number of threads, and an inline callback holds up every
client of the worker until it returns.

For each event the task sets the context (``businessworker.context``), calls the
callback (plain function or coroutine), and afterwards, except for ``on_close``,
sends ``SET_SESSION`` to the client's gateway if the session changed (the re-packed
dict differs from the bytes that came with the event). An exception in a callback
is logged with the client_id and traceback and counted; the worker keeps serving,
and the session of a failed callback is not written back.

A session written back is in flight until the gateway has handled it, and an
event the gateway sent before that carries the older session: the client's events
already queued here, and those that arrive before the gateway answers a ``PING``
written behind the ``SET_SESSION`` (``GatewayLink.mark``). Those events get the
session we wrote instead of the one they carry (``SET_SESSION`` replaces the whole
session, so that is what the gateway holds next). Without this, a session set in
``on_websocket_connect`` could be missing from the next ``on_message`` when the
client is quick, and a write-back made from the stale copy would undo it.

The dispatcher starts *held*: events are queued but not run until :meth:`open`
(the worker opens it after ``on_worker_start`` returned).

Every event is also noted in :attr:`Dispatcher.memory`
(``businessworker.orphans.GatewayMemory``), which runs ``on_close`` for the clients
of a gateway process that died without sending their ``EV_CLOSE``.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import sys
from collections import deque
from collections.abc import Callable
from time import perf_counter
from types import CoroutineType
from typing import Any

from pygatewayworker.businessworker.context import EventContext, enter_event, exit_event
from pygatewayworker.businessworker.handle import WorkerAPI, use_api
from pygatewayworker.businessworker.orphans import GatewayMemory
from pygatewayworker.businessworker.request import ConnectRequest
from pygatewayworker.businessworker.threads import FAILED, CallbackThreads
from pygatewayworker.gateway.protocol import (
    Cmd,
    ProtocolError,
    encode,
    pack_session,
    unpack_session,
)
from pygatewayworker.gatewayclient.link import GatewayLink
from pygatewayworker.runtime.histogram import Histogram

__all__ = ["Dispatcher", "KINDS"]

logger = logging.getLogger("businessworker")

KINDS: dict[Cmd, str] = {
    Cmd.EV_CONNECT: "connect",
    Cmd.EV_WS_CONNECT: "websocket_connect",
    Cmd.EV_MESSAGE: "message",
    Cmd.EV_CLOSE: "close",
}
"""Event command -> kind; the callback of kind ``k`` is ``Events.on_<k>``."""

_EMPTY_SESSION = pack_session({})
_ONE_ARG = frozenset({Cmd.EV_CONNECT, Cmd.EV_CLOSE})

Queue = deque[tuple[GatewayLink, list[Any]]]


class Dispatcher:
    """Per-client queues of events and the tasks that run them."""

    def __init__(
        self,
        events: object,
        api: WorkerAPI,
        gateway_lost_timeout: float = 60.0,
        threads: CallbackThreads | None = None,
    ) -> None:
        self._api = api
        self._callbacks: dict[Cmd, Callable[..., Any] | None] = {
            cmd: getattr(events, f"on_{kind}", None) for cmd, kind in KINDS.items()
        }
        self.names: dict[int, str] = {
            cmd: getattr(callback, "__qualname__", f"on_{KINDS[cmd]}")
            for cmd, callback in self._callbacks.items()
        }
        """Each command's callback by name, e.g. ``"Events.on_message"`` (log lines)."""
        plain = frozenset(
            cmd
            for cmd, callback in self._callbacks.items()
            if callback is not None and not inspect.iscoroutinefunction(callback)
        )
        self._threads = threads
        self._threaded = plain if threads is not None else frozenset()
        """Commands whose callback runs in a callback thread (thread mode)."""
        self._inline = frozenset(
            cmd
            for cmd, callback in self._callbacks.items()
            if callback is None or (cmd in plain and cmd not in self._threaded)
        )
        """Commands whose callback runs inline when its client has nothing queued
        (in thread mode: only the missing callbacks, a no-op)."""
        self._queues: dict[str, Queue] = {}
        self._owners: dict[str, tuple[GatewayLink, int]] = {}  # busy client -> link, conn_id
        self._unacked: dict[str, tuple[GatewayLink, bytes, int]] = {}
        """client -> (link, session bytes, mark) of a write-back the gateway may not
        have handled yet (see the module docstring)."""
        self.on_idle: Callable[[GatewayLink, int], None] | None = None
        """Called with (link, conn_id) when a client's last queued event finished."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        """The worker's loop, kept: ``asyncio.get_running_loop()`` costs a
        ``getpid()`` system call on Python 3.11, once per event here."""
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._open = False
        self.events_in: dict[str, int] = dict.fromkeys(KINDS.values(), 0)
        self.callback_errors = 0
        self.callback_seconds = Histogram()  # metrics: how long callbacks take
        self.memory = GatewayMemory(gateway_lost_timeout, self._on_orphans)

    @property
    def clients(self) -> int:
        """Clients with queued or running events."""
        return len(self._queues)

    @property
    def queued(self) -> int:
        """Events waiting in the clients' queues (not those running). For metrics."""
        return sum(len(queue) for queue in self._queues.values())

    def on_event(self, link: GatewayLink, packet: list[Any]) -> None:
        """The link reader's callback: count, then run the event inline (a plain
        function with nothing queued for its client) or enqueue it."""
        self.events_in[KINDS[packet[0]]] += 1
        if self._unacked:
            self._catch_up_session(link, packet)
        self.memory.note(link, packet)
        self._enqueue(link, packet)

    def forget_handled_sessions(self) -> None:
        """Drop the write-backs the gateways have handled (or whose link is gone);
        the worker calls it now and then, for clients that sent nothing since."""
        for client_id, (link, _, mark) in list(self._unacked.items()):
            if link.pongs_seen >= mark or not link.is_open:
                del self._unacked[client_id]

    def _catch_up_session(self, link: GatewayLink, packet: list[Any]) -> None:
        """Give ``packet`` the session we last wrote back for its client when the
        gateway sent it before handling that write-back."""
        client_id = link.client_id(packet[1])
        unacked = self._unacked.get(client_id)
        if unacked is None:
            return
        written_on, packed, mark = unacked
        if written_on is not link or link.pongs_seen >= mark:
            del self._unacked[client_id]  # handled: the session it carries is current
            return
        packet[2] = packed
        if packet[0] is Cmd.EV_CLOSE:
            del self._unacked[client_id]

    def _enqueue(self, link: GatewayLink, packet: list[Any]) -> None:
        client_id = link.client_id(packet[1])
        queue = self._queues.get(client_id)
        if queue is not None:
            queue.append((link, packet))
            self._owners[client_id] = (link, packet[1])  # the newest link (relinks)
            return
        if self._open and packet[0] in self._inline:
            self._run_inline(client_id, link, packet)
            return
        queue = self._queues[client_id] = deque(((link, packet),))
        self._owners[client_id] = (link, packet[1])
        if self._open:
            self._start(client_id, queue)

    def open(self) -> None:
        """Start running events (those held so far first)."""
        if self._open:
            return
        self._open = True
        for client_id, queue in list(self._queues.items()):
            self._start(client_id, queue)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no event is queued or running; ``False`` after ``timeout``."""
        if not self._queues:
            return True
        waiter = asyncio.get_running_loop().create_future()
        self._idle_waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            return False
        return True

    async def cancel_all(self) -> None:
        """Cancel every running event task and drop every queue."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._tasks.difference_update(tasks)  # those cancelled before they ever ran
        self._queues.clear()
        self._owners.clear()

    # ---- internals -----------------------------------------------------------------

    def _on_orphans(self, link: GatewayLink, packets: list[list[Any]]) -> None:
        """Synthetic ``EV_CLOSE`` of the clients of a dead gateway (see orphans)."""
        for packet in packets:
            self._enqueue(link, packet)

    def _start(self, client_id: str, queue: Queue) -> None:
        self._spawn(self._drain(client_id, queue))

    def _spawn(self, coro: Any) -> None:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        task = _new_task(loop, coro)
        if not task.done():  # not started eagerly and finished already
            self._tasks.add(task)

    def _task_ends(self) -> None:
        """The current task (an event task, in its last ``finally``) is done with its
        client: untracked, and the idle waiters woken when no client is busy. Called
        by the task itself rather than as a done callback: no extra callback in the
        next iteration of the loop, per event."""
        task = asyncio.current_task(self._loop)
        if task is not None:
            self._tasks.discard(task)
        if not self._queues:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def _forget(self, client_id: str, queue: Queue) -> None:
        """``client_id`` has nothing queued or running any more."""
        if self._queues.get(client_id) is not queue:
            return
        del self._queues[client_id]
        owner = self._owners.pop(client_id, None)
        if owner is not None and self.on_idle is not None:
            self.on_idle(*owner)

    def busy_on(self, link: GatewayLink) -> list[int]:
        """conn_ids of the clients of ``link``'s gateway with events queued or running."""
        return [conn_id for owner, conn_id in self._owners.values() if owner is link]

    async def _drain(self, client_id: str, queue: Queue) -> None:
        """The client's task: run its queued events one after another, then forget
        the client. Each callback is called and awaited right here, in this one
        coroutine: nested coroutines would cost an object and a frame each, per
        event (the slow-callback watchdog reads ``cmd`` and ``client_id`` from this
        frame)."""
        use_api(self._api)  # this task's context: businessworker.api -> our API
        callbacks = self._callbacks
        try:
            while queue:
                link, packet = queue.popleft()
                cmd, conn_id, _, _, _, payload = packet
                callback = callbacks[cmd]
                if callback is None:
                    continue
                event, blob = self._context(client_id, link, packet)
                started = perf_counter()  # metrics: timed until the callback settled
                if cmd in self._threaded:
                    ok = await self._call_in_thread(callback, cmd, client_id, event, payload)
                    self.callback_seconds.observe(perf_counter() - started)
                else:
                    token = enter_event(event)
                    ok = False
                    try:
                        result = (
                            callback(client_id)
                            if cmd in _ONE_ARG
                            else callback(client_id, _argument(cmd, payload))
                        )
                        ok = True
                        if result is not None and (
                            result.__class__ is CoroutineType or inspect.isawaitable(result)
                        ):
                            ok = False
                            await result
                            ok = True
                    except asyncio.CancelledError:
                        task = asyncio.current_task()
                        if task is not None and task.cancelling():
                            raise  # this task is being cancelled: not the callback's error
                        self._failed(cmd, client_id)
                    except Exception:
                        self._failed(cmd, client_id)
                    finally:
                        exit_event(token)
                        self.callback_seconds.observe(perf_counter() - started)
                if ok and cmd is not Cmd.EV_CLOSE:
                    self._write_back(link, client_id, conn_id, blob, event.session)
        finally:
            self._forget(client_id, queue)
            self._task_ends()

    def _context(
        self, client_id: str, link: GatewayLink, packet: list[Any]
    ) -> tuple[EventContext, bytes | None]:
        """The event's context and the session bytes it came with (``None``: unreadable)."""
        _, _, blob, remote_ip, remote_port, _ = packet
        try:
            session = unpack_session(blob)
        except ProtocolError as exc:
            logger.warning("session of client %s is unreadable (%s); using {}", client_id, exc)
            session, blob = {}, None
        event = EventContext(
            client_id,
            remote_ip,
            remote_port,
            link.lan_ip,
            link.public_port,
            link.gateway_address,
            session,
            KINDS[packet[0]],
        )
        return event, blob

    def _failed(self, cmd: int, client_id: str) -> None:
        self.callback_errors += 1
        _log_failure(cmd, client_id)

    def _run_inline(self, client_id: str, link: GatewayLink, packet: list[Any]) -> None:
        """Run a plain-function callback now, in the reader (the client has nothing
        queued), in a fresh copy of the context: what the callback sets in context
        variables stays with this event, as it would in a task of its own."""
        if self._callbacks[packet[0]] is not None:
            started = perf_counter()  # metrics: timed until the function returns
            contextvars.copy_context().run(self._call_inline, client_id, link, packet)
            self.callback_seconds.observe(perf_counter() - started)

    def _call_inline(self, client_id: str, link: GatewayLink, packet: list[Any]) -> None:
        cmd, conn_id, _, _, _, payload = packet
        callback = self._callbacks[cmd]
        assert callback is not None
        event, blob = self._context(client_id, link, packet)
        enter_event(event)
        use_api(self._api)
        try:
            result = (
                callback(client_id)
                if cmd in _ONE_ARG
                else callback(client_id, _argument(cmd, payload))
            )
        except (Exception, asyncio.CancelledError):  # not a task: a cancel is its error
            self._failed(cmd, client_id)
            return
        if result is not None and inspect.isawaitable(result):
            # The rest of this event runs in a task (it copies this context); the
            # client's next events queue behind it.
            queue = self._queues[client_id] = deque()
            self._owners[client_id] = (link, conn_id)
            self._spawn(self._resume(client_id, queue, link, packet, event, blob, result))
            return
        if cmd is not Cmd.EV_CLOSE:
            self._write_back(link, client_id, conn_id, blob, event.session)

    async def _resume(
        self,
        client_id: str,
        queue: Queue,
        link: GatewayLink,
        packet: list[Any],
        event: EventContext,
        blob: bytes | None,
        result: Any,
    ) -> None:
        """Await what an inline callback returned, then drain the client's queue."""
        cmd, conn_id = packet[0], packet[1]
        try:
            if await self._settle(cmd, client_id, result) and cmd is not Cmd.EV_CLOSE:
                self._write_back(link, client_id, conn_id, blob, event.session)
        except BaseException:  # this task is being cancelled: release the client
            self._forget(client_id, queue)
            self._task_ends()
            raise
        await self._drain(client_id, queue)

    async def _settle(self, cmd: int, client_id: str, awaitable: Any) -> bool:
        """Await a callback's result; ``False`` (logged, counted) when it raised. A
        ``CancelledError`` counts as the callback's error unless this task itself
        is being cancelled (then it propagates)."""
        try:
            await awaitable
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            self._failed(cmd, client_id)
            return False
        except Exception:
            self._failed(cmd, client_id)
            return False
        return True

    async def _call_in_thread(
        self,
        callback: Callable[..., Any],
        cmd: Cmd,
        client_id: str,
        event: EventContext,
        payload: Any,
    ) -> bool:
        """Run the callback in a callback thread (``CallbackThreads.run``) and wait
        for it; ``False`` when it failed. An awaitable it returns is awaited here, on
        the loop, before the client's next event."""
        threads = self._threads
        assert threads is not None
        try:
            args = (client_id,) if cmd in _ONE_ARG else (client_id, _argument(cmd, payload))
        except Exception:
            self._failed(cmd, client_id)
            return False
        log_failure = functools.partial(_log_failure, cmd, client_id)
        result = await threads.run(callback, args, event, self.names[cmd], log_failure)
        if result is FAILED:
            self.callback_errors += 1
            return False
        if result is not None and inspect.isawaitable(result):
            token = enter_event(event)
            try:
                return await self._settle(cmd, client_id, result)
            finally:
                exit_event(token)
        return True

    def _write_back(
        self,
        link: GatewayLink,
        client_id: str,
        conn_id: int,
        blob: bytes | None,
        session: dict[str, Any],
    ) -> None:
        try:
            packed = pack_session(session)
        except (TypeError, ValueError, OverflowError) as exc:
            self.callback_errors += 1
            logger.error(
                "session of client %s cannot be stored, not written back: %s", client_id, exc
            )
            return
        if packed == (blob or _EMPTY_SESSION):
            return
        if not link.is_open:
            logger.debug("session of client %s not written back: its gateway left", client_id)
            return
        link.send(encode(Cmd.SET_SESSION, conn_id, packed))
        self._api.sent += 1
        self.memory.note_session(link, conn_id, packed)
        self._unacked[client_id] = (link, packed, link.mark())
        for queued_on, queued in self._queues.get(client_id, ()):
            if queued_on is link:  # sent before the gateway could have our session
                queued[2] = packed


if sys.version_info >= (3, 12):

    def _new_task(loop: asyncio.AbstractEventLoop, coro: Any) -> asyncio.Task[None]:
        """A task for ``coro``, started eagerly: it runs now until it first suspends
        (and is done already when it never does)."""
        return asyncio.Task(coro, loop=loop, eager_start=True)  # type: ignore[call-arg]

else:

    def _new_task(loop: asyncio.AbstractEventLoop, coro: Any) -> asyncio.Task[None]:
        """A task for ``coro`` (Python 3.11 has no eager start)."""
        return loop.create_task(coro)


def _log_failure(cmd: int, client_id: str) -> None:
    """Log the exception being handled as the failure of the client's callback."""
    logger.exception(
        "on_%s of client %s raised; the worker keeps serving",
        KINDS[Cmd(cmd)],
        client_id,
        extra={"client_id": client_id},  # JSON logs
    )


def _argument(cmd: int, payload: Any) -> Any:
    """The callback's second argument: the message as it came, or for
    ``on_websocket_connect`` the handshake request as a :class:`ConnectRequest`."""
    if cmd == Cmd.EV_WS_CONNECT:
        return ConnectRequest.from_wire(payload)
    return payload
