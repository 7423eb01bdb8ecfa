"""The Pusher protocol (``pygatewayworker.pusher``) for the load generator's clients
(benchmark M9, :mod:`bench.pusherbench`).

A generator connected with ``protocol="pusher"`` and ``path="/app/<key>"``
(``loadgen.Generator.op_connect``) hands every JSON frame (first byte ``{``) to
:class:`PusherProtocol`, which behaves like a pusher-js client subscribed to one
public channel, :data:`CHANNEL`:

- ``pusher:connection_established`` is answered with ``pusher:subscribe``;
- ``pusher_internal:subscription_succeeded`` makes the client ready;
- an event named :data:`EVENT` on the channel is a broadcast: counted, and timed
  when asked, from its ``data``, ``B<19-digit monotonic ns>...``;
- ``pusher:ping`` (the gateways' heartbeat, ``PING_DATA``) is answered with
  ``pusher:pong``, as pusher-js does;
- anything else (a ``pusher:error``...) is counted in ``PusherProtocol.other`` and
  kept as the generator's ``last_error``.

Our frames are compact JSON with ``event`` first (``pusher.protocol.message``), so
they are told apart by a prefix test: nothing is JSON-decoded on the hot path.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from bench.loadgen import client_frame

if TYPE_CHECKING:
    from bench.loadgen import Client

__all__ = ["CHANNEL", "EVENT", "PusherProtocol"]

CHANNEL = "bench"
EVENT = "B"
BROADCAST = f'{{"event":"{EVENT}","channel":"{CHANNEL}","data":"B'.encode()
"""How a broadcast frame starts; the 19 digits of its timestamp follow."""
_ESTABLISHED = b'{"event":"pusher:connection_established"'
_SUBSCRIBED = b'{"event":"pusher_internal:subscription_succeeded"'
_PING = b'{"event":"pusher:ping"'
_SUBSCRIBE = client_frame(
    b'{"event":"pusher:subscribe","data":{"channel":"' + CHANNEL.encode() + b'"}}'
)
_PONG_TEXT = client_frame(b'{"event":"pusher:pong","data":{}}')
_now_ns = time.monotonic_ns


class PusherProtocol:
    """A pusher-js client's side of the conversation, for every client of a generator."""

    __slots__ = ("other",)

    def __init__(self) -> None:
        self.other = 0

    def opened(self, client: Client) -> None:
        """The handshake is done: the server speaks first (connection_established)."""

    def received(self, client: Client, data: bytes, start: int, end: int) -> None:
        """One JSON text frame, ``data[start:end]``."""
        gen = client.gen
        if data.startswith(BROADCAST, start, end):
            gen.bcast += 1
            if gen.track:
                at = start + len(BROADCAST)
                gen.lat.append((_now_ns() - int(data[at : at + 19])) // 1000)
        elif data.startswith(_PING, start, end):
            client.transport.write(_PONG_TEXT)
        elif data.startswith(_ESTABLISHED, start, end):
            client.transport.write(_SUBSCRIBE)
        elif data.startswith(_SUBSCRIBED, start, end):
            if not client.ready:
                client.ready = True
                gen.on_ready(client)
        else:
            self.other += 1
            gen.last_error = data[start : min(end, start + 200)].decode("utf-8", "replace")
