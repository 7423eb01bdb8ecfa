"""The business worker process: links to every gateway and runs the app's Events.

How this works
--------------
:class:`WorkerProcess` is the Service the supervisor runs (``serve(spec)``):

1. ``start()`` imports the Events object named by ``config.events`` (a class is
   instantiated with no arguments; a missing callback is a no-op), learns the
   gateways from the registers and links to every one of them as role ``"worker"``
   (``gatewayclient.pool.LinkPool``: re-links when a link drops, picks up gateways
   that appear later). It returns once the first list has arrived and every listed
   gateway is linked (or :data:`START_TIMEOUT` has passed; a register that never
   answers fails the start), after ``on_worker_start(worker)`` has run. Events that
   arrive before that are held, then handled. A worker started by a ``reload``
   (``runtime.spec.REPLACEMENT_ENV`` set) must be linked to *every* listed gateway
   by then, or its start fails: the reload then keeps the old worker, which is
   linked where the new one is not.
2. When the Events define ``authenticate(request)``, the worker announces the hook
   in its ``HELLO`` and answers the gateways' ``AUTHENTICATE`` packets
   (``businessworker.authenticate``): the gateways then hold every handshake
   until a worker accepted or rejected it.
3. Client events are run by ``businessworker.dispatch.Dispatcher``: in order per
   client, with ``businessworker.context`` set. In thread mode (``config.callbacks``,
   the default) plain callbacks, ``on_worker_start`` and ``on_worker_stop`` included,
   run in threads (``businessworker.threads``), coroutines on the loop. A watchdog
   (``businessworker.watchdog``) logs callbacks that run past
   ``config.slow_callback``.
4. ``stop(graceful)`` sends ``WORKER_LEAVE`` to every gateway and keeps handling
   events until each gateway has answered ``LEAVE_ACK`` (no new event comes after
   it) and every running or queued event is done, then calls
   ``on_worker_stop(worker)`` and closes the links. The bound is
   ``config.drain_timeout`` for a graceful stop (SIGQUIT: how a ``reload`` retires
   the old worker, and ``stop -g``) and :data:`FAST_LEAVE_TIMEOUT` otherwise;
   events still running or queued then are dropped and logged. The gateways hand
   this worker's clients to other workers, so a ``reload`` loses no event. The
   callback threads end once their running callback returns; one still running
   past :data:`THREADS_JOIN_TIMEOUT` after that is left behind (they are daemon
   threads: the process exits anyway).
5. Once a second a sweep compares the open links with the clients remembered per
   gateway (``businessworker.orphans``): the clients of a gateway process that died
   get ``on_close`` when it comes back as a new process, or after
   ``config.gateway_lost_timeout`` without it once the registers stopped listing it.

Events code reaches the Gateway API through ``businessworker.api`` (see
``businessworker.handle``); the worker binds it process-wide as an
``AnyThreadAPI``, so that threads the app starts itself get the thread-safe form.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, cast

from pygatewayworker.businessworker.authenticate import HOOK_NAME, Authenticator
from pygatewayworker.businessworker.config import BusinessWorker
from pygatewayworker.businessworker.dispatch import KINDS, Dispatcher
from pygatewayworker.businessworker.handle import (
    WorkerAPI,
    bind_process_api,
    reset_api,
    unbind_process_api,
    use_api,
)
from pygatewayworker.businessworker.threadapi import (
    QUERY_MARGIN,
    AnyThreadAPI,
    Outbox,
    ThreadAPI,
)
from pygatewayworker.businessworker.threads import CallbackThreads
from pygatewayworker.businessworker.watchdog import SlowCallbackWatchdog
from pygatewayworker.gateway.protocol import NO_WS_CONNECT, Cmd, encode
from pygatewayworker.gatewayclient.link import GatewayLink
from pygatewayworker.gatewayclient.pool import LinkPool, WatcherFactory
from pygatewayworker.runtime.service import run_service
from pygatewayworker.runtime.spec import REPLACEMENT_ENV, ChildSpec

__all__ = ["WorkerProcess", "WorkerInfo", "WorkerBootError", "load_events", "serve"]

logger = logging.getLogger("businessworker")

GATEWAY_SWEEP_INTERVAL = 1.0
"""Seconds between two looks for gateways that died (``businessworker.orphans``)."""
START_TIMEOUT = 10.0
"""Seconds ``start()`` waits for the gateway list and the links."""
LEAVE_TIMEOUT = 10.0
"""Seconds a stop waits at most for the gateways' ``LEAVE_ACK``."""
FAST_LEAVE_TIMEOUT = 3.0
"""Seconds a non-graceful stop (SIGTERM) waits for ``LEAVE_ACK`` and for the events
it already received (a graceful one waits ``config.drain_timeout``)."""
STOP_MARGIN = 15.0
"""Seconds a stop may take beyond its drain bound (``on_worker_stop``, closing the
links); ``stop_limit`` tells ``runtime.service`` the total."""
PENDING_SHOWN = 20
"""Clients named in the log line of a stop that drops events."""
THREADS_JOIN_TIMEOUT = 2.0
"""Seconds a stop waits for the callback threads to end, after the drain."""

_LEAVE = encode(Cmd.WORKER_LEAVE)


class WorkerBootError(RuntimeError):
    """The worker cannot start: Events not importable, or ``on_worker_start`` failed."""


def load_events(import_string: str) -> object:
    """Import ``"package.module:Name"``; instantiate it when it is a class.

    Raises :class:`WorkerBootError` naming the import string and the cause.
    """
    module_name, _, attr = import_string.partition(":")
    try:
        target = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:
        raise WorkerBootError(
            f"cannot import the Events {import_string!r}: {exc.__class__.__name__}: {exc}"
        ) from exc
    if isinstance(target, type):
        try:
            target = target()
        except Exception as exc:
            raise WorkerBootError(
                f"cannot instantiate the Events class {import_string!r}: "
                f"{exc.__class__.__name__}: {exc}"
            ) from exc
    return target


@dataclass(slots=True)
class WorkerInfo:
    """What ``on_worker_start`` / ``on_worker_stop`` receive."""

    name: str
    index: int
    pid: int
    api: WorkerAPI
    config: BusinessWorker


class WorkerProcess:
    """One business worker (the Service run by ``runtime.service.run_service``).

    ``watcher_factory`` replaces the register client (tests, embedding); by default
    gateways are discovered through ``config.registers``.
    """

    def __init__(
        self,
        config: BusinessWorker,
        index: int = 0,
        *,
        watcher_factory: WatcherFactory | None = None,
    ) -> None:
        self.config = config
        self.index = index
        self.name = (
            f"{config.app}.{config.name}.{index}" if config.app else f"{config.name}.{index}"
        )
        self._watcher_factory = watcher_factory
        self._events: object = None
        self._pool: LinkPool | None = None
        self._dispatcher: Dispatcher | None = None
        self._authenticator: Authenticator | None = None
        self._threads: CallbackThreads | None = None
        self._watchdog: SlowCallbackWatchdog | None = None
        self.api: WorkerAPI | None = None
        self._process_api: WorkerAPI | None = None
        self.worker: WorkerInfo | None = None
        self._acks: dict[GatewayLink, asyncio.Future[None]] = {}
        self._started_at = 0.0
        self._serving = False  # on_worker_start has returned
        self._stopping = False
        self._sweeper: asyncio.Task[None] | None = None
        self.stop_limit = config.drain_timeout + STOP_MARGIN
        """Upper bound of :meth:`stop` (seconds), read by ``runtime.service``."""

    # ---- Service protocol ----------------------------------------------------------

    async def start(self) -> None:
        """Import Events, link to every gateway, run ``on_worker_start``."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        self._started_at = time.monotonic()
        replacement = os.environ.pop(REPLACEMENT_ENV, "") == "1"
        self._events = load_events(self.config.events)
        config = self.config
        pool = self._pool = LinkPool(
            role="worker",
            name=self.name,
            secret=config.secret,
            registers=config.registers,
            keepalive_interval=config.keepalive_interval,
            link_timeout=config.link_timeout,
            on_leave_ack=self._on_leave_ack,
            watcher_factory=self._watcher_factory,
        )
        api = self.api = WorkerAPI(pool.links, config.query_timeout, unlinked=pool.unlinked)
        thread_api = ThreadAPI(api, Outbox(loop), config.query_timeout + QUERY_MARGIN)
        self._process_api = cast(WorkerAPI, AnyThreadAPI(api, thread_api))
        if config.callbacks == "thread":
            self._threads = CallbackThreads(thread_api, config.threads, self.name)
        dispatcher = self._dispatcher = Dispatcher(
            self._events, api, config.gateway_lost_timeout, self._threads
        )
        pool.on_event = dispatcher.on_event
        hook = getattr(self._events, HOOK_NAME, None)
        if callable(hook):
            self._authenticator = Authenticator(hook, api, self._threads)
            pool.hooks = (HOOK_NAME,)
            pool.on_authenticate = self._authenticator.on_authenticate
        if getattr(self._events, "on_websocket_connect", None) is None:
            pool.hooks += (NO_WS_CONNECT,)  # spare the gateways encoding every request
        self.worker = WorkerInfo(self.name, self.index, os.getpid(), api, config)
        await pool.start()
        try:
            await pool.wait_discovered(START_TIMEOUT)
            unlinked = await pool.wait_linked(START_TIMEOUT - (loop.time() - started))
        except BaseException:
            await pool.close()
            raise
        if unlinked:
            why = "; ".join(_link_error(a, pool.last_errors.get(a)) for a in unlinked)
            if replacement:
                await pool.close()
                raise WorkerBootError(
                    f"not linked to every gateway within {START_TIMEOUT:g} s ({why}); a reload "
                    "retires the old worker only once the new one is linked to all of them"
                )
            logger.warning("%s: not linked to %s yet; retrying in the background", self.name, why)
        bind_process_api(self._process_api)
        if self._threads is not None:
            self._threads.start()
        try:
            await self._run_hook("on_worker_start")
        except Exception as exc:
            logger.exception("%s: on_worker_start failed", self.name)
            await self._shutdown(LEAVE_TIMEOUT, run_stop_hook=False)
            raise WorkerBootError(
                f"on_worker_start of {config.events!r} failed: {exc.__class__.__name__}: {exc}"
            ) from exc
        self._serving = True
        dispatcher.open()
        if config.slow_callback > 0:
            self._watchdog = SlowCallbackWatchdog(
                config.slow_callback, self.name, dispatcher, self._threads
            )
            self._watchdog.start()
        self._sweeper = loop.create_task(self._sweep_gateways(pool, dispatcher))
        logger.info(
            "%s: serving, linked to %d gateway(s); plain callbacks run %s",
            self.name,
            len(pool.links),
            f"in {config.threads} thread(s)" if self._threads else "inline on the event loop",
        )

    async def stop(self, graceful: bool) -> None:
        """Leave every gateway, finish the events already received (for up to
        ``config.drain_timeout`` when ``graceful``, else :data:`FAST_LEAVE_TIMEOUT`),
        run ``on_worker_stop``, close."""
        if self._pool is None or self._stopping:
            return
        timeout = self.config.drain_timeout if graceful else FAST_LEAVE_TIMEOUT
        await self._shutdown(timeout, run_stop_hook=True)

    def stats(self) -> dict[str, Any]:
        """Counters for ``status``: ``links`` (gateways linked), ``events_in`` per kind,
        ``messages_in`` (every event received), ``messages_out`` (packets sent by the
        API and session write-backs), ``callback_errors``, ``clients`` (clients with
        queued events), ``threads`` (callback threads in thread mode, else 0),
        ``threads_busy`` (those running a callback), ``threads_queued`` (callbacks
        waiting for a free thread),
        ``slow_callbacks`` (watchdog reports) and ``uptime`` (s)."""
        pool, dispatcher, threads = self._pool, self._dispatcher, self._threads
        uptime = time.monotonic() - self._started_at if self._started_at else 0.0
        return {
            "name": self.name,
            "links": len(pool.links) if pool else 0,
            "gateways": sorted(pool.links) if pool else [],
            "events_in": dict(dispatcher.events_in) if dispatcher else {},
            "messages_in": sum(dispatcher.events_in.values()) if dispatcher else 0,
            "messages_out": self.api.sent if self.api else 0,
            "callback_errors": dispatcher.callback_errors if dispatcher else 0,
            "clients": dispatcher.clients if dispatcher else 0,
            "orphan_closes": dispatcher.memory.orphan_closes if dispatcher else 0,
            "threads": threads.size if threads else 0,
            "threads_busy": threads.busy if threads else 0,
            "threads_queued": threads.queued if threads else 0,
            "slow_callbacks": self._watchdog.reports if self._watchdog else 0,
            "authenticate": dict(self._authenticator.counts) if self._authenticator else {},
            "uptime": round(uptime, 1),
            # metrics (docs/observability.md)
            "callback_seconds": dispatcher.callback_seconds.snapshot() if dispatcher else {},
            "queued_events": dispatcher.queued if dispatcher else 0,
            "rejected_connects": self.api.rejected_connects if self.api else 0,
            "gateway_links": _link_states(pool) if pool else {},
        }

    # ---- internals -----------------------------------------------------------------

    async def _sweep_gateways(self, pool: LinkPool, dispatcher: Dispatcher) -> None:
        """Run ``on_close`` for the clients of gateways that died (see orphans)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(GATEWAY_SWEEP_INTERVAL)
            try:
                dispatcher.memory.sweep(pool.links, loop.time(), pool.listed)
                dispatcher.forget_handled_sessions()
            except Exception:
                logger.exception("%s: gateway sweep failed", self.name)

    async def _run_hook(self, name: str) -> None:
        """``on_worker_start`` / ``on_worker_stop``: a coroutine on the loop; a plain
        function in a thread of its own in thread mode, else on the loop."""
        hook = getattr(self._events, name, None)
        if hook is None:
            return
        assert self.api is not None
        token = use_api(self.api)
        try:
            if self._threads is not None and not inspect.iscoroutinefunction(hook):
                result = await self._threads.call(hook, self.worker)
            else:
                result = hook(self.worker)
            if inspect.isawaitable(result):
                await result
        finally:
            reset_api(token)

    async def _shutdown(self, timeout: float, run_stop_hook: bool) -> None:
        self._stopping = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        pool, dispatcher = self._pool, self._dispatcher
        assert pool is not None and dispatcher is not None and self.api is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        pool.stop_relinking()
        dispatcher.open()
        dispatcher.on_idle = self._on_client_idle
        await self._leave_gateways(pool, min(timeout, LEAVE_TIMEOUT))
        if dispatcher.clients:
            logger.info(
                "%s: left the gateways; finishing the events of %d client(s) (up to %.1f s)",
                self.name,
                dispatcher.clients,
                max(0.0, deadline - loop.time()),
            )
        if not await dispatcher.wait_idle(max(0.0, deadline - loop.time())):
            logger.warning(
                "%s: events still running or queued after %g s, dropped: %s",
                self.name,
                timeout,
                _describe_pending(dispatcher),
            )
            await dispatcher.cancel_all()
        if self._authenticator is not None:
            self._authenticator.cancel_all()
        if self._watchdog is not None:
            self._watchdog.stop()
        if self._threads is not None:
            self._threads.stop()  # nothing waits for a job any more
        if run_stop_hook and self._serving:
            try:
                await self._run_hook("on_worker_stop")
            except Exception:
                logger.exception("%s: on_worker_stop failed", self.name)
        await pool.close()
        if self._threads is not None:
            left = await self._threads.join(THREADS_JOIN_TIMEOUT)
            if left:
                logger.warning(
                    "%s: %d callback thread(s) still running a dropped event; left behind",
                    self.name,
                    left,
                )
        assert self._process_api is not None
        unbind_process_api(self._process_api)
        logger.info("%s: stopped", self.name)

    async def _leave_gateways(self, pool: LinkPool, timeout: float) -> None:
        """Send WORKER_LEAVE everywhere; wait for each LEAVE_ACK (or the link's end)."""
        loop = asyncio.get_running_loop()
        watchers: list[asyncio.Task[None]] = []
        for link in list(pool.links.values()):
            if not link.is_open:
                continue
            ack = self._acks[link] = loop.create_future()
            watcher = loop.create_task(link.wait_closed())
            watcher.add_done_callback(functools.partial(_settle, ack))
            watchers.append(watcher)
            link.send(_LEAVE)
        if not self._acks:
            return
        _, pending = await asyncio.wait(list(self._acks.values()), timeout=timeout)
        if pending:
            silent = [link.gateway_address for link, ack in self._acks.items() if not ack.done()]
            logger.warning(
                "%s: no LEAVE_ACK from %s within %g s", self.name, ", ".join(silent), timeout
            )
        for watcher in watchers:
            watcher.cancel()

    def _on_leave_ack(self, link: GatewayLink) -> None:
        """Every event this gateway sent us is here: tell it which of our clients
        still have events running or queued (it holds their next events until we
        release them, so a client's events never run on two workers at once) and
        release the others now."""
        ack = self._acks.get(link)
        if ack is None:
            logger.warning("%s: unexpected LEAVE_ACK from %s", self.name, link.gateway_address)
            return
        if not ack.done():
            ack.set_result(None)
        dispatcher = self._dispatcher
        busy = dispatcher.busy_on(link) if dispatcher is not None else []
        if link.is_open:
            link.send(encode(Cmd.RELEASE, busy, True))

    def _on_client_idle(self, link: GatewayLink, conn_id: int) -> None:
        """While leaving: a client's last event here finished; once its gateway has
        acknowledged our leave, release the client there."""
        ack = self._acks.get(link)
        if ack is not None and ack.done() and link.is_open:
            link.send(encode(Cmd.RELEASE, [conn_id], False))


def _link_states(pool: LinkPool) -> dict[str, int]:
    """Listed gateways by the state of our link to each (metrics): ``linked``,
    ``paused`` (its write buffer is over the high-water mark), ``unlinked``."""
    paused = sum(1 for link in pool.links.values() if link in pool.paused)
    return {
        "linked": len(pool.links) - paused,
        "paused": paused,
        "unlinked": len(pool.unlinked()),
    }


def _link_error(address: str, error: str | None) -> str:
    """Why ``address`` is not linked, naming it once."""
    if not error:
        return f"{address}: no answer"
    return error if address in error else f"{address}: {error}"


def _describe_pending(dispatcher: Dispatcher) -> str:
    """What a stop that hit its bound drops, for the log: per client, its running
    event and the queued ones by kind (the first :data:`PENDING_SHOWN` clients)."""
    # Dispatcher offers no public view of its queues; this reads them, nothing more.
    queues = list(dispatcher._queues.items())
    shown = []
    for client_id, queue in queues[:PENDING_SHOWN]:
        kinds = Counter(KINDS[packet[0]] for _, packet in queue)
        queued = ", ".join(f"{kind} x{n}" for kind, n in kinds.items())
        shown.append(f"{client_id} (1 running{'; queued: ' + queued if queued else ''})")
    more = f"; and {len(queues) - PENDING_SHOWN} more" if len(queues) > PENDING_SHOWN else ""
    events = len(queues) + sum(len(queue) for _, queue in queues)
    return f"{events} event(s) of {len(queues)} client(s): {'; '.join(shown)}{more}"


def _settle(future: asyncio.Future[None], _: object) -> None:
    if not future.done():
        future.set_result(None)


def serve(spec: ChildSpec) -> int:
    """Entry point of a business worker child process."""
    return run_service(spec, WorkerProcess(spec.config, spec.index))
