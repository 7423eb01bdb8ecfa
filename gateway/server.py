"""The gateway process: lifecycle and timers around the core.

How this works
--------------
One :class:`GatewayServer` per gateway process. It binds (or is given) two sockets
and builds the pieces:

- the **core** (``gateway.core.GatewayCore``): every decision (clients, workers,
  commands, routes, heartbeat), no I/O;
- the **public** port, where every client connection is a
  ``gateway.connection.ClientConnection`` speaking ``gateway.websocket`` (over TLS
  when the config names a ``certfile``: ``wss://`` and the static page over https);
- the **internal** port, where every business worker and push client is a
  ``gateway.links.InternalLink`` speaking ``gateway.protocol``. PHP apps'
  GatewayClient connects there too: ``gateway.phplink`` tells its links from ours
  by their first bytes and carries their commands out through the core's handlers.

There are no per-connection tasks or timers. Two tasks walk the tables instead: the
**heartbeat** (when ``ping_interval`` > 0) calls ``GatewayCore.heartbeat`` in
:data:`HEARTBEAT_SLICES` steps per interval, so that a gateway with 100k idle clients
writes 10k pings every tenth of an interval instead of 100k at once; the
**housekeeping** tick (about a second, shorter for tight link timings) drops clients
past their handshake or close deadline (``ClientPort.sweep``) and lets the core
expire held events and look after the links (``GatewayCore.tick``).

:meth:`GatewayServer.start` and :meth:`GatewayServer.stop` make it a ``Service``
for ``runtime.service.run_service``; :func:`serve` is the child's entry point.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import time
from typing import Any

from pygatewayworker.gateway.config import Gateway
from pygatewayworker.gateway.connection import ClientConnection, ClientPort
from pygatewayworker.gateway.core import GatewayCore
from pygatewayworker.gateway.directory import Directory
from pygatewayworker.gateway.fdwatch import FdWatch
from pygatewayworker.gateway.links import InternalLink
from pygatewayworker.gateway.phplink import PhpLinks
from pygatewayworker.gateway.records import Client
from pygatewayworker.register.config import is_loopback, parse_address
from pygatewayworker.register.discovery import GatewayAnnouncer
from pygatewayworker.runtime.gcfreeze import FrozenHeap
from pygatewayworker.runtime.spec import ChildSpec

__all__ = [
    "GatewayServer",
    "bind_socket",
    "tls_context",
    "serve",
    "HEARTBEAT_SLICES",
    "ACCEPT_BACKLOG",
]

log = logging.getLogger("gateway")

_monotonic = time.monotonic
ACCEPT_BACKLOG = 65535
"""Listen backlog of the public and internal ports (the kernel caps it at
``net.core.somaxconn``): after a gateway restart every client reconnects at once,
and connections beyond the backlog are dropped and retried by the client's TCP with
backoff (1, 3, 7, 15 s...), which makes the storm last seconds longer. On the
internal port, PHP's GatewayClient opens a connection per call by default: with
asyncio's default of 100, a moment of load cost PHP requests a second each."""
HEARTBEAT_SLICES = 10
"""The heartbeat sweeps a tenth of the clients every tenth of ``ping_interval``."""


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


def tls_context(config: Gateway) -> ssl.SSLContext | None:
    """The TLS context of the public port (``certfile``/``keyfile``), or ``None``.
    Built in the child (a context cannot cross a process boundary); a bad file
    raises ``OSError``/``ssl.SSLError`` at start, with the path in the message."""
    if not config.certfile:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.certfile, config.keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise OSError(
            f"cannot load the TLS certificate {config.certfile} / key {config.keyfile}: {exc}"
        ) from None
    context.set_alpn_protocols(["http/1.1"])
    return context


class GatewayServer:
    """One gateway process: public WebSocket port, internal port, and the core.
    Implements the ``Service`` protocol (``start``/``stop``/``stats``)."""

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
        self.core = GatewayCore(config, index)
        self.client_port = ClientPort(self.core.clients, flush_routes=self._flush_routes)
        self.core.send_buffers = self.client_port.send_buffers  # stats (metrics)
        self.fd_watch = FdWatch()
        self.heap: FrozenHeap | None = None
        """Set in a gateway process (:func:`serve`): what survives a housekeeping
        tick is frozen, so the collector's pauses stay short (``runtime.gcfreeze``)."""
        self._public_sock = public_sock
        self._internal_sock = internal_sock
        self._public_server: asyncio.Server | None = None
        self._internal_server: asyncio.Server | None = None
        self._announcer: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        # PHP GatewayClient links share the internal port (gateway.phplink).
        self.php_links = PhpLinks(
            config.secret, self.core.handlers, self.core.queries, self._internal_link
        )

    @property
    def directory(self) -> Directory[Client]:
        """The core's directory of clients."""
        return self.core.directory

    @property
    def public_port(self) -> int:
        return self.core.public_port

    @property
    def internal_port(self) -> int:
        return self.core.internal_port

    @property
    def internal_address(self) -> str:
        return self.core.internal_address

    # ---- lifecycle ---------------------------------------------------------------
    async def start(self) -> None:
        """Bind (unless sockets were given), listen, start the timers and announce
        this gateway to the registers. Raises ``OSError`` when a port is taken."""
        cfg = self.config
        self._loop = loop = asyncio.get_running_loop()
        loop.set_exception_handler(self.fd_watch.exception_handler)
        self.core.defer = loop.call_soon
        self.core.started = _monotonic()
        if cfg.static_dir:
            self.client_port.static_root = root = os.path.realpath(cfg.static_dir)
            if not os.path.isdir(root):
                log.warning("static_dir %s is not a directory: every GET gets 404", cfg.static_dir)
        try:
            await self._listen(loop)
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

    async def _listen(self, loop: asyncio.AbstractEventLoop) -> None:
        cfg = self.config
        if self._public_sock is None:
            host, port = parse_address(cfg.listen, "Gateway listen")
            self._public_sock = bind_socket(host, port, reuse_port=True)
        if self._internal_sock is None:
            host, port = cfg.internal_bind_address(self.index)
            self._internal_sock = bind_socket(host, port if cfg.start_port else 0, False)
        if cfg.send_socket_buffer:
            # Accepted sockets inherit the listener's SO_SNDBUF (Linux and the BSDs):
            # set once here, not per connection (a syscall, plus uvloop making a
            # socket object for get_extra_info, on every connect).
            self._public_sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, cfg.send_socket_buffer
            )
        core, client_port = self.core, self.client_port
        self._internal_server = await loop.create_server(
            self.php_links.accept, sock=self._internal_sock, backlog=ACCEPT_BACKLOG
        )
        self._public_server = await loop.create_server(
            lambda: ClientConnection(client_port),
            sock=self._public_sock,
            backlog=ACCEPT_BACKLOG,
            ssl=tls_context(cfg),
            ssl_handshake_timeout=ClientPort.handshake_timeout if cfg.certfile else None,
        )
        core.public_port = self._public_sock.getsockname()[1]
        core.internal_port = self._internal_sock.getsockname()[1]

    async def stop(self, graceful: bool = True) -> None:
        """Stop accepting; close every client (graceful: close frame 1001 and a
        bounded wait; else at once); tell workers (``EV_CLOSE``); hand on held
        events, close the links and withdraw from the registers."""
        if self._stopping or self._loop is None:
            return
        self._stopping = True
        self.client_port.accepting = self.core.accepting = False
        for server in (self._public_server, self._internal_server):
            if server is not None:
                server.close()
        for conn in list(self.client_port.handshaking):
            conn.abort()
        if graceful:
            await self._close_clients_gracefully()
        self.client_port.abort_all()
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
        self.core.clients.close_all(1001, "going away")
        deadline = _monotonic() + self.stop_timeout
        while len(self.core.directory) and _monotonic() < deadline:
            await asyncio.sleep(0.02)

    async def _close_links(self, timeout: float = 2.0) -> None:
        """Close every link after flushing what is queued (EV_CLOSE events). Events
        held for leaving workers are handed on first, while the links are open."""
        core = self.core
        core.release_held()
        for link in list(core.links):
            link.writer.close()
        deadline = _monotonic() + timeout
        while core.links and _monotonic() < deadline:
            await asyncio.sleep(0.01)
        for link in list(core.links):
            link.writer.abort()

    def _flush_routes(self) -> None:
        """Announce the uid and groups a handshake bound (a token's or the
        ``authenticate`` hook's) and write them to the links now, before the ``101``
        that goes straight to the client: links queue to the end of the loop turn,
        and a push client that saw the ``101``'s effects (the browser told the
        backend) before the ``ROUTES`` would drop a ``send_to_uid`` to it."""
        self.core.send_route_changes()
        for link in self.core.links:
            if isinstance(link.writer, InternalLink):
                link.writer.flush()

    def _internal_link(self) -> InternalLink:
        """A new link on the internal port (the factory ``php_links`` calls)."""
        assert self._loop is not None, "links arrive only once started"
        return InternalLink(self.core, self._loop)

    def stats(self) -> dict[str, Any]:
        """Counters for ``status`` (the same as ``Q_STATS``), and the frozen heap's."""
        stats = self.core.stats()
        if self.heap is not None:
            stats.update(self.heap.stats())
        return stats

    # ---- timers --------------------------------------------------------------------
    async def _heartbeat(self) -> None:
        """Run ``GatewayCore.heartbeat`` in :data:`HEARTBEAT_SLICES` steps per
        ``ping_interval``: each step sweeps the clients whose ``conn_id %
        HEARTBEAT_SLICES`` is that step's number, so each client is still swept
        exactly once per interval, but a large gateway never writes all its pings at
        once (100k at once stall deliveries for about a second on a small machine)."""
        step = self.config.ping_interval / HEARTBEAT_SLICES
        part = 0
        while True:
            await asyncio.sleep(step)
            try:
                core = self.core
                core.pacer.start(core.clients.heartbeat_sweep(part, HEARTBEAT_SLICES))
            except Exception:  # never let one bad sweep stop the heartbeat
                log.exception("heartbeat sweep failed")
            part = (part + 1) % HEARTBEAT_SLICES

    async def _housekeeping(self) -> None:
        cfg = self.config
        tick = max(0.02, min(1.0, cfg.keepalive_interval / 2, cfg.link_timeout / 4))
        while True:
            due = _monotonic() + tick
            await asyncio.sleep(tick)
            now = _monotonic()
            try:
                self.sweep_housekeeping(now, max(0.0, now - due))
            except Exception:
                log.exception("housekeeping sweep failed")

    def sweep_housekeeping(self, now: float, late: float = 0.0) -> None:
        """Deadlines of handshakes and closes, held events, link upkeep (``late``:
        how long the loop was stalled past this sweep's due time)."""
        self.client_port.sweep(now)
        self.core.tick(now, late)
        port = self.client_port
        self.fd_watch.check(
            now,
            len(self.core.directory)
            + len(self.core.links)
            + len(port.handshaking)
            + len(port.authenticating)
            + len(port.closing),
        )
        if self.heap is not None:
            counters = self.core.counters
            self.heap.tick(
                counters.messages_in + counters.messages_out + counters.connections_opened
            )


def serve(spec: ChildSpec) -> int:
    """Entry point of a gateway child process (see ``runtime.spec``)."""
    from pygatewayworker.runtime.service import run_service

    server = GatewayServer(
        spec.config, spec.index, spec.sockets.get("public"), spec.sockets.get("internal")
    )
    server.heap = FrozenHeap()
    return run_service(spec, server)
