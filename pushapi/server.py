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
408 and one log line; an idle keep-alive connection is closed quietly). That
lifecycle is :class:`~pushapi.httpservice.HttpService`, shared with the Pusher HTTP
API; this module says what a push API request means.
"""

from __future__ import annotations

import hmac
import inspect
import logging
import socket
from typing import Any

from pygatewayworker.gateway.client_id import InvalidClientId
from pygatewayworker.gatewayclient.client import AsyncGatewayClient
from pygatewayworker.gatewayclient.errors import GatewayError, QueryTimeout, RemoteError
from pygatewayworker.pushapi.config import PushAPI
from pygatewayworker.pushapi.http import HttpConnection, HttpError, Request
from pygatewayworker.pushapi.httpservice import SWEEP_INTERVAL, HttpService
from pygatewayworker.pushapi.verbs import VERBS, BadRequest, parse_call
from pygatewayworker.runtime.service import run_service

__all__ = ["PushAPIServer", "serve", "status_of", "SWEEP_INTERVAL"]

log = logging.getLogger("pushapi")

_UNAUTHORIZED_HEADERS = (("WWW-Authenticate", 'Bearer realm="pushapi"'),)


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


class PushAPIServer(HttpService):
    """The service of one push API process (also usable in tests with ``listen`` port 0).

    ``sock``: a listening socket bound by the caller; otherwise :meth:`start` binds
    ``config.listen``. ``client``: the push client to use (by default one built from
    the config, closed by :meth:`stop`).
    """

    label = "push API"
    log = log

    def __init__(
        self,
        config: PushAPI,
        sock: socket.socket | None = None,
        client: AsyncGatewayClient | None = None,
    ) -> None:
        self.config: PushAPI = config
        super().__init__(config, sock, client)
        self._token = config.token.encode()

    def new_client(self, **options: Any) -> AsyncGatewayClient:
        """The push client, with the gateways' ``token_key`` (``POST /create_token``)."""
        return super().new_client(token_key=self.config.token_key, **options)

    def admit(self, request: Request) -> None:
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

    def request_label(self, path: str) -> str:
        """metrics: the verb, or ``"other"`` for a path that is not one."""
        verb = path.strip("/")
        return verb if verb in VERBS else "other"

    async def answer(
        self, http: HttpConnection, request: Request, body: bytes
    ) -> tuple[int, bytes]:
        """Run the verb named by the path; its result (or error) as JSON."""
        status, document = await self._call(request.path.strip("/"), body)
        if status != 200:
            self.errors += 1
            log.info("push API %s %s: %s %s", request.method, request.path, status, document)
        try:
            return status, http.respond_json(status, document)
        except (TypeError, ValueError) as exc:  # e.g. a session with non-str keys
            self.errors += 1
            log.warning("push API %s: cannot encode the result as JSON: %s", request.path, exc)
            error = {"ok": False, "error": f"the result cannot be encoded as JSON: {exc}"}
            return 500, http.respond_json(500, error)

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
