"""WebSocket frames (RFC 6455 section 5), pure functions: masking, the encoder of
server frames, close payloads.

Server frames are never masked, so a frame is a function of ``(opcode, payload)``:
:func:`encode_frame` and its shorthands. A broadcast encodes once and writes the same
bytes to every recipient. Parsing client frames is the connection's job
(``gateway.websocket.ServerConnection``), because what a frame means depends on the
connection's state.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import struct
from collections.abc import Callable

__all__ = [
    "OP_CONT",
    "OP_TEXT",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
    "apply_mask",
    "encode_frame",
    "text_frame",
    "binary_frame",
    "close_frame",
    "ping_frame",
    "pong_frame",
    "parse_close_payload",
    "is_valid_close_code",
]

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA


def _load_c_apply_mask() -> Callable[[bytes | bytearray | memoryview, bytes], bytes] | None:
    """The C ``apply_mask`` of the websockets package, when it is built for this Python.

    Loaded from its file alone: ``import websockets.speedups`` would first run the
    package's ``__init__``, which reads the installed packages' metadata (email,
    zipfile, csv...: 4 MiB more in every gateway process) for a version string."""
    try:
        package = importlib.util.find_spec("websockets")
    except (ImportError, ValueError):  # pragma: no cover - depends on the environment
        return None
    for folder in (package.submodule_search_locations or ()) if package else ():
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(folder, "speedups" + suffix)
            if not os.path.isfile(path):
                continue
            loader = importlib.machinery.ExtensionFileLoader("websockets.speedups", path)
            spec = importlib.util.spec_from_loader("websockets.speedups", loader)
            if spec is None:  # pragma: no cover
                return None
            try:
                module = importlib.util.module_from_spec(spec)
                loader.exec_module(module)
            except ImportError:  # pragma: no cover - a wheel built for another Python
                return None
            return module.apply_mask  # type: ignore[no-any-return]
    return None  # pragma: no cover - websockets without its C extension


_c_apply_mask = _load_c_apply_mask()


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


_H = struct.Struct("!H")
_Q = struct.Struct("!Q")
_BBH = struct.Struct("!BBH")
_BBQ = struct.Struct("!BBQ")
_FIN_TEXT = 0x80 | OP_TEXT
_FIN_BINARY = 0x80 | OP_BINARY


def is_valid_close_code(code: int) -> bool:
    """Codes a peer may put in a close frame: RFC 6455 7.4 and the IANA registry
    (which added 1012-1014 after the RFC), and the 3000-4999 ranges."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def parse_close_payload(payload: bytes) -> tuple[int, str]:
    """Decode a close frame's payload into ``(code, reason)``; 1005 when empty.
    Raises ``ValueError(close_code, reason)`` for a 1-byte payload or a code peers
    may not send (1002), or a reason that is not UTF-8 (1007)."""
    if not payload:
        return 1005, ""
    if len(payload) == 1:
        raise ValueError(1002, "close frame with a 1-byte payload")
    (code,) = _H.unpack_from(payload)
    if not is_valid_close_code(code):
        raise ValueError(1002, f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(1007, "invalid UTF-8 in a close reason") from None
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
