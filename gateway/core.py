"""The gateway core: everything a gateway process decides, with no I/O.

How this works
--------------
One :class:`GatewayCore` per gateway process owns the state and the decisions, and
splits them among a few collaborators, each with one job:

- :class:`~gateway.directory.Directory`: clients, uid bindings, groups, sessions;
- :class:`~gateway.clients.Clients`: connection ids, client events to workers
  (``EV_*``), slow clients, the heartbeat decisions;
- :class:`~gateway.workers.Workers`: which worker gets a client's events (sticky,
  least connections), holding them while a worker leaves or none is linked;
- :class:`~gateway.commands.Commands`: the Gateway API commands and queries;
- this class: the internal links (dispatch by command name, rejection, ``ROUTES``
  changes), the worker's leave (``WORKER_LEAVE``, ``RELEASE``) and the operator
  queries. The link protocol's rules (the ``HELLO`` check, ``WELCOME``/``REPLY``/
  ``ERROR`` packets, keep-alive and hello deadlines, ``ROUTES`` chunks) are
  ``gateway.linkproto``'s, shared with the other end of the links; each link
  carries its :class:`~gateway.linkproto.LinkServer` as ``link.proto``.

The asyncio shells feed it and it acts through the writers of the records they
gave it (``gateway.records``): ``gateway.connection`` reports client events to
:attr:`GatewayCore.clients` (bytes parsed by ``gateway.websocket``);
``gateway.links`` reports :meth:`~GatewayCore.link_opened`,
:meth:`~GatewayCore.link_received` (packets decoded by ``gateway.protocol``),
:meth:`~GatewayCore.link_garbage` and :meth:`~GatewayCore.link_closed`. The server's
timers call ``clients.heartbeat`` and :meth:`~GatewayCore.tick`; the time comes from
the ``clock`` the core was given, so tests drive it by hand.

A link's first packet must be ``HELLO`` with the secret (``LinkServer.receive_hello``;
answered ``WELCOME`` and the ``ROUTES`` state, or ``ERROR`` and a half-close). Then packets are dispatched
by command name: ``SEND_TO_GROUP`` to ``cmd_send_to_group(link, packet)``, ``Q_UIDS``
to ``query_uids(*args)`` whose result goes back in one ``REPLY``; the handler is on
:class:`~gateway.commands.Commands` for the Gateway API, here for the rest. A
malformed packet gets ``ERROR`` and closes that link only.

Routes: every accepted link gets ``ROUTES`` with the uids and groups that have
members here (right after ``WELCOME``), then, once per batch of input in which some
uid or group appeared or vanished, the changes (the shell's ``defer`` runs
:meth:`~GatewayCore.send_route_changes` at the end of the loop turn).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from pygatewayworker.gateway.clients import Clients
from pygatewayworker.gateway.commands import Commands, coalesce
from pygatewayworker.gateway.config import Gateway
from pygatewayworker.gateway.directory import Directory
from pygatewayworker.gateway.linkproto import (
    HELLO_TIMEOUT,
    PING,
    PONG,
    LinkRefused,
    LinkServer,
    Upkeep,
    iter_route_packets,
    route_packets,
)
from pygatewayworker.gateway.pacing import Pacer
from pygatewayworker.gateway.protocol import (
    MAX_CONNECTION_ROWS,
    Cmd,
    PacketTooLarge,
    ProtocolError,
    encode,
)
from pygatewayworker.gateway.records import Client, Counters, Link
from pygatewayworker.gateway.workers import Workers
from pygatewayworker.register.config import parse_address

__all__ = ["GatewayCore", "INPUT_BATCH"]

log = logging.getLogger("gateway")

INPUT_BATCH = 256
"""Packets decoded from a link at a time, when the turn has that much budget left
(at most the budget of a whole turn): a 256 KiB read holds about 2,000 small
packets, some 6 ms of decoding and merging."""


class GatewayCore:
    """The state and decisions of one gateway process (see the module docstring).

    ``clock`` gives the time (seconds, monotonic); ``defer(fn)`` runs ``fn`` once the
    current batch of input is handled (the shell passes ``loop.call_soon``; by
    default ``fn`` runs at once). ``public_port`` and ``internal_port`` are set by
    the shell once it listens.
    """

    hello_timeout = HELLO_TIMEOUT
    """Seconds a new link has to send a valid ``HELLO`` (and a rejected one to close)."""

    def __init__(
        self,
        config: Gateway,
        index: int = 0,
        clock: Callable[[], float] = time.monotonic,
        defer: Callable[[Callable[[], None]], object] | None = None,
    ) -> None:
        self.config = config
        self.index = index
        self.clock = clock
        self.pacer = Pacer(defer)
        """The per-turn budget: sliced broadcasts, link input in batches
        (``gateway.pacing``); unbounded until a ``defer`` is given."""
        self._defer: Callable[[Callable[[], None]], object] = defer or _now
        self.public_port = 0
        self.internal_port = 0
        self.started = 0.0
        self.accepting = True
        """False once the gateway stops: new links are dropped."""
        self.counters = Counters()
        self.send_buffers: Callable[[], dict[str, int]] = _no_send_buffers
        """``send_buffer_bytes`` (the sum) and ``send_buffer_max_bytes`` (the largest):
        bytes queued for clients in the shell's transports, for :meth:`stats`. An
        I/O fact: the shell sets this (``ClientPort.send_buffers``)."""
        self.directory: Directory[Client] = Directory(self._routes_dirty)
        self.workers = Workers(config, self.directory, clock)
        self.clients = Clients(config, self.directory, self.workers, self.counters, clock)
        self.commands = Commands(self.directory, self.counters, clock, self.pacer)
        self.links: set[Link] = set()
        self.handlers: dict[Cmd, Callable[[Link, list[Any]], None]] = {}
        """Command handlers by command (``cmd_<name>`` here or on :attr:`commands`)."""
        self.queries: dict[Cmd, Callable[..., Any]] = {}
        """Query handlers by command (``query_<name>``)."""
        for cmd in Cmd:
            name = cmd.name.lower()
            if name.startswith("q_"):
                attr = "query_" + name[2:]
                self.queries[cmd] = getattr(self.commands, attr, None) or getattr(self, attr)
                continue
            handler = getattr(self.commands, "cmd_" + name, None) or getattr(
                self, "cmd_" + name, None
            )
            if handler is not None:
                self.handlers[cmd] = handler

    @property
    def defer(self) -> Callable[[Callable[[], None]], object]:
        """Runs a function once the current batch of input is handled (the shell's
        ``loop.call_soon``); setting it also paces the work per loop turn."""
        return self._defer

    @defer.setter
    def defer(self, fn: Callable[[Callable[[], None]], object]) -> None:
        self._defer = fn
        self.pacer.use(fn)

    @property
    def internal_address(self) -> str:
        """``lan_ip:internal_port``, the address in this gateway's client_ids."""
        return f"{self.config.lan_ip}:{self.internal_port}"

    # ---- links -----------------------------------------------------------------
    def link_opened(self, link: Link) -> None:
        """A new connection on the internal port (dropped when stopping). Gives the
        link its protocol object (``link.proto``, a ``LinkServer``)."""
        cfg = self.config
        link.proto = LinkServer(
            cfg.secret, cfg.keepalive_interval, cfg.link_timeout, link.opened, self.hello_timeout
        )
        if not self.accepting:
            link.writer.abort()
            return
        self.links.add(link)

    def link_data(self, link: Link, data: bytes) -> None:
        """Bytes read from ``link``: decoded and handled now, as far as the loop
        turn's budget goes and no sliced broadcast is unfinished; the rest waits for
        later turns with the link's reading paused (``gateway.pacing``)."""
        pacer = self.pacer
        if pacer.turn_due or pacer.jobs or pacer.waiting:  # not idle: wait behind
            link.decoder.feed(data, 0)
            if not link.waiting:
                self._wait(link)
            return
        # the common case (this runs for every read), written out: a fresh budget,
        # one batch holds the whole read
        per_turn = pacer.per_turn
        if per_turn:
            pacer.budget = per_turn
            pacer.deadline = pacer.clock() + pacer.turn_time
        limit = INPUT_BATCH if per_turn >= INPUT_BATCH else per_turn or INPUT_BATCH
        try:
            packets = link.decoder.feed(data, limit)
        except ProtocolError as exc:
            self.link_garbage(link, str(exc))
            return
        if len(packets) == 1:
            self._handle(link, packets)
        elif packets:
            self._handle(link, coalesce(packets))
        if (len(packets) == limit or link.inbox) and not self._drain(link) and not link.waiting:
            self._wait(link)

    def _drain(self, link: Link) -> bool:
        """Handle ``link``'s buffered input in batches while the turn's budget lasts
        and no job is queued; True when it is all handled (or the link is gone)."""
        pacer = self.pacer
        # a whole batch or none: the broadcasts of a batch are merged (coalesce), and
        # a remnant of a turn's budget would merge only a few
        limit = INPUT_BATCH if pacer.per_turn >= INPUT_BATCH else pacer.per_turn or INPUT_BATCH
        while not (link.closed or link.rejected):
            if pacer.jobs:
                return False
            if link.inbox:
                packets, link.inbox = link.inbox, []
                self._handle(link, packets)
                continue
            if pacer.budget < limit or pacer.late():
                return False
            try:
                packets = link.decoder.feed(b"", limit)
            except ProtocolError as exc:
                self.link_garbage(link, str(exc))
                return True
            if not packets:
                return True
            self.link_received(link, packets)
            if len(packets) < limit and not link.inbox:
                return True  # the decoder holds no whole packet more
        link.inbox = []
        return True

    def _wait(self, link: Link) -> None:
        link.waiting = True
        self._pause(link)
        self.pacer.wait(partial(self._resume_input, link))

    def _pause(self, link: Link) -> None:
        if not link.paused:
            link.paused = True
            link.writer.pause_reading()

    def _resume_input(self, link: Link) -> bool:
        """A later turn for ``link``'s input (``Pacer.wait``). Its reading resumes
        one turn before its input is handled: what the sender queued meanwhile is
        read first and its broadcasts merge with those that waited (coalescing)."""
        link.proto.last_recv = self.clock()  # its packets are news from it
        if link.paused and not (link.closed or link.rejected):
            link.paused = False
            link.writer.resume_reading()
            return False
        try:
            if not self._drain(link):
                if not (link.closed or link.rejected):
                    self._pause(link)
                return False
        except Exception:  # a bug, not the peer's: never leave the input stuck
            log.exception("%r: handling its input failed; dropping the link", link)
            link.writer.abort()
        link.waiting = False
        if link.paused and not link.closed:  # a rejected link reads on till EOF
            link.paused = False
            link.writer.resume_reading()
        return True

    def link_received(self, link: Link, packets: list[list[Any]]) -> None:
        """Packets decoded from ``link``, in order. Consecutive broadcasts to the same
        recipients are merged first (write coalescing, ``commands.coalesce``)."""
        if len(packets) > 1:
            packets = coalesce(packets)
        self._handle(link, packets)

    def _handle(self, link: Link, packets: list[list[Any]]) -> None:
        """Dispatch ``packets`` until one leaves a sliced broadcast unfinished: the
        rest wait in ``link.inbox`` behind it."""
        link.unanswered = 0
        if link.stalled:
            self._resume(link)
        pacer = self.pacer
        pacer.budget -= len(packets)
        jobs = pacer.jobs
        handle = self.link_packet
        for done, packet in enumerate(packets):
            if link.closed or link.rejected:
                return
            if jobs:
                link.inbox = packets[done:]
                if not link.waiting:
                    self._wait(link)
                return
            handle(link, packet)

    def link_packet(self, link: Link, packet: list[Any]) -> None:
        """Dispatch one packet by command name."""
        cmd = packet[0]
        if not link.role:
            self._hello(link, packet)
            return
        handler = self.handlers.get(cmd)
        try:
            if handler is not None:
                handler(link, packet)
                return
            query = self.queries.get(cmd)
            if query is None:
                raise ValueError(f"unexpected command {cmd.name}")
        except PacketTooLarge as exc:  # valid, but the data would not fit: not a violation
            self.refuse(link, 0, f"{cmd.name} ignored: {exc}")
            return
        except (ValueError, TypeError, KeyError, ProtocolError) as exc:
            self.reject(link, 0, f"bad {cmd.name} packet: {exc}")
            return
        self._answer(link, query, packet)

    def _answer(self, link: Link, query: Callable[..., Any], packet: list[Any]) -> None:
        proto = link.proto
        try:
            req = proto.request_id(packet)
        except ValueError as exc:
            self.reject(link, 0, f"bad {packet[0].name} packet: {exc}")
            return
        try:
            result = query(*packet[2:])
        except (ValueError, TypeError, KeyError) as exc:
            self.reject(link, req, f"bad {packet[0].name} packet: {exc}")
            return
        try:
            reply = proto.reply(req, result)
        except PacketTooLarge as exc:
            self.refuse(link, req, f"{packet[0].name}: the answer is too large: {exc}")
            return
        link.writer.send(reply)

    def refuse(self, link: Link, req: int, reason: str) -> None:
        """Answer ``ERROR`` and keep the link: the request was valid but cannot be
        served (its data would exceed the packet limit); one caller's data never
        costs the link."""
        log.warning("%r: %s", link, reason)
        link.writer.send(encode(Cmd.ERROR, req, reason[:500]))

    def link_garbage(self, link: Link, reason: str) -> None:
        """``link`` sent bytes that are not packets (the decoder said ``reason``)."""
        self.reject(link, 0, reason)

    def reject(self, link: Link, req: int, reason: str) -> None:
        """Answer ``ERROR`` and close the link (it sent garbage or a bad command)."""
        log.warning("%r: %s; closing the link", link, reason)
        if link.closed or link.rejected:
            return
        now = self.clock()
        link.writer.send(link.proto.refuse(req, reason, now))
        link.leaving = True
        link.rejected = now
        link.writer.reject()
        if link in self.workers.linked:
            self.workers.linked.remove(link)

    def link_closed(self, link: Link) -> None:
        """``link``'s connection is gone: its clients move to other workers (events
        held for it are released)."""
        link.closed = True
        link.leaving = True
        self.links.discard(link)
        self.workers.remove(link)
        self.clients.auth.link_gone(link)
        lost = link.unanswered if link.role == "worker" and self.accepting else 0
        link.unanswered = 0
        if lost:  # it went (died, or dropped the link) without a word since them
            self.counters.events_lost += lost
            log.warning(
                "%r is gone: %d client events sent to it since it last spoke may be lost "
                "(%d clients to re-assign)",
                link,
                lost,
                max(link.clients, 0),
                extra=_worker_field(link),
            )
        elif link.role:
            log.info(
                "%r is gone (%d clients to re-assign)",
                link,
                max(link.clients, 0),
                extra=_worker_field(link),
            )

    def release_held(self) -> None:
        """Hand on every event held for a leaving worker (before the links close at
        stop)."""
        for link in list(self.links):
            self.workers.release_all(link)

    def _hello(self, link: Link, packet: list[Any]) -> None:
        try:
            hello = link.proto.receive_hello(packet)
        except LinkRefused as exc:
            self.reject(link, 0, str(exc))
            return
        link.role, link.name, link.pid = hello.role, hello.name, hello.pid
        if hello.hooks:
            link.hooks = hello.hooks
        link.writer.send(link.proto.welcome(self._welcome_info()))
        log.info("%r linked (pid %d)", link, hello.pid, extra=_worker_field(link))
        uids, groups = self.directory.route_keys()
        link.route_backlog = []
        self.pacer.add(RouteState(self, link, uids, groups))

    def routes_sent(self, link: Link) -> None:
        """``link``'s first full ``ROUTES`` state is sent (``RouteState``): the
        changes held meanwhile follow it, and a worker starts taking client events."""
        backlog, link.route_backlog = link.route_backlog, None
        for packet in backlog or ():
            link.writer.send(packet)
        if link.role == "worker":
            self.workers.add(link)

    def _welcome_info(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "lan_ip": cfg.lan_ip,
            "port": self.internal_port,
            "public_host": parse_address(cfg.listen)[0],
            "public_port": self.public_port,
            "name": cfg.name,
            "index": self.index,
            "pid": os.getpid(),
        }

    # ---- link upkeep commands ---------------------------------------------------
    def cmd_ping(self, link: Link, packet: list[Any]) -> None:
        link.writer.send(PONG)

    def cmd_pong(self, link: Link, packet: list[Any]) -> None:
        pass  # the shell already noted the activity (proto.last_recv)

    def cmd_hello(self, link: Link, packet: list[Any]) -> None:
        raise ValueError("HELLO was already accepted on this link")

    def cmd_worker_leave(self, link: Link, packet: list[Any]) -> None:
        """The worker is leaving: route nothing new to it, hold its clients' next
        events until it releases them (``cmd_release``), then acknowledge; every
        event sent to it so far is ahead of the ack in the same stream."""
        if link.role != "worker":
            raise ValueError("only a worker link may leave")
        self.workers.leave(link)
        log.info("%r is leaving; %d clients move to other workers", link, max(link.clients, 0))
        link.writer.send(encode(Cmd.LEAVE_ACK))

    def cmd_release(self, link: Link, packet: list[Any]) -> None:
        """The leaving worker is done with some clients (see ``Cmd.RELEASE``)."""
        _, conn_ids, others = packet
        if link.role != "worker" or not link.leaving:
            raise ValueError("only a leaving worker may release clients")
        if type(conn_ids) is not list or not all(type(c) is int for c in conn_ids):
            raise TypeError("conn_ids must be a list of ints")
        if type(others) is not bool:
            raise TypeError("others must be a bool")
        if others:
            self.workers.release_all(link, frozenset(conn_ids))
        else:
            self.workers.release_ids(link, conn_ids)

    def cmd_declared_closed(self, link: Link, packet: list[Any]) -> None:
        """A worker ran ``on_close`` for these clients while we were unreachable (see
        ``Cmd.DECLARED_CLOSED``): close them without a second ``EV_CLOSE``."""
        _, conn_ids = packet
        if type(conn_ids) is not list or not all(type(c) is int for c in conn_ids):
            raise TypeError("conn_ids must be a list of ints")
        closed = self.clients.declared_closed(conn_ids)
        log.warning(
            "%r ran on_close for %d of our clients while we were unreachable; closing "
            "the %d still here (1001), without a second on_close",
            link,
            len(conn_ids),
            closed,
        )

    def cmd_auth_reply(self, link: Link, packet: list[Any]) -> None:
        """The worker's answer to ``AUTHENTICATE`` (``gateway.authhook``)."""
        if link.role != "worker":
            raise ValueError("only a worker answers AUTHENTICATE")
        self.clients.auth.reply(link, packet)

    # ---- operator queries ---------------------------------------------------------
    def query_connections(self, after: int | None = None, limit: int | None = None) -> Any:
        lan_ip, port = self.config.lan_ip, self.internal_port
        if after is None and limit is None:
            return self.clients.rows(lan_ip, port)
        if after.__class__ is not int or after < 0:  # type: ignore[operator]
            raise ValueError(f"after must be an int >= 0, not {after!r}")
        if limit.__class__ is not int or not 0 < limit <= MAX_CONNECTION_ROWS:  # type: ignore[operator]
            raise ValueError(f"limit must be an int in 1..{MAX_CONNECTION_ROWS}, not {limit!r}")
        page, after = self.directory.page(after, limit)  # type: ignore[arg-type]
        return [self.clients.rows(lan_ip, port, page), after]

    def query_stats(self) -> Any:
        return self.stats()

    def stats(self) -> dict[str, Any]:
        """Counters for ``status`` and ``Q_STATS``."""
        counters = self.counters
        return {
            "connections": len(self.directory),
            "messages_in": counters.messages_in,
            "messages_out": counters.messages_out,
            "bytes_in": counters.bytes_in,
            "bytes_out": counters.bytes_out,
            "send_failures": counters.send_failures,
            "events_lost": counters.events_lost,
            "workers": sum(1 for link in self.links if link.role == "worker"),
            "clients": sum(1 for link in self.links if link.role == "client"),
            "pending_events": len(self.workers.pending),
            **self.clients.admission.stats(),
            "uptime": round(self.clock() - self.started, 3) if self.started else 0.0,
            "public_port": self.public_port,
            "internal_address": self.internal_address,
            "pid": os.getpid(),
            # metrics (docs/observability.md)
            "connections_opened": counters.connections_opened,
            "closed_by_reason": counters.closed_by_reason,
            "handshake_failures": counters.handshake_failures,
            "broadcast_deliveries": counters.broadcast_deliveries,
            **self.send_buffers(),
        }

    # ---- routes -------------------------------------------------------------------
    def _routes_dirty(self) -> None:
        """The directory's ``on_dirty``: send the changes once this batch is done."""
        self.defer(self.send_route_changes)

    def send_route_changes(self) -> None:
        """Tell every accepted link which uids and groups appeared or vanished."""
        packets = route_packets(False, *self.directory.take_route_changes())
        if not packets:
            return
        for link in self.links:
            if link.role and not link.rejected:
                if link.route_backlog is not None:  # its state is still being sent
                    link.route_backlog.extend(packets)
                    continue
                for packet in packets:
                    link.writer.send(packet)

    # ---- time ---------------------------------------------------------------------
    def tick(self, now: float, late: float = 0.0) -> None:
        """Housekeeping (about once a second): expire events held with no worker
        linked, sweep the decider table, and do what each link's protocol object says it needs
        (``LinkServer.upkeep``: a ping, a hello deadline, a silent peer).

        ``late``: how much later than due this tick runs, i.e. how long this loop was
        stalled (a stopped process, a paused VM): not the links' silence
        (``KeepAlive.stalled``)."""
        self.workers.expire(now)
        self.commands.decisions.sweep(now)
        if late > 0.0:
            for link in self.links:
                link.proto.stalled(late, now)
        for link in list(self.links):
            upkeep = link.proto.upkeep(now)
            if upkeep is Upkeep.NOTHING:
                continue
            if upkeep is Upkeep.PING:
                link.writer.send(PING)
            elif upkeep is Upkeep.HELLO_LATE:
                self.reject(link, 0, f"no HELLO within {self.hello_timeout:g} s")
            elif upkeep is Upkeep.SILENT:
                # a kept (stalled) worker is still pinged: peer_acked needs data to ack
                interval = self.config.keepalive_interval
                if self._silent(link, now) and now - link.proto.last_send >= interval:
                    link.proto.last_send = now
                    link.writer.send(PING)
            else:  # LINGERED: the peer did not close its side after our ERROR
                link.writer.abort()

    def _silent(self, link: Link, now: float) -> bool:
        """``link`` has been silent for more than ``link_timeout``. A worker whose
        host still acknowledges our data (TCP, ``peer_acked``) is *stalled* (its
        clients' next events held, the link kept: a blocked loop or a stopped process
        that comes back loses nothing); after a second ``link_timeout`` its link is
        dropped. A worker whose host is silent too (it vanished) is dropped at once.
        Either way the events it was sent since it last spoke are counted and logged
        as lost. Returns whether the link is kept."""
        silent = link.proto.silence(now)
        timeout = self.config.link_timeout
        if (
            link.role == "worker"
            and silent <= 2 * timeout
            and (link.stalled or link.writer.peer_acked(timeout))
        ):
            if not link.stalled and not link.leaving:
                link.stalled = now
                self.workers.leave(link)
                log.warning(
                    "%r silent for %.1f s; holding the events of its %d clients until it "
                    "answers (dropped after %.1f s of silence)",
                    link,
                    silent,
                    max(link.clients, 0),
                    2 * self.config.link_timeout,
                )
            return True
        lost = link.unanswered if link.role == "worker" else 0
        link.unanswered = 0
        self.counters.events_lost += lost
        log.warning(
            "%r silent for %.1f s; dropping it: %d client events sent to it since it last "
            "spoke may be lost (its %d clients move to other workers, with %d held events)",
            link,
            silent,
            lost,
            max(link.clients, 0),
            link.held_events,
        )
        link.writer.abort()
        return False

    def _resume(self, link: Link) -> None:
        log.warning(
            "%r answers again after %.1f s held; %d held events go to it",
            link,
            self.clock() - link.stalled,
            link.held_events,
        )
        link.stalled = 0.0
        self.workers.resume(link)


def _now(fn: Callable[[], None]) -> None:
    fn()


def _worker_field(link: Link) -> dict[str, str] | None:
    """The ``worker`` field of a JSON log line about a worker's link."""
    return {"worker": link.name} if link.role == "worker" else None


def _no_send_buffers() -> dict[str, int]:
    return {"send_buffer_bytes": 0, "send_buffer_max_bytes": 0}


ROUTE_KEYS_PER_UNIT = 64
"""Keys of a ``ROUTES`` state packet that cost one unit of a loop turn's budget
(cutting and encoding a key takes about 0.13 us)."""


class RouteState:
    """A new link's first ``ROUTES``: the full state of uids and groups taken at its
    ``HELLO``, cut and encoded a packet at a time (``ROUTES_CHUNK`` keys each) as
    the loop turns' budget allows, so a gateway holding 50,000 uids never spends
    7 ms on it in one go; then ``GatewayCore.routes_sent``. Changes made meanwhile
    wait in ``link.route_backlog`` (the link sees them after the state, as before),
    and a worker takes no client event before its state is complete."""

    __slots__ = ("core", "link", "packets", "next")

    def __init__(self, core: GatewayCore, link: Link, uids: list[str], groups: list[str]) -> None:
        self.core = core
        self.link = link
        self.packets = iter_route_packets(True, uids, [], groups, [])
        self.next = next(self.packets)  # there is always one (the state's end)

    def step(self, pacer: Pacer) -> bool:
        link = self.link
        if link.closed or link.rejected:
            link.route_backlog = None
            return True
        send = link.writer.send
        while True:
            packet, keys = self.next
            send(packet)
            pacer.budget -= 1 + keys // ROUTE_KEYS_PER_UNIT
            following = next(self.packets, None)
            if following is None:
                break
            self.next = following
            if pacer.budget <= 0 or pacer.late():
                return False  # the rest on a later turn
        self.core.routes_sent(link)
        return True
