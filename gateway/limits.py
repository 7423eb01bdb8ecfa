"""The size limits of the internal wire format, apart from its codec.

:mod:`gateway.protocol` re-exports every name here. They live in their own module,
with no import, so that a declaration (``Gateway(...)``, read by the master and by
the command line) can validate its sizes without loading msgpack: the master never
encodes a packet.
"""

from __future__ import annotations

__all__ = ["DEFAULT_MAX_PACKET", "MAX_SESSION", "MAX_CLIENT_MESSAGE", "MAX_KEY_LENGTH"]

DEFAULT_MAX_PACKET = 10 * 1024 * 1024  # internal links: 10 MiB per packet
MAX_SESSION = 4 * 1024 * 1024
"""Largest packed session (bytes). A session travels with every event of its client,
so session and message together must fit in one packet: see :data:`MAX_CLIENT_MESSAGE`."""
MAX_CLIENT_MESSAGE = DEFAULT_MAX_PACKET - MAX_SESSION - 64 * 1024
"""Largest ``max_message_size`` a gateway accepts (about 5.9 MiB): a client message
of that size, the largest session and the event's other fields (64 KiB of room: the
handshake head is at most 16 KiB) always fit in one packet, so a client message can
never make an oversized internal packet."""
MAX_KEY_LENGTH = 1024
"""Longest uid or group name, in characters (a clear error beyond it, everywhere)."""
