"""A small, strict HTTP/1.1 request parser and response encoder (pure: no I/O).

How this works
--------------
The push API needs only a sliver of HTTP: one request line, headers, a body of
``Content-Length`` bytes, keep-alive, ``Expect: 100-continue`` (curl sends it for
bodies over 1 KiB) and JSON answers. :func:`parse_head` turns the bytes of a request
head (up to and including the blank line) into a :class:`Request` or raises
:class:`HttpError` carrying the status to answer (the peer sent garbage);
:func:`encode_response` builds the bytes of an answer. Chunked request bodies are
refused with 501 (every usual client sends ``Content-Length`` for a JSON string).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["HttpError", "Request", "parse_head", "encode_response", "json_response", "REASONS"]

REASONS = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
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

_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


class HttpError(Exception):
    """The request cannot be served; answer ``status`` with ``message`` and close."""

    def __init__(self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


@dataclass(slots=True)
class Request:
    """A parsed request head; header names are lower-case."""

    method: str
    target: str
    version: str
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> str:
        """The target without its query string."""
        return self.target.partition("?")[0]

    @property
    def keep_alive(self) -> bool:
        """HTTP/1.1 keeps the connection unless told otherwise; 1.0 only if asked."""
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if self.version == "HTTP/1.1":
            return "close" not in tokens
        return "keep-alive" in tokens

    @property
    def media_type(self) -> str:
        """The ``Content-Type`` without its parameters, lower-case ('' when absent)."""
        return self.headers.get("content-type", "").partition(";")[0].strip().lower()

    @property
    def expects_continue(self) -> bool:
        """The client waits for ``100 Continue`` before sending its body."""
        return self.headers.get("expect", "").lower() == "100-continue"

    def content_length(self) -> int:
        """The body's length (0 when absent); :class:`HttpError` when unusable."""
        if "transfer-encoding" in self.headers:
            raise HttpError(501, "chunked request bodies are not supported: send Content-Length")
        text = self.headers.get("content-length", "0").strip()
        if not text.isdigit() or len(text) > 18:
            raise HttpError(400, f"invalid Content-Length {text[:40]!r}")
        return int(text)


def parse_head(data: bytes) -> Request:
    """Parse a request head ending with ``\\r\\n\\r\\n``."""
    try:
        text = data.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise HttpError(400, "undecodable request head") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0] or not set(parts[0]) <= _TOKEN_CHARS:
        raise HttpError(400, f"malformed request line {lines[0][:80]!r}")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HttpError(505, f"unsupported protocol {version[:20]!r}: use HTTP/1.1")
    if not target.startswith("/"):
        raise HttpError(400, f"request target must start with '/', got {target[:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or not set(name) <= _TOKEN_CHARS:
            raise HttpError(400, f"malformed header line {line[:80]!r}")
        key = name.lower()
        if key in headers and key in ("content-length", "authorization", "transfer-encoding"):
            raise HttpError(400, f"duplicate {name} header")
        headers[key] = value.strip()
    return Request(method, target, version, headers)


def encode_response(
    status: int,
    body: bytes = b"",
    *,
    keep_alive: bool = True,
    content_type: str = "application/json",
    headers: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """The bytes of a complete response."""
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}"]
    if status >= 200:
        lines.append(f"Content-Type: {content_type}")
        lines.append(f"Content-Length: {len(body)}")
        lines.append("Connection: " + ("keep-alive" if keep_alive else "close"))
    lines.extend(f"{name}: {value}" for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def json_response(
    status: int,
    document: Any,
    *,
    keep_alive: bool = True,
    headers: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """A response whose body is ``document`` as JSON (bytes become base64 text)."""
    body = json.dumps(document, default=_jsonable, ensure_ascii=False).encode()
    return encode_response(status, body + b"\n", keep_alive=keep_alive, headers=headers)


def _jsonable(value: Any) -> Any:
    """JSON has no bytes: a binary value (e.g. in a session) becomes base64 text."""
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")
