"""The client side of a gateway: one :class:`ClientConnection` per TCP connection.

How this works
--------------
A :class:`ClientConnection` is an ``asyncio.Protocol`` with ``__slots__`` that is
also the connection's :class:`~gateway.directory.Entry`, so one object per client
carries both the socket glue and the directory state. Its ``state`` walks
``S_HTTP -> S_OPEN -> S_CLOSING/S_DRAINING -> S_CLOSED``:

- ``S_HTTP``: bytes go to the server's HTTP handling (``GatewayServer.on_http_data``)
  until the request head is complete; an upgrade makes the connection ``S_OPEN``, a
  plain ``GET`` is answered by :func:`static_response` and closed.
- ``S_OPEN``: bytes are parsed by the connection's ``wsproto.FrameParser`` and each
  whole message goes to ``GatewayServer.on_client_message`` (one ``EV_MESSAGE``).
- ``S_CLOSING``: we sent a close frame and wait (bounded by the server's close
  sweep) for the client's.
- ``S_DRAINING``: a protocol error or a finished close; input is discarded until
  the TCP connection goes.

The connection never owns a timer or a task: deadlines are the server's sweeps.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TYPE_CHECKING, Any, cast

from pygatewayworker.gateway import wsproto
from pygatewayworker.gateway.directory import Entry

if TYPE_CHECKING:
    from pygatewayworker.gateway.links import InternalLink
    from pygatewayworker.gateway.server import GatewayServer

__all__ = [
    "S_HTTP",
    "S_OPEN",
    "S_CLOSING",
    "S_DRAINING",
    "S_CLOSED",
    "ClientConnection",
    "RateLimitedLog",
    "static_response",
]

log = logging.getLogger("gateway")

# Client connection states.
S_HTTP = 0  # reading the request head
S_OPEN = 1  # WebSocket open
S_CLOSING = 2  # we sent a close frame and wait for the client's (parser still valid)
S_DRAINING = 3  # protocol error: close sent, input discarded until the peer goes
S_CLOSED = 4

_monotonic = time.monotonic


def _peer(transport: asyncio.BaseTransport) -> tuple[str, int]:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return str(peer[0]), int(peer[1])
    return "", 0


class RateLimitedLog:
    """Log at most ``burst`` lines per ``window`` seconds; report what was skipped.
    Protects the log from a flood of misbehaving clients."""

    __slots__ = ("_burst", "_window", "_start", "_count", "_skipped")

    def __init__(self, burst: int = 20, window: float = 10.0) -> None:
        self._burst = burst
        self._window = window
        self._start = 0.0
        self._count = 0
        self._skipped = 0

    def __call__(self, level: int, msg: str, *args: object) -> None:
        now = _monotonic()
        if now - self._start >= self._window:
            if self._skipped:
                log.warning("%d similar log lines were skipped", self._skipped)
            self._start, self._count, self._skipped = now, 0, 0
        if self._count < self._burst:
            self._count += 1
            log.log(level, msg, *args)
        else:
            self._skipped += 1


class ClientConnection(Entry, asyncio.Protocol):
    """One client TCP connection, and (after the handshake) its directory entry."""

    __slots__ = (
        "server",
        "transport",
        "state",
        "parser",
        "silent",
        "worker",
        "remote_ip",
        "remote_port",
        "since",
        "bytes_in",
        "bytes_out",
        "close_reason",
    )

    def __init__(self, server: GatewayServer) -> None:
        Entry.__init__(self, 0)
        self.server = server
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.state = S_HTTP
        self.parser: wsproto.RequestParser | wsproto.FrameParser = wsproto.RequestParser()
        self.silent = -1  # whole ping intervals of silence; -1: active since last sweep
        self.worker: InternalLink | None = None
        self.remote_ip = ""
        self.remote_port = 0
        self.since = _monotonic()
        self.bytes_in = 0
        self.bytes_out = 0
        self.close_reason = ""  # metrics: why it closed (the first reason wins)

    # ---- asyncio callbacks -----------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance.
        self.transport = transport = cast(asyncio.Transport, transport)
        self.remote_ip, self.remote_port = _peer(transport)
        transport.set_write_buffer_limits(high=self.server.config.send_buffer_limit)
        self.server.on_accept(self)

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self.server.bytes_in += len(data)
        state = self.state
        if state in (S_OPEN, S_CLOSING):
            self.feed_frames(data)
        elif state == S_HTTP:
            self.server.on_http_data(self, data)
        # S_DRAINING / S_CLOSED: discard.

    def eof_received(self) -> bool | None:
        return None  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = S_CLOSED
        self.server.on_client_lost(self)

    def pause_writing(self) -> None:
        self.server.on_slow_client(self)

    def resume_writing(self) -> None:
        pass

    # ---- frames ----------------------------------------------------------------
    def feed_frames(self, data: bytes) -> None:
        """Parse WebSocket bytes and act on the events."""
        parser = self.parser
        assert isinstance(parser, wsproto.FrameParser)
        try:
            events = parser.feed(data)
        except wsproto.FrameError as exc:
            self.handle_events(exc.events)
            self.fail(exc.code, exc.reason)
            return
        self.handle_events(events)

    def handle_events(self, events: list[tuple[int, Any]]) -> None:
        """Act on parsed client events."""
        server = self.server
        for opcode, value in events:
            if self.state != S_OPEN:
                if opcode == wsproto.OP_CLOSE and self.state == S_CLOSING:
                    self.end(None)  # the client answered our close
                return
            if opcode == wsproto.OP_TEXT or opcode == wsproto.OP_BINARY:
                self.silent = -1
                server.on_client_message(self, value)
            elif opcode == wsproto.OP_PING:
                self.transport.write(wsproto.pong_frame(value))
                if server.config.pong_is_activity:
                    self.silent = -1
            elif opcode == wsproto.OP_PONG:
                if server.config.pong_is_activity:
                    self.silent = -1
            else:  # OP_CLOSE started by the client: answer, then close TCP first
                self.close_reason = self.close_reason or "client_close"  # metrics
                self.end(wsproto.close_frame(value[0]))
                return

    def send_frame(self, frame: bytes) -> None:
        """Write an encoded frame if the connection is open."""
        if self.state == S_OPEN:
            self.transport.write(frame)
            self.bytes_out += len(frame)
            self.server.count_out(1, len(frame))

    def close_ws(self, code: int, reason: str = "") -> None:
        """Start a normal close: send a close frame and wait (bounded) for the
        client's answer."""
        if self.state != S_OPEN:
            return
        self.transport.write(wsproto.close_frame(code, reason))
        self.state = S_CLOSING
        self.server.track_closing(self)

    def fail(self, code: int, reason: str) -> None:
        """Close after a protocol error: send the close frame, half-close, discard
        input until the peer goes (closing at once would reset the connection and
        could destroy the close frame before the client reads it)."""
        self.server.log_client(
            logging.INFO,
            "client %s (%s): closing with %d: %s",
            self.conn_id,
            self.remote_ip,
            code,
            reason,
        )
        if not self.close_reason:  # metrics
            self.close_reason = "size_limit" if code == 1009 else "protocol_error"
        if self.state == S_OPEN:
            self.transport.write(wsproto.close_frame(code, reason))
            if self.transport.can_write_eof():
                self.transport.write_eof()
            else:
                self.transport.close()
        elif self.state == S_CLOSING:  # our close frame is already out: only one
            self.transport.close()
        self.state = S_DRAINING
        self.server.track_closing(self)

    def end(self, last: bytes | None) -> None:
        """Write ``last`` (if any), close the transport once flushed, and give the
        flush ``close_timeout``."""
        if last:
            self.transport.write(last)
        self.transport.close()
        self.state = S_DRAINING
        self.server.track_closing(self)

    def abort(self) -> None:
        """Drop the TCP connection now."""
        self.transport.abort()


# ---------------------------------------------------------------------------------
# Plain HTTP on the public port
# ---------------------------------------------------------------------------------


def static_response(static_root: str, request: wsproto.Request) -> bytes:
    """The answer to a plain HTTP request: a file from ``static_root`` (GET/HEAD),
    404 when there is none, 405 for other methods."""
    head_only = request.method == "HEAD"
    if request.method not in ("GET", "HEAD"):
        return wsproto.http_response(
            405, b"method not allowed\n", headers=(("Allow", "GET, HEAD"),)
        )
    path = _static_path(static_root, request.path)
    body = _read_file(path) if path else None
    if path is None or body is None:
        return wsproto.http_response(404, b"not found\n", head_only=head_only)
    return wsproto.http_response(200, body, wsproto.content_type_for(path), head_only=head_only)


def _static_path(root: str, url_path: str) -> str | None:
    path = wsproto.static_file_path(root, url_path)
    if path is None:
        return None
    real = os.path.realpath(path)  # symlinks must not lead out of static_dir
    if not real.startswith(root + os.sep):
        return None
    return real


def _read_file(path: str) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:  # missing, a directory, unreadable: all 404
        return None
