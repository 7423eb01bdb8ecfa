"""The metrics process: one HTTP listener per host for Prometheus, probes and operators.

How this works
--------------
The master runs this service as a child of its own (role ``metrics``) when
``--metrics-listen`` is given, on a socket it bound before forking, like every
other role; the master's loop never waits for it. Each request is answered from
the run directory read at that moment (:class:`~metrics.view.ClusterView`):

==============  ==================================================================
``/metrics``    Prometheus exposition (``prometheus_client``, text or OpenMetrics
                by the ``Accept`` header) from :class:`~metrics.collector.ClusterCollector`
``/healthz``    200 or 503, JSON naming what is down (:func:`metrics.health.healthy`)
``/readyz``     200 or 503, JSON naming what cannot serve (:func:`metrics.health.ready`)
``/ops``        the operator page (token; :mod:`metrics.ops`), ``/ops/data`` its JSON
==============  ==================================================================

HTTP/1.1 is parsed by ``h11`` (sans-I/O); this module is the thin asyncio glue and
the routes, dispatched by name (``get_<route>``). Only ``GET`` and ``HEAD``.

The operator page needs ``Metrics.token``: ``/ops?token=T`` sets a cookie holding an
HMAC of the token (never the token itself; ``HttpOnly``, ``SameSite=Strict``) and
redirects to ``/ops``, so the token does not stay in the address bar or history.
Scripts may send ``Authorization: Bearer T`` instead. The probes and ``/metrics``
need no token: bind loopback (the default) or keep the port inside your network.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import socket
from dataclasses import dataclass, field
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qs

import h11
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from pygatewayworker.cluster.observe import Metrics
from pygatewayworker.cluster.state import RunPaths
from pygatewayworker.metrics.collector import ClusterCollector
from pygatewayworker.metrics.health import healthy, ready
from pygatewayworker.metrics.ops import History, ops_data, page_html
from pygatewayworker.metrics.view import ClusterView
from pygatewayworker.register.config import parse_address
from pygatewayworker.runtime.service import run_service

__all__ = ["MetricsServer", "Request", "Response", "serve", "COOKIE"]

log = logging.getLogger("metrics")

MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024
IDLE_TIMEOUT = 30.0
SAMPLE_INTERVAL = 1.0
COOKIE = "gw_ops"
ROUTES = {
    "/": "index",
    "/metrics": "metrics",
    "/healthz": "healthz",
    "/readyz": "readyz",
    "/ops": "ops",
    "/ops/data": "ops_data",
}
PAGE_HEADERS = (
    (
        "content-security-policy",
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
)


@dataclass(slots=True)
class Request:
    """A parsed request: method, path, query (first value per name), headers
    (lower-case names)."""

    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_h11(cls, event: h11.Request) -> Request:
        target = event.target.decode("latin-1")
        path, _, raw_query = target.partition("?")
        query = {k: v[0] for k, v in parse_qs(raw_query, keep_blank_values=True).items()}
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
        return cls(event.method.decode("ascii", "replace"), path, query, headers)


@dataclass(slots=True)
class Response:
    """What to answer."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(cls, status: int, document: Any) -> Response:
        body = (json.dumps(document, indent=1) + "\n").encode()
        return cls(status, body, "application/json")

    @classmethod
    def text(cls, status: int, text: str, *headers: tuple[str, str]) -> Response:
        return cls(status, (text + "\n").encode(), headers=headers)


class MetricsServer:
    """The service of the metrics process (``start``/``stop``/``stats``).

    ``run_dir``: the run directory to read; ``master_pid``: the master whose health
    ``/healthz`` reports (0: not checked, for tests); ``sock``: a listening socket
    bound by the master (else :meth:`start` binds ``config.listen``).
    """

    def __init__(
        self,
        config: Metrics,
        run_dir: str,
        master_pid: int = 0,
        sock: socket.socket | None = None,
    ) -> None:
        self.config = config
        self.paths = RunPaths.at(run_dir)
        self.master_pid = master_pid
        self._sock = sock
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ClusterCollector(self.read_view))
        self.history = History(config.history_seconds, SAMPLE_INTERVAL)
        self._cookie = (
            hmac.new(config.token.encode(), b"gatewayworker-ops", hashlib.sha256).hexdigest()
            if config.token
            else ""
        )
        self._server: asyncio.Server | None = None
        self._sampler: asyncio.Task[None] | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.requests = 0
        self.scrapes = 0

    # ---- Service protocol ----------------------------------------------------------

    async def start(self) -> None:
        """Listen and start sampling the page's history."""
        sock = self._sock
        if sock is None:
            host, port = parse_address(self.config.listen, "--metrics-listen")
            sock = socket.create_server((host, port), reuse_port=False)
        self._server = await asyncio.start_server(self._serve, sock=sock)
        self._sampler = asyncio.create_task(self._sample_forever())
        log.info("metrics listening on http://%s:%s/metrics", *sock.getsockname()[:2])

    async def stop(self, graceful: bool) -> None:
        """Stop listening and close every connection."""
        if self._sampler is not None:
            self._sampler.cancel()
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()

    def stats(self) -> dict[str, Any]:
        """Counters for ``status``."""
        return {
            "connections": len(self._writers),
            "messages_in": self.requests,
            "scrapes": self.scrapes,
        }

    # ---- reading the cluster --------------------------------------------------------

    def read_view(self) -> ClusterView:
        """The run directory now."""
        return ClusterView.read(self.paths)

    def master_alive(self) -> bool:
        """Whether our parent is still the master we were started by."""
        return not self.master_pid or os.getppid() == self.master_pid

    async def _sample_forever(self) -> None:
        while True:
            try:
                self.history.sample(self.read_view())
            except Exception:
                log.exception("sampling the cluster for the operator page failed")
            await asyncio.sleep(SAMPLE_INTERVAL)

    # ---- routes ------------------------------------------------------------------------

    def respond(self, request: Request) -> Response:
        """The answer to ``request`` (dispatched by name: ``get_<route>``)."""
        self.requests += 1
        if request.method not in ("GET", "HEAD"):
            return Response.text(405, "use GET", ("allow", "GET, HEAD"))
        route = ROUTES.get(request.path)
        if route is None:
            return Response.text(404, "not found; try /metrics, /healthz, /readyz or /ops")
        response: Response = getattr(self, f"get_{route}")(request)
        return response

    def get_index(self, request: Request) -> Response:
        return Response.text(
            200,
            "gatewayworker metrics: /metrics (Prometheus), /healthz, /readyz, /ops (operator page)",
        )

    def get_metrics(self, request: Request) -> Response:
        self.scrapes += 1
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(200, encoder(self.registry), content_type)

    def get_healthz(self, request: Request) -> Response:
        ok, document = healthy(self.read_view(), self.master_alive())
        return Response.json(200 if ok else 503, document)

    def get_readyz(self, request: Request) -> Response:
        ok, document = ready(self.read_view(), self.master_alive())
        return Response.json(200 if ok else 503, document)

    def get_ops(self, request: Request) -> Response:
        if not self.config.token:
            return Response.text(
                404, "the operator page is off: start with --metrics-token (GW_METRICS_TOKEN)"
            )
        given = request.query.get("token")
        if given is not None:
            if not hmac.compare_digest(given.encode(), self.config.token.encode()):
                return self._unauthorized("wrong token")
            cookie = f"{COOKIE}={self._cookie}; Path=/; HttpOnly; SameSite=Strict"
            return Response(303, b"", headers=(("location", "/ops"), ("set-cookie", cookie)))
        if not self._authorized(request):
            return self._unauthorized("")
        return Response(200, page_html(), "text/html; charset=utf-8", PAGE_HEADERS)

    def get_ops_data(self, request: Request) -> Response:
        if not self.config.token:
            return Response.json(404, {"error": "the operator page is off"})
        if not self._authorized(request):
            return Response.json(401, {"error": "token required"})
        return Response.json(200, ops_data(self.read_view(), self.history))

    def _authorized(self, request: Request) -> bool:
        token = self.config.token.encode()
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token):
            return True
        try:
            morsel = SimpleCookie(request.headers.get("cookie", "")).get(COOKIE)
        except CookieError:
            return False
        return morsel is not None and hmac.compare_digest(morsel.value, self._cookie)

    def _unauthorized(self, why: str) -> Response:
        note = f"<p>{why}</p>" if why else ""
        body = (
            "<!doctype html><title>gatewayworker: token required</title>"
            f"<h1>Token required</h1>{note}"
            '<form method="get" action="/ops"><input name="token" type="password" '
            'placeholder="--metrics-token" autofocus> <button>Open</button></form>'
        ).encode()
        headers = (("www-authenticate", 'Bearer realm="gatewayworker"'), *PAGE_HEADERS)
        return Response(401, body, "text/html; charset=utf-8", headers)

    # ---- HTTP over asyncio (h11) ---------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self._writers.add(writer)
        try:
            while True:
                request = await self._next_request(conn, reader)
                if request is None:
                    break
                try:
                    response = self.respond(request)
                except Exception:
                    log.exception("metrics %s %s failed", request.method, request.path)
                    response = Response.text(500, "internal error (see the log)")
                writer.write(_encode(conn, request.method, response))
                await writer.drain()
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break
                conn.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            if conn.our_state is h11.SEND_RESPONSE:
                answer = Response.text(exc.error_status_hint, f"bad request: {exc}")
                with contextlib.suppress(h11.LocalProtocolError):
                    writer.write(_encode(conn, "GET", answer))
        except (ConnectionError, TimeoutError, h11.LocalProtocolError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _next_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader
    ) -> Request | None:
        """Read one whole request (its body, if any, is read and dropped)."""
        request: Request | None = None
        body = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await asyncio.wait_for(reader.read(65536), IDLE_TIMEOUT)
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                request = Request.from_h11(event)
            elif isinstance(event, h11.Data):
                body += len(event.data)
                if body > MAX_BODY:
                    raise h11.RemoteProtocolError("request body too large", 413)
            elif isinstance(event, h11.EndOfMessage):
                return request
            else:  # ConnectionClosed, PAUSED
                return None


def _encode(conn: h11.Connection, method: str, response: Response) -> bytes:
    headers = [
        ("content-type", response.content_type),
        ("content-length", str(len(response.body))),
        ("cache-control", "no-store"),
        *response.headers,
    ]
    reason = HTTPStatus(response.status).phrase.encode()
    out = conn.send(h11.Response(status_code=response.status, headers=headers, reason=reason))
    out = out or b""
    if method != "HEAD" and response.body:
        out += conn.send(h11.Data(data=response.body)) or b""
    out += conn.send(h11.EndOfMessage()) or b""
    return out


def serve(spec: Any) -> int:
    """Child entry point (``cluster``): run the metrics listener until told to stop."""
    server = MetricsServer(spec.config, spec.run_dir, spec.master_pid, spec.sockets.get("listen"))
    return int(run_service(spec, server))
