"""The client_id codec.

A client_id is 20 lowercase hex characters: the owning gateway's IPv4 address (8),
its internal port (4) and the connection id inside that gateway process (8). Anyone
holding a client_id knows which gateway to talk to, with no lookup.

Ids are not durable identities: a gateway process starts counting at a random id
(so a restarted gateway does not reuse the ids of its previous life), and ids wrap
after 2**32-1; applications bind their own uid (``bind_uid``) instead of storing
client_ids.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import NamedTuple

__all__ = ["ClientAddress", "InvalidClientId", "encode_client_id", "decode_client_id"]

_PACK = struct.Struct("!4sHI")
HEX_DIGITS = frozenset("0123456789abcdef")
"""The characters of a client_id."""
_HEX = HEX_DIGITS
MAX_CONN_ID = 0xFFFFFFFF


class InvalidClientId(ValueError):
    """A client_id that is not 20 lowercase hex characters naming a real gateway."""


class ClientAddress(NamedTuple):
    """What a client_id encodes."""

    ip: str
    port: int
    conn_id: int

    @property
    def gateway(self) -> str:
        """The owning gateway's internal address, ``"ip:port"``."""
        return f"{self.ip}:{self.port}"


def encode_client_id(ip: str, port: int, conn_id: int) -> str:
    """Build the client_id of connection ``conn_id`` on gateway ``ip:port``.

    Raises ``ValueError`` for an address that is not IPv4, a port outside 1..65535 or
    a connection id outside 1..2**32-1.
    """
    try:
        packed_ip = ipaddress.IPv4Address(ip).packed
    except ipaddress.AddressValueError:
        raise ValueError(f"gateway address {ip!r} is not an IPv4 address") from None
    if not 0 < port <= 0xFFFF:
        raise ValueError(f"port {port} is outside 1..65535")
    if not 0 < conn_id <= MAX_CONN_ID:
        raise ValueError(f"connection id {conn_id} is outside 1..{MAX_CONN_ID}")
    return _PACK.pack(packed_ip, port, conn_id).hex()


def decode_client_id(client_id: object) -> ClientAddress:
    """Split a client_id into gateway ip, internal port and connection id.

    Raises :class:`InvalidClientId` with the reason when ``client_id`` is not a str of
    20 lowercase hex characters, or encodes port 0 or connection id 0.
    """
    if not isinstance(client_id, str):
        raise InvalidClientId(f"client_id must be a str, not {type(client_id).__name__}")
    if len(client_id) != 20 or not _HEX.issuperset(client_id):
        raise InvalidClientId(
            f"invalid client_id {client_id[:40]!r}: expected 20 lowercase hex characters"
        )
    raw_ip, port, conn_id = _PACK.unpack(bytes.fromhex(client_id))
    if port == 0 or conn_id == 0:
        raise InvalidClientId(
            f"invalid client_id {client_id!r}: port and connection id must be non-zero"
        )
    return ClientAddress(str(ipaddress.IPv4Address(raw_ip)), port, conn_id)
