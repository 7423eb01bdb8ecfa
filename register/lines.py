"""The register line protocol: one JSON object per line.

How this works
--------------
Everything said to or by a register is a JSON *document* (always an object with an
``"event"`` key) on one line, UTF-8, terminated by ``"\\n"``, at most
:data:`MAX_LINE` bytes::

    gateway -> register   {"event":"gateway_connect","address":"ip:port","secret_key":"..."}
    worker  -> register   {"event":"worker_connect","secret_key":"..."}
    register -> worker    {"event":"broadcast_addresses","addresses":["ip:port",...]}
    either  -> register   {"event":"ping"}            answered {"event":"pong"}
    register -> any       {"event":"error","message":"..."}   then close

Documents are built with :func:`json.dumps` (never by string concatenation, which is
how the original broke on a secret holding a quote) with compact separators and ASCII
escapes, so an encoded document never contains a raw newline.

This module is pure: bytes in, documents out, no sockets. Errors split like h11's:
:class:`LineError` means *the peer sent garbage* (close that connection and log it);
``ValueError``/``TypeError`` from the encoders mean *our caller misused the API*.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from pygatewayworker.runtime import jsondepth
from pygatewayworker.runtime.jsondepth import TooDeep

__all__ = [
    "MAX_LINE",
    "LineError",
    "LineDecoder",
    "encode",
    "gateway_connect",
    "worker_connect",
    "broadcast_addresses",
    "error",
    "PING",
    "PONG",
    "CLIENT_EVENTS",
    "event_of",
    "check_address",
    "check_gateway_connect",
    "check_worker_connect",
    "check_broadcast_addresses",
    "check_error",
    "decode_line",
    "shorten",
]

MAX_LINE = 64 * 1024
"""Longest accepted line in bytes, newline excluded."""

CLIENT_EVENTS = frozenset({"gateway_connect", "worker_connect", "ping"})
"""The events a register accepts from its peers."""


class LineError(Exception):
    """The peer sent something that is not a valid register document. Close it."""


def _reject_constant(name: str) -> Any:
    raise LineError(f"invalid JSON constant {name}")


_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
_decode = json.JSONDecoder(parse_constant=_reject_constant).decode


# ---- encoding ---------------------------------------------------------------------


def encode(doc: dict[str, Any]) -> bytes:
    """Return ``doc`` as one wire line (JSON + ``"\\n"``).

    Raises ``TypeError`` when ``doc`` is not a dict or holds values JSON cannot carry,
    and ``ValueError`` when the line would exceed :data:`MAX_LINE`.
    """
    if not isinstance(doc, dict):
        raise TypeError(f"a register document is a dict, got {type(doc).__name__}")
    line = _dumps(doc).encode("ascii")
    if len(line) > MAX_LINE:
        raise ValueError(f"document of {len(line)} bytes exceeds the {MAX_LINE}-byte line limit")
    return line + b"\n"


def gateway_connect(address: str, secret: str, keepalive: float | None = None) -> bytes:
    """The line a gateway sends to announce its internal ``address``.

    ``keepalive`` tells the register how often this peer pings, so that the register
    drops it (and unlists the address) after three silent intervals."""
    doc: dict[str, Any] = {"event": "gateway_connect", "address": address, "secret_key": secret}
    if keepalive is not None:
        doc["keepalive"] = keepalive
    return encode(doc)


def worker_connect(secret: str, keepalive: float | None = None) -> bytes:
    """The line a business worker or push client sends to subscribe to the list."""
    doc: dict[str, Any] = {"event": "worker_connect", "secret_key": secret}
    if keepalive is not None:
        doc["keepalive"] = keepalive
    return encode(doc)


def broadcast_addresses(addresses: list[str] | tuple[str, ...]) -> bytes:
    """The line a register sends with the whole list of gateway addresses."""
    return encode({"event": "broadcast_addresses", "addresses": list(addresses)})


def error(message: str) -> bytes:
    """The line a register sends before closing a connection it refuses."""
    return encode({"event": "error", "message": message})


PING = encode({"event": "ping"})
PONG = encode({"event": "pong"})


# ---- decoding ---------------------------------------------------------------------


class LineDecoder:
    """Incremental decoder: feed it bytes as they arrive, get whole documents out.

    ``feed`` returns the documents (dicts) completed by the new bytes, in order, and
    skips blank lines. It raises :class:`LineError` for a line longer than
    ``max_line`` (even before its newline arrives), invalid UTF-8, invalid JSON, or a
    document that is not an object. After an error the decoder is unusable.
    """

    __slots__ = ("_buf", "_max", "_scanned")

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._buf = bytearray()
        self._max = max_line
        self._scanned = 0  # bytes of _buf already searched for a newline

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the end of a line."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Add ``data`` and return every document it completes."""
        buf = self._buf
        buf += data
        out: list[dict[str, Any]] = []
        start = 0
        search = self._scanned
        while True:
            end = buf.find(b"\n", search)
            if end < 0:
                break
            if end - start > self._max:
                raise LineError(self._too_long())
            line = bytes(buf[start:end])
            start = search = end + 1
            if line.strip():
                out.append(decode_line(line))
        if start:
            del buf[:start]
        if len(buf) > self._max:
            raise LineError(self._too_long())
        self._scanned = len(buf)
        return out

    def _too_long(self) -> str:
        return f"line longer than {self._max} bytes"


def decode_line(line: bytes) -> dict[str, Any]:
    """Decode one line (without its newline) into a document, or raise
    :class:`LineError`."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise LineError("line is not valid UTF-8") from None
    try:
        doc = jsondepth.loads(text, decode=_decode)
    except TooDeep as exc:
        raise LineError(f"line is not valid JSON ({exc})") from None
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise LineError(f"line is not valid JSON ({_reason(exc)})") from None
    if not isinstance(doc, dict):
        raise LineError(f"document is a JSON {type(doc).__name__}, not an object")
    return doc


def _reason(exc: ValueError) -> str:
    return exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)


# ---- validation of received documents ---------------------------------------------


def event_of(doc: dict[str, Any]) -> str:
    """Return the document's ``"event"`` or raise :class:`LineError`."""
    event = doc.get("event")
    if not isinstance(event, str) or not event:
        raise LineError('document has no "event" string')
    return event


def check_address(value: Any) -> str:
    """Return ``value`` normalised as ``"a.b.c.d:port"`` (IPv4, port 1..65535), or
    raise :class:`LineError`."""
    if not isinstance(value, str):
        raise LineError(f"address must be an 'ip:port' string, got {type(value).__name__}")
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5:
        raise LineError(f"address {shorten(value)} is not 'ip:port'")
    port = int(port_text)
    if not 0 < port <= 65535:
        raise LineError(f"address {shorten(value)}: port must be 1..65535")
    try:
        ip = ipaddress.IPv4Address(host)
    except ipaddress.AddressValueError:
        raise LineError(
            f"address {shorten(value)}: {shorten(host)} is not an IPv4 address"
        ) from None
    return f"{ip}:{port}"


def _secret_of(doc: dict[str, Any]) -> str:
    secret = doc.get("secret_key", "")
    if not isinstance(secret, str):
        raise LineError('"secret_key" must be a string')
    try:
        secret.encode("utf-8")  # JSON allows lone surrogates ("\\ud800"); UTF-8 does not
    except UnicodeEncodeError:
        raise LineError('"secret_key" is not valid Unicode') from None
    return secret


MAX_KEEPALIVE = 3600.0


def keepalive_of(doc: dict[str, Any]) -> float | None:
    """The ping interval a peer declared in its handshake (``None``: not declared),
    or raise :class:`LineError`."""
    value = doc.get("keepalive")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LineError('"keepalive" must be a number of seconds')
    if not 0 < value <= MAX_KEEPALIVE:
        raise LineError(f'"keepalive" must be in (0, {MAX_KEEPALIVE:g}] seconds')
    return float(value)


def check_gateway_connect(doc: dict[str, Any]) -> tuple[str, str]:
    """Return ``(address, secret)`` of a gateway_connect document (a missing
    ``secret_key`` reads as ``""``), or raise :class:`LineError`."""
    return check_address(doc.get("address")), _secret_of(doc)


def check_worker_connect(doc: dict[str, Any]) -> str:
    """Return the secret of a worker_connect document, or raise :class:`LineError`."""
    return _secret_of(doc)


def check_broadcast_addresses(doc: dict[str, Any]) -> frozenset[str]:
    """Return the addresses of a broadcast_addresses document, or raise
    :class:`LineError`."""
    addresses = doc.get("addresses")
    if not isinstance(addresses, list):
        raise LineError('"addresses" must be a list')
    return frozenset(check_address(item) for item in addresses)


def check_error(doc: dict[str, Any]) -> str:
    """Return the message of an error document (a readable fallback if it is not a
    string)."""
    message = doc.get("message")
    return message if isinstance(message, str) and message else "no reason given"


def shorten(value: str, limit: int = 60) -> str:
    """``repr`` of peer-supplied text, cut so that garbage cannot flood the logs."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
