"""WebSocket bytes as a client sends them: the upgrade request and masked frames.

Written here, independently of the gateway's own protocol module, so that the tests
of that module and of the gateway check it against a second implementation.
"""

from __future__ import annotations

import base64
import os
import struct

KEY = base64.b64encode(b"0123456789abcdef").decode()


def client_frame(
    opcode: int,
    payload: bytes,
    fin: bool = True,
    mask: bool = True,
    rsv: int = 0,
    length_override: int | None = None,
) -> bytes:
    """Encode a frame as a client would (masked)."""
    b0 = (0x80 if fin else 0) | rsv | opcode
    size = len(payload) if length_override is None else length_override
    if size < 126:
        head = bytes((b0, (0x80 if mask else 0) | size))
    elif size < 0x10000:
        head = struct.pack("!BBH", b0, (0x80 if mask else 0) | 126, size)
    else:
        head = struct.pack("!BBQ", b0, (0x80 if mask else 0) | 127, size)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(byte ^ key[i % 4] for i, byte in enumerate(payload))


def request(lines: list[str]) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def upgrade_lines(**override: str) -> list[str]:
    headers = {
        "Host": "example.com",
        "Upgrade": "websocket",
        "Connection": "keep-alive, Upgrade",
        "Sec-WebSocket-Key": KEY,
        "Sec-WebSocket-Version": "13",
    }
    headers.update(override)
    return ["GET /chat?room=1 HTTP/1.1"] + [f"{k}: {v}" for k, v in headers.items() if v]
