"""The client side of the gateway core: connection ids, client events to workers,
the heartbeat. Pure: no sockets, no event loop.

How this works
--------------
The asyncio shell (``gateway.connection``) creates a :class:`~gateway.records.Client`
per TCP connection and reports what happens to it here:

- :meth:`Clients.opened`: the WebSocket handshake is done (admitted by
  :attr:`Clients.admission`, ``gateway.admission``). The client gets a
  connection id (counting up from a random start, so that a restarted gateway does
  not reuse the client_ids of its previous life), a directory entry, and its worker
  gets ``EV_CONNECT`` and ``EV_WS_CONNECT`` (unless the worker said in its
  ``HELLO`` that its app has no ``on_websocket_connect``); a connect token's uid, groups and
  session are bound first, so the worker's events and every later command see them.
- :meth:`Clients.message`: one ``EV_MESSAGE`` packet to the client's worker, written
  out flat for the common case: this is the path of every client message. A packet
  over the internal limit (a large message with a large session) closes the client
  with 1009 instead of costing the worker its link.
- :meth:`Clients.control` (a ping or pong: activity, per ``pong_is_activity``),
  :meth:`Clients.slow` (send buffer over ``send_buffer_limit``, or not drained for
  ``send_timeout``: close 1008),
  :meth:`Clients.closed` (``EV_CLOSE`` with the last session; the entry goes).
- :meth:`Clients.refused` (a request head refused before the upgrade),
  :meth:`Clients.peer_closed` (the client's close frame), :meth:`Clients.failed`
  (we failed the connection: a protocol error or a message too big): logged and
  counted.

Metrics (docs/observability.md): every way a client goes sets its
``close_reason`` (the first one set wins: ``records.CLOSE_REASONS``) and
:meth:`Clients.closed` counts it in ``Counters.closed_by_reason``; handshakes done
and refused are counted too. Plain integer adds on objects at hand, none per
message.

:meth:`Clients.heartbeat` is the heartbeat decision, called by the shell's timer in
slices (:meth:`Clients.heartbeat_sweep`, a job for the gateway's ``gateway.pacing``
pacer, which sweeps a bounded number of clients per loop turn): every open client's silence grows by one interval per sweep (any message,
and a ping or pong when ``pong_is_activity``, resets it); a client silent for a
whole interval gets ``ping_data``; one silent for more than
``ping_not_response_limit`` intervals is dropped.

Which worker gets the events is :class:`~gateway.workers.Workers`' business.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterable
from typing import Any

from pygatewayworker.gateway.admission import Admission
from pygatewayworker.gateway.authhook import AuthHook
from pygatewayworker.gateway.client_id import MAX_CONN_ID, encode_client_id
from pygatewayworker.gateway.commands import data_frame
from pygatewayworker.gateway.config import Gateway
from pygatewayworker.gateway.directory import Directory
from pygatewayworker.gateway.http11 import Request, parse_cookies
from pygatewayworker.gateway.pacing import Pacer
from pygatewayworker.gateway.protocol import (
    NO_WS_CONNECT,
    Cmd,
    PacketTooLarge,
    encode,
    pack_session,
)
from pygatewayworker.gateway.records import Client, Counters
from pygatewayworker.gateway.tokens import Grant
from pygatewayworker.gateway.websocket import State
from pygatewayworker.gateway.workers import Workers
from pygatewayworker.runtime.ratelog import RateLimitedLog

__all__ = ["Clients", "HeartbeatSweep", "request_info", "first_conn_id", "FIRST_CONN_ID_LIMIT"]

log = logging.getLogger("gateway")

FIRST_CONN_ID_LIMIT = 2**31
"""Connection ids of a new gateway process start at a random id below this."""

_OPEN = State.OPEN
_EV_MESSAGE = Cmd.EV_MESSAGE


def first_conn_id() -> int:
    """A random first connection id in ``[1, 2**31)``: the client_ids of a restarted
    gateway process (same ip and port) do not repeat those of its previous life,
    whose holders may still address them."""
    return secrets.randbelow(FIRST_CONN_ID_LIMIT - 1) + 1


def request_info(client: Client, request: Request) -> dict[str, Any]:
    """The upgrade request as ``EV_WS_CONNECT`` and ``AUTHENTICATE`` carry it."""
    return {
        "path": request.path,
        "query": request.query,
        "headers": request.headers,
        "cookies": parse_cookies(request.headers.get("cookie", "")),
        "remote_ip": client.remote_ip,
        "remote_port": client.remote_port,
    }


class Clients:
    """The clients of one gateway process (see the module docstring)."""

    def __init__(
        self,
        config: Gateway,
        directory: Directory[Client],
        workers: Workers,
        counters: Counters,
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.directory = directory
        self.workers = workers
        self.counters = counters
        self.clock = clock
        self.log = RateLimitedLog(clock=clock)
        """Rate-limited log for what clients do wrong (a flood must not flood us)."""
        self.admission = Admission(config, clock())
        """The handshake checks and per-client limits (``gateway.admission``)."""
        self.auth = AuthHook(config, workers, self.admission.counts)
        """Handshakes held for the app's ``authenticate`` hook (``gateway.authhook``)."""
        self._next_conn_id = first_conn_id() - 1
        self._ping_frame = data_frame(config.ping_data) if config.ping_data else b""

    # ---- events from the shell ------------------------------------------------------
    def opened(self, client: Client, request: Request, grant: Grant | None = None) -> None:
        """``client`` completed its WebSocket handshake: it gets a conn_id and a
        directory entry, is bound to what its token ``grant`` carries, and its worker
        gets ``EV_CONNECT`` and ``EV_WS_CONNECT`` (not when the worker it was given
        announced :data:`~gateway.protocol.NO_WS_CONNECT`; when none is linked yet,
        the later one might want it)."""
        conn_id = client.conn_id = self.new_conn_id()
        directory = self.directory
        directory.add(client)
        self.counters.connections_opened += 1
        if grant is not None:
            if grant.session:
                client.session = pack_session(grant.session)
            if grant.uid:
                directory.bind_uid(conn_id, grant.uid)
            for group in grant.groups:
                directory.join_group(conn_id, group)
        send = self.workers.send
        send(client, Cmd.EV_CONNECT, None)
        worker = client.worker
        if worker is None or NO_WS_CONNECT not in worker.hooks:
            send(client, Cmd.EV_WS_CONNECT, request_info(client, request))

    def new_conn_id(self) -> int:
        """Ids count up from a random start (:func:`first_conn_id`), so a restarted
        gateway does not hand out the client_ids of its previous life; after 2**32-1
        they wrap to 1, skipping ids still in use."""
        conn_id = self._next_conn_id
        while True:
            conn_id = conn_id + 1 if conn_id < MAX_CONN_ID else 1
            if conn_id not in self.directory:
                self._next_conn_id = conn_id
                return conn_id

    def message(self, client: Client, data: str | bytes) -> None:
        """A whole text (``str``) or binary (``bytes``) message from ``client``: one
        ``EV_MESSAGE`` packet to its worker. The common case (its worker is linked and
        not leaving) is written out here, flat: this runs for every message."""
        self.counters.messages_in += 1
        client.silent = -1
        link = client.worker
        if link is not None and not link.leaving:  # only a leaving worker holds events
            try:
                packet = encode(
                    _EV_MESSAGE,
                    client.conn_id,
                    client.session,
                    client.remote_ip,
                    client.remote_port,
                    data,
                )
            except PacketTooLarge as exc:
                self.too_big(client, exc)
                return
            link.unanswered += 1
            link.writer.send(packet)
            return
        self.workers.send(client, _EV_MESSAGE, data)

    def too_big(self, client: Client, exc: PacketTooLarge) -> None:
        """``client``'s message would not fit one internal packet with its session
        (``PacketTooLarge`` from ``encode``): close the client (1009), keep the link.
        Valid use never gets here: ``max_message_size`` is at most
        ``protocol.MAX_CLIENT_MESSAGE`` and a session at most ``protocol.MAX_SESSION``,
        which together fit; this guard keeps one client's data from ever costing its
        worker the link."""
        self.log(
            logging.WARNING,
            "client %s (%s): %s; closing",
            client.conn_id,
            client.remote_ip,
            exc,
        )
        client.close_reason = client.close_reason or "size_limit"
        client.writer.close(1009, "message too big")

    def refused(self, client: Client, status: int, reason: str) -> None:
        """``client``'s request head was refused with ``status`` (answered, closing):
        logged and counted by status."""
        self.count_refusal(status)
        self.log(logging.INFO, "rejected request from %s: %d %s", client.remote_ip, status, reason)

    def count_refusal(self, status: int) -> None:
        """An upgrade request answered with ``status`` instead of ``101``, counted by
        status (a refusal of the admission or the ``authenticate`` hook is logged in
        the admission's summary line, once per interval, not here)."""
        failures = self.counters.handshake_failures
        key = str(status)
        failures[key] = failures.get(key, 0) + 1

    def peer_closed(self, client: Client) -> None:
        """``client`` sent a close frame (its own, or its answer to ours: then the
        reason we closed for stays)."""
        client.close_reason = client.close_reason or "client_close"

    def failed(self, client: Client, code: int, reason: str) -> None:
        """We failed ``client``'s connection with ``code`` (1009: a message over
        ``max_message_size``; else a protocol error)."""
        if not client.close_reason:
            client.close_reason = "size_limit" if code == 1009 else "protocol_error"
        self.log(
            logging.INFO,
            "client %s (%s): closing with %d: %s",
            client.conn_id,
            client.remote_ip,
            code,
            reason,
        )

    def control(self, client: Client) -> None:
        """A ping or pong frame from ``client``: activity, if ``pong_is_activity``."""
        if self.config.pong_is_activity:
            client.silent = -1

    def slow(self, client: Client, why: str = "", reason: str = "send_buffer_limit") -> None:
        """``client``'s unsent output passed ``send_buffer_limit`` or did not drain
        for ``send_timeout`` (``why``; close ``reason`` ``"send_timeout"``): close it
        (1008) and count a send failure."""
        if client.ws.state is not _OPEN:
            return
        self.counters.send_failures += 1
        client.close_reason = client.close_reason or reason
        self.log(
            logging.WARNING,
            "client %s (%s): %s, closing (slow consumer)",
            client.conn_id,
            client.remote_ip,
            why or f"send buffer over {self.config.send_buffer_limit} bytes",
        )
        client.writer.close(1008, "slow consumer")

    def closed(self, client: Client) -> None:
        """``client``'s connection is gone: ``EV_CLOSE`` with its last session, then
        it leaves the directory (its uid and groups with it)."""
        if client.conn_id and self.directory.get(client.conn_id) is client:
            by_reason = self.counters.closed_by_reason
            reason = client.close_reason or "client_gone"
            by_reason[reason] = by_reason.get(reason, 0) + 1
            self.workers.send(client, Cmd.EV_CLOSE, None)
            self.directory.remove(client.conn_id)

    def declared_closed(self, conn_ids: list[int]) -> int:
        """Close the clients ``conn_ids`` (1001) without ``EV_CLOSE``: a worker ran
        their ``on_close`` while this process was unreachable (``DECLARED_CLOSED``).
        Returns how many were still here."""
        closed = 0
        by_reason = self.counters.closed_by_reason
        for conn_id in conn_ids:
            client = self.directory.get(conn_id)
            if client is None:
                continue
            client.close_reason = "gateway_lost"  # counted here: closed() will not see it
            by_reason["gateway_lost"] = by_reason.get("gateway_lost", 0) + 1
            self.directory.remove(conn_id)  # so that closed() sends no EV_CLOSE
            if client.worker is not None:
                client.worker.clients -= 1
                client.worker = None
            client.writer.close(1001, "gateway was unreachable; reconnect")
            closed += 1
        return closed

    # ---- decisions --------------------------------------------------------------------
    def close_all(self, code: int, reason: str = "") -> None:
        """Start closing every open client (a graceful stop: 1001)."""
        for client in list(self.directory.entries()):
            client.close_reason = client.close_reason or "shutdown"
            client.writer.close(code, reason)

    def drop_all(self) -> None:
        """Drop every client at once (the gateway stops)."""
        for client in list(self.directory.entries()):
            client.close_reason = client.close_reason or "shutdown"
            client.writer.abort()

    def heartbeat(self, part: int = 0, parts: int = 1) -> None:
        """One heartbeat sweep of the clients whose ``conn_id % parts == part``
        (default: all), at once; see the module docstring."""
        Pacer(None).add(self.heartbeat_sweep(part, parts))

    def heartbeat_sweep(self, part: int = 0, parts: int = 1) -> HeartbeatSweep:
        """The same sweep as a job for the gateway's pacer (``gateway.pacing``): a
        slice of the clients per loop turn, so that pinging thousands of silent
        clients never stalls the loop."""
        return HeartbeatSweep(self, list(self.directory.entries()), part, parts)

    def heartbeat_done(self, dead: list[Client]) -> None:
        """Drop the clients a sweep found silent for too long."""
        for client in dead:
            client.close_reason = client.close_reason or "heartbeat_timeout"
            client.writer.abort()
        if dead:
            log.info(
                "closed %d clients silent for more than %d ping intervals",
                len(dead),
                self.config.ping_not_response_limit,
            )

    def rows(
        self, lan_ip: str, internal_port: int, clients: Iterable[Client] | None = None
    ) -> list[dict[str, Any]]:
        """``Q_CONNECTIONS``: one row per client (of ``clients``; ``None``: all)."""
        now = self.clock()
        prefix = encode_client_id(lan_ip, internal_port, 1)[:-8]
        return [
            {
                "client_id": prefix + format(client.conn_id, "08x"),
                "remote": f"{client.remote_ip}:{client.remote_port}",
                "uid": client.uid,
                "groups": sorted(client.groups) if client.groups else [],
                "age": round(now - client.since, 3),
                "bytes_in": client.bytes_in,
                "bytes_out": client.bytes_out,
            }
            for client in (self.directory.entries() if clients is None else clients)
        ]


class HeartbeatSweep:
    """One heartbeat sweep over the clients taken when it started (a client gone
    since is skipped: it is no longer ``OPEN``), a slice per :meth:`step`: a ping
    costs one unit of the turn's budget, looking at a client an eighth."""

    __slots__ = ("owner", "clients", "pos", "part", "parts", "dead")

    def __init__(self, owner: Clients, clients: list[Client], part: int, parts: int) -> None:
        self.owner = owner
        self.clients = clients
        self.pos = 0
        self.part = part
        self.parts = parts
        self.dead: list[Client] = []

    def step(self, pacer: Pacer) -> bool:
        """Sweep on from where the last step stopped; True when done."""
        owner = self.owner
        limit = owner.config.ping_not_response_limit
        ping = owner._ping_frame
        size = len(ping)
        part, parts = self.part, self.parts
        clients, pos, end = self.clients, self.pos, len(self.clients)
        budget = max(1, pacer.budget) * 8
        pinged = 0
        is_open = _OPEN
        while pos < end and pos - self.pos + pinged * 8 < budget:
            client = clients[pos]
            pos += 1
            if client.ws.state is not is_open or (parts > 1 and client.conn_id % parts != part):
                continue
            silent = client.silent + 1
            client.silent = silent
            if silent <= 0:
                continue
            if limit and silent > limit:
                self.dead.append(client)
            elif size:
                client.writer.write(ping)
                client.bytes_out += size
                pinged += 1
        pacer.budget -= (pos - self.pos) // 8 + pinged
        self.pos = pos
        counters = owner.counters
        counters.messages_out += pinged
        counters.bytes_out += pinged * size
        if pos < end:
            return False
        owner.heartbeat_done(self.dead)
        return True
