"""The internal side of a gateway: links from business workers and push clients.

How this works
--------------
Every connection to the internal port is an :class:`InternalLink` speaking
``gateway.protocol``. The first packet must be ``HELLO`` with the secret; the
gateway answers ``WELCOME`` (or ``ERROR`` and a half-close). After that, packets are
dispatched by command name: ``cmd_<command>`` for commands and ``query_<query>`` for
queries (``gateway.commands``), answered with one ``REPLY``.

:class:`LinkHandling` is the part of ``GatewayServer`` that deals with links: the
handshake, dispatch, keep-alive and timeouts (one sweep for all links, no timer per
link), and the routing of client events to workers. Worker choice is sticky: a
client's events all go to the worker chosen (least connections) when it connected;
when its link drops, the client is re-assigned at its next event. When its worker
*leaves* (``WORKER_LEAVE``), the client's next events are held on that worker's link
until the worker releases the client (``RELEASE``: it has finished the client's
events) or its link ends; then they go, in order, to the worker chosen next. So a
client's events do not run on two workers at once, as long as the leaving worker's
link stays up and fewer than ``pending_event_limit`` events are held (beyond that,
everything is released, with a log line). With no worker linked, events are held
(bounded in number and age) and handed in order to the first worker that links.

Outgoing packets are coalesced per link: :meth:`InternalLink.send` queues, and one
write per loop iteration carries everything queued (events of many clients in one
syscall).

Routes: every accepted link gets ``ROUTES`` with the uids and groups that have
members here (right after ``WELCOME``), then, once per loop turn in which some uid or
group appeared or vanished, the changes (``Directory.take_route_changes``). Workers
and push clients use them to send uid and group messages only where members are.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from pygatewayworker.gateway.commands import coalesce
from pygatewayworker.gateway.config import Gateway
from pygatewayworker.gateway.connection import ClientConnection
from pygatewayworker.gateway.directory import Directory
from pygatewayworker.gateway.protocol import (
    DEFAULT_MAX_PACKET,
    ROUTES_CHANGES,
    ROUTES_STATE,
    ROUTES_STATE_END,
    Cmd,
    Decoder,
    ProtocolError,
    encode,
)
from pygatewayworker.register.config import parse_address

if TYPE_CHECKING:
    from pygatewayworker.gateway.server import GatewayServer

__all__ = ["InternalLink", "LinkHandling", "ROUTES_CHUNK", "ROUTES_CHUNK_BYTES", "route_packets"]

log = logging.getLogger("gateway")

_monotonic = time.monotonic

ROUTES_CHUNK = 5000
"""At most this many keys per ``ROUTES`` packet (a large state goes in several)."""
ROUTES_CHUNK_BYTES = 256 * 1024
"""About this much key text per ``ROUTES`` packet, at most."""


def route_packets(
    full: bool,
    uids_added: list[str],
    uids_removed: list[str],
    groups_added: list[str],
    groups_removed: list[str],
) -> list[bytes]:
    """Encoded ``ROUTES`` packets, each with at most :data:`ROUTES_CHUNK` keys and
    about :data:`ROUTES_CHUNK_BYTES` of key text (far below the packet limit, whatever
    the key lengths). A full state (``full``) is one or more packets, the last marked
    ``ROUTES_STATE_END``, and at least one even when empty (an empty state is news
    too); changes are ``ROUTES_CHANGES`` packets, none when nothing changed."""
    lists = [uids_added, uids_removed, groups_added, groups_removed]
    if not full and not any(lists):
        return []
    chunks: list[list[list[str]]] = []
    parts: list[list[str]] = [[], [], [], []]
    count = size = 0
    for i, keys in enumerate(lists):
        for key in keys:
            cost = len(key.encode()) + 8
            if count and (count >= ROUTES_CHUNK or size + cost > ROUTES_CHUNK_BYTES):
                chunks.append(parts)
                parts, count, size = [[], [], [], []], 0, 0
            parts[i].append(key)
            count += 1
            size += cost
    chunks.append(parts)
    last = len(chunks) - 1
    return [
        encode(
            Cmd.ROUTES,
            (ROUTES_STATE_END if n == last else ROUTES_STATE) if full else ROUTES_CHANGES,
            *chunk,
        )
        for n, chunk in enumerate(chunks)
    ]


def _peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return ":0"


def _event_packet(conn: ClientConnection, cmd: Cmd, payload: Any) -> bytes:
    """The ``EV_*`` packet of ``conn`` (with its session as it is now)."""
    return encode(cmd, conn.conn_id, conn.session, conn.remote_ip, conn.remote_port, payload)


class InternalLink(asyncio.Protocol):
    """One business worker or push client connected to the internal port.

    Outgoing packets are coalesced: :meth:`send` queues, and one write per loop
    iteration carries everything queued (events of many clients in one syscall).
    """

    __slots__ = (
        "server",
        "transport",
        "decoder",
        "role",
        "name",
        "pid",
        "peer",
        "leaving",
        "clients",
        "opened",
        "last_recv",
        "last_send",
        "closed",
        "rejected",
        "held",
        "held_events",
        "_out",
    )

    def __init__(self, server: GatewayServer) -> None:
        self.server = server
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.decoder = Decoder(DEFAULT_MAX_PACKET)
        self.role = ""  # "" until HELLO is accepted
        self.name = ""
        self.pid = 0
        self.peer = ""
        self.leaving = False  # receives no new client events (left, or gone)
        self.clients = 0  # clients assigned (least-connections choice)
        self.opened = self.last_recv = self.last_send = _monotonic()
        self.closed = False
        self.rejected = 0.0  # when we answered ERROR and half-closed; 0: not rejected
        self.held: dict[ClientConnection, list[tuple[Cmd, Any]]] | None = None
        """Set when this worker leaves: events of its clients held until it releases
        them (``RELEASE``) or its link ends; ``None``: not holding."""
        self.held_events = 0
        self._out: list[bytes] = []

    def __repr__(self) -> str:
        return f"<link {self.role or 'unauthenticated'} {self.name!r} from {self.peer}>"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.peer = _peer(transport)
        self.server.on_link_made(self)

    def data_received(self, data: bytes) -> None:
        if self.rejected:
            return  # discard until the peer closes (see reject)
        self.last_recv = _monotonic()
        try:
            packets = self.decoder.feed(data)
        except ProtocolError as exc:
            self.server.reject_link(self, 0, str(exc))
            return
        on_packet = self.server.on_packet
        for packet in coalesce(packets) if len(packets) > 1 else packets:
            if self.closed or self.rejected:
                return
            on_packet(self, packet)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.leaving = True
        self._out.clear()
        self.server.on_link_lost(self)

    def pause_writing(self) -> None:
        log.warning("%r: its send buffer is full; it is not reading fast enough", self)

    def resume_writing(self) -> None:
        log.info("%r: its send buffer drained", self)

    def send(self, packet: bytes) -> None:
        """Queue one encoded packet; it is written at the end of this loop turn."""
        if self.closed or self.rejected:
            return
        out = self._out
        if not out:
            self.server.loop.call_soon(self.flush)
        out.append(packet)

    def flush(self) -> None:
        """Write everything queued in one call."""
        out = self._out
        if not out or self.closed:
            return
        self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()
        self.last_send = _monotonic()

    def reject(self) -> None:
        """Flush (the ERROR), half-close and discard input until the peer closes:
        closing at once while the peer still sends would reset the connection and
        could destroy the ERROR before the peer reads it."""
        self.flush()
        self.leaving = True
        self.rejected = _monotonic()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        else:
            self.transport.close()

    def close(self) -> None:
        """Flush, then close the link."""
        if self.closed:
            return
        self.flush()
        self.closed = True
        self.leaving = True
        self.transport.close()


class LinkHandling:
    """Links and event routing; mixed into ``GatewayServer`` (which sets the
    attributes declared here in its ``__init__``)."""

    config: Gateway
    directory: Directory[ClientConnection]
    index: int
    internal_port: int
    public_port: int
    loop: asyncio.AbstractEventLoop
    hello_timeout: float
    _stopping: bool
    _links: set[InternalLink]
    _workers: list[InternalLink]  # linked workers that take new clients
    _pending: deque[tuple[float, ClientConnection, Cmd, bytes]]
    _pending_dropped: int
    _commands: dict[Cmd, Callable[[InternalLink, list[Any]], None]]
    _queries: dict[Cmd, Callable[..., Any]]

    # ---- events to workers ----------------------------------------------------------
    def emit(self, conn: ClientConnection, cmd: Cmd, payload: Any) -> None:
        """Send one client event to the client's worker (or hold it)."""
        link = conn.worker
        if link is not None and link.held is not None:
            self._hold_for(link, conn, cmd, payload)
            return
        self._forward(conn, cmd, _event_packet(conn, cmd, payload))

    def _forward(self, conn: ClientConnection, cmd: Cmd, packet: bytes) -> None:
        """Send an encoded event to the client's worker, choosing one if it has none
        (or it left); hold it in ``_pending`` when no worker is linked."""
        link = conn.worker
        if link is None or link.leaving:
            link = self._assign(conn)
        if link is None:
            self._hold(conn, cmd, packet)
            return
        link.send(packet)
        if cmd == Cmd.EV_CLOSE:
            link.clients -= 1
            conn.worker = None

    def _hold_for(self, link: InternalLink, conn: ClientConnection, cmd: Cmd, payload: Any) -> None:
        """Hold an event of a client of the leaving worker ``link`` (see RELEASE). It
        is encoded when released, with the session as it is then (the leaving
        worker writes its session back before it releases the client)."""
        held = link.held
        assert held is not None
        held.setdefault(conn, []).append((cmd, payload))
        link.held_events += 1
        if link.held_events > self.config.pending_event_limit:
            log.warning(
                "%r: more than %d events held for its clients; releasing them all",
                link,
                self.config.pending_event_limit,
            )
            self._release_all(link)

    def _release_all(self, link: InternalLink, keep: frozenset[int] = frozenset()) -> None:
        """Release every client of the leaving worker ``link`` except the conn_ids in
        ``keep``; with nothing kept, stop holding for it altogether."""
        held = link.held
        if held is None:
            return
        if not keep:
            link.held = None
        mine = [c for c in self.directory.entries() if c.worker is link and c.conn_id not in keep]
        seen = set(mine)
        mine.extend(c for c in held if c.conn_id not in keep and c not in seen)
        for conn in mine:
            self._release(link, conn, held)

    def _release(
        self,
        link: InternalLink,
        conn: ClientConnection,
        held: dict[ClientConnection, list[tuple[Cmd, Any]]],
    ) -> None:
        """``link`` is done with ``conn``: forward its held events, in order, to the
        worker it gets now."""
        events = held.pop(conn, ())
        link.held_events -= len(events)
        if conn.worker is link:
            link.clients -= 1
            conn.worker = None
        for cmd, payload in events:
            self._forward(conn, cmd, _event_packet(conn, cmd, payload))

    def _assign(self, conn: ClientConnection) -> InternalLink | None:
        """Choose the linked worker with the fewest clients for ``conn``."""
        old = conn.worker
        if old is not None:
            old.clients -= 1
        best: InternalLink | None = None
        for link in self._workers:
            if best is None or link.clients < best.clients:
                best = link
        conn.worker = best
        if best is not None:
            best.clients += 1
        return best

    def _hold(self, conn: ClientConnection, cmd: Cmd, packet: bytes) -> None:
        cfg = self.config
        if len(self._pending) >= cfg.pending_event_limit:
            self._pending_dropped += 1
            return
        if not self._pending:
            log.warning(
                "no business worker linked: holding client events for up to %g s",
                cfg.pending_event_seconds,
            )
        self._pending.append((_monotonic() + cfg.pending_event_seconds, conn, cmd, packet))

    def _flush_pending(self) -> None:
        """Hand held events, in order, to the workers now linked."""
        self._expire_pending(_monotonic())
        pending = self._pending
        while pending and self._workers:
            _, conn, cmd, packet = pending.popleft()
            self._forward(conn, cmd, packet)

    def _expire_pending(self, now: float) -> None:
        pending = self._pending
        expired = 0
        while pending and pending[0][0] <= now:
            pending.popleft()
            expired += 1
        dropped, self._pending_dropped = self._pending_dropped + expired, 0
        if dropped:
            log.warning(
                "dropped %d client events: no business worker linked for %.1f s "
                "(or more than %d events held)",
                dropped,
                self.config.pending_event_seconds,
                self.config.pending_event_limit,
            )

    # ---- internal links ---------------------------------------------------------------
    def on_link_made(self, link: InternalLink) -> None:
        if self._stopping:
            link.transport.abort()
            return
        self._links.add(link)

    def on_link_lost(self, link: InternalLink) -> None:
        self._links.discard(link)
        if link in self._workers:
            self._workers.remove(link)
        self._release_all(link)
        if link.role:
            log.info(
                "%r is gone (%d clients to re-assign)",
                link,
                max(link.clients, 0),
                extra={"worker": link.name} if link.role == "worker" else None,  # JSON logs
            )

    def reject_link(self, link: InternalLink, req: int, reason: str) -> None:
        """Answer ``ERROR`` and close the link (it sent garbage or a bad command)."""
        log.warning("%r: %s; closing the link", link, reason)
        if link.closed or link.rejected:
            return
        link.send(encode(Cmd.ERROR, req, reason))
        link.reject()
        if link in self._workers:
            self._workers.remove(link)

    def on_packet(self, link: InternalLink, packet: list[Any]) -> None:
        """Dispatch one packet from a link by command name."""
        cmd = packet[0]
        if not link.role:
            self._hello(link, packet)
            return
        handler = self._commands.get(cmd)
        try:
            if handler is not None:
                handler(link, packet)
                return
            query = self._queries.get(cmd)
            if query is None:
                raise ValueError(f"unexpected command {cmd.name}")
        except (ValueError, TypeError, KeyError, ProtocolError) as exc:
            self.reject_link(link, 0, f"bad {cmd.name} packet: {exc}")
            return
        self._answer_query(link, query, packet)

    def _answer_query(
        self, link: InternalLink, query: Callable[..., Any], packet: list[Any]
    ) -> None:
        req = packet[1] if len(packet) > 1 else 0
        if type(req) is not int:
            self.reject_link(link, 0, f"bad {packet[0].name} packet: request id must be an int")
            return
        try:
            result = query(*packet[2:])
        except (ValueError, TypeError, KeyError) as exc:
            self.reject_link(link, req, f"bad {packet[0].name} packet: {exc}")
            return
        link.send(encode(Cmd.REPLY, req, result))

    def _hello(self, link: InternalLink, packet: list[Any]) -> None:
        if packet[0] != Cmd.HELLO or len(packet) != 5:
            self.reject_link(link, 0, "the first packet must be HELLO")
            return
        _, role, name, secret, pid = packet
        if role not in ("worker", "client") or type(name) is not str or type(pid) is not int:
            self.reject_link(link, 0, "malformed HELLO")
            return
        if type(secret) is not str or not hmac.compare_digest(
            secret.encode(), self.config.secret.encode()
        ):
            self.reject_link(link, 0, "wrong secret key")
            return
        link.role, link.name, link.pid = role, name, pid
        link.send(encode(Cmd.WELCOME, self._welcome_info()))
        uids, groups = self.directory.route_keys()
        for routes in route_packets(True, uids, [], groups, []):
            link.send(routes)
        log.info(
            "%r linked (pid %d)",
            link,
            pid,
            extra={"worker": name} if role == "worker" else None,  # JSON logs
        )
        if role == "worker":
            self._workers.append(link)
            self._flush_pending()

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

    # ---- routes ---------------------------------------------------------------------
    def routes_dirty(self) -> None:
        """The directory's ``on_dirty``: send the changes at the end of this turn."""
        if self.loop is not None:
            self.loop.call_soon(self.send_route_changes)

    def send_route_changes(self) -> None:
        """Tell every accepted link which uids and groups appeared or vanished."""
        packets = route_packets(False, *self.directory.take_route_changes())
        if not packets:
            return
        for link in self._links:
            if link.role and not link.rejected:
                for packet in packets:
                    link.send(packet)

    # ---- link upkeep commands -----------------------------------------------------
    def cmd_ping(self, link: InternalLink, packet: list[Any]) -> None:
        link.send(encode(Cmd.PONG))

    def cmd_pong(self, link: InternalLink, packet: list[Any]) -> None:
        pass  # data_received already noted the activity

    def cmd_hello(self, link: InternalLink, packet: list[Any]) -> None:
        raise ValueError("HELLO was already accepted on this link")

    def cmd_worker_leave(self, link: InternalLink, packet: list[Any]) -> None:
        """The worker is leaving: route nothing new to it, hold its clients' next
        events until it releases them (``cmd_release``), then acknowledge; every
        event sent to it so far is ahead of the ack in the same stream."""
        if link.role != "worker":
            raise ValueError("only a worker link may leave")
        link.leaving = True
        if link in self._workers:
            self._workers.remove(link)
        if link.held is None:
            link.held = {}
        log.info("%r is leaving; %d clients move to other workers", link, max(link.clients, 0))
        link.send(encode(Cmd.LEAVE_ACK))

    def cmd_release(self, link: InternalLink, packet: list[Any]) -> None:
        """The leaving worker is done with some clients (see ``Cmd.RELEASE``)."""
        _, conn_ids, others = packet
        if link.role != "worker" or not link.leaving:
            raise ValueError("only a leaving worker may release clients")
        if type(conn_ids) is not list or not all(type(c) is int for c in conn_ids):
            raise TypeError("conn_ids must be a list of ints")
        if type(others) is not bool:
            raise TypeError("others must be a bool")
        if others:
            self._release_all(link, frozenset(conn_ids))
            return
        held = link.held
        if held is None:
            return
        for conn_id in conn_ids:
            conn = self.directory.get(conn_id)
            if conn is None:  # closed meanwhile: its EV_CLOSE may be held
                conn = next((c for c in held if c.conn_id == conn_id), None)
            if conn is not None:
                self._release(link, conn, held)

    def _link_upkeep(self, now: float) -> None:
        cfg = self.config
        ping = encode(Cmd.PING)
        for link in list(self._links):
            if link.rejected:
                if now - link.rejected > self.hello_timeout:
                    link.transport.abort()  # the peer did not close its side
            elif not link.role:
                if now - link.opened > self.hello_timeout:
                    self.reject_link(link, 0, f"no HELLO within {self.hello_timeout:g} s")
            elif now - link.last_recv > cfg.link_timeout:
                log.warning("%r silent for %.1f s; dropping it", link, now - link.last_recv)
                link.transport.abort()
            elif now - link.last_send >= cfg.keepalive_interval and not link._out:
                link.send(ping)

    async def _close_links(self, timeout: float = 2.0) -> None:
        """Close every link after flushing what is queued (EV_CLOSE events). Events
        held for leaving workers are handed on first, while the links are open."""
        for link in list(self._links):
            self._release_all(link)
        for link in list(self._links):
            link.close()
        deadline = _monotonic() + timeout
        while self._links and _monotonic() < deadline:
            await asyncio.sleep(0.01)
        for link in list(self._links):
            link.transport.abort()
