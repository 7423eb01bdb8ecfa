"""The WebSocket server protocol (RFC 6455): handshake, frame parser, frame encoder.

How this works
--------------
This module is pure: bytes in, events and bytes out. No sockets, no asyncio. The
gateway's connection object (``gateway.server``) owns one parser at a time:

1. :class:`RequestParser` collects the HTTP request head (bounded by ``MAX_HEAD``)
   and returns a :class:`Request`. :func:`check_upgrade` decides whether it is a
   valid WebSocket upgrade and :func:`accept_response` builds the ``101`` answer.
   Requests that do not ask for an upgrade are plain HTTP: :func:`static_file_path`
   maps the URL to a file under the static directory (refusing traversal) and
   :func:`http_response` builds the answer; reading the file is the caller's I/O.
2. After the handshake a :class:`FrameParser` turns client bytes into events,
   tuples ``(opcode, value)``:

   - ``(OP_TEXT, str)``  a whole text message (fragments joined, UTF-8 checked)
   - ``(OP_BINARY, bytes)`` a whole binary message
   - ``(OP_PING, bytes)`` / ``(OP_PONG, bytes)``
   - ``(OP_CLOSE, (code, reason))`` ``code`` 1005 when the frame carried none

   Tuples rather than objects because this is the hot path of every message.
3. Server frames are never masked, so a frame is a function of ``(opcode, payload)``:
   :func:`encode_frame` and its shorthands. A broadcast encodes once and writes the
   same bytes to every recipient.

Errors split as in h11: :class:`HandshakeError` and :class:`FrameError` mean the peer
sent something invalid; each carries what to answer (an HTTP response, or the close
code). There are no extensions (no permessage-deflate) and no subprotocol.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import posixpath
import struct
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

__all__ = [
    "MAX_HEAD",
    "OP_CONT",
    "OP_TEXT",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
    "Request",
    "RequestParser",
    "HandshakeError",
    "FrameError",
    "FrameParser",
    "apply_mask",
    "check_upgrade",
    "accept_key",
    "accept_response",
    "http_response",
    "static_file_path",
    "content_type_for",
    "parse_cookies",
    "encode_frame",
    "text_frame",
    "binary_frame",
    "close_frame",
    "ping_frame",
    "pong_frame",
    "is_valid_close_code",
]

MAX_HEAD = 16 * 1024
"""Largest accepted HTTP request head (request line + headers), in bytes."""

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_REASONS = {
    101: "Switching Protocols",
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    426: "Upgrade Required",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}

try:  # the C helper from the websockets package, when it is built for this Python
    from websockets.speedups import apply_mask as _c_apply_mask
except ImportError:  # pragma: no cover - depends on the installed wheel
    _c_apply_mask = None  # type: ignore[assignment]


def _py_apply_mask(data: bytes | bytearray | memoryview, mask: bytes) -> bytes:
    """XOR ``data`` with the repeated 4-byte ``mask`` using one big-int operation."""
    size = len(data)
    if not size:
        return b""
    repeated = (bytes(mask) * (size // 4 + 1))[:size]
    value = int.from_bytes(data, "big") ^ int.from_bytes(repeated, "big")
    return value.to_bytes(size, "big")


def apply_mask(data: bytes | bytearray | memoryview, mask: bytes) -> bytes:
    """Unmask (or mask) ``data`` with the 4-byte ``mask``; returns new bytes."""
    if _c_apply_mask is not None:
        return bytes(_c_apply_mask(data, mask))
    return _py_apply_mask(data, mask)


# ---------------------------------------------------------------------------------
# Handshake
# ---------------------------------------------------------------------------------


class HandshakeError(Exception):
    """The HTTP request is unacceptable; send :attr:`response` and close."""

    def __init__(self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message
        self.headers = headers

    @property
    def response(self) -> bytes:
        """The HTTP response to write before closing."""
        return http_response(self.status, self.message.encode() + b"\n", headers=self.headers)


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
        is answered by the handshake logic, never by the static file server."""
        return "websocket" in self.headers.get("upgrade", "").lower()


class RequestParser:
    """Collect bytes until the end of an HTTP request head, then parse it.

    ``feed`` returns ``None`` while the head is incomplete, else the :class:`Request`;
    bytes after the head are in :attr:`rest`. Raises :class:`HandshakeError` (431 for
    a head over ``limit`` bytes, 400 for garbage).
    """

    __slots__ = ("_buf", "_limit", "rest")

    def __init__(self, limit: int = MAX_HEAD) -> None:
        self._buf = bytearray()
        self._limit = limit
        self.rest = b""

    def feed(self, data: bytes) -> Request | None:
        """Add ``data``; return the request once its head is complete."""
        buf = self._buf
        start = max(0, len(buf) - 3)  # "\r\n\r\n" may straddle two chunks
        buf += data
        end = buf.find(b"\r\n\r\n", start)
        if end < 0:
            if len(buf) > self._limit:
                raise HandshakeError(431, "request head too large")
            return None
        if end + 4 > self._limit:
            raise HandshakeError(431, "request head too large")
        head = bytes(buf[:end])
        self.rest = bytes(buf[end + 4 :])
        buf.clear()
        return parse_request_head(head)


def parse_request_head(head: bytes) -> Request:
    """Parse a request head (without the final blank line). Raises
    :class:`HandshakeError` 400 when it is not HTTP/1.1-shaped."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise HandshakeError(400, "undecodable request head") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[2].startswith("HTTP/1."):
        raise HandshakeError(400, "malformed request line")
    method, target, version = parts
    if not target.startswith("/"):
        raise HandshakeError(400, "request target must be a path")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        name = name.strip().lower()
        if not sep or not name or " " in name or "\t" in name:
            raise HandshakeError(400, "malformed header line")
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    path, _, query = target.partition("?")
    return Request(method, target, path, query, version, headers)


def _tokens(value: str) -> set[str]:
    return {item.strip().lower() for item in value.split(",")}


def check_upgrade(request: Request) -> str:
    """Validate a WebSocket upgrade request; return its ``Sec-WebSocket-Key``.

    Raises :class:`HandshakeError`: 400 for a wrong method or missing/invalid
    headers, 426 (with ``Sec-WebSocket-Version: 13``) for another protocol version.
    """
    headers = request.headers
    if request.method != "GET":
        raise HandshakeError(400, "WebSocket upgrade requires GET")
    if request.version != "HTTP/1.1":
        raise HandshakeError(400, "WebSocket upgrade requires HTTP/1.1")
    if "websocket" not in _tokens(headers.get("upgrade", "")):
        raise HandshakeError(400, "missing 'Upgrade: websocket'")
    if "upgrade" not in _tokens(headers.get("connection", "")):
        raise HandshakeError(400, "missing 'Connection: Upgrade'")
    if headers.get("sec-websocket-version", "").strip() != "13":
        raise HandshakeError(
            426, "unsupported WebSocket version", (("Sec-WebSocket-Version", "13"),)
        )
    key = headers.get("sec-websocket-key", "").strip()
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 16:
        raise HandshakeError(400, "invalid Sec-WebSocket-Key")
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


_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".htm": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".ico": "image/x-icon",
    ".webp": "image/webp",
    ".wasm": "application/wasm",
    ".map": "application/json",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
}


def content_type_for(path: str) -> str:
    """Content-Type by file extension (``application/octet-stream`` if unknown)."""
    ext = posixpath.splitext(path)[1].lower()
    return _CONTENT_TYPES.get(ext, "application/octet-stream")


def static_file_path(static_dir: str, url_path: str) -> str | None:
    """Map a URL path to a file path under ``static_dir``, or ``None`` when it must
    not be served (empty ``static_dir``, ``..`` segments, NUL, backslashes, hidden
    files). ``/`` and paths ending in ``/`` map to ``index.html``. Pure: the caller
    still checks that the real path (after symlinks) stays inside ``static_dir``."""
    if not static_dir:
        return None
    try:
        path = unquote(url_path, errors="strict") if "%" in url_path else url_path
    except UnicodeDecodeError:
        return None
    if "\x00" in path or "\\" in path:
        return None
    segments = [seg for seg in path.split("/") if seg not in ("", ".")]
    if any(seg == ".." or seg.startswith(".") for seg in segments):
        return None
    if not segments or path.endswith("/"):
        segments.append("index.html")
    return posixpath.join(static_dir, *segments)


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


# ---------------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------------


class FrameError(Exception):
    """The client broke the protocol; close the connection with :attr:`code`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason
        self.events: list[tuple[int, Any]] = []
        """Events completed by the same ``feed`` call before the error (handle them,
        then close)."""


_H = struct.Struct("!H")
_Q = struct.Struct("!Q")
_BBH = struct.Struct("!BBH")
_BBQ = struct.Struct("!BBQ")


def is_valid_close_code(code: int) -> bool:
    """Codes a peer may put in a close frame (RFC 6455 7.4 and the IANA registry)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


class FrameParser:
    """Incremental parser of client frames for one connection.

    ``feed(data)`` returns the list of events completed by ``data`` (see the module
    docstring). It raises :class:`FrameError` with the close code to send:
    1002 for protocol violations (unmasked frame, reserved bits or opcodes, bad
    fragmentation, oversized or fragmented control frame, bad close frame), 1007 for
    invalid UTF-8 in a text message or close reason, 1009 for a message larger than
    ``max_message_size``; the size is checked from the frame header, before the
    payload is buffered. After an error the parser must not be fed again.
    """

    __slots__ = ("_buf", "_max", "_frag_op", "_frags", "_frag_size")

    def __init__(self, max_message_size: int) -> None:
        self._buf: bytearray | None = None  # only while a frame is incomplete
        self._max = max_message_size
        self._frag_op = 0  # opcode of the fragmented message in progress, 0: none
        self._frags: list[bytes] | None = None
        self._frag_size = 0

    @property
    def buffered(self) -> int:
        """Bytes held: an incomplete frame plus fragments of an unfinished message."""
        return (len(self._buf) if self._buf else 0) + self._frag_size

    def feed(self, data: bytes) -> list[tuple[int, Any]]:
        """Add ``data``; return every event it completes, in order."""
        if self._buf:
            self._buf += data
            buf: bytes | bytearray = self._buf
        else:
            buf = data
        events: list[tuple[int, Any]] = []
        try:
            pos = self._parse(buf, events)
        except FrameError as exc:
            exc.events = events
            raise
        if pos >= len(buf):
            self._buf = None
        elif buf is self._buf:
            del self._buf[:pos]
        else:
            self._buf = bytearray(buf[pos:])
        return events

    def _parse(self, buf: bytes | bytearray, events: list[tuple[int, Any]]) -> int:
        """Parse whole frames from ``buf``; return the offset of the first byte not
        consumed."""
        pos = 0
        size = len(buf)
        while size - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            opcode = b0 & 0x0F
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                (length,) = _H.unpack_from(buf, pos + 2)
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                (length,) = _Q.unpack_from(buf, pos + 2)
                head = 10
            self._check_header(b0, b1, opcode, length)
            end = pos + head + 4 + length
            if end > size:
                break
            mask = bytes(buf[pos + head : pos + head + 4])
            payload = apply_mask(memoryview(buf)[pos + head + 4 : end], mask) if length else b""
            pos = end
            event = self._frame(b0 & 0x80, opcode, payload)
            if event is not None:
                events.append(event)
        return pos

    def _check_header(self, b0: int, b1: int, opcode: int, length: int) -> None:
        """Reject a frame from its header alone (before its payload arrives)."""
        if b0 & 0x70:
            raise FrameError(1002, "reserved bits set (no extension was negotiated)")
        if not b1 & 0x80:
            raise FrameError(1002, "client frames must be masked")
        if opcode >= 8:
            if opcode > OP_PONG:
                raise FrameError(1002, f"reserved opcode {opcode:#x}")
            if not b0 & 0x80:
                raise FrameError(1002, "fragmented control frame")
            if length > 125:
                raise FrameError(1002, "control frame payload over 125 bytes")
            return
        if opcode > OP_BINARY:
            raise FrameError(1002, f"reserved opcode {opcode:#x}")
        if opcode == OP_CONT:
            if not self._frag_op:
                raise FrameError(1002, "continuation frame without a message to continue")
        elif self._frag_op:
            raise FrameError(1002, "new message before the fragmented one finished")
        if self._frag_size + length > self._max:
            raise FrameError(1009, f"message larger than {self._max} bytes")

    def _frame(self, fin: int, opcode: int, payload: bytes) -> tuple[int, Any] | None:
        """Turn one complete, checked frame into an event (or ``None`` mid-message)."""
        if opcode in (OP_TEXT, OP_BINARY):
            if fin:
                return self._message(opcode, payload)
            self._frag_op = opcode
            self._frags = [payload]
            self._frag_size = len(payload)
            return None
        if opcode == OP_CONT:
            assert self._frags is not None
            self._frags.append(payload)
            self._frag_size += len(payload)
            if not fin:
                return None
            opcode = self._frag_op
            joined = b"".join(self._frags)
            self._frag_op = 0
            self._frags = None
            self._frag_size = 0
            return self._message(opcode, joined)
        if opcode == OP_CLOSE:
            return OP_CLOSE, parse_close_payload(payload)
        return opcode, payload  # ping / pong

    @staticmethod
    def _message(opcode: int, payload: bytes) -> tuple[int, Any]:
        if opcode == OP_BINARY:
            return OP_BINARY, payload
        try:
            return OP_TEXT, payload.decode("utf-8")
        except UnicodeDecodeError:
            raise FrameError(1007, "invalid UTF-8 in a text message") from None


def parse_close_payload(payload: bytes) -> tuple[int, str]:
    """Decode a close frame's payload into ``(code, reason)``; 1005 when empty.
    Raises :class:`FrameError` for a 1-byte payload, a code peers may not send, or a
    reason that is not UTF-8."""
    if not payload:
        return 1005, ""
    if len(payload) == 1:
        raise FrameError(1002, "close frame with a 1-byte payload")
    (code,) = _H.unpack_from(payload)
    if not is_valid_close_code(code):
        raise FrameError(1002, f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError(1007, "invalid UTF-8 in a close reason") from None
    return code, reason


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, final server frame. Pure: equal inputs give equal bytes, so a
    broadcast encodes once and writes the result to every recipient."""
    size = len(payload)
    if size < 126:
        return bytes((0x80 | opcode, size)) + payload
    if size < 0x10000:
        return _BBH.pack(0x80 | opcode, 126, size) + payload
    return _BBQ.pack(0x80 | opcode, 127, size) + payload


def text_frame(text: str) -> bytes:
    """A text frame holding ``text`` (UTF-8)."""
    return encode_frame(OP_TEXT, text.encode("utf-8"))


def binary_frame(data: bytes) -> bytes:
    """A binary frame holding ``data``."""
    return encode_frame(OP_BINARY, bytes(data))


def close_frame(code: int | None = 1000, reason: str = "") -> bytes:
    """A close frame; ``code`` ``None`` or 1005 gives an empty payload. The reason is
    cut to fit the 125-byte control frame limit without splitting a character."""
    if code is None or code == 1005:
        return encode_frame(OP_CLOSE, b"")
    raw = reason.encode("utf-8")
    if len(raw) > 123:
        raw = raw[:123].decode("utf-8", "ignore").encode("utf-8")
    return encode_frame(OP_CLOSE, _H.pack(code) + raw)


def ping_frame(data: bytes = b"") -> bytes:
    """A ping frame (payload at most 125 bytes)."""
    if len(data) > 125:
        raise ValueError("ping payload is limited to 125 bytes")
    return encode_frame(OP_PING, data)


def pong_frame(data: bytes = b"") -> bytes:
    """A pong frame (payload at most 125 bytes)."""
    if len(data) > 125:
        raise ValueError("pong payload is limited to 125 bytes")
    return encode_frame(OP_PONG, data)
