"""The gateway process: the service that ties the public and internal sides together.

How this works
--------------
One :class:`GatewayServer` per gateway process listens on two sockets:

- the **public** port, where every client connection is a
  :class:`~gateway.connection.ClientConnection`. It parses the HTTP head; a
  WebSocket upgrade gets ``101``, a connection id, a directory entry and the
  ``EV_CONNECT`` + ``EV_WS_CONNECT`` events; a plain ``GET`` is answered from
  ``static_dir`` and closed (no entry, no events). After the handshake, frames are
  parsed and each message becomes one ``EV_MESSAGE`` packet to the client's worker.
- the **internal** port, where every business worker and push client is an
  :class:`~gateway.links.InternalLink` (handshake, dispatch and event routing in
  ``gateway.links``; the commands themselves in ``gateway.commands``). PHP apps'
  GatewayClient connects there too: ``gateway.phplink`` tells its links from ours
  by their first bytes and carries their commands out through the same handlers.

There are no per-connection tasks or timers: one heartbeat task pings silent clients
and drops dead ones, and one housekeeping tick (about a second) handles handshake and
close deadlines, link keep-alives, link timeouts and expired held events (both in
``gateway.sweeps``). Slow consumers are detected by the transport's high-water mark
(``pause_writing``), which costs nothing per write.

Module map: ``gateway.connection`` (client protocol), ``gateway.links`` (internal
links, routing), ``gateway.commands`` (cmd_*/query_*), ``gateway.sweeps`` (heartbeat,
housekeeping), this module (lifecycle, client handshake, ``serve``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from pygatewayworker.gateway import wsproto
from pygatewayworker.gateway.client_id import MAX_CONN_ID
from pygatewayworker.gateway.commands import Commands, data_frame
from pygatewayworker.gateway.config import Gateway
from pygatewayworker.gateway.connection import (
    S_CLOSED,
    S_CLOSING,
    S_DRAINING,
    S_HTTP,
    S_OPEN,
    ClientConnection,
    RateLimitedLog,
    static_response,
)
from pygatewayworker.gateway.directory import Directory
from pygatewayworker.gateway.links import InternalLink, LinkHandling
from pygatewayworker.gateway.phplink import PhpLinks
from pygatewayworker.gateway.protocol import Cmd
from pygatewayworker.gateway.sweeps import HEARTBEAT_SLICES, Sweeps
from pygatewayworker.register.config import is_loopback, parse_address
from pygatewayworker.register.discovery import GatewayAnnouncer
from pygatewayworker.runtime.spec import ChildSpec

__all__ = [
    "GatewayServer",
    "ClientConnection",
    "InternalLink",
    "bind_socket",
    "first_conn_id",
    "HEARTBEAT_SLICES",
    "data_frame",
    "serve",
    "S_HTTP",
    "S_OPEN",
    "S_CLOSING",
    "S_DRAINING",
    "S_CLOSED",
]

log = logging.getLogger("gateway")

_monotonic = time.monotonic
ACCEPT_BACKLOG = 65535
"""Listen backlog of the public port (the kernel caps it at ``net.core.somaxconn``):
after a gateway restart every client reconnects at once, and connections beyond
the backlog are dropped and retried by the client's TCP with backoff (1, 3, 7, 15
s...), which makes the storm last seconds longer."""
FIRST_CONN_ID_LIMIT = 2**31
"""Connection ids of a new gateway process start at a random id below this."""
CLOSE_REASONS = (
    "client_close",
    "client_gone",
    "heartbeat_timeout",
    "send_buffer_limit",
    "size_limit",
    "protocol_error",
    "app_close",
    "shutdown",
)
"""Why WebSocket clients closed (metrics, ``closed_by_reason``); see
docs/observability.md."""


def first_conn_id() -> int:
    """A random first connection id in ``[1, 2**31)``: the client_ids of a restarted
    gateway process (same ip and port) do not repeat those of its previous life,
    whose holders may still address them."""
    return secrets.randbelow(FIRST_CONN_ID_LIMIT - 1) + 1


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
        sock.listen(ACCEPT_BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise OSError(
            exc.errno,
            f"cannot bind {host}:{port}: {exc.strerror or exc}; is another process using it?",
        ) from None
    return sock


class GatewayServer(LinkHandling, Commands, Sweeps):
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
        self.directory: Directory[ClientConnection] = Directory(self.routes_dirty)
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
        self._next_conn_id = first_conn_id() - 1
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
        # metrics (docs/observability.md)
        self.connections_opened = self.broadcast_deliveries = 0
        self.closed_by_reason = dict.fromkeys(CLOSE_REASONS, 0)
        self.handshake_failures: dict[str, int] = {}  # HTTP status -> count
        self._commands: dict[Cmd, Callable[[InternalLink, list[Any]], None]] = {}
        self._queries: dict[Cmd, Callable[..., Any]] = {}
        for cmd in Cmd:
            name = cmd.name.lower()
            if name.startswith("q_"):
                self._queries[cmd] = getattr(self, "query_" + name[2:])
            elif hasattr(self, "cmd_" + name):
                self._commands[cmd] = getattr(self, "cmd_" + name)
        # PHP GatewayClient links share the internal port (gateway.phplink).
        self.php_links = PhpLinks(
            config.secret, self._commands, self._queries, lambda: InternalLink(self)
        )

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
        self._announcer = GatewayAnnouncer(
            cfg.registers, cfg.secret, self.internal_address, keepalive=cfg.keepalive_interval
        )
        await self._announcer.start()
        bound = self._internal_sock.getsockname()[0] if self._internal_sock else ""
        if not cfg.secret and not is_loopback(bound):
            log.warning(
                "internal port %s:%d has no secret and listens beyond this host: anyone "
                "who reaches it can push to every client; set secret= (or GW_SECRET)",
                bound,
                self.internal_port,
            )
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
            self.php_links.accept, sock=self._internal_sock
        )
        self._public_server = await self.loop.create_server(
            lambda: ClientConnection(self), sock=self._public_sock, backlog=ACCEPT_BACKLOG
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
        self.php_links.close_all()
        await self._withdraw()
        log.info(
            "gateway %s.%d stopped (%s)",
            self.config.name,
            self.index,
            "graceful" if graceful else "now",
        )

    async def _withdraw(self, timeout: float = 2.0) -> None:
        """Withdraw from the registers, bounded: a register connection that does not
        end in ``timeout`` must not hold the process (its clients queue meanwhile on
        the public socket, which the master keeps open)."""
        if self._announcer is None:
            return
        try:
            async with asyncio.timeout(timeout):
                await self._announcer.close()
        except TimeoutError:
            log.warning("withdrawing from the registers took over %g s; stopping anyway", timeout)

    async def _close_clients_gracefully(self) -> None:
        for conn in list(self.directory.entries()):
            conn.close_ws(1001, "going away")
        deadline = _monotonic() + self.stop_timeout
        while len(self.directory) and _monotonic() < deadline:
            await asyncio.sleep(0.02)

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
            # metrics (docs/observability.md)
            "connections_opened": self.connections_opened,
            "closed_by_reason": self.closed_by_reason,
            "handshake_failures": self.handshake_failures,
            "broadcast_deliveries": self.broadcast_deliveries,
            **self._send_buffers(),
        }

    def _send_buffers(self) -> dict[str, int]:
        """Bytes queued for clients in our transports, summed and the largest."""
        total = largest = 0
        for conn in self.directory.entries():
            size = conn.transport.get_write_buffer_size()
            total += size
            largest = max(largest, size)
        return {"send_buffer_bytes": total, "send_buffer_max_bytes": largest}

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
            status = str(exc.status)  # metrics
            self.handshake_failures[status] = self.handshake_failures.get(status, 0) + 1
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
        self.connections_opened += 1  # metrics
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
        """Ids count up from a random start (:func:`first_conn_id`), so a restarted
        gateway does not hand out the client_ids of its previous life; after 2**32-1
        they wrap to 1, skipping ids still in use."""
        conn_id = self._next_conn_id
        while True:
            conn_id = conn_id + 1 if conn_id < MAX_CONN_ID else 1
            if conn_id not in self.directory:
                self._next_conn_id = conn_id
                return conn_id

    def _answer_http(self, conn: ClientConnection, request: wsproto.Request) -> None:
        """Serve a plain HTTP request from ``static_dir`` and close."""
        conn.end(static_response(self._static_root, request))

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
            # metrics: a client that went without a reason of ours or a close frame
            reason = conn.close_reason or ("shutdown" if self._stopping else "client_gone")
            self.closed_by_reason[reason] = self.closed_by_reason.get(reason, 0) + 1
            self.emit(conn, Cmd.EV_CLOSE, None)
            self.directory.remove(conn.conn_id)

    def on_slow_client(self, conn: ClientConnection) -> None:
        """A client's send buffer passed ``send_buffer_limit``: close it (1008)."""
        if conn.state != S_OPEN:
            return
        self.send_failures += 1
        conn.close_reason = conn.close_reason or "send_buffer_limit"  # metrics
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


def serve(spec: ChildSpec) -> int:
    """Entry point of a gateway child process (see ``runtime.spec``)."""
    from pygatewayworker.runtime.service import run_service

    server = GatewayServer(
        spec.config, spec.index, spec.sockets.get("public"), spec.sockets.get("internal")
    )
    return run_service(spec, server)
