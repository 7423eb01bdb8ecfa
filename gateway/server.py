"""The gateway process: asyncio glue around the pure ``wsproto`` and ``directory``.

How this works
--------------
One :class:`GatewayServer` per gateway process listens on two sockets:

- the **public** port, where every client connection is a :class:`ClientConnection`
  (an ``asyncio.Protocol`` with ``__slots__`` that is also the connection's
  :class:`~gateway.directory.Entry`). It parses the HTTP head; a WebSocket upgrade
  gets ``101``, a connection id, a directory entry and the ``EV_CONNECT`` +
  ``EV_WS_CONNECT`` events; a plain ``GET`` is answered from ``static_dir`` and
  closed (no entry, no events). After the handshake, frames are parsed and each
  message becomes one ``EV_MESSAGE`` packet to the client's business worker.
- the **internal** port, where every business worker and push client is an
  :class:`InternalLink` speaking ``gateway.protocol``. The first packet must be
  ``HELLO`` with the secret. Commands are dispatched by name (``cmd_<command>``,
  ``query_<query>``); a broadcast encodes its frame once and writes the same bytes
  to every recipient's transport.

Worker choice is sticky: a client's events all go to the worker chosen (least
connections) when it connected; when that worker leaves or its link drops, the client
is re-assigned at its next event. With no worker linked, events are held (bounded in
number and age) and handed in order to the first worker that links.

There are no per-connection tasks or timers: one heartbeat sweep every
``ping_interval`` pings silent clients and drops dead ones, and one housekeeping tick
(about a second) handles handshake and close deadlines, link keep-alives, link
timeouts and expired held events. Slow consumers are detected by the transport's
high-water mark (``pause_writing``), which costs nothing per write.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, cast

from cluster.spec import ChildSpec
from gateway import wsproto
from gateway.client_id import MAX_CONN_ID, encode_client_id
from gateway.config import Gateway
from gateway.directory import Directory, Entry
from gateway.protocol import DEFAULT_MAX_PACKET, Cmd, Decoder, ProtocolError, encode
from register.config import parse_address
from register.discovery import GatewayAnnouncer

__all__ = ["GatewayServer", "ClientConnection", "InternalLink", "serve"]

log = logging.getLogger("gateway")

# Client connection states.
S_HTTP = 0  # reading the request head
S_OPEN = 1  # WebSocket open
S_CLOSING = 2  # we sent a close frame and wait for the client's (parser still valid)
S_DRAINING = 3  # protocol error: close sent, input discarded until the peer goes
S_CLOSED = 4

_monotonic = time.monotonic
_text_frame = wsproto.text_frame
_binary_frame = wsproto.binary_frame


def data_frame(data: object) -> bytes:
    """The frame for a message from a link: ``str`` -> text, ``bytes`` -> binary.
    Raises ``TypeError`` for anything else (a malformed command)."""
    if type(data) is str:
        return _text_frame(data)
    if type(data) is bytes:
        return _binary_frame(data)
    raise TypeError(f"message must be str or bytes, got {type(data).__name__}")


def _int_list(value: object, what: str) -> list[int]:
    if type(value) is not list or not all(type(v) is int for v in value):
        raise TypeError(f"{what} must be a list of ints")
    return value


def _str_list(value: object, what: str) -> list[str]:
    if type(value) is not list or not all(type(v) is str for v in value):
        raise TypeError(f"{what} must be a list of str")
    return value


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


# ---------------------------------------------------------------------------------
# Public side
# ---------------------------------------------------------------------------------


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
# Internal side
# ---------------------------------------------------------------------------------


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
        self._out: list[bytes] = []

    def __repr__(self) -> str:
        return f"<link {self.role or 'unauthenticated'} {self.name!r} from {self.peer}>"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        ip, port = _peer(transport)
        self.peer = f"{ip}:{port}"
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
        for packet in packets:
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


# ---------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------


def bind_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    """Bind and listen on ``host:port`` (port 0: any free port). Raises ``OSError``
    with the address in the message."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, type_, proto, _, addr = infos[0]
        sock = socket.socket(family, type_, proto)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot bind {host}:{port}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port and hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
        sock.listen(1024)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise OSError(
            exc.errno,
            f"cannot bind {host}:{port}: {exc.strerror or exc}; is another process using it?",
        ) from None
    return sock


class GatewayServer:
    """One gateway process: public WebSocket port, internal port, and the state of
    every client. Implements the ``Service`` protocol (``start``/``stop``/``stats``)."""

    hello_timeout = 5.0
    """Seconds a new internal link has to send a valid ``HELLO``."""
    handshake_timeout = 10.0
    """Seconds a new client has to send a complete HTTP request head."""
    close_timeout = 5.0
    """Seconds a closing client has to answer our close frame before it is dropped."""
    stop_timeout = 10.0
    """Seconds a graceful stop waits for clients to go."""

    def __init__(
        self,
        config: Gateway,
        index: int = 0,
        public_sock: socket.socket | None = None,
        internal_sock: socket.socket | None = None,
    ) -> None:
        self.config = config
        self.index = index
        self.directory: Directory[ClientConnection] = Directory()
        self.public_port = 0
        self.internal_port = 0
        self.internal_address = ""
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._public_sock = public_sock
        self._internal_sock = internal_sock
        self._public_server: asyncio.Server | None = None
        self._internal_server: asyncio.Server | None = None
        self._announcer: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._next_conn_id = 0
        self._handshaking: dict[ClientConnection, float] = {}  # accept order
        self._closing: dict[ClientConnection, float] = {}  # close order
        self._links: set[InternalLink] = set()
        self._workers: list[InternalLink] = []  # linked workers that take new clients
        self._pending: deque[tuple[float, ClientConnection, Cmd, bytes]] = deque()
        self._pending_dropped = 0
        self._stopping = False
        self._started = 0.0
        self._static_root = ""
        self._ping_frame = data_frame(config.ping_data) if config.ping_data else b""
        self.log_client = RateLimitedLog()
        self.messages_in = self.messages_out = 0
        self.bytes_in = self.bytes_out = 0
        self.send_failures = 0
        self._commands: dict[Cmd, Callable[[InternalLink, list[Any]], None]] = {}
        self._queries: dict[Cmd, Callable[..., Any]] = {}
        for cmd in Cmd:
            name = cmd.name.lower()
            if name.startswith("q_"):
                self._queries[cmd] = getattr(self, "query_" + name[2:])
            elif hasattr(self, "cmd_" + name):
                self._commands[cmd] = getattr(self, "cmd_" + name)

    # ---- lifecycle ---------------------------------------------------------------
    async def start(self) -> None:
        """Bind (unless sockets were given), listen, start the sweeps and announce
        this gateway to the registers. Raises ``OSError`` when a port is taken."""
        cfg = self.config
        self.loop = asyncio.get_running_loop()
        self._started = _monotonic()
        if cfg.static_dir:
            self._static_root = os.path.realpath(cfg.static_dir)
            if not os.path.isdir(self._static_root):
                log.warning("static_dir %s is not a directory: every GET gets 404", cfg.static_dir)
        try:
            await self._listen()
        except BaseException:
            for sock in (self._public_sock, self._internal_sock):
                if sock is not None:
                    sock.close()
            raise
        self._tasks.append(asyncio.create_task(self._housekeeping()))
        if cfg.ping_interval > 0:
            self._tasks.append(asyncio.create_task(self._heartbeat()))
        self._announcer = GatewayAnnouncer(cfg.registers, cfg.secret, self.internal_address)
        await self._announcer.start()
        log.info(
            "gateway %s.%d: public port %d, internal %s",
            cfg.name,
            self.index,
            self.public_port,
            self.internal_address,
        )

    async def _listen(self) -> None:
        cfg = self.config
        if self._public_sock is None:
            host, port = parse_address(cfg.listen, "Gateway listen")
            self._public_sock = bind_socket(host, port, reuse_port=True)
        if self._internal_sock is None:
            host, port = cfg.internal_bind_address(self.index)
            self._internal_sock = bind_socket(host, port if cfg.start_port else 0, False)
        self._internal_server = await self.loop.create_server(
            lambda: InternalLink(self), sock=self._internal_sock
        )
        self._public_server = await self.loop.create_server(
            lambda: ClientConnection(self), sock=self._public_sock, backlog=1024
        )
        self.public_port = self._public_sock.getsockname()[1]
        self.internal_port = self._internal_sock.getsockname()[1]
        self.internal_address = f"{cfg.lan_ip}:{self.internal_port}"

    async def stop(self, graceful: bool = True) -> None:
        """Stop accepting; close every client (graceful: close frame 1001 and a
        bounded wait; else at once); tell workers (``EV_CLOSE``); close the links
        and withdraw from the registers."""
        if self._stopping or self.loop is None:
            return
        self._stopping = True
        for server in (self._public_server, self._internal_server):
            if server is not None:
                server.close()
        for conn in list(self._handshaking):
            conn.abort()
        if graceful:
            await self._close_clients_gracefully()
        for conn in [*self.directory.entries(), *self._closing]:
            conn.abort()
        for _ in range(3):  # let connection_lost run: it queues EV_CLOSE to workers
            await asyncio.sleep(0)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self._close_links()
        if self._announcer is not None:
            await self._announcer.close()
        log.info(
            "gateway %s.%d stopped (%s)",
            self.config.name,
            self.index,
            "graceful" if graceful else "now",
        )

    async def _close_clients_gracefully(self) -> None:
        for conn in list(self.directory.entries()):
            conn.close_ws(1001, "going away")
        deadline = _monotonic() + self.stop_timeout
        while len(self.directory) and _monotonic() < deadline:
            await asyncio.sleep(0.02)

    async def _close_links(self, timeout: float = 2.0) -> None:
        """Close every link after flushing what is queued (EV_CLOSE events)."""
        for link in list(self._links):
            link.close()
        deadline = _monotonic() + timeout
        while self._links and _monotonic() < deadline:
            await asyncio.sleep(0.01)
        for link in list(self._links):
            link.transport.abort()

    def stats(self) -> dict[str, Any]:
        """Counters for ``status`` and ``Q_STATS``."""
        return {
            "connections": len(self.directory),
            "messages_in": self.messages_in,
            "messages_out": self.messages_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "send_failures": self.send_failures,
            "workers": sum(1 for link in self._links if link.role == "worker"),
            "clients": sum(1 for link in self._links if link.role == "client"),
            "pending_events": len(self._pending),
            "uptime": round(_monotonic() - self._started, 3) if self._started else 0.0,
            "public_port": self.public_port,
            "internal_address": self.internal_address,
            "pid": os.getpid(),
        }

    def count_out(self, messages: int, size: int) -> None:
        """Account ``messages`` frames of ``size`` bytes each written to clients."""
        self.messages_out += messages
        self.bytes_out += messages * size

    # ---- client connections --------------------------------------------------------
    def on_accept(self, conn: ClientConnection) -> None:
        """A TCP connection arrived: it has ``handshake_timeout`` to send its head."""
        if self._stopping:
            conn.abort()
            return
        self._handshaking[conn] = _monotonic() + self.handshake_timeout

    def on_http_data(self, conn: ClientConnection, data: bytes) -> None:
        """Bytes of the HTTP request head."""
        parser = conn.parser
        assert isinstance(parser, wsproto.RequestParser)
        try:
            request = parser.feed(data)
            if request is None:
                return
            self._handshaking.pop(conn, None)
            if not request.wants_upgrade:
                self._answer_http(conn, request)
                return
            key = wsproto.check_upgrade(request)
        except wsproto.HandshakeError as exc:
            self._handshaking.pop(conn, None)
            self.log_client(logging.INFO, "rejected request from %s: %s", conn.remote_ip, exc)
            conn.end(exc.response)
            return
        self._upgrade(conn, request, key, parser.rest)

    def _upgrade(
        self, conn: ClientConnection, request: wsproto.Request, key: str, rest: bytes
    ) -> None:
        conn.transport.write(wsproto.accept_response(key))
        conn.conn_id = self._new_conn_id()
        conn.state = S_OPEN
        conn.parser = wsproto.FrameParser(self.config.max_message_size)
        self.directory.add(conn)
        self.emit(conn, Cmd.EV_CONNECT, None)
        info = {
            "path": request.path,
            "query": request.query,
            "headers": request.headers,
            "cookies": wsproto.parse_cookies(request.headers.get("cookie", "")),
            "remote_ip": conn.remote_ip,
            "remote_port": conn.remote_port,
        }
        self.emit(conn, Cmd.EV_WS_CONNECT, info)
        if rest:
            conn.feed_frames(rest)

    def _new_conn_id(self) -> int:
        """Ids count from 1; after 2**32-1 they wrap, skipping ids still in use."""
        conn_id = self._next_conn_id
        while True:
            conn_id = conn_id + 1 if conn_id < MAX_CONN_ID else 1
            if conn_id not in self.directory:
                self._next_conn_id = conn_id
                return conn_id

    def _answer_http(self, conn: ClientConnection, request: wsproto.Request) -> None:
        """Serve a plain HTTP request from ``static_dir`` and close."""
        head_only = request.method == "HEAD"
        if request.method not in ("GET", "HEAD"):
            response = wsproto.http_response(
                405, b"method not allowed\n", headers=(("Allow", "GET, HEAD"),)
            )
        else:
            path = self._static_path(request.path)
            body = _read_file(path) if path else None
            if body is None:
                response = wsproto.http_response(404, b"not found\n", head_only=head_only)
            else:
                assert path is not None
                response = wsproto.http_response(
                    200, body, wsproto.content_type_for(path), head_only=head_only
                )
        conn.end(response)

    def _static_path(self, url_path: str) -> str | None:
        root = self._static_root
        path = wsproto.static_file_path(root, url_path)
        if path is None:
            return None
        real = os.path.realpath(path)  # symlinks must not lead out of static_dir
        if not real.startswith(root + os.sep):
            return None
        return real

    def on_client_message(self, conn: ClientConnection, data: str | bytes) -> None:
        """A whole text or binary message from a client."""
        self.messages_in += 1
        self.emit(conn, Cmd.EV_MESSAGE, data)

    def on_client_lost(self, conn: ClientConnection) -> None:
        """The TCP connection is gone: ``EV_CLOSE`` with the last session, then
        forget the client."""
        self._handshaking.pop(conn, None)
        self._closing.pop(conn, None)
        if conn.conn_id and self.directory.get(conn.conn_id) is conn:
            self.emit(conn, Cmd.EV_CLOSE, None)
            self.directory.remove(conn.conn_id)

    def on_slow_client(self, conn: ClientConnection) -> None:
        """A client's send buffer passed ``send_buffer_limit``: close it (1008)."""
        if conn.state != S_OPEN:
            return
        self.send_failures += 1
        self.log_client(
            logging.WARNING,
            "client %s (%s): send buffer over %d bytes, closing (slow consumer)",
            conn.conn_id,
            conn.remote_ip,
            self.config.send_buffer_limit,
        )
        conn.close_ws(1008, "slow consumer")

    def track_closing(self, conn: ClientConnection) -> None:
        """Give a closing client ``close_timeout`` before it is dropped."""
        self._closing.setdefault(conn, _monotonic() + self.close_timeout)

    # ---- events to workers ----------------------------------------------------------
    def emit(self, conn: ClientConnection, cmd: Cmd, payload: Any) -> None:
        """Send one client event to the client's worker (or hold it)."""
        packet = encode(cmd, conn.conn_id, conn.session, conn.remote_ip, conn.remote_port, payload)
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
            link = conn.worker
            if link is None or link.leaving:
                link = self._assign(conn)
            assert link is not None
            link.send(packet)
            if cmd == Cmd.EV_CLOSE:
                link.clients -= 1
                conn.worker = None

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
        if link.role:
            log.info("%r is gone (%d clients to re-assign)", link, max(link.clients, 0))

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
        log.info("%r linked (pid %d)", link, pid)
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

    # ---- link upkeep commands -----------------------------------------------------
    def cmd_ping(self, link: InternalLink, packet: list[Any]) -> None:
        link.send(encode(Cmd.PONG))

    def cmd_pong(self, link: InternalLink, packet: list[Any]) -> None:
        pass  # data_received already noted the activity

    def cmd_hello(self, link: InternalLink, packet: list[Any]) -> None:
        raise ValueError("HELLO was already accepted on this link")

    def cmd_worker_leave(self, link: InternalLink, packet: list[Any]) -> None:
        """The worker is leaving: route nothing new to it, then acknowledge. Its
        clients move to another worker at their next event; every event sent to it
        so far is ahead of the ack in the same stream."""
        if link.role != "worker":
            raise ValueError("only a worker link may leave")
        link.leaving = True
        if link in self._workers:
            self._workers.remove(link)
        log.info("%r is leaving; %d clients move to other workers", link, max(link.clients, 0))
        link.send(encode(Cmd.LEAVE_ACK))

    # ---- send commands ------------------------------------------------------------
    def deliver(self, recipients: Iterable[ClientConnection], frame: bytes) -> None:
        """Write one encoded frame to every open recipient."""
        size = len(frame)
        sent = 0
        is_open = S_OPEN
        for conn in recipients:
            if conn.state == is_open:
                conn.transport.write(frame)
                conn.bytes_out += size
                sent += 1
        self.messages_out += sent
        self.bytes_out += sent * size

    def cmd_send_to_client(self, link: InternalLink, packet: list[Any]) -> None:
        _, conn_id, data = packet
        frame = data_frame(data)
        conn = self.directory.get(conn_id)
        if conn is not None:
            conn.send_frame(frame)

    def cmd_send_to_all(self, link: InternalLink, packet: list[Any]) -> None:
        _, data, conn_ids, exclude = packet
        frame = data_frame(data)
        if conn_ids is not None:
            _int_list(conn_ids, "conn_ids")
        if exclude is not None:
            _int_list(exclude, "exclude")
        self.deliver(self.directory.recipients_all(conn_ids, exclude), frame)

    def cmd_send_to_uid(self, link: InternalLink, packet: list[Any]) -> None:
        _, uids, data = packet
        frame = data_frame(data)
        self.deliver(self.directory.recipients_uids(_str_list(uids, "uids")), frame)

    def cmd_send_to_group(self, link: InternalLink, packet: list[Any]) -> None:
        _, groups, data, exclude = packet
        frame = data_frame(data)
        if exclude is not None:
            _int_list(exclude, "exclude")
        recipients = self.directory.recipients_groups(_str_list(groups, "groups"), exclude)
        self.deliver(recipients, frame)

    def cmd_close_client(self, link: InternalLink, packet: list[Any]) -> None:
        _, conn_id, data = packet
        frame = None if data is None else data_frame(data)
        conn = self.directory.get(conn_id)
        if conn is not None:
            if frame is not None:
                conn.send_frame(frame)
            conn.close_ws(1000)

    def cmd_destroy_client(self, link: InternalLink, packet: list[Any]) -> None:
        _, conn_id = packet
        conn = self.directory.get(conn_id)
        if conn is not None:
            conn.abort()

    # ---- state commands -----------------------------------------------------------
    def cmd_bind_uid(self, link: InternalLink, packet: list[Any]) -> None:
        _, conn_id, uid = packet
        self.directory.bind_uid(conn_id, uid)

    def cmd_unbind_uid(self, link: InternalLink, packet: list[Any]) -> None:
        _, conn_id, uid = packet
        self.directory.unbind_uid(conn_id, uid)

    def cmd_join_group(self, link: InternalLink, packet: list[Any]) -> None:
        _, conn_id, group = packet
        self.directory.join_group(conn_id, group)

    def cmd_leave_group(self, link: InternalLink, packet: list[Any]) -> None:
        _, conn_id, group = packet
        self.directory.leave_group(conn_id, group)

    def cmd_ungroup(self, link: InternalLink, packet: list[Any]) -> None:
        _, group = packet
        self.directory.ungroup(group)

    def cmd_set_session(self, link: InternalLink, packet: list[Any]) -> None:
        _, conn_id, session = packet
        self.directory.set_session(conn_id, session)

    def cmd_update_session(self, link: InternalLink, packet: list[Any]) -> None:
        _, conn_id, partial = packet
        self.directory.update_session(conn_id, partial)

    # ---- queries (arguments after req) --------------------------------------------
    def query_client_info(self, conn_id: int) -> Any:
        return self.directory.client_info(conn_id)

    def query_uids(self, uids: list[str]) -> Any:
        return self.directory.uids_info(_str_list(uids, "uids"))

    def query_groups(self, groups: list[str] | None, what: str) -> Any:
        if groups is not None:
            _str_list(groups, "groups")
        return self.directory.groups_info(groups, what)

    def query_all_groups(self, what: str) -> Any:
        return self.directory.all_groups_info(what)

    def query_all_uids(self) -> Any:
        return self.directory.all_uids()

    def query_connections(self) -> Any:
        now = _monotonic()
        ip, port = self.config.lan_ip, self.internal_port
        return [
            {
                "client_id": encode_client_id(ip, port, conn.conn_id),
                "remote": f"{conn.remote_ip}:{conn.remote_port}",
                "uid": conn.uid,
                "groups": sorted(conn.groups) if conn.groups else [],
                "age": round(now - conn.since, 3),
                "bytes_in": conn.bytes_in,
                "bytes_out": conn.bytes_out,
            }
            for conn in self.directory.entries()
        ]

    def query_stats(self) -> Any:
        return self.stats()

    # ---- sweeps -----------------------------------------------------------------
    async def _heartbeat(self) -> None:
        """Every ``ping_interval``: ping clients silent for a whole interval, drop
        those silent for more than ``ping_not_response_limit`` intervals."""
        interval = self.config.ping_interval
        while True:
            await asyncio.sleep(interval)
            try:
                self.sweep_heartbeat()
            except Exception:  # never let one bad sweep stop the heartbeat
                log.exception("heartbeat sweep failed")

    def sweep_heartbeat(self) -> None:
        """One heartbeat sweep (see :meth:`_heartbeat`)."""
        limit = self.config.ping_not_response_limit
        ping = self._ping_frame
        size = len(ping)
        pinged = 0
        dead: list[ClientConnection] = []
        for conn in self.directory.entries():
            if conn.state != S_OPEN:
                continue
            silent = conn.silent + 1
            conn.silent = silent
            if silent <= 0:
                continue
            if limit and silent > limit:
                dead.append(conn)
            elif size:
                conn.transport.write(ping)
                conn.bytes_out += size
                pinged += 1
        self.count_out(pinged, size)
        for conn in dead:
            conn.abort()
        if dead:
            log.info("closed %d clients silent for more than %d ping intervals", len(dead), limit)

    async def _housekeeping(self) -> None:
        cfg = self.config
        tick = max(0.02, min(1.0, cfg.keepalive_interval / 2, cfg.link_timeout / 4))
        while True:
            await asyncio.sleep(tick)
            try:
                self.sweep_housekeeping(_monotonic())
            except Exception:
                log.exception("housekeeping sweep failed")

    def sweep_housekeeping(self, now: float) -> None:
        """Deadlines of handshakes and closes, link keep-alives, held events."""
        self._expire_pending(now)
        for table, closer in ((self._handshaking, _abort), (self._closing, _finish_close)):
            expired = []
            for conn, deadline in table.items():
                if deadline > now:
                    break
                expired.append(conn)
            for conn in expired:
                del table[conn]
                closer(conn)
        self._link_upkeep(now)

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


def _abort(conn: ClientConnection) -> None:
    conn.abort()


def _finish_close(conn: ClientConnection) -> None:
    """A closing client did not finish in time: close if flushed, else drop."""
    transport = conn.transport
    if transport.is_closing() or transport.get_write_buffer_size():
        transport.abort()
    else:
        transport.close()


def _read_file(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:  # missing, a directory, unreadable: all 404
        return None


def serve(spec: ChildSpec) -> int:
    """Entry point of a gateway child process (see ``cluster.spec``)."""
    from cluster.child import run_service

    server = GatewayServer(
        spec.config, spec.index, spec.sockets.get("public"), spec.sockets.get("internal")
    )
    return run_service(spec, server)
