"""The register process: gateways announce their internal address, workers and push
clients subscribe to the list.

How this works
--------------
Every accepted TCP connection gets a :class:`_Connection` (an asyncio protocol) that
feeds its bytes to a :class:`register.lines.LineDecoder` and hands each document to
the server, which dispatches on the event name to ``on_<event>``:

- ``gateway_connect`` (right secret): the address is listed while this connection is
  open. A new connection announcing the same address takes it over; when the holder
  closes, another open connection announcing it (if any) keeps it listed.
- ``worker_connect`` (right secret): the connection becomes a subscriber and gets the
  whole list now and after every change.
- ``ping``: answered ``pong``.

Anything else (wrong secret, garbage, oversized line, unknown event, a second
handshake) gets an ``error`` document, then close, and a log line; nobody else is
affected. One sweep (not a timer per connection) closes connections that did not
complete a handshake within ``handshake_timeout`` and connections silent for
``idle_timeout`` after it (peers ping every 10 s).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import socket
import time
from typing import TYPE_CHECKING, Any, cast

from pygatewayworker.register import lines
from pygatewayworker.register.config import Register, is_loopback, parse_address
from pygatewayworker.runtime.ratelog import RateLimitedLog
from pygatewayworker.runtime.service import run_service
from pygatewayworker.runtime.spec import ChildSpec

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["RegisterServer", "serve"]

logger = logging.getLogger("register")

MAX_WRITE_BUFFER = 1024 * 1024
"""A peer that lets this much of our output pile up unread is dropped."""


class _Connection(asyncio.Protocol):
    """One peer of the register: a gateway, a subscriber, or not yet known."""

    __slots__ = (
        "server",
        "transport",
        "decoder",
        "peer",
        "role",
        "address",
        "opened",
        "last_seen",
        "closing",
        "idle_timeout",
    )

    def __init__(self, server: RegisterServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.decoder = lines.LineDecoder()
        self.peer = "?"
        self.idle_timeout = server.config.idle_timeout
        self.role = ""  # "", "gateway" or "worker"
        self.address = ""  # announced gateway address
        self.opened = self.last_seen = 0.0
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence a cast
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = f"{peer[0]}:{peer[1]}"
        self.server.add(self)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            docs = self.decoder.feed(data)
        except lines.LineError as exc:
            self.server.reject(self, str(exc))
            return
        for doc in docs:
            if self.closing:
                break
            self.server.handle(self, doc)

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.forget(self)

    def send(self, line: bytes) -> None:
        """Write one encoded line; drop a peer that does not read what we send."""
        transport = self.transport
        if transport is None or self.closing:
            return
        transport.write(line)
        if transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            self.server.reject(self, "not reading (output buffer full)", notify=False)

    def close(self, abort: bool = False) -> None:
        """Close (flushing what was written, unless ``abort``)."""
        self.closing = True
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()

    def linger_close(self, seconds: float = 1.0) -> None:
        """Half-close after what was written and discard further input for a moment.

        Closing a socket that still has unread input makes the kernel send a reset,
        which can destroy the error document we just wrote before the peer reads it.
        """
        self.closing = True
        self.server.forget(self)  # unlist now, not when the lingering ends
        transport = self.transport
        if transport is None:
            return
        try:
            if transport.can_write_eof():
                transport.write_eof()
        except (OSError, RuntimeError):
            transport.abort()
            return
        asyncio.get_running_loop().call_later(seconds, transport.close)


class RegisterServer:
    """The register service (see the module docstring and ``docs/architecture.md``).

    ``sock`` is a listening socket bound by the master (or a test); without it,
    ``start`` binds ``config.listen`` (port 0 allowed; read :attr:`port` after start).
    """

    def __init__(self, config: Register, sock: socket.socket | None = None) -> None:
        self.config = config
        self._sock = sock
        self._secret = config.secret.encode("utf-8")
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._conns: set[_Connection] = set()
        self._gateways: dict[str, _Connection] = {}  # address -> connection holding it
        self._subscribers: set[_Connection] = set()
        self._list_line = lines.broadcast_addresses([])
        self._rejected = 0
        self._reject_log = RateLimitedLog(logger=logger)
        """Refused peers: a flood of them makes a count per window, not a line each."""
        self._started = time.monotonic()
        self.port = 0
        self._handlers: dict[str, Callable[[_Connection, dict[str, Any]], None]] = {
            event: getattr(self, "on_" + event) for event in lines.CLIENT_EVENTS
        }

    # ---- Service protocol ----------------------------------------------------------

    async def start(self) -> None:
        """Listen (on the given socket or ``config.listen``) and start the sweep."""
        loop = asyncio.get_running_loop()
        if self._sock is not None:
            self._server = await loop.create_server(lambda: _Connection(self), sock=self._sock)
        else:
            host, port = parse_address(self.config.listen, "Register listen")
            self._server = await loop.create_server(
                lambda: _Connection(self), host, port, reuse_address=True
            )
        self.port = self._server.sockets[0].getsockname()[1]
        self._started = time.monotonic()
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="register-sweep")
        bound = self._server.sockets[0].getsockname()[0]
        if not self.config.secret and not is_loopback(bound):
            logger.warning(
                "register listens on %s:%s with no secret: anyone who reaches it can "
                "announce a gateway; set secret= (or GW_SECRET)",
                bound,
                self.port,
            )
        logger.info("register %s listening on port %s", self.config.name, self.port)

    async def stop(self, graceful: bool) -> None:
        """Stop listening and close every connection (``graceful`` flushes output)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            conn.close(abort=not graceful)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        await asyncio.sleep(0)  # let connection_lost callbacks run
        logger.info("register %s stopped", self.config.name)

    def stats(self) -> dict[str, Any]:
        """Counters for ``status``."""
        return {
            "gateways": len(self._gateways),
            "subscribers": len(self._subscribers),
            "connections": len(self._conns),
            "rejected": self._rejected,
            "uptime": round(time.monotonic() - self._started, 3),
            "peers": self._peers(),  # metrics: connections by kind
        }

    def _peers(self) -> dict[str, int]:
        """Open connections by kind: ``gateway``, ``subscriber`` (business workers and
        push clients) and ``pending`` (no handshake yet)."""
        kinds = {"gateway": 0, "subscriber": 0, "pending": 0}
        for conn in self._conns:
            kind = (
                "pending" if not conn.role else "subscriber" if conn.role == "worker" else "gateway"
            )
            kinds[kind] += 1
        return kinds

    @property
    def addresses(self) -> list[str]:
        """The gateway addresses listed now, sorted."""
        return sorted(self._gateways)

    # ---- connection bookkeeping ----------------------------------------------------

    def add(self, conn: _Connection) -> None:
        """A connection was accepted: start its handshake clock."""
        conn.opened = conn.last_seen = asyncio.get_running_loop().time()
        self._conns.add(conn)

    def forget(self, conn: _Connection) -> None:
        """A connection is gone: unlist what it held."""
        self._conns.discard(conn)
        self._subscribers.discard(conn)
        if conn.role == "gateway" and self._gateways.get(conn.address) is conn:
            heir = self._heir(conn.address)
            if heir is None:
                del self._gateways[conn.address]
                logger.info(
                    "gateway %s left (connection from %s closed)",
                    conn.address,
                    conn.peer,
                    extra={"gateway": conn.address},  # JSON logs
                )
                self._publish()
            else:
                self._gateways[conn.address] = heir

    def _heir(self, address: str) -> _Connection | None:
        """Another open connection announcing ``address``, if any."""
        for other in self._conns:
            if other.role == "gateway" and other.address == address and not other.closing:
                return other
        return None

    def reject(self, conn: _Connection, reason: str, notify: bool = True) -> None:
        """Refuse ``conn``: send an error document (if ``notify``), close, log."""
        if conn.closing:
            return
        self._rejected += 1
        self._reject_log(
            logging.WARNING, "register %s: closing %s: %s", self.config.name, conn.peer, reason
        )
        if notify:
            conn.send(lines.error(reason))
            conn.linger_close()
        else:
            conn.close(abort=True)

    def handle(self, conn: _Connection, doc: dict[str, Any]) -> None:
        """Dispatch one document to ``on_<event>``."""
        try:
            event = lines.event_of(doc)
            handler = self._handlers.get(event)
            if handler is None:
                raise lines.LineError(f"unknown event {lines.shorten(event)}")
            handler(conn, doc)
        except lines.LineError as exc:
            self.reject(conn, str(exc))
            return
        conn.last_seen = asyncio.get_running_loop().time()

    def _check_handshake(self, conn: _Connection, secret: str) -> bool:
        if conn.role:
            self.reject(conn, f"already connected as {conn.role}")
            return False
        if not hmac.compare_digest(secret.encode("utf-8"), self._secret):
            self.reject(conn, "wrong secret key")
            return False
        return True

    # ---- events --------------------------------------------------------------------

    @staticmethod
    def _adopt_keepalive(conn: _Connection, keepalive: float | None) -> None:
        """A peer that declared its ping interval is dropped after three silent
        intervals: a gateway whose host vanished leaves the list as fast as the links
        to it are dropped, instead of after the register's own ``idle_timeout``."""
        if keepalive is not None:
            conn.idle_timeout = max(1.0, 3 * keepalive)

    def on_gateway_connect(self, conn: _Connection, doc: dict[str, Any]) -> None:
        """A gateway announces its internal address."""
        address, secret = lines.check_gateway_connect(doc)
        keepalive = lines.keepalive_of(doc)
        if not self._check_handshake(conn, secret):
            return
        self._adopt_keepalive(conn, keepalive)
        conn.role, conn.address = "gateway", address
        previous = self._gateways.get(address)
        self._gateways[address] = conn
        if previous is None:
            logger.info(
                "gateway %s joined (from %s)", address, conn.peer, extra={"gateway": address}
            )
            self._publish()
        else:
            logger.info(
                "gateway %s re-announced from %s (was %s)", address, conn.peer, previous.peer
            )

    def on_worker_connect(self, conn: _Connection, doc: dict[str, Any]) -> None:
        """A business worker or push client subscribes to the list."""
        secret = lines.check_worker_connect(doc)
        keepalive = lines.keepalive_of(doc)
        if not self._check_handshake(conn, secret):
            return
        self._adopt_keepalive(conn, keepalive)
        conn.role = "worker"
        self._subscribers.add(conn)
        logger.debug("subscriber %s connected", conn.peer)
        conn.send(self._list_line)

    def on_ping(self, conn: _Connection, doc: dict[str, Any]) -> None:
        """Keep-alive."""
        conn.send(lines.PONG)

    def _publish(self) -> None:
        """Encode the list once and push it to every subscriber."""
        self._list_line = lines.broadcast_addresses(sorted(self._gateways))
        for conn in list(self._subscribers):
            conn.send(self._list_line)

    # ---- the sweep -----------------------------------------------------------------

    async def _sweep_forever(self) -> None:
        config = self.config
        interval = max(0.02, min(1.0, config.handshake_timeout / 4, config.idle_timeout / 4))
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            self.sweep(loop.time())

    def sweep(self, now: float) -> None:
        """Close connections without a handshake in time, or silent for too long."""
        handshake_deadline = now - self.config.handshake_timeout
        self._reject_log.flush()
        for conn in list(self._conns):
            if conn.closing:
                continue
            if not conn.role and conn.opened < handshake_deadline:
                self.reject(conn, f"no handshake within {self.config.handshake_timeout:g} s")
            elif conn.last_seen < now - conn.idle_timeout:
                self.reject(conn, f"silent for more than {conn.idle_timeout:g} s")


def serve(spec: ChildSpec) -> int:
    """Child entry point: run one register process until it is told to stop."""
    server = RegisterServer(spec.config, spec.sockets.get("listen"))
    # A few lines a second: asyncio's own loop serves it, without uvloop's memory.
    return int(run_service(spec, server, fast_loop=False))
