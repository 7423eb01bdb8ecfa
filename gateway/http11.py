"""The HTTP/1.1 side of the WebSocket handshake (RFC 6455 section 4), pure
functions: parsing a request head, validating an upgrade, building responses.

:func:`parse_request_head` turns a head into a :class:`Request` (``ValueError`` for
garbage); :func:`check_upgrade` decides whether it is a valid WebSocket upgrade
(``ValueError(status, reason)`` when not) and :func:`accept_response` builds the
``101`` answer; :func:`http_response` builds any other (small) answer. Collecting the
bytes of the head is the connection's job (``gateway.websocket.ServerConnection``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field
from urllib.parse import unquote

__all__ = [
    "MAX_HEAD",
    "Request",
    "parse_request_head",
    "check_upgrade",
    "accept_key",
    "accept_response",
    "http_response",
    "parse_cookies",
]

MAX_HEAD = 16 * 1024
"""Largest accepted HTTP request head (request line + headers), in bytes."""

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_REASONS = {
    101: "Switching Protocols",
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    429: "Too Many Requests",
    426: "Upgrade Required",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(slots=True)
class Request:
    """A parsed HTTP request head. Header names are lower-case; repeated headers are
    joined with ``", "``."""

    method: str
    target: str
    path: str
    query: str
    version: str
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def wants_upgrade(self) -> bool:
        """True when the client asks for a WebSocket (valid or not): such a request
        is answered by the handshake logic, never as plain HTTP."""
        return "websocket" in self.headers.get("upgrade", "").lower()


def parse_request_head(head: bytes) -> Request:
    """Parse a request head (without the final blank line). Raises ``ValueError``
    when it is not HTTP/1.1-shaped (the message says what is wrong)."""
    text = head.decode("latin-1")  # decodes every byte
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[2].startswith("HTTP/1."):
        raise ValueError("malformed request line")
    method, target, version = parts
    if not target.startswith("/"):
        raise ValueError("request target must be a path")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        name = name.strip().lower()
        if not sep or not name or " " in name or "\t" in name:
            raise ValueError("malformed header line")
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    path, _, query = target.partition("?")
    return Request(method, target, path, query, version, headers)


def _tokens(value: str) -> set[str]:
    return {item.strip().lower() for item in value.split(",")}


def check_upgrade(request: Request) -> str:
    """Validate a WebSocket upgrade request; return its ``Sec-WebSocket-Key``.

    Raises ``ValueError`` with ``args == (status, reason)``: 400 for a wrong method
    or missing/invalid headers, 426 for another protocol version (answer it with
    ``Sec-WebSocket-Version: 13``).
    """
    headers = request.headers
    if request.method != "GET":
        raise ValueError(400, "WebSocket upgrade requires GET")
    if request.version != "HTTP/1.1":
        raise ValueError(400, "WebSocket upgrade requires HTTP/1.1")
    if "websocket" not in _tokens(headers.get("upgrade", "")):
        raise ValueError(400, "missing 'Upgrade: websocket'")
    if "upgrade" not in _tokens(headers.get("connection", "")):
        raise ValueError(400, "missing 'Connection: Upgrade'")
    if headers.get("sec-websocket-version", "").strip() != "13":
        raise ValueError(426, "unsupported WebSocket version")
    key = headers.get("sec-websocket-key", "").strip()
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 16:
        raise ValueError(400, "invalid Sec-WebSocket-Key")
    return key


def accept_key(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` value for a client key."""
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


def accept_response(key: str) -> bytes:
    """The ``101 Switching Protocols`` response for a validated key."""
    return (
        "HTTP/1.1 101 Switching Protocols\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n"
    ).encode()


def http_response(
    status: int,
    body: bytes = b"",
    content_type: str = "text/plain; charset=utf-8",
    headers: tuple[tuple[str, str], ...] = (),
    head_only: bool = False,
) -> bytes:
    """A minimal HTTP/1.1 response with ``Connection: close``. With ``head_only``
    the body is left out (a ``HEAD`` request) but its length is announced."""
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    lines.extend(f"{name}: {value}" for name, value in headers)
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body


def parse_cookies(header: str) -> dict[str, str]:
    """Parse a ``Cookie`` header into a dict (values percent-decoded, like PHP's
    ``$_COOKIE``); malformed pairs are skipped."""
    cookies: dict[str, str] = {}
    for pair in header.split(";"):
        name, sep, value = pair.partition("=")
        name = name.strip()
        if sep and name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            cookies.setdefault(name, unquote(value))
    return cookies
