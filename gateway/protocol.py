"""The internal wire format: one module, one encoder, one incremental decoder.

How this works
--------------
Every internal link (gateway <-> business worker, gateway <-> push client) carries
*packets*. A packet on the wire is a 4-byte big-endian length followed by that many
bytes of msgpack. The msgpack body is always an array whose first item is a
:class:`Cmd` and whose remaining items are that command's fields, positionally, as
documented on each enum member below. Strings are msgpack str, binary payloads are
msgpack bin, so a WebSocket text frame arrives as ``str`` and a binary frame as
``bytes`` on the other side: that is how text and binary stay distinct end to end.

The length prefix is what makes the format *length-safe*: the decoder knows the size
of a packet before buffering it, so an oversized or garbage prefix is rejected at
once instead of after megabytes have been read.

This module is pure: bytes in, packets out, no sockets and no asyncio. Errors split
into :class:`ProtocolError` (the peer sent garbage: close that link, log it) and
``ValueError``/``TypeError`` from :func:`encode` (our own caller misused the API).

Naming used in field docs
-------------------------
``conn_id``   the connection id inside one gateway process (int, 0 < id < 2**32).
``session``   a session dict packed with :func:`pack_session` (``bytes``), or ``None``
              when the connection has no session yet (the worker sees ``{}``).
``data``      a message for a client: ``str`` becomes a text frame, ``bytes`` binary.
``req``       a request id chosen by the asker (int > 0); the gateway echoes it in
              :attr:`Cmd.REPLY` or :attr:`Cmd.ERROR`.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import Any

import msgpack

from pygatewayworker.gateway.limits import (
    DEFAULT_MAX_PACKET,
    MAX_CLIENT_MESSAGE,
    MAX_KEY_LENGTH,
    MAX_SESSION,
)

__all__ = [
    "Cmd",
    "ProtocolError",
    "PacketTooLarge",
    "InvalidText",
    "Decoder",
    "encode",
    "pack_session",
    "unpack_session",
    "HEADER",
    "DEFAULT_MAX_PACKET",
    "MAX_SESSION",
    "MAX_CLIENT_MESSAGE",
    "check_packet_size",
    "check_close",
    "MAX_CLOSE_REASON",
    "MAX_KEY_LENGTH",
    "MAX_CONNECTION_ROWS",
    "ROUTES_CHANGES",
    "ROUTES_STATE",
    "ROUTES_STATE_END",
    "NO_WS_CONNECT",
]

HEADER = struct.Struct("!I")


class ProtocolError(Exception):
    """The peer sent bytes that are not a valid packet. Close the link."""


class PacketTooLarge(ValueError):
    """Our caller's data would make a packet (or session) over the internal link
    limit. Raised where the data is made, before anything is sent: the link stays up,
    and only that call fails."""


class InvalidText(ValueError):
    """A ``str`` our caller gave is not valid Unicode text: it holds a lone surrogate
    (``"\\ud800"``, which ``json.loads`` lets through), so it has no UTF-8 form.
    Raised where the packet is made: nothing is sent, only that call fails."""


def _invalid_text(what: Cmd | str, exc: UnicodeEncodeError) -> InvalidText:
    """The :class:`InvalidText` for what msgpack could not encode in ``what`` (a
    packet's command, or ``"session"``)."""
    name = what.name if isinstance(what, Cmd) else what
    bad = exc.object[exc.start : exc.end]
    return InvalidText(f"{name}: a text holds {bad!r}, a lone surrogate with no UTF-8 form")


def check_packet_size(size: int, cmd: Cmd | int, limit: int = DEFAULT_MAX_PACKET) -> None:
    """Raise :class:`PacketTooLarge` when a ``cmd`` body of ``size`` bytes exceeds
    ``limit``."""
    if size > limit:
        name = Cmd(cmd).name if _MIN_CMD <= cmd <= _MAX_CMD else str(cmd)
        raise PacketTooLarge(
            f"{name} of {size} bytes exceeds the internal link limit of {limit} bytes; "
            f"nothing was sent (send large data another way, e.g. a URL to fetch)"
        )


MAX_CLOSE_REASON = 123
"""Longest close reason in UTF-8 bytes (a close frame's payload is at most 125)."""


def check_close(code: object, reason: object) -> tuple[int, str]:
    """``(code, reason)`` of a ``close_client``, or ``ValueError``/``TypeError`` saying
    what is wrong: ``code`` 1000 (normal) or 3000-4999 (the ranges RFC 6455 leaves to
    libraries and applications; the others are the protocol's own or reserved),
    ``reason`` a str of at most :data:`MAX_CLOSE_REASON` UTF-8 bytes."""
    if type(code) is not int:
        raise TypeError(f"close code must be an int, got {type(code).__name__}")
    if code != 1000 and not 3000 <= code <= 4999:
        raise ValueError(f"close code {code} is not 1000 or 3000-4999")
    if type(reason) is not str:
        raise TypeError(f"close reason must be a str, got {type(reason).__name__}")
    if len(reason.encode("utf-8", "surrogatepass")) > MAX_CLOSE_REASON:
        raise ValueError(f"close reason is over {MAX_CLOSE_REASON} bytes in UTF-8")
    return code, reason


class Cmd(IntEnum):
    """Every packet kind. Field lists follow the command, in wire order."""

    # ---- link handshake and upkeep -------------------------------------------------
    HELLO = 1
    """link -> gateway, first packet: ``[HELLO, role, name, secret, pid]`` or
    ``[HELLO, role, name, secret, pid, features]``. ``role`` is ``"worker"``
    (receives client events) or ``"client"`` (push client, receives none). A wrong
    secret gets ``ERROR`` then close. ``features`` (optional, a dict) is sent only
    by a worker that has some: ``{"hooks": [...]}`` with ``"authenticate"`` (its
    app has the hook: it answers :attr:`AUTHENTICATE`) and/or
    :data:`NO_WS_CONNECT` (its app has no ``on_websocket_connect``: the gateway
    does not send it :attr:`EV_WS_CONNECT`). Gateways older than the hooks refuse
    a 6-field ``HELLO``; a gateway that does not know a feature ignores it."""
    WELCOME = 2
    """gateway -> link: ``[WELCOME, info]``; ``info`` is a dict with ``lan_ip``,
    ``port`` (internal), ``public_host``, ``public_port``, ``name``, ``pid``."""
    PING = 3
    """either way, keep-alive: ``[PING]``; answered with ``[PONG]``."""
    PONG = 4
    """``[PONG]``."""
    ERROR = 5
    """gateway -> link: ``[ERROR, req, message]``; ``req`` is 0 when the error is not
    the answer to a query (bad command, wrong secret)."""
    WORKER_LEAVE = 6
    """worker -> gateway: ``[WORKER_LEAVE]``. The gateway stops routing new events to
    this worker, holds the next events of its clients until the worker releases them
    (``RELEASE``; then they go to other workers, in order), and answers
    ``LEAVE_ACK``. Every event sent before the ack reaches the worker before the ack
    (one ordered stream), so the worker handles everything it received and then
    closes: nothing is lost, and a client's events do not run on two workers at once
    (within the bounds given on ``RELEASE``)."""
    LEAVE_ACK = 7
    """gateway -> worker: ``[LEAVE_ACK]``."""
    RELEASE = 9
    """leaving worker -> gateway, after ``LEAVE_ACK``: ``[RELEASE, conn_ids, others]``.
    After ``WORKER_LEAVE`` the gateway *holds* the next events of the worker's clients
    (so a client's events never run on two workers at once). ``others`` true: every
    client of the worker except ``conn_ids`` (those still have events running or
    queued there) is released; false: the clients ``conn_ids`` are released (their
    events there are finished). A released client's held events go, in order, to
    another worker, encoded then (with the session as it is then). Everything still
    held is released when the worker's link ends, when the gateway stops, and when
    more than ``pending_event_limit`` events are held."""
    ROUTES = 8
    """gateway -> link: ``[ROUTES, kind, uids_added, uids_removed, groups_added,
    groups_removed]`` (lists of str): which uids and groups have members on this
    gateway. Right after ``WELCOME`` the gateway sends its whole state: packets of
    kind :data:`ROUTES_STATE`, the last one :data:`ROUTES_STATE_END` (a small state
    is that one packet); the receiver replaces what it knew once the state is
    complete. Then one :data:`ROUTES_CHANGES` packet (or a few, for many keys) per
    loop turn in which a uid or group appeared (first member) or vanished (last
    member gone). Links use it to send ``SEND_TO_UID``/``SEND_TO_GROUP``
    only to gateways that have members; until a link has the state it sends to every
    gateway."""

    # ---- client events, gateway -> the client's business worker ---------------------
    # All events share one shape: [EV_*, conn_id, session, remote_ip, remote_port, payload]
    EV_CONNECT = 10
    """a TCP connection was accepted; payload ``None``."""
    EV_WS_CONNECT = 11
    """the WebSocket handshake completed; payload is a dict: ``path`` (str, without the
    query), ``query`` (raw query string), ``headers`` (dict, lower-case names, repeated
    headers joined with ``, ``), ``cookies`` (dict), ``remote_ip``, ``remote_port``."""
    EV_MESSAGE = 12
    """a client message; payload ``data`` (str for text frames, bytes for binary)."""
    EV_CLOSE = 13
    """the connection is gone; payload ``None``. ``session`` is its last value."""

    # ---- the authenticate hook (only to workers that announced it in HELLO) ----------
    AUTHENTICATE = 15
    """gateway -> worker: ``[AUTHENTICATE, req, info]``: run the app's
    ``authenticate`` hook for a WebSocket upgrade request that the gateway holds
    (no ``101`` yet, no conn_id). ``info`` is the dict of ``EV_WS_CONNECT``.
    Answered with :attr:`AUTH_REPLY` (the gateway gives up after its
    ``auth_timeout``)."""
    AUTH_REPLY = 16
    """worker -> gateway: ``[AUTH_REPLY, req, status, body, headers, uid, groups,
    session]``. ``status`` 0: accept, bind ``uid`` (str or ``None``), join
    ``groups`` (list of str) and set ``session`` (packed bytes or ``None``) before
    the ``101``; else the HTTP status (300..599) of the refusal, with ``body``
    (bytes, at most 4 KiB) and ``headers`` (list of ``[name, value]`` str pairs)."""

    # ---- commands, worker/client -> gateway, no answer ------------------------------
    SEND_TO_CLIENT = 20
    """``[SEND_TO_CLIENT, conn_id, data]``."""
    SEND_TO_ALL = 21
    """``[SEND_TO_ALL, data, conn_ids, exclude]``: ``conn_ids`` is ``None`` (every client
    of this gateway) or a list (only those); ``exclude`` is ``None`` or a list."""
    SEND_TO_UID = 22
    """``[SEND_TO_UID, uids, data]``; ``uids`` is a list of str."""
    SEND_TO_GROUP = 23
    """``[SEND_TO_GROUP, groups, data, exclude]``; ``groups`` a list of str, ``exclude``
    ``None`` or a list of conn_ids."""
    CLOSE_CLIENT = 24
    """``[CLOSE_CLIENT, conn_id, data]`` or ``[CLOSE_CLIENT, conn_id, data, code,
    reason]``; ``data`` ``None`` or a last message; the close happens after the send
    buffer is flushed, with close ``code`` (1000 or 3000-4999, see
    :func:`check_close`; 1000 when left out) and ``reason`` (str, at most 123 UTF-8
    bytes). Senders leave the two fields out for a plain 1000 close, so gateways
    older than them still understand it."""
    DESTROY_CLIENT = 25
    """``[DESTROY_CLIENT, conn_id]``: drop the TCP connection at once."""
    BIND_UID = 26
    """``[BIND_UID, conn_id, uid]``; rebinding replaces the previous uid."""
    UNBIND_UID = 27
    """``[UNBIND_UID, conn_id, uid]``; only unbinds when the connection is bound to
    ``uid`` (the original ignored the argument)."""
    JOIN_GROUP = 28
    """``[JOIN_GROUP, conn_id, group]``."""
    LEAVE_GROUP = 29
    """``[LEAVE_GROUP, conn_id, group]``."""
    UNGROUP = 30
    """``[UNGROUP, group]``: dissolve the group on this gateway."""
    SET_SESSION = 31
    """``[SET_SESSION, conn_id, session]``: replace (``session`` is packed bytes)."""
    UPDATE_SESSION = 32
    """``[UPDATE_SESSION, conn_id, partial]``: recursive merge of dict ``partial``."""

    DECLARED_CLOSED = 33
    """worker -> gateway: ``[DECLARED_CLOSED, conn_ids]``. This worker ran
    ``on_close`` for these clients while this gateway process was unreachable past
    ``gateway_lost_timeout`` and no register listed it (a long hang: SIGSTOP, a VM
    pause). The gateway closes them (1001) *without* ``EV_CLOSE``: their on_close
    was true, and runs once."""

    # ---- queries: [Q_*, req, *args] -> [REPLY, req, result] or [ERROR, req, msg] ----
    REPLY = 40
    """gateway -> asker: ``[REPLY, req, result]``."""
    Q_CLIENT_INFO = 41
    """``[Q_CLIENT_INFO, req, conn_id]`` -> ``None`` when offline, else
    ``{"uid": str|None, "session": bytes|None, "groups": [str]}``. Serves is_online,
    get_uid_by_client_id and get_session."""
    Q_UIDS = 42
    """``[Q_UIDS, req, uids]`` -> ``{uid: [conn_id, ...]}`` holding only uids that have
    at least one connection here. Serves is_uid_online, get_client_id_by_uid and the
    batch forms."""
    Q_GROUPS = 43
    """``[Q_GROUPS, req, groups, what]``: ``groups`` is a list of str, or ``None`` for
    *all clients of this gateway* (reported under the key ``""``); ``what`` is one of
    ``"count"`` -> ``{group: int}``, ``"ids"`` -> ``{group: [conn_id]}``,
    ``"sessions"`` -> ``{group: {conn_id: session}}``, ``"uids"`` -> ``{group: [uid]}``.
    Every requested group appears in the result (empty when unknown here)."""
    Q_ALL_GROUPS = 44
    """``[Q_ALL_GROUPS, req, what]`` -> ``{group: ...}`` for every non-empty group here,
    ``what`` as in ``Q_GROUPS``."""
    Q_ALL_UIDS = 45
    """``[Q_ALL_UIDS, req]`` -> ``[uid, ...]`` bound on this gateway."""
    Q_CONNECTIONS = 46
    """``[Q_CONNECTIONS, req, after, limit]`` -> ``[rows, next]``: a page of at most
    ``limit`` (1..:data:`MAX_CONNECTION_ROWS`) connections, those whose conn_id is
    above ``after`` (an int, 0 for the first page) in conn_id order, and ``next``,
    the ``after`` of the next page (``None``: this was the last). A row is a dict:
    ``client_id``, ``remote``, ``uid``, ``groups``, ``age`` (s), ``bytes_in``,
    ``bytes_out``. For operators (``start.py connections``). A gateway answers each
    page in one turn of its loop; ``[Q_CONNECTIONS, req]`` (every row in one list)
    takes a turn of about 2 us per connection and does not fit a packet beyond some
    60k connections."""
    Q_STATS = 47
    """``[Q_STATS, req]`` -> dict of counters (connections, messages in/out, send
    failures, workers linked...). For operators."""

    # ---- the decider table (gateway.decider), asked of a key's decider gateway -------
    # ``epoch`` (int) names the gateway set the asker chose the decider from; ``key``,
    # ``member`` and ``conn`` are str. Internal: not part of the Gateway API.
    Q_DECIDE_JOIN = 48
    """``[Q_DECIDE_JOIN, req, epoch, key, member, conn]`` -> ``[member_new, key_new]``,
    or ``None`` when the key is unknown here (seed it, then ask again)."""
    Q_DECIDE_LEAVE = 49
    """``[Q_DECIDE_LEAVE, req, epoch, key, member, conn]`` -> ``[member_last,
    key_last]``, or ``None`` when the key is unknown here."""
    Q_DECIDE_SEED = 50
    """``[Q_DECIDE_SEED, req, epoch, key, members]`` (``{member: [conn, ...]}``, read
    from the live groups) -> ``True`` when taken, ``False`` when the key was already
    held (the first seed wins)."""


NO_WS_CONNECT = "no_websocket_connect"
"""The ``HELLO`` feature of a worker whose app has no ``on_websocket_connect``: its
gateways skip ``EV_WS_CONNECT`` (the request's headers, encoded for every connect)."""

MAX_CONNECTION_ROWS = 5000
"""Rows per ``Q_CONNECTIONS`` page at most (some 10 ms of the gateway's loop)."""

ROUTES_CHANGES = 0
"""``ROUTES`` kind: keys that appeared or vanished."""
ROUTES_STATE = 1
"""``ROUTES`` kind: part of the whole state, more parts follow."""
ROUTES_STATE_END = 2
"""``ROUTES`` kind: the last (or only) part of the whole state."""

_MIN_CMD = min(Cmd)
_MAX_CMD = max(Cmd)
_COMMANDS: dict[int, Cmd] = {int(cmd): cmd for cmd in Cmd}
"""Command number -> member: a dict lookup per packet (``Cmd(n)`` goes through the
enum machinery's ``__call__``, about ten times slower)."""
_packb = msgpack.Packer(use_bin_type=True, autoreset=True).pack
_pack_len = HEADER.pack


def encode(cmd: Cmd, *fields: Any) -> bytes:
    """Return the wire bytes of one packet ``[cmd, *fields]``.

    Raises ``TypeError`` when a field is not msgpack-serialisable (our bug, not the
    peer's), :class:`InvalidText` for a ``str`` with a lone surrogate and
    :class:`PacketTooLarge` when the packet would exceed the link limit (the peer
    would have to close the whole link for it).
    """
    try:
        body = _packb([int(cmd), *fields])
    except UnicodeEncodeError as exc:
        raise _invalid_text(cmd, exc) from None
    if len(body) > DEFAULT_MAX_PACKET:
        check_packet_size(len(body), cmd)
    return _pack_len(len(body)) + body


def encode_body(cmd: Cmd, fields: tuple[Any, ...]) -> bytes:
    """Like :func:`encode` with the fields given as one tuple (saves a splat)."""
    try:
        body = _packb((int(cmd), *fields))
    except UnicodeEncodeError as exc:
        raise _invalid_text(cmd, exc) from None
    if len(body) > DEFAULT_MAX_PACKET:
        check_packet_size(len(body), cmd)
    return _pack_len(len(body)) + body


class Decoder:
    """Incremental decoder: feed it bytes as they arrive, get whole packets out.

    ``feed`` returns a list of packets (each a ``list`` whose item 0 is an ``int``
    command). It raises :class:`ProtocolError` when a length prefix exceeds
    ``max_packet``, a body is not valid msgpack, or a body is not an array that starts
    with a known command. After an error the decoder is unusable: close the link.
    """

    __slots__ = ("_buf", "_max", "_need")

    def __init__(self, max_packet: int = DEFAULT_MAX_PACKET) -> None:
        self._buf = bytearray()
        self._max = max_packet
        self._need = -1  # body length of the packet being read, -1: header pending

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a packet."""
        return len(self._buf)

    def feed(self, data: bytes, limit: int | None = None) -> list[list[Any]]:
        """Add ``data`` and return every packet it completes, in order; with
        ``limit``, at most that many (the rest stay buffered: ``feed(b"", n)`` takes
        the next ones; ``limit=0`` only buffers). A gateway decodes a large read in
        bounded batches this way (``gateway.pacing``)."""
        buf = self._buf
        buf += data
        out: list[list[Any]] = []
        pos = 0
        size = len(buf)
        need = self._need
        left = -1 if limit is None else limit  # packets still wanted; -1: all
        while left:
            if need < 0:
                if size - pos < 4:
                    break
                (need,) = HEADER.unpack_from(buf, pos)
                pos += 4
                if need > self._max:
                    raise ProtocolError(
                        f"packet of {need} bytes exceeds the limit of {self._max} bytes"
                    )
                if need == 0:
                    raise ProtocolError("empty packet")
            if size - pos < need:
                break
            body = bytes(buf[pos : pos + need])
            pos += need
            need = -1
            out.append(_unpack_packet(body))
            left -= 1
        self._need = need
        if pos:
            del buf[:pos]
        return out


def _unpack_packet(body: bytes) -> list[Any]:
    try:
        packet = msgpack.unpackb(body, raw=False, strict_map_key=False, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"malformed msgpack body: {exc.__class__.__name__}") from None
    if type(packet) is not list or not packet or type(packet[0]) is not int:
        raise ProtocolError("packet is not an array starting with a known command")
    cmd = _COMMANDS.get(packet[0])
    if cmd is None:
        if _MIN_CMD <= packet[0] <= _MAX_CMD:
            raise ProtocolError(f"unknown command {packet[0]}")
        raise ProtocolError("packet is not an array starting with a known command")
    packet[0] = cmd
    return packet


def pack_session(session: dict[str, Any]) -> bytes:
    """Pack a session dict for the wire and for storage in the gateway. Raises
    :class:`PacketTooLarge` when it packs to more than :data:`MAX_SESSION` bytes,
    :class:`InvalidText` for a ``str`` with a lone surrogate."""
    try:
        packed: bytes = _packb(session)
    except UnicodeEncodeError as exc:
        raise _invalid_text("session", exc) from None
    if len(packed) > MAX_SESSION:
        raise PacketTooLarge(
            f"session of {len(packed)} bytes exceeds the limit of {MAX_SESSION} bytes "
            f"(it travels with every event of its client); not stored"
        )
    return packed


def unpack_session(blob: bytes | None) -> dict[str, Any]:
    """Unpack a session; ``None`` or empty bytes give ``{}``.

    Raises :class:`ProtocolError` if ``blob`` is not a packed dict.
    """
    if not blob:
        return {}
    try:
        value = msgpack.unpackb(blob, raw=False, strict_map_key=False)
    except Exception:
        raise ProtocolError("session is not valid msgpack") from None
    if not isinstance(value, dict):
        raise ProtocolError("session is not a dict")
    return value
