"""HTTP/1.1 for the push API, on h11 (pure: bytes in, bytes out, no I/O).

How this works
--------------
h11 parses and frames HTTP/1.1: request line and headers, ``Content-Length`` bodies,
keep-alive, pipelined requests, ``Expect: 100-continue``, and the refusal of
malformed input. :class:`HttpConnection` wraps one h11 server connection with what
the push API adds on top. Its caller (``pushapi.server``) does the I/O:

1. :meth:`~HttpConnection.receive_data` takes the bytes read from the socket
   (``b""`` at end of file);
2. :meth:`~HttpConnection.next_request` returns the next request head once it is
   complete (``None``: more bytes are needed) as a :class:`Request`, after the checks
   no route can pass: HTTP/1.0 or 1.1 only (505), a target starting with ``/``, one
   ``Authorization`` header, a head of at most ``max_head`` bytes (431), no chunked
   body (501: every usual client sends ``Content-Length`` for a JSON object);
3. the caller checks the head (method, origin, token, content type, size) before it
   waits for a byte of the body, then sends what :meth:`~HttpConnection.accept`
   returns (``100 Continue`` when the client waits for it) and collects the body
   with :meth:`~HttpConnection.next_body` (``None`` until all of it is there);
4. :meth:`~HttpConnection.respond_json` encodes the answer and readies the next
   request, which may already be buffered (pipelining); :attr:`~HttpConnection.
   must_close` says when the connection ends instead (``Connection: close``,
   HTTP/1.0).

Two kinds of error, as in h11: :class:`HttpError` means the peer sent something we
refuse; it carries the status to answer (:meth:`~HttpConnection.refuse` encodes that
answer, as JSON or, with ``plain=True``, as a line of text, after which the
connection closes). :class:`PeerClosed` means the peer
closed the connection, between requests or in the middle of one. A misuse of this
class (answering twice) raises h11's ``LocalProtocolError``: a bug, not the peer's
doing.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import h11

__all__ = [
    "HttpConnection",
    "HttpError",
    "MAX_HEAD",
    "PLAIN_TEXT",
    "PeerClosed",
    "REASONS",
    "Request",
    "encode_json",
]

MAX_HEAD = 16 * 1024
"""Bytes a request head may take (request line and headers)."""
PLAIN_TEXT = "text/plain; charset=utf-8"

REASONS = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}

Headers = tuple[tuple[str, str], ...]


class HttpError(Exception):
    """The request cannot be served; answer ``status`` with ``message`` and close."""

    def __init__(self, status: int, message: str, headers: Headers = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


class PeerClosed(Exception):
    """The peer closed its side; ``partial``: in the middle of a request."""

    def __init__(self, partial: bool) -> None:
        super().__init__("closed in the middle of a request" if partial else "closed")
        self.partial = partial


@dataclass(slots=True)
class Request:
    """A request head. Header names are lower-case; the values of a repeated header
    are joined with ``", "``."""

    method: str
    target: str
    version: str
    """``"HTTP/1.1"`` or ``"HTTP/1.0"``."""
    headers: dict[str, str]
    content_length: int

    @property
    def path(self) -> str:
        """The target without its query string."""
        return self.target.partition("?")[0]

    @property
    def media_type(self) -> str:
        """The ``Content-Type`` without its parameters, lower-case ('' when absent)."""
        return self.headers.get("content-type", "").partition(";")[0].strip().lower()

    @property
    def expects_continue(self) -> bool:
        """The client waits for ``100 Continue`` before it sends its body."""
        return self.headers.get("expect", "").lower() == "100-continue"


class HttpConnection:
    """One server-side HTTP/1.1 connection (see the module docstring)."""

    __slots__ = ("_h11", "_max_head", "_plain", "_body", "_eof", "_starved")

    def __init__(self, max_head: int = MAX_HEAD, plain: bool = False) -> None:
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head)
        self._max_head = max_head
        self._plain = plain
        """Refusals as ``text/plain`` (else ``{"ok": false, "error": ...}``)."""
        self._body = bytearray()
        self._eof = False
        self._starved = False
        """h11 asked for more bytes and has not been given any since."""

    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer; ``b""`` when it closed its side."""
        if not data:
            self._eof = True
        else:
            self._starved = False
        self._h11.receive_data(data)

    @property
    def partial(self) -> bool:
        """Part of a request has arrived, not all of it."""
        return self._h11.their_state is h11.SEND_BODY or bool(self._h11.trailing_data[0])

    @property
    def must_close(self) -> bool:
        """The connection cannot carry another request (after :meth:`respond`)."""
        return self._h11.our_state is not h11.IDLE

    def next_request(self) -> Request | None:
        """The next request head, or ``None`` while it is incomplete."""
        event = self._next_event()
        if event is h11.NEED_DATA:
            return None
        if isinstance(event, h11.ConnectionClosed):
            raise PeerClosed(partial=False)
        if not isinstance(event, h11.Request):  # pragma: no cover - h11 guarantees it
            raise HttpError(400, f"unexpected {type(event).__name__} before a request")
        self._body.clear()
        return self._head(event)

    def accept(self, request: Request) -> bytes:
        """What to send before reading the body: ``100 Continue`` when awaited."""
        if request.content_length and self._h11.they_are_waiting_for_100_continue:
            return self._h11.send(
                h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
            )
        return b""

    def next_body(self) -> bytes | None:
        """The whole body of the current request, or ``None`` while it is arriving."""
        while True:
            event = self._next_event()
            if event is h11.NEED_DATA:
                return None
            if isinstance(event, h11.Data):
                self._body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return bytes(self._body)

    def respond_json(self, status: int, document: Any, headers: Headers = ()) -> bytes:
        """A complete JSON response; raises ``TypeError``/``ValueError`` (before
        anything is sent) when ``document`` cannot be encoded."""
        return self.respond(status, encode_json(document), headers)

    def respond(
        self,
        status: int,
        body: bytes,
        headers: Headers = (),
        *,
        close: bool = False,
        content_type: str = "application/json",
    ) -> bytes:
        """A complete response; afterwards the connection is ready for the next
        request unless :attr:`must_close`."""
        fields = [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            *headers,
        ]
        if close:
            fields.append(("Connection", "close"))
        reason = REASONS.get(status, "Unknown").encode("ascii")
        events: list[h11.Response | h11.Data | h11.EndOfMessage] = [
            h11.Response(status_code=status, headers=fields, reason=reason)
        ]
        if body:
            events.append(h11.Data(data=body))
        events.append(h11.EndOfMessage())
        out = b"".join(self._h11.send(event) or b"" for event in events)
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            self._h11.start_next_cycle()
        return out

    def refuse(self, error: HttpError) -> bytes:
        """The answer to ``error``, closing the connection (``b""`` when a response
        is already under way and nothing more can be said)."""
        if self._h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return b""
        if self._plain:
            body = (error.message + "\n").encode()
            return self.respond(
                error.status, body, error.headers, close=True, content_type=PLAIN_TEXT
            )
        document = {"ok": False, "error": error.message}
        return self.respond(error.status, encode_json(document), error.headers, close=True)

    # ---- internals ------------------------------------------------------------------

    def _next_event(self) -> Any:
        try:
            event = self._h11.next_event()
        except h11.RemoteProtocolError as exc:
            if self._eof and self._starved:
                raise PeerClosed(partial=True) from None
            status = exc.error_status_hint
            if status == 431:
                raise HttpError(431, f"request head over {self._max_head} bytes") from None
            raise HttpError(status, f"malformed request: {exc}") from None
        if event is h11.NEED_DATA:
            self._starved = True
        return event

    def _head(self, event: h11.Request) -> Request:
        version = "HTTP/" + event.http_version.decode("ascii")
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            raise HttpError(505, f"unsupported protocol {version[:20]!r}: use HTTP/1.1")
        target = event.target.decode("latin-1")
        if not target.startswith("/"):
            raise HttpError(400, f"request target must start with '/', got {target[:80]!r}")
        headers: dict[str, str] = {}
        size = len(event.method) + len(event.target) + 12
        for raw_name, raw_value in event.headers:
            name, value = raw_name.decode("ascii"), raw_value.decode("latin-1")
            size += len(name) + len(value) + 4
            if name in headers:
                if name == "authorization":
                    raise HttpError(400, "duplicate Authorization header")
                value = f"{headers[name]}, {value}"
            headers[name] = value
        if size > self._max_head:
            raise HttpError(431, f"request head over {self._max_head} bytes")
        if "transfer-encoding" in headers:
            raise HttpError(501, "chunked request bodies are not supported: send Content-Length")
        return Request(
            event.method.decode("ascii"),
            target,
            version,
            headers,
            int(headers.get("content-length", "0")),
        )


def encode_json(document: Any) -> bytes:
    """``document`` as a JSON line (bytes become base64 text)."""
    return json.dumps(document, default=_jsonable, ensure_ascii=False).encode() + b"\n"


def _jsonable(value: Any) -> Any:
    """JSON has no bytes: a binary value (e.g. in a session) becomes base64 text."""
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")
