"""GatewayWorker's binary GatewayProtocol, as PHP's GatewayClient speaks it.

How this works
--------------
A PHP web app pushes through the ``GatewayClient`` library: it asks the register for
the gateways' internal addresses, opens a TCP connection to a gateway's internal port
and writes *packets*. Every packet is a 28-byte big-endian header, then ``ext_data``,
then the body::

    offset size field          meaning
    0      4    pack_len       length of the WHOLE packet, these 4 bytes included
    4      1    cmd            a :class:`PhpCmd`
    5      4    local_ip       } addresses of a client event (gateway -> worker);
    9      2    local_port     } GatewayClient sends zeros
    11     4    client_ip      }
    15     2    client_port    }
    17     4    connection_id  the target connection inside that gateway process
    21     1    flag           FLAG_BODY_IS_SCALAR | FLAG_NOT_CALL_ENCODE
    22     2    gateway_port   (zero from GatewayClient)
    24     4    ext_len        length of ext_data
    28     ...  ext_data       a uid, a group, a serialized session or JSON
    28+ext ...  body           up to pack_len: the message; PHP-serialize()d unless
                               FLAG_BODY_IS_SCALAR is set (then the raw bytes)

``FLAG_NOT_CALL_ENCODE`` ("raw") says the body is already encoded for the client's
protocol (for a WebSocket gateway: whole WebSocket frames).

Commands that ask something (:data:`QUERIES`) are answered with a *reply*: a 4-byte
big-endian length of the payload (NOT counting those 4 bytes) and a PHP-serialized
value. Sends and state changes get no answer. With a secret on the gateway, every
GatewayClient call starts with a ``GATEWAY_CLIENT_CONNECT`` packet whose body is the
JSON ``{"secret_key": "..."}`` (:func:`auth_packet`).

Telling a PHP link from one of ours (:func:`sniff`)
---------------------------------------------------
Both protocols start with a 4-byte big-endian length, so the length alone cannot
tell them apart. The 5th byte can: in our protocol (``gateway.protocol``) it is the
first byte of a msgpack *array* (every packet is an array, the first one ``HELLO``),
so it is always a msgpack array header: 0x90-0x9f, 0xdc or 0xdd. In GatewayProtocol
it is the command, and GatewayWorker defines commands 1-28 and 200-205, none of them
in those ranges. A link is PHP when its first 4 bytes read as a length of at least
28 (the header) and its 5th byte is not a msgpack array header; everything else is
left to our own decoder (which answers garbage with an ``ERROR`` packet as before).

This module is pure: bytes in, packets out, no sockets and no asyncio. Errors from
the peer are :class:`GatewayProtocolError` (close that link, log it).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from pygatewayworker.gateway.phpserialize import dumps
from pygatewayworker.gateway.protocol import DEFAULT_MAX_PACKET

__all__ = [
    "PhpCmd",
    "PhpPacket",
    "PacketDecoder",
    "ReplyDecoder",
    "GatewayProtocolError",
    "FLAG_BODY_IS_SCALAR",
    "FLAG_NOT_CALL_ENCODE",
    "HEAD",
    "HEAD_LEN",
    "QUERIES",
    "LINK_PHP",
    "LINK_MSGPACK",
    "auth_packet",
    "encode_packet",
    "encode_reply",
    "encode_error_reply",
    "php_json",
    "sniff",
]

HEAD = struct.Struct(">IBIHIHIBHI")
HEAD_LEN = HEAD.size  # 28
_LEN = struct.Struct(">I")

FLAG_BODY_IS_SCALAR = 0x01
"""The body is the raw message bytes (else it is PHP-serialized)."""
FLAG_NOT_CALL_ENCODE = 0x02
"""The body is already encoded for the client's protocol ("raw" sends)."""


class GatewayProtocolError(Exception):
    """The peer sent bytes that are not a valid GatewayProtocol packet."""


class PhpCmd(IntEnum):
    """GatewayWorker's command numbers (``GatewayProtocol::CMD_*``)."""

    ON_CONNECT = 1
    ON_MESSAGE = 3
    ON_CLOSE = 4
    SEND_TO_ONE = 5
    SEND_TO_ALL = 6
    KICK = 7
    DESTROY = 8
    UPDATE_SESSION = 9
    GET_ALL_CLIENT_SESSIONS = 10
    IS_ONLINE = 11
    BIND_UID = 12
    UNBIND_UID = 13
    SEND_TO_UID = 14
    GET_CLIENT_ID_BY_UID = 15
    BATCH_GET_CLIENT_ID_BY_UID = 16
    JOIN_GROUP = 20
    LEAVE_GROUP = 21
    SEND_TO_GROUP = 22
    GET_CLIENT_SESSIONS_BY_GROUP = 23
    GET_CLIENT_COUNT_BY_GROUP = 24
    SELECT = 25
    GET_GROUP_ID_LIST = 26
    UNGROUP = 27
    BATCH_GET_CLIENT_COUNT_BY_GROUP = 28
    WORKER_CONNECT = 200
    PING = 201
    GATEWAY_CLIENT_CONNECT = 202
    GET_SESSION_BY_CLIENT_ID = 203
    SET_SESSION = 204
    ON_WEBSOCKET_CONNECT = 205


QUERIES = frozenset(
    {
        PhpCmd.GET_ALL_CLIENT_SESSIONS,
        PhpCmd.IS_ONLINE,
        PhpCmd.GET_CLIENT_ID_BY_UID,
        PhpCmd.BATCH_GET_CLIENT_ID_BY_UID,
        PhpCmd.GET_CLIENT_SESSIONS_BY_GROUP,
        PhpCmd.GET_CLIENT_COUNT_BY_GROUP,
        PhpCmd.SELECT,
        PhpCmd.GET_GROUP_ID_LIST,
        PhpCmd.BATCH_GET_CLIENT_COUNT_BY_GROUP,
        PhpCmd.GET_SESSION_BY_CLIENT_ID,
    }
)
"""Commands whose sender waits for a reply."""


def command_name(cmd: int) -> str:
    """``CMD_SEND_TO_GROUP`` for 22, ``cmd 99`` for a number GatewayWorker lacks."""
    try:
        return "CMD_" + PhpCmd(cmd).name
    except ValueError:
        return f"cmd {cmd}"


@dataclass(slots=True)
class PhpPacket:
    """One decoded packet. ``body`` is as on the wire (see :attr:`body_is_scalar`)."""

    cmd: int
    connection_id: int = 0
    flag: int = 0
    ext_data: bytes = b""
    body: bytes = b""
    local_ip: int = 0
    local_port: int = 0
    client_ip: int = 0
    client_port: int = 0
    gateway_port: int = 0

    @property
    def body_is_scalar(self) -> bool:
        """The body is the raw message (else PHP-serialized data)."""
        return bool(self.flag & FLAG_BODY_IS_SCALAR)

    @property
    def raw(self) -> bool:
        """The body is already encoded for the client (``FLAG_NOT_CALL_ENCODE``)."""
        return bool(self.flag & FLAG_NOT_CALL_ENCODE)

    @property
    def name(self) -> str:
        return command_name(self.cmd)


class PacketDecoder:
    """Incremental decoder: feed it bytes, get whole :class:`PhpPacket` objects.

    Raises :class:`GatewayProtocolError` when a length is below the header size or
    above ``max_packet``, or ``ext_len`` runs past the packet. After an error the
    decoder is unusable: close the link.
    """

    __slots__ = ("_buf", "_max", "_need")

    def __init__(self, max_packet: int = DEFAULT_MAX_PACKET) -> None:
        self._buf = bytearray()
        self._max = max_packet
        self._need = 0  # length of the packet being read; 0: its length is unknown

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a packet."""
        return len(self._buf)

    @property
    def expected(self) -> int:
        """Length of the packet being read (0 when not yet known)."""
        return self._need

    def feed(self, data: bytes) -> list[PhpPacket]:
        """Add ``data``; return every packet it completes, in order."""
        buf = self._buf
        buf += data
        out: list[PhpPacket] = []
        pos = 0
        size = len(buf)
        need = self._need
        while True:
            if not need:
                if size - pos < 4:
                    break
                (need,) = _LEN.unpack_from(buf, pos)
                if need < HEAD_LEN:
                    raise GatewayProtocolError(
                        f"packet length {need} is below the {HEAD_LEN}-byte header"
                    )
                if need > self._max:
                    raise GatewayProtocolError(
                        f"packet of {need} bytes exceeds the limit of {self._max} bytes"
                    )
            if size - pos < need:
                break
            out.append(_unpack(buf, pos, need))
            pos += need
            need = 0
        self._need = need
        if pos:
            del buf[:pos]
        return out


def _unpack(buf: bytearray, pos: int, length: int) -> PhpPacket:
    # HEAD fields: pack_len, cmd, local_ip, local_port, client_ip, client_port,
    # connection_id, flag, gateway_port, ext_len
    head = HEAD.unpack_from(buf, pos)
    ext_len = head[9]
    if ext_len > length - HEAD_LEN:
        raise GatewayProtocolError(
            f"{command_name(head[1])}: ext_len {ext_len} runs past the {length}-byte packet"
        )
    ext_end = pos + HEAD_LEN + ext_len
    ext_data = bytes(buf[pos + HEAD_LEN : ext_end])
    body = bytes(buf[ext_end : pos + length])
    local_ip, local_port, client_ip, client_port = head[2:6]
    return PhpPacket(
        head[1],
        head[6],
        head[7],
        ext_data,
        body,
        local_ip,
        local_port,
        client_ip,
        client_port,
        head[8],
    )


def encode_packet(
    cmd: int,
    *,
    connection_id: int = 0,
    flag: int = 0,
    ext_data: bytes | str = b"",
    body: Any = b"",
    local_ip: int = 0,
    local_port: int = 0,
    client_ip: int = 0,
    client_port: int = 0,
    gateway_port: int = 0,
) -> bytes:
    """One packet as ``GatewayProtocol::encode`` builds it: a scalar body (``bytes``,
    ``str``, ``int``, ``bool``) is sent as its bytes with ``FLAG_BODY_IS_SCALAR``;
    anything else (``None``, a list, a dict) is PHP-serialized."""
    if type(body) is bool:
        body = b"1" if body else b""
    if type(body) is int:
        body = str(body)
    if isinstance(body, str):
        body = body.encode()
    if isinstance(body, bytes | bytearray):
        flag |= FLAG_BODY_IS_SCALAR
        payload = bytes(body)
    else:
        payload = dumps(body)
    ext = ext_data.encode() if isinstance(ext_data, str) else bytes(ext_data)
    head = HEAD.pack(
        HEAD_LEN + len(ext) + len(payload),
        cmd,
        local_ip,
        local_port,
        client_ip,
        client_port,
        connection_id,
        flag,
        gateway_port,
        len(ext),
    )
    return head + ext + payload


def php_json(value: Any) -> str:
    """``value`` as PHP's ``json_encode`` writes it (no spaces, ``\\/``, ``\\uXXXX``):
    how GatewayClient builds ext_data for groups, uids, exclusions and select."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True).replace("/", "\\/")


def auth_packet(secret: str) -> bytes:
    """The ``GATEWAY_CLIENT_CONNECT`` packet GatewayClient sends before each call
    when ``Gateway::$secretKey`` is set."""
    return encode_packet(PhpCmd.GATEWAY_CLIENT_CONNECT, body=php_json({"secret_key": secret}))


def encode_reply(value: Any) -> bytes:
    """A reply as the PHP gateway writes it: payload length (without these 4 bytes)
    and the PHP-serialized ``value``. Raises ``PhpSerializeError`` when ``value``
    cannot be written in PHP's format."""
    payload = dumps(value)
    return _LEN.pack(len(payload)) + payload


ERROR_MARK = b"#"
"""First byte of an error reply: no PHP serialized value starts with it."""


def encode_error_reply(message: str) -> bytes:
    """A reply that tells GatewayClient the call failed. Its payload is not PHP
    serialized data, so ``unserialize()`` in GatewayClient fails loudly (an
    ``E_NOTICE``/``E_WARNING``, which frameworks such as Laravel turn into an
    exception) and returns ``false`` (which ``getSession`` documents as "error"),
    instead of an answer that looks like a plausible empty result."""
    payload = ERROR_MARK + b"gateway error: " + message.encode("utf-8", "replace")
    return _LEN.pack(len(payload)) + payload


class ReplyDecoder:
    """Incremental decoder of replies, for clients: ``feed`` returns the payloads
    (serialized values, or error replies starting with :data:`ERROR_MARK`)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        while len(buf) >= 4:
            (size,) = _LEN.unpack_from(buf)
            if len(buf) < 4 + size:
                break
            out.append(bytes(buf[4 : 4 + size]))
            del buf[: 4 + size]
        return out


LINK_PHP = "php"
LINK_MSGPACK = "msgpack"
_MSGPACK_ARRAYS = frozenset(range(0x90, 0xA0)) | {0xDC, 0xDD}


def sniff(prefix: bytes | bytearray, max_packet: int = DEFAULT_MAX_PACKET) -> str | None:
    """Which protocol a link speaks, from its first bytes: :data:`LINK_PHP`,
    :data:`LINK_MSGPACK`, or ``None`` while more bytes are needed (see the module
    docstring). Decides from 4 bytes when the length cannot be a PHP packet's."""
    if len(prefix) < 4:
        return None
    (length,) = _LEN.unpack_from(prefix)
    if len(prefix) < 5:
        return LINK_MSGPACK if length < HEAD_LEN or length > max_packet else None
    if prefix[4] in _MSGPACK_ARRAYS or length < HEAD_LEN:
        return LINK_MSGPACK
    return LINK_PHP
