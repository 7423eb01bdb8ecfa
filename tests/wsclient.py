"""What a WebSocket client sends, built by hand: request heads and masked frames
(shared by the protocol tests and the gateway tests that speak raw bytes)."""

from __future__ import annotations

import base64
import os
import random
import struct

from pygatewayworker.gateway.websocket import REQUEST, Event, ServerConnection, State

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
    # masked here, not with the gateway's own helper: the tests check it against a
    # second implementation
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


def feed_in_pieces(ws: ServerConnection, data: bytes, rng: random.Random) -> list[Event]:
    """Feed ``data`` in random pieces of 1 to 7 bytes; every event, in order."""
    events = []
    pos = 0
    while pos < len(data):
        step = rng.randint(1, 7)
        events.extend(ws.receive_data(data[pos : pos + step]))
        pos += step
    return events


def opened(max_message_size: int = 1 << 20) -> ServerConnection:
    """A connection past its handshake, with the 101 already taken."""
    ws = ServerConnection(max_message_size)
    ((kind, req),) = ws.receive_data(request(upgrade_lines()))
    assert kind == REQUEST
    ws.accept(req)
    assert ws.data_to_send().startswith(b"HTTP/1.1 101 ")
    assert ws.state is State.OPEN
    return ws
