"""The public port's asyncio glue: one :class:`ClientConnection` per TCP connection.

How this works
--------------
A :class:`ClientConnection` is a thin ``asyncio.Protocol``: it hands the bytes it
reads to its sans-I/O :class:`~gateway.websocket.ServerConnection`, writes the bytes
that object wants sent, hands the events to the core's client side
(``gateway.clients``) and ends the TCP connection when the protocol says so. It is
also the client's :class:`~gateway.records.ClientWriter`: the core writes frames
through ``write`` (bound to the transport's own ``write``: a broadcast pays nothing
for this layer) and closes through :meth:`~ClientConnection.close` and
:meth:`~ClientConnection.abort`.

A plain HTTP request (no upgrade) is answered from ``static_dir``
(``gateway.static``) and closed: no entry, no events. An upgrade request is judged
first (``gateway.admission``: handshake rate, per-IP limit, origin, connect token);
a refused one is answered with its HTTP status and closed, with no ``101``, no
client_id and no event. An admitted one is bound to its token's uid and groups, and
the route changes that makes are written to the links before the ``101``, so a
``send_to_uid`` sent once the client sees the ``101`` finds it.

When a linked business worker runs the app's ``authenticate`` hook
(``gateway.authhook``), an admitted request is *held* instead: no ``101`` until the
worker answers. An acceptance is opened as above, with the hook's uid, groups and
session (over the token's); a refusal is answered with the hook's status, body and
headers and closed; no answer within ``auth_timeout`` (the sweep below), or none
possible, gets ``auth_failure_status``. A client that sends bytes before the
answer (RFC 6455 forbids it) is dropped.

With a message or byte rate limit (``message_rate``, ``byte_rate``) each connection
has a :class:`~gateway.admission.TokenBucket` for each; a client over either is closed
with 1008. Without limits the message path does not look at them.

The :class:`ClientPort` is what every connection of one gateway shares: the core's
client side, the limits, and the two deadline tables of the public side, swept by
the server's housekeeping (:meth:`ClientPort.sweep`): a new connection has
``handshake_timeout`` to send its request head; a held one ``auth_timeout`` for its
worker's answer; a closing one has ``close_timeout``
to finish (after which it is closed, or dropped if its data is not flushed). The
connection never owns a timer or a task. Slow consumers are detected by the
transport's high-water mark (``pause_writing``, at :data:`~gateway.config.BACKLOG_MARK`
unsent bytes), which costs nothing per write: a backlogged connection enters a third
table, which the sweep checks against ``send_buffer_limit`` (bytes) and
``send_timeout`` (time), and leaves it when its output drains (``resume_writing``).
Each client socket gets a small kernel send buffer (``send_socket_buffer``, set on
the listening socket, whose accepted sockets inherit it), so the backlog is in the
transport, where these limits see it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from operator import attrgetter, methodcaller
from typing import Any, cast

from pygatewayworker.gateway.admission import TokenBucket
from pygatewayworker.gateway.authhook import Verdict, merge_grants
from pygatewayworker.gateway.clients import Clients, request_info
from pygatewayworker.gateway.config import BACKLOG_MARK, Gateway
from pygatewayworker.gateway.frames import OP_BINARY, OP_CLOSE
from pygatewayworker.gateway.http11 import Request, http_response
from pygatewayworker.gateway.records import Client
from pygatewayworker.gateway.static import static_response
from pygatewayworker.gateway.tokens import Grant
from pygatewayworker.gateway.websocket import FAILED, REQUEST, ServerConnection, State

__all__ = ["ClientPort", "ClientConnection"]

log = logging.getLogger("gateway")

_monotonic = time.monotonic
_CONNECTING = State.CONNECTING
_OPEN = State.OPEN
_CLOSED = State.CLOSED


def _peer(transport: asyncio.BaseTransport) -> tuple[str, int]:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return str(peer[0]), int(peer[1])
    return "", 0


def _not_connected(data: bytes) -> None:
    raise RuntimeError("write() before the connection was made")


class _Gone:
    """The writer of a client whose connection is gone. Its record may outlive it
    (events held for a leaving worker refer to it); pointing it here instead of at
    the connection breaks the connection <-> record cycle, so both are freed at once
    instead of by the cycle collector (which would run often in a reconnect storm)."""

    __slots__ = ()

    def write(self, data: bytes) -> None:
        pass

    def close(self, code: int, reason: str = "") -> None:
        pass

    def abort(self) -> None:
        pass


_GONE = _Gone()


class ClientPort:
    """What the client connections of one gateway process share (see the module
    docstring)."""

    handshake_timeout = 10.0
    """Seconds a new client has to send a complete HTTP request head."""
    close_timeout = 5.0
    """Seconds a closing client has to answer our close frame (or to take the last
    bytes) before it is dropped."""

    def __init__(
        self,
        clients: Clients,
        static_root: str = "",
        flush_routes: Callable[[], object] | None = None,
    ) -> None:
        self.clients = clients
        self.config = clients.config
        self.admission = clients.admission
        self.auth = clients.auth
        self.auth_timeout = self.config.auth_timeout
        self.flush_routes = flush_routes
        """Writes the pending route changes to the links now (the core's
        ``send_route_changes``); called before the ``101`` of a client its token
        bound."""
        self.static_root = static_root
        """Real path of ``static_dir`` (``""``: every plain GET gets 404)."""
        self.accepting = True
        self.handshaking: dict[ClientConnection, float] = {}  # accept order
        self.authenticating: dict[ClientConnection, float] = {}  # held for the hook
        self.closing: dict[ClientConnection, float] = {}  # close order
        self.backlogged: dict[ClientConnection, float] = {}
        """Connections with unsent output over the backlog mark, and since when."""
        self.counters = clients.counters
        self.on_message = clients.message  # looked up once, used per message
        self._survey: _BufferSurvey | None = None
        self._surveyed = {"send_buffer_bytes": 0, "send_buffer_max_bytes": 0}

    def track_closing(self, conn: ClientConnection) -> None:
        """Give a closing client ``close_timeout`` before it is dropped."""
        self.closing.setdefault(conn, _monotonic() + self.close_timeout)

    def sweep(self, now: float) -> None:
        """Drop the clients past their handshake or close deadline. The tables are
        in insertion order with one fixed timeout each, so the deadlines are in order
        too: a sweep stops at the first one still in the future."""
        self.admission.report(now)
        for table, expire in (
            (self.handshaking, _handshake_expired),
            (self.authenticating, _auth_expired),
            (self.closing, _finish_close),
        ):
            expired = []
            for conn, deadline in table.items():
                if deadline > now:
                    break
                expired.append(conn)
            for conn in expired:
                del table[conn]
                expire(conn)
        if self.backlogged:
            self._sweep_backlogged(now)

    def _sweep_backlogged(self, now: float) -> None:
        """Close (1008) the backlogged clients over ``send_buffer_limit`` bytes or not
        drained for ``send_timeout`` seconds."""
        limit, timeout = self.config.send_buffer_limit, self.config.send_timeout
        for conn, since in list(self.backlogged.items()):
            size = conn.transport.get_write_buffer_size()
            if size > limit:
                why, reason = f"send buffer over {limit} bytes", "send_buffer_limit"
            elif timeout and now - since > timeout:
                why, reason = f"{size} bytes not drained for {now - since:.1f} s", "send_timeout"
            else:
                continue
            del self.backlogged[conn]
            self.clients.slow(conn.client, why, reason)

    def abort_all(self) -> None:
        """Drop every connection at once (stop)."""
        for conn in list(self.handshaking):
            conn.abort()
        for conn in list(self.authenticating):
            conn.abort()
        self.clients.drop_all()
        for conn in list(self.closing):
            conn.abort()

    def send_buffers(self) -> dict[str, int]:
        """Bytes queued for the clients in their transports: the sum and the largest
        (``GatewayCore.send_buffers``, read by ``stats`` once a second).

        Up to :data:`SURVEY_CHUNK` clients: one walk now, in C (``map`` of
        ``attrgetter``/``methodcaller``, no Python frame per client; about 0.3 ms
        for 2,000 clients). More: the figures of the last finished survey (the
        first call gives zeros), and a new survey starts that reads a chunk of
        clients per loop turn (:class:`_BufferSurvey`), so that the stats of a
        gateway with 50,000 clients never hold its loop for milliseconds."""
        directory = self.clients.directory
        entries = directory.entries()
        if len(directory) <= SURVEY_CHUNK:
            sizes = list(map(_buffer_size, map(_transport, entries)))
            return {
                "send_buffer_bytes": sum(sizes),
                "send_buffer_max_bytes": max(sizes, default=0),
            }
        if self._survey is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a tool, a test): the whole walk now
                survey = _BufferSurvey(list(entries))
                while not survey.step():
                    pass
                return survey.result()
            self._survey = _BufferSurvey(list(entries))
            loop.call_soon(self._survey_step, loop)
        return self._surveyed

    def _survey_step(self, loop: asyncio.AbstractEventLoop) -> None:
        survey = self._survey
        if survey is None:
            return
        if survey.step():
            self._surveyed = survey.result()
            self._survey = None
        else:
            loop.call_soon(self._survey_step, loop)


SURVEY_CHUNK = 2048
"""Clients whose send buffers are read in one go (``ClientPort.send_buffers``)."""


class _BufferSurvey:
    """The send buffers of the clients taken when it started, a chunk per
    :meth:`step`; a client gone since counts 0."""

    __slots__ = ("clients", "pos", "total", "largest")

    def __init__(self, clients: list[Any]) -> None:
        self.clients = clients
        self.pos = 0
        self.total = 0
        self.largest = 0

    def step(self) -> bool:
        """Read the next chunk; True when done."""
        end = self.pos + SURVEY_CHUNK
        sizes = list(map(_queued, self.clients[self.pos : end]))
        self.pos = end
        self.total += sum(sizes)
        self.largest = max(self.largest, max(sizes, default=0))
        return end >= len(self.clients)

    def result(self) -> dict[str, int]:
        return {"send_buffer_bytes": self.total, "send_buffer_max_bytes": self.largest}


def _queued(client: Any) -> int:
    transport = getattr(client.writer, "transport", None)
    return transport.get_write_buffer_size() if transport is not None else 0


_transport = attrgetter("writer.transport")
_buffer_size = methodcaller("get_write_buffer_size")


def _handshake_expired(conn: ClientConnection) -> None:
    conn.handshake_expired()


def _auth_expired(conn: ClientConnection) -> None:
    conn.auth_expired()


def _finish_close(conn: ClientConnection) -> None:
    """A closing client did not finish in time: close if flushed, else drop."""
    transport = conn.transport
    if transport.is_closing() or transport.get_write_buffer_size():
        transport.abort()
    else:
        transport.close()


class ClientConnection(asyncio.Protocol):
    """One client TCP connection (see the module docstring)."""

    __slots__ = ("port", "transport", "ws", "client", "write", "admitted", "limits", "held")

    def __init__(self, port: ClientPort) -> None:
        self.port = port
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.ws = ServerConnection(port.config.max_message_size)
        self.client = Client(self.ws, self)
        self.write: Callable[[bytes], object] = _not_connected
        """:class:`~gateway.records.ClientWriter` ``write``: the transport's own."""
        self.admitted = False
        """Counted against its IP by the admission (until ``connection_lost``)."""
        self.limits: _Limits | None = None
        """The rate limits of an open connection, when configured."""
        self.held: tuple[int, Request, Grant] | None = None
        """While held for the ``authenticate`` hook: request id, request, token grant."""

    # ---- asyncio callbacks -----------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance.
        self.transport = transport = cast(asyncio.Transport, transport)
        self.write = transport.write
        client = self.client
        client.remote_ip, client.remote_port = _peer(transport)
        client.since = _monotonic()
        port = self.port
        config = port.config
        mark = min(BACKLOG_MARK, config.send_buffer_limit)
        transport.set_write_buffer_limits(high=mark, low=mark // 2)
        if not port.accepting:
            transport.abort()
            return
        port.handshaking[self] = client.since + port.handshake_timeout

    def data_received(self, data: bytes) -> None:
        size = len(data)
        client = self.client
        client.bytes_in += size
        port = self.port
        port.counters.bytes_in += size
        ws = self.ws
        if ws.state is not _OPEN:
            self._not_open(data)
            return
        limits = self.limits
        if limits is not None and not limits.take_bytes(size):
            self._limited("byte rate limit exceeded", "closed_byte_rate")
            return
        events = ws.receive_data(data)
        on_message = port.on_message
        for kind, value in events:
            if kind <= OP_BINARY:
                if limits is not None and not limits.take_message():
                    self._limited("message rate limit exceeded", "closed_message_rate")
                    return
                on_message(client, value)
            else:
                self._control(kind, value)

    def _limited(self, reason: str, counter: str) -> None:
        """Over a rate limit: close with 1008 (what it sent since is dropped)."""
        self.port.admission.counts[counter] += 1
        client = self.client
        client.close_reason = client.close_reason or "rate_limit"
        self.close(1008, reason)

    def _not_open(self, data: bytes) -> None:
        """Bytes outside ``OPEN``: the request head, the rest of a close, or (once
        ``CLOSED``) bytes to discard until the peer goes."""
        ws = self.ws
        state = ws.state
        if state is _CLOSED:
            return
        if self.held is not None:  # bytes before our answer to the request: drop it
            self.abort()
            return
        for kind, value in ws.receive_data(data):
            if kind == REQUEST:
                self._answer(value)
            elif state is _CONNECTING:  # FAILED: a bad request head, answered
                self._refused(*value)
            else:
                self._control(kind, value)

    def handshake_expired(self) -> None:
        """No whole request head within ``handshake_timeout``: a client that sent
        part of one gets ``408`` (logged, counted); one that sent nothing (a port
        probe, a dead peer) is dropped silently."""
        if not self.client.bytes_in or self.ws.state is not _CONNECTING:
            self.abort()
            return
        timeout = self.port.handshake_timeout
        reason = f"request head not complete within {timeout:g} s"
        self.ws.respond(http_response(408, reason.encode() + b"\n"))
        self.port.clients.refused(self.client, 408, reason)
        self.transport.write(self.ws.data_to_send())
        self._end()

    def _refused(self, status: int, reason: str) -> None:
        self.port.handshaking.pop(self, None)
        self.port.clients.refused(self.client, status, reason)
        self.transport.write(self.ws.data_to_send())
        self._end()

    def _control(self, kind: int, value: object) -> None:
        """A ping, pong, close or failure event: write what the protocol queued (a
        pong, a close frame) and follow its state."""
        out = self.ws.data_to_send()
        if out:
            self.transport.write(out)
        clients = self.port.clients
        if kind == FAILED:
            code, reason = cast(tuple[int, str], value)
            clients.failed(self.client, code, reason)
        elif kind == OP_CLOSE:
            clients.peer_closed(self.client)
        else:  # a ping or a pong
            clients.control(self.client)
        if self.ws.state is _CLOSED:
            self._end()

    def _answer(self, request: Request) -> None:
        """The request head is complete: upgrade, or answer plain HTTP and close."""
        port = self.port
        port.handshaking.pop(self, None)
        ws = self.ws
        if not request.wants_upgrade:
            ws.respond(static_response(port.static_root, request))
            self.transport.write(ws.data_to_send())
            self._end()
            return
        verdict = port.admission.admit(request, self.client.remote_ip, _monotonic())
        if not isinstance(verdict, Grant):
            self._refuse(*verdict)
            return
        self.admitted = True
        if port.auth.wanted():
            self._hold(request, verdict)
            return
        self._open(request, verdict)

    def _open(self, request: Request, grant: Grant) -> None:
        """Accept the upgrade: ``101``, a conn_id, bound to ``grant``."""
        port = self.port
        ws = self.ws
        if port.admission.limits_clients:
            self.limits = _Limits(port.config, _monotonic())
        ws.accept(request)
        port.clients.opened(self.client, request, grant)
        if (grant.uid or grant.groups) and port.flush_routes is not None:
            port.flush_routes()
        self.transport.write(ws.data_to_send())
        if ws.buffered:  # frames sent right behind the head
            self.data_received(b"")

    def _hold(self, request: Request, grant: Grant) -> None:
        """Ask a worker's ``authenticate`` hook; answer once it did (or in time)."""
        port = self.port
        auth = port.auth
        req = auth.ask(self.client, request_info(self.client, request), self.authenticated)
        if not req:
            self._refuse(*auth.unavailable("no worker to authenticate the connection"))
            return
        self.held = (req, request, grant)
        port.authenticating[self] = _monotonic() + port.auth_timeout

    def authenticated(self, verdict: Verdict) -> None:
        """The hook's answer: open with its grant, or refuse as it said."""
        held = self.held
        if held is None:
            return
        self.held = None
        self.port.authenticating.pop(self, None)
        if self.ws.state is not _CONNECTING or self.transport.is_closing():
            self.port.auth.forget(self.client)
            return
        if isinstance(verdict, Grant):
            self._open(held[1], merge_grants(held[2], verdict))
        else:
            self._refuse(*verdict)

    def auth_expired(self) -> None:
        """No answer from the hook within ``auth_timeout``."""
        held = self.held
        if held is None:
            return
        self.held = None
        port = self.port
        port.auth.cancel(held[0])
        why = f"authentication did not answer within {port.auth_timeout:g} s"
        port.clients.log(logging.WARNING, "client %s: %s", self.client.remote_ip, why)
        self._refuse(*port.auth.unavailable(why))

    def _refuse(self, status: int, body: str | bytes, headers: tuple[tuple[str, str], ...]) -> None:
        """Answer an upgrade request that was refused (``body``: a ``str`` reason or
        the hook's bytes), and close."""
        self.port.clients.count_refusal(status)
        if isinstance(body, str):
            body = body.encode() + b"\n"
        content_type = "text/plain; charset=utf-8"
        for name, value in headers:
            if name.lower() == "content-type":
                content_type = value
                headers = tuple(h for h in headers if h[0].lower() != "content-type")
                break
        self.ws.respond(http_response(status, body, content_type, headers))
        self.transport.write(self.ws.data_to_send())
        self._end()

    def _end(self) -> None:
        """The protocol is ``CLOSED``: close the TCP connection once what is queued
        is written (or only half-close, after a failure), and give that
        ``close_timeout``."""
        if self.ws.half_close and self.transport.can_write_eof():
            self.transport.write_eof()
        else:
            self.transport.close()
        self.port.track_closing(self)

    def eof_received(self) -> bool | None:
        return None  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.ws.connection_lost()
        port = self.port
        port.handshaking.pop(self, None)
        port.closing.pop(self, None)
        port.backlogged.pop(self, None)
        if self.held is not None:
            port.authenticating.pop(self, None)
            port.auth.cancel(self.held[0])
            self.held = None
        port.clients.closed(self.client)
        self.client.writer = _GONE
        if self.admitted:
            self.admitted = False
            port.admission.released(self.client.remote_ip)

    def pause_writing(self) -> None:
        port = self.port
        port.backlogged.setdefault(self, _monotonic())
        if self.transport.get_write_buffer_size() > port.config.send_buffer_limit:
            port.backlogged.pop(self, None)
            port.clients.slow(self.client, f"send buffer over {port.config.send_buffer_limit}")

    def resume_writing(self) -> None:
        self.port.backlogged.pop(self, None)

    # ---- ClientWriter (the core's calls) ------------------------------------------
    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake: a close frame, then ``close_timeout`` for the
        client's answer."""
        ws = self.ws
        if ws.state is not _OPEN:
            return
        ws.close(code, reason)
        self.transport.write(ws.data_to_send())
        self.port.track_closing(self)

    def abort(self) -> None:
        """Drop the TCP connection now."""
        self.transport.abort()


class _Limits:
    """The message and byte rate limits of one connection (token buckets)."""

    __slots__ = ("messages", "bytes")

    def __init__(self, cfg: Gateway, now: float) -> None:
        self.messages = (
            TokenBucket(cfg.message_rate, cfg.message_burst, now) if cfg.message_rate else None
        )
        self.bytes = TokenBucket(cfg.byte_rate, cfg.byte_burst, now) if cfg.byte_rate else None

    def take_message(self) -> bool:
        bucket = self.messages
        return bucket is None or bucket.take(1, _monotonic())

    def take_bytes(self, size: int) -> bool:
        bucket = self.bytes
        return bucket is None or bucket.take(size, _monotonic())
