"""The push API process: HTTP/1.1 (h11) on asyncio streams in front of an AsyncGatewayClient.

How this works
--------------
One connection is served by one coroutine, request after request (keep-alive; a
pipelined request simply waits its turn). The bytes go through a
:class:`~pushapi.http.HttpConnection` (h11, no I/O). For each request: take the head,
check the method, the origin, the bearer token (``hmac.compare_digest``), the content
type and the body size *before* waiting for the body, read it, turn it into the
call's arguments (:mod:`pushapi.verbs`), call the
:class:`~gatewayclient.AsyncGatewayClient` method of the same name and answer
``{"ok": true, "result": ...}``. Failures answer ``{"ok": false, "error": "..."}``
with a status that says whose fault it is:

====  ===============================================================
400   malformed JSON, unknown verb, bad or missing field, bad client_id
401   no ``Authorization: Bearer`` header (403: a wrong token)
403   an ``Origin`` header: the request comes from a web page
405   not a POST; 413 body over ``max_body``; 431 head over 16 KiB
408   a request not complete within ``idle_timeout`` (then the connection closes)
415   a ``Content-Type`` other than ``application/json``
502   a gateway answered the call with an error
503   no register answered / no gateway linked for this call
504   a gateway did not answer a query in time (``missing`` lists them)
====  ===============================================================

Why the origin and content type are checked: the API listens on loopback, but a web
page open in a browser on the same machine can reach loopback too (directly, or
through DNS rebinding under a name of its own). Browsers put an ``Origin`` header on
every POST a page makes, and a page can send ``application/json`` cross-origin only
after a CORS preflight that we never answer; backends send neither. The token is
required as well (:class:`~pushapi.config.PushAPI` refuses an empty one).

Malformed input (garbage, a head over 16 KiB, a missing ``Host``, a chunked body)
gets its status, one log line, and the connection closes; the process serves on.
Idle connections are closed by one sweep per second (no timer per connection): a
connection that has waited more than ``idle_timeout`` for its next complete request
is closed, which also bounds slow senders (a request dribbled a byte at a time gets
408 and one log line; an idle keep-alive connection is closed quietly).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import inspect
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pygatewayworker.gateway.client_id import InvalidClientId
from pygatewayworker.gatewayclient.client import AsyncGatewayClient
from pygatewayworker.gatewayclient.errors import GatewayError, QueryTimeout, RemoteError
from pygatewayworker.pushapi.config import PushAPI
from pygatewayworker.pushapi.http import HttpConnection, HttpError, PeerClosed, Request
from pygatewayworker.pushapi.verbs import VERBS, BadRequest, parse_call
from pygatewayworker.register.config import parse_address
from pygatewayworker.runtime.histogram import Histogram
from pygatewayworker.runtime.service import run_service
from pygatewayworker.runtime.sockets import bind_listener

__all__ = ["PushAPIServer", "serve", "status_of"]

log = logging.getLogger("pushapi")

T = TypeVar("T")

SWEEP_INTERVAL = 1.0
READ_SIZE = 64 * 1024
LINGER_SECONDS = 2.0
LINGER_BYTES = 4 * 1024 * 1024
"""After a refusal, at most this long and this much of the peer's input is read and
dropped before the connection closes (see ``PushAPIServer._linger``)."""
_UNAUTHORIZED_HEADERS = (("WWW-Authenticate", 'Bearer realm="pushapi"'),)


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


def status_of(exc: BaseException) -> int:
    """The HTTP status for an exception raised by a Gateway API call."""
    if isinstance(exc, BadRequest | InvalidClientId | ValueError | TypeError | OverflowError):
        return 400  # OverflowError: an integer msgpack cannot carry (e.g. in a session)
    if isinstance(exc, QueryTimeout):
        return 504
    if isinstance(exc, RemoteError):
        return 502
    if isinstance(exc, GatewayError):
        return 503
    return 500


class PushAPIServer:
    """The service of one push API process (also usable in tests with ``listen`` port 0).

    ``sock``: a listening socket bound by the caller; otherwise :meth:`start` binds
    ``config.listen``. ``client``: the push client to use (by default one built from
    the config, closed by :meth:`stop`).
    """

    def __init__(
        self,
        config: PushAPI,
        sock: socket.socket | None = None,
        client: AsyncGatewayClient | None = None,
    ) -> None:
        self.config = config
        self._sock = sock
        self._own_client = client is None
        self.client = client or AsyncGatewayClient(
            register=list(config.registers),
            secret=config.secret,
            timeout=config.timeout,
            name=f"{config.app or 'app'}.{config.name}",
            token_key=config.token_key,
        )
        self._token = config.token.encode()
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._tasks: list[asyncio.Task[Any]] = []
        self.requests = 0
        self.errors = 0
        self.requests_by: dict[str, dict[str, int]] = {}  # metrics: verb -> status -> n
        self.request_seconds = Histogram()  # metrics: head read -> answer written

    # ---- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Listen, start the idle sweep and begin discovery in the background."""
        sock = self._sock or self._bind()
        self._server = await asyncio.start_server(self._serve, sock=sock)
        self._tasks.append(asyncio.create_task(self._sweep()))
        self._tasks.append(asyncio.create_task(self._connect()))
        log.info("push API listening on http://%s:%s", *self.address)

    def _bind(self) -> socket.socket:
        host, port = parse_address(self.config.listen)
        what = f"app {self.config.app or '?'} push API {self.config.name!r}"
        return bind_listener(host, port, what, reuse_port=self.config.count > 1)

    async def _connect(self) -> None:
        try:
            await self.client.connect()
        except GatewayError as exc:
            log.warning("push API: gateways not reachable yet (%s); retrying on requests", exc)

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``."""
        assert self._server is not None and self._server.sockets
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def stop(self, graceful: bool) -> None:
        """Stop listening, close every connection and the push client."""
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.writer.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._own_client:
            await self.client.close()

    def stats(self) -> dict[str, Any]:
        """Counters for ``start.py status``."""
        return {
            "connections": len(self._connections),
            "messages_in": self.requests,
            "send_failures": self.errors,
            "gateways": len(self.client.gateways),
            "requests_by": self.requests_by,  # metrics (docs/observability.md)
            "request_seconds": self.request_seconds.snapshot(),
        }

    def _count(self, conn: _Connection, status: int) -> None:
        """metrics: one answered request (a path that is not a verb counts as
        ``other``, so a caller cannot grow the label set)."""
        verb = conn.path.strip("/")
        by_status = self.requests_by.setdefault(verb if verb in VERBS else "other", {})
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
            log.info(
                "push API closed a connection from %s: no complete request within %g s",
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
        conn = _Connection(writer, HttpConnection(), time.monotonic())
        self._connections.add(conn)
        try:
            while await self._serve_one(reader, conn):
                conn.waiting_since = time.monotonic()
        except HttpError as exc:
            self._refuse(conn, exc)
            await self._linger(reader, writer)
        except PeerClosed as exc:
            if exc.partial and not conn.timed_out:
                log.info("push API: %s closed the connection in the middle of a request", conn.peer)
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
        self._admit(request)
        conn.writer.write(http.accept(request))
        body = await self._read(reader, http, http.next_body)
        conn.waiting_since = None
        self.requests += 1
        status, document = await self._call(request.path.strip("/"), body)
        if status != 200:
            self.errors += 1
            log.info("push API %s %s: %s %s", request.method, request.path, status, document)
        try:
            answer = http.respond_json(status, document)
        except (TypeError, ValueError) as exc:  # e.g. a session with non-str keys
            self.errors += 1
            log.warning("push API %s: cannot encode the result as JSON: %s", request.path, exc)
            error = {"ok": False, "error": f"the result cannot be encoded as JSON: {exc}"}
            answer = http.respond_json(500, error)
            status = 500
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
        log.log(
            level, "push API refused a request from %s: %s %s", conn.peer, exc.status, exc.message
        )
        conn.writer.write(conn.http.refuse(exc))
        self._count(conn, exc.status)

    def _admit(self, request: Request) -> None:
        """Check method, origin, token, content type and size (before the body is
        read); raise :class:`HttpError` to refuse."""
        if request.method != "POST":
            raise HttpError(405, "use POST /<verb> with a JSON object", (("Allow", "POST"),))
        origin = request.headers.get("origin")
        if origin is not None:
            raise HttpError(
                403,
                f"requests from web pages are refused (Origin: {origin[:80]!r}); "
                "call the push API from your backend",
            )
        self._check_token(request)
        if request.media_type != "application/json":
            given = request.headers.get("content-type", "")[:80]
            got = repr(given) if given else "no Content-Type header"
            raise HttpError(415, f"Content-Type must be application/json, got {got}")
        if request.content_length > self.config.max_body:
            raise HttpError(
                413, f"body of {request.content_length} bytes is over {self.config.max_body}"
            )

    def _check_token(self, request: Request) -> None:
        # The config refuses an empty token; were it emptied later, nothing matches it.
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise HttpError(401, "missing 'Authorization: Bearer <token>'", _UNAUTHORIZED_HEADERS)
        if not hmac.compare_digest(given.strip().encode(), self._token):
            raise HttpError(403, "wrong token")

    async def _call(self, verb: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """Run ``verb``; ``(status, document)``."""
        try:
            args = parse_call(verb, body)
            result = getattr(self.client, verb)(*args)
            if inspect.isawaitable(result):
                result = await result
        except QueryTimeout as exc:
            return 504, {"ok": False, "error": str(exc), "missing": list(exc.missing)}
        except Exception as exc:
            status = status_of(exc)
            if status == 500:
                log.exception("push API %s failed", verb)
            return status, {"ok": False, "error": str(exc) or type(exc).__name__}
        if result is None:
            self.client.flush()
        return 200, {"ok": True, "result": result}


def serve(spec: Any) -> int:
    """Child entry point (``cluster``): run one push API process until told to stop."""
    return int(run_service(spec, PushAPIServer(spec.config, spec.sockets.get("listen"))))
