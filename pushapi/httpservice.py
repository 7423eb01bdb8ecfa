"""An HTTP/1.1 role process on asyncio streams: what the push API and the Pusher HTTP
API share.

How this works
--------------
:class:`HttpService` is the lifecycle of a process that answers HTTP requests with
calls on an :class:`~gatewayclient.AsyncGatewayClient`. It listens (on a socket the
caller bound, or it binds ``config.listen``), serves each connection in one
coroutine, request after request (keep-alive; a pipelined request waits its turn),
and the bytes go through a :class:`~pushapi.http.HttpConnection` (h11, no I/O). A
subclass says what a request means, in two methods:

- :meth:`~HttpService.admit` checks a request's head *before* its body is read
  (method, credentials, content type, size); it raises :class:`HttpError` to refuse;
- :meth:`~HttpService.answer` turns a complete request into its response's bytes.

What every such process gets from here, the same way:

- limits: a head over 16 KiB gets 431, malformed input its status (400, 501,
  505...), one log line, and the connection closes (after reading and dropping what
  the peer still sends for a moment, so the answer is not lost to a reset);
- time: one sweep per second closes a connection that has waited more than
  ``idle_timeout`` for its next complete request, which also bounds slow senders (a
  request dribbled a byte at a time gets 408 and one log line; an idle keep-alive
  connection is closed quietly);
- background tasks (the sweep, gateway discovery, any a subclass starts with
  :meth:`~HttpService.spawn`): referenced while they run, their errors logged, all
  cancelled by :meth:`~HttpService.stop`;
- ``stats()`` for ``status`` and the metrics role: connections, requests,
  failures, gateways linked, requests by label (:meth:`~HttpService.request_label`)
  and status, and a histogram of request times (head read -> answer written).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from pygatewayworker.gatewayclient.client import AsyncGatewayClient
from pygatewayworker.gatewayclient.errors import GatewayError
from pygatewayworker.pushapi.http import HttpConnection, HttpError, PeerClosed, Request
from pygatewayworker.register.config import parse_address
from pygatewayworker.runtime.histogram import Histogram
from pygatewayworker.runtime.sockets import bind_listener

__all__ = ["HttpService", "HttpRoleConfig", "SWEEP_INTERVAL"]

T = TypeVar("T")

SWEEP_INTERVAL = 1.0
READ_SIZE = 64 * 1024
LINGER_SECONDS = 2.0
LINGER_BYTES = 4 * 1024 * 1024
"""After a refusal, at most this long and this much of the peer's input is read and
dropped before the connection closes (see ``HttpService._linger``)."""


class HttpRoleConfig(Protocol):
    """What :class:`HttpService` reads of its role's declaration."""

    listen: str
    secret: str
    name: str
    count: int
    timeout: float
    idle_timeout: float
    app: str

    @property
    def registers(self) -> tuple[str, ...]: ...


@dataclass(slots=True, eq=False)
class _Connection:
    """One HTTP connection; ``waiting_since`` is set while a request is being read,
    ``timed_out`` once the sweep closed it."""

    writer: asyncio.StreamWriter
    http: HttpConnection
    waiting_since: float | None
    timed_out: bool = False
    path: str = ""  # metrics: the request being served, since ``started``
    started: float = 0.0

    @property
    def peer(self) -> Any:
        return self.writer.get_extra_info("peername")


class HttpService:
    """The service of one HTTP role process (see the module docstring).

    ``sock``: a listening socket bound by the caller; otherwise :meth:`start` binds
    ``config.listen``. ``client``: the push client to use (by default one built from
    the config, closed by :meth:`stop`). Subclasses set :attr:`label` and
    :attr:`log` and implement :meth:`admit` and :meth:`answer`.
    """

    label = "HTTP API"
    """How log lines name the service (``"push API"``)."""
    log = logging.getLogger("pushapi")
    plain_errors = False
    """Refusals in plain text rather than ``{"ok": false, "error": ...}``."""

    def __init__(
        self,
        config: HttpRoleConfig,
        sock: socket.socket | None = None,
        client: Any = None,
    ) -> None:
        self.config = config
        self._sock = sock
        self._own_client = client is None
        self.client = client or self.new_client()
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.requests = 0
        self.errors = 0
        self.requests_by: dict[str, dict[str, int]] = {}  # metrics: label -> status -> n
        self.request_seconds = Histogram()  # metrics: head read -> answer written

    def new_client(self, **options: Any) -> AsyncGatewayClient:
        """The push client made when none is given (``options``: a subclass's more)."""
        config = self.config
        return AsyncGatewayClient(
            register=list(config.registers),
            secret=config.secret,
            timeout=config.timeout,
            name=f"{config.app or 'app'}.{config.name}",
            **options,
        )

    # ---- what a subclass says -------------------------------------------------------

    def admit(self, request: Request) -> None:
        """Check a request's head before its body is read; raise :class:`HttpError`
        to refuse it."""

    async def answer(
        self, http: HttpConnection, request: Request, body: bytes
    ) -> tuple[int, bytes]:
        """The status and bytes of the response to a complete request
        (``http.respond(...)``)."""
        raise NotImplementedError

    def request_label(self, path: str) -> str:
        """The metrics label of a request to ``path`` (from a fixed set, so that a
        caller cannot grow the label set): ``"other"`` unless a subclass knows it."""
        return "other"

    # ---- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Listen, start the idle sweep and begin discovery in the background."""
        sock = self._sock or self._bind()
        self._server = await asyncio.start_server(self._serve, sock=sock)
        self.spawn(self._sweep(), "idle sweep")
        self.spawn(self._connect(), "gateway discovery")
        self.log.info("%s listening on http://%s:%s", self.label, *self.address)

    def _bind(self) -> socket.socket:
        host, port = parse_address(self.config.listen)
        what = f"app {self.config.app or '?'} {self.label} {self.config.name!r}"
        return bind_listener(host, port, what, reuse_port=self.config.count > 1)

    def spawn(self, work: Coroutine[Any, Any, Any], what: str) -> asyncio.Task[Any]:
        """Run ``work`` in the background until it ends or :meth:`stop` cancels it;
        an error it raises is logged with ``what``."""
        task = asyncio.get_running_loop().create_task(work, name=f"{self.label}: {what}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("%s failed", task.get_name(), exc_info=task.exception())

    async def _connect(self) -> None:
        try:
            await self.client.connect()
        except GatewayError as exc:
            self.log.warning(
                "%s: gateways not reachable yet (%s); retrying on requests", self.label, exc
            )

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``."""
        assert self._server is not None and self._server.sockets
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def stop(self, graceful: bool) -> None:
        """Stop listening, close every connection, cancel the background tasks, close
        the push client (when it is ours)."""
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.writer.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # errors: see _task_done
        if self._own_client:
            await self.client.close()

    def stats(self) -> dict[str, Any]:
        """Counters for ``start.py status``."""
        return {
            "connections": len(self._connections),
            "messages_in": self.requests,
            "send_failures": self.errors,
            "gateways": len(getattr(self.client, "gateways", ())),
            "requests_by": self.requests_by,  # metrics (docs/observability.md)
            "request_seconds": self.request_seconds.snapshot(),
        }

    def _count(self, conn: _Connection, status: int) -> None:
        """metrics: one answered request."""
        by_status = self.requests_by.setdefault(self.request_label(conn.path), {})
        by_status[str(status)] = by_status.get(str(status), 0) + 1
        self.request_seconds.observe(time.monotonic() - conn.started if conn.path else 0.0)

    async def _sweep(self) -> None:
        limit = self.config.idle_timeout
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = time.monotonic()
            for conn in list(self._connections):
                if conn.waiting_since is not None and now - conn.waiting_since > limit:
                    self._time_out(conn, limit)

    def _time_out(self, conn: _Connection, limit: float) -> None:
        """Close a connection that did not complete a request within ``limit``: 408
        and a log line when part of a request came, quietly when it was idle."""
        conn.timed_out = True
        conn.waiting_since = None
        if conn.http.partial:
            self.errors += 1
            self.log.info(
                "%s closed a connection from %s: no complete request within %g s",
                self.label,
                conn.peer,
                limit,
            )
            conn.writer.write(
                conn.http.refuse(HttpError(408, f"request not complete within {limit:g} s"))
            )
            self._count(conn, 408)
        conn.writer.close()

    # ---- one connection --------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Connection(writer, HttpConnection(plain=self.plain_errors), time.monotonic())
        self._connections.add(conn)
        try:
            while await self._serve_one(reader, conn):
                conn.waiting_since = time.monotonic()
        except HttpError as exc:
            self._refuse(conn, exc)
            await self._linger(reader, writer)
        except PeerClosed as exc:
            if exc.partial and not conn.timed_out:
                self.log.info(
                    "%s: %s closed the connection in the middle of a request",
                    self.label,
                    conn.peer,
                )
        except ConnectionError:
            pass  # the peer went away
        finally:
            self._connections.discard(conn)
            writer.close()

    async def _serve_one(self, reader: asyncio.StreamReader, conn: _Connection) -> bool:
        """Serve one request; return whether the connection stays open. Raises
        :class:`HttpError` for a request to refuse, :class:`PeerClosed` at the end."""
        http = conn.http
        conn.path = ""  # metrics
        request = await self._read(reader, http, http.next_request)
        conn.path, conn.started = request.path, time.monotonic()  # metrics
        self.admit(request)
        conn.writer.write(http.accept(request))
        body = await self._read(reader, http, http.next_body)
        conn.waiting_since = None
        self.requests += 1
        status, answer = await self.answer(http, request, body)
        conn.writer.write(answer)
        self._count(conn, status)
        await conn.writer.drain()
        return not http.must_close

    @staticmethod
    async def _read(
        reader: asyncio.StreamReader, http: HttpConnection, step: Callable[[], T | None]
    ) -> T:
        """Feed ``http`` until ``step()`` (its next head or body) is complete."""
        while (result := step()) is None:
            http.receive_data(await reader.read(READ_SIZE))
        return result

    @staticmethod
    async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """After a refusal: end our side, then read and drop what the peer still sends
        (a body we refused) for a moment. Closing with unread bytes makes the kernel
        send a reset, which can destroy our answer before the client reads it."""
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()
            async with asyncio.timeout(LINGER_SECONDS):
                dropped = 0
                while dropped < LINGER_BYTES and (chunk := await reader.read(READ_SIZE)):
                    dropped += len(chunk)

    def _refuse(self, conn: _Connection, exc: HttpError) -> None:
        self.errors += 1
        level = logging.WARNING if exc.status == 403 else logging.INFO  # someone probing
        self.log.log(
            level,
            "%s refused a request from %s: %s %s",
            self.label,
            conn.peer,
            exc.status,
            exc.message,
        )
        conn.writer.write(conn.http.refuse(exc))
        self._count(conn, exc.status)
