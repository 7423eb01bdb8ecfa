"""What each GatewayClient command means to our gateway, and how the PHP gateway
would answer it.

How this works
--------------
:func:`translate` turns one decoded :class:`~gateway.gatewayprotocol.PhpPacket` into
an *action*, without touching any gateway state:

- :class:`Execute`: internal command packets (``[Cmd.SEND_TO_GROUP, groups, data,
  exclude]``... exactly as a worker or push client sends them over
  ``gateway.protocol``) to execute in order. Sends and state changes; no reply.
- :class:`Answer`: a query. ``answer.compute(ask)`` runs internal queries through
  ``ask(Cmd.Q_*, *args)`` (the arguments after ``req`` of that query packet, e.g.
  ``ask(Cmd.Q_GROUPS, ["room"], "count")``) and returns the PHP value of the reply,
  shaped as GatewayWorker's gateway shapes it (``encode_reply`` writes it).
- :class:`Authenticate`: the ``GATEWAY_CLIENT_CONNECT`` packet and its secret.
- :class:`Nothing`: a keep-alive ``PING``.

A command we cannot carry out raises :class:`CommandError`: an unsupported command
(``unsupported`` is true: PHP BusinessWorkers and gateway-to-worker events), or a
malformed one (bad JSON ext data, a session that is not an array, a message that is
an array...). ``compute`` raises ``CommandError``, ``ValueError``/``TypeError`` (our
query handlers refusing an argument) or ``PhpSerializeError`` (a value PHP cannot
hold). The link glue logs each of those with the command name, and answers queries
with an error reply, never with an empty-looking result.

Sessions are msgpack dicts in our gateways and serialized PHP arrays in GatewayClient:
:func:`session_from_php` and :func:`session_to_php` convert at this boundary, so a
session set from PHP is a dict in ``context.session`` and one set in Events reads as
an array in PHP (see ``gateway.phpserialize`` for the value mapping).

This module is pure: no sockets, no asyncio, no gateway internals.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pygatewayworker.gateway.client_id import MAX_CONN_ID
from pygatewayworker.gateway.gatewayprotocol import PhpCmd, PhpPacket
from pygatewayworker.gateway.phpserialize import PhpSerializeError, dumps, loads
from pygatewayworker.gateway.protocol import Cmd, pack_session, unpack_session
from pygatewayworker.runtime import jsondepth
from pygatewayworker.runtime.jsondepth import TooDeep

__all__ = [
    "Action",
    "Answer",
    "Ask",
    "Authenticate",
    "CommandError",
    "Execute",
    "Nothing",
    "RawFrames",
    "SELECT_FIELDS",
    "session_from_php",
    "session_to_php",
    "translate",
]

Ask = Callable[..., Any]
"""``ask(Cmd.Q_*, *args)``: the result of one internal query on this gateway."""

SELECT_FIELDS = frozenset({"uid", "groups", "session"})
"""Fields ``CMD_SELECT`` may ask for (all GatewayClient ever asks for)."""
_SELECT_WHERE = frozenset({"groups", "uid", "connection_id"})
_CANONICAL_INT = re.compile(r"-?[1-9][0-9]{0,18}|0")


class CommandError(Exception):
    """A GatewayClient command we refuse (``unsupported``) or that is malformed."""

    def __init__(self, command: str, message: str, unsupported: bool = False) -> None:
        super().__init__(f"{command}: {message}")
        self.command = command
        self.unsupported = unsupported


class RawFrames(bytes):
    """A "raw" message (``FLAG_NOT_CALL_ENCODE``): ``frames`` complete WebSocket
    frames to write to the client as they are. The glue turns it into the gateway's
    pre-encoded frame type."""

    frames: int


@dataclass(slots=True, frozen=True)
class Execute:
    """Internal command packets to execute in order; ``raw``: some field is
    :class:`RawFrames`."""

    packets: list[list[Any]]
    raw: bool = False


@dataclass(slots=True, frozen=True)
class Answer:
    """A query: ``compute(ask)`` is the PHP value to reply with."""

    compute: Callable[[Ask], Any] = field(repr=False)


@dataclass(slots=True, frozen=True)
class Authenticate:
    """``GATEWAY_CLIENT_CONNECT`` with this ``secret_key``."""

    secret: str = field(repr=False)


@dataclass(slots=True, frozen=True)
class Nothing:
    """A keep-alive: nothing to do, nothing to answer."""


Action = Execute | Answer | Authenticate | Nothing


def translate(packet: PhpPacket) -> Action:
    """The action for one GatewayClient packet. Raises :class:`CommandError`."""
    try:
        handler = _HANDLERS[packet.cmd]
    except KeyError:
        raise CommandError(packet.name, _why_unsupported(packet.cmd), unsupported=True) from None
    return handler(packet)


def _why_unsupported(cmd: int) -> str:
    if cmd == PhpCmd.WORKER_CONNECT:
        return (
            "a PHP BusinessWorker cannot link to this gateway; write the Events in "
            "Python (pygatewayworker BusinessWorker) and push from PHP with GatewayClient"
        )
    if cmd in (PhpCmd.ON_CONNECT, PhpCmd.ON_MESSAGE, PhpCmd.ON_CLOSE, PhpCmd.ON_WEBSOCKET_CONNECT):
        return "client events go from gateways to workers, never to a gateway"
    return "unknown command; this gateway speaks GatewayClient's commands only"


# ---- sessions -----------------------------------------------------------------------


def session_from_php(data: bytes, command: str = "session") -> dict[Any, Any]:
    """A serialized PHP session array as the dict our gateways store. PHP strings
    become ``str`` when they are UTF-8, ``bytes`` otherwise."""
    try:
        value = loads(data, text=True)
    except PhpSerializeError as exc:
        raise CommandError(command, f"the session is not PHP plain data: {exc}") from None
    if isinstance(value, list):
        return dict(enumerate(value))
    if isinstance(value, dict):
        return value
    raise CommandError(command, f"a session must be an array, not {type(value).__name__}")


def session_to_php(blob: bytes | None) -> bytes:
    """A stored session as PHP keeps it: the serialized array, ``b""`` for none.
    Raises ``PhpSerializeError`` for a value PHP cannot hold (a session set in
    Python with, say, a key ``True``)."""
    if not blob:
        return b""
    return dumps(unpack_session(blob))


# ---- decoding the parts of a packet -----------------------------------------------------


def _text(packet: PhpPacket, raw: bytes, what: str) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise CommandError(packet.name, f"{what} is not UTF-8 text") from None


def _json(packet: PhpPacket) -> Any:
    try:
        return jsondepth.loads(packet.ext_data)
    except TooDeep as exc:
        raise CommandError(packet.name, f"ext_data is {exc}") from None
    except ValueError:
        raise CommandError(packet.name, "ext_data is not JSON") from None


def _names(packet: PhpPacket, value: Any, what: str) -> list[str]:
    """uids or groups from JSON: a list (or an object: its values) of str/int."""
    items = value.values() if isinstance(value, dict) else value
    if not isinstance(items, Iterable) or isinstance(items, str):
        raise CommandError(packet.name, f"{what} must be a list")
    out: list[str] = []
    for item in items:
        if type(item) is str:
            out.append(item)
        elif type(item) is int:
            out.append(str(item))
        else:
            raise CommandError(packet.name, f"{what} must be strings or ints")
    return out


def _conn_ids(packet: PhpPacket, value: Any, what: str, keys: bool) -> list[int]:
    """Connection ids from JSON: an object's keys (``keys``, as PHP looks them up
    with ``isset``) or values, or a list's values. Ids that cannot exist are dropped
    (the PHP gateway would not find them either)."""
    if isinstance(value, dict):
        items: Iterable[Any] = value.keys() if keys else value.values()
    elif isinstance(value, list):
        items = value
    else:
        raise CommandError(packet.name, f"{what} must be an object or a list")
    out: list[int] = []
    for item in items:
        if type(item) is str and item.isascii() and item.isdigit():
            item = int(item)
        if type(item) is not int:
            raise CommandError(packet.name, f"{what} must hold connection ids")
        if 0 < item <= MAX_CONN_ID:
            out.append(item)
    return out


def _message(packet: PhpPacket, allow_raw: bool = True) -> str | bytes:
    """The message of a send: UTF-8 text becomes a text frame, other bytes a binary
    frame (the PHP gateway would send invalid text, which browsers refuse); "raw"
    bodies must be complete WebSocket frames, written as they are."""
    body: Any = packet.body
    if not packet.body_is_scalar:
        try:
            body = loads(body)
        except PhpSerializeError as exc:
            raise CommandError(packet.name, f"the message is not PHP plain data: {exc}") from None
        if body is None:
            body = b""
        elif type(body) is not bytes:
            raise CommandError(
                packet.name, f"a message must be a string, not {type(body).__name__}"
            )
    if packet.raw and allow_raw:
        return _raw_frames(packet, body)
    try:
        return body.decode()
    except UnicodeDecodeError:
        return bytes(body)


_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")


def _raw_frames(packet: PhpPacket, data: bytes) -> RawFrames:
    """``data`` as :class:`RawFrames`, after checking it is whole unmasked frames: a
    broken one would corrupt the client's stream for every later message."""
    pos = count = 0
    while pos < len(data):
        if len(data) - pos < 2 or data[pos + 1] & 0x80 or data[pos] & 0x70:
            raise CommandError(packet.name, "a raw message must be whole WebSocket frames")
        size = data[pos + 1] & 0x7F
        pos += 2
        if size == 126 and len(data) - pos >= 2:
            (size,) = _U16.unpack_from(data, pos)
            pos += 2
        elif size == 127 and len(data) - pos >= 8:
            (size,) = _U64.unpack_from(data, pos)
            pos += 8
        elif size >= 126:
            pos = len(data) + 1
        pos += size
        count += 1
    if pos != len(data) or not count:
        raise CommandError(packet.name, "a raw message must be whole WebSocket frames")
    frames = RawFrames(data)
    frames.frames = count
    return frames


def _php_key(name: str) -> int | str:
    """A group name as a PHP array key: ``"123"`` is the int 123 in PHP."""
    if _CANONICAL_INT.fullmatch(name):
        number = int(name)
        if -(2**63) <= number < 2**63:
            return number
    return name


# ---- sends and state changes --------------------------------------------------------------


def _send_to_one(p: PhpPacket) -> Action:
    return Execute([[Cmd.SEND_TO_CLIENT, p.connection_id, _message(p)]], p.raw)


def _send_to_all(p: PhpPacket) -> Action:
    message = _message(p)
    conn_ids: list[int] | None = None
    exclude: list[int] | None = None
    if p.ext_data:
        ext = _json(p)
        if not isinstance(ext, dict):
            raise CommandError(p.name, "ext_data must be a JSON object")
        if "connections" in ext:  # the PHP gateway ignores exclude then, and so do we
            conn_ids = _conn_ids(p, ext["connections"], "connections", keys=False)
        elif ext.get("exclude"):
            exclude = _conn_ids(p, ext["exclude"], "exclude", keys=True) or None
    return Execute([[Cmd.SEND_TO_ALL, message, conn_ids, exclude]], p.raw)


def _send_to_uid(p: PhpPacket) -> Action:
    uids = _names(p, _json(p), "uids")
    return Execute([[Cmd.SEND_TO_UID, uids, _message(p)]], p.raw)


def _send_to_group(p: PhpPacket) -> Action:
    ext = _json(p)
    if not isinstance(ext, dict) or "group" not in ext:
        raise CommandError(p.name, 'ext_data must be {"group": [...], "exclude": ...}')
    groups = _names(p, ext["group"], "group")
    exclude = ext.get("exclude")
    excluded = _conn_ids(p, exclude, "exclude", keys=True) if exclude else None
    return Execute([[Cmd.SEND_TO_GROUP, groups, _message(p), excluded or None]], p.raw)


def _kick(p: PhpPacket) -> Action:
    # closeClient($id) sends a null body (no last message); the raw flag is ignored,
    # as the PHP gateway does.
    message = None if p.body == b"N;" and not p.body_is_scalar else _message(p, False)
    return Execute([[Cmd.CLOSE_CLIENT, p.connection_id, message]])


def _destroy(p: PhpPacket) -> Action:
    return Execute([[Cmd.DESTROY_CLIENT, p.connection_id]])


def _bind_uid(p: PhpPacket) -> Action:
    return Execute([[Cmd.BIND_UID, p.connection_id, _text(p, p.ext_data, "the uid")]])


def _unbind_uid(p: PhpPacket) -> Action:
    # Ours unbinds only when the connection is bound to that uid (the PHP gateway
    # ignored the argument; see docs/php.md).
    return Execute([[Cmd.UNBIND_UID, p.connection_id, _text(p, p.ext_data, "the uid")]])


def _join_group(p: PhpPacket) -> Action:
    return Execute([[Cmd.JOIN_GROUP, p.connection_id, _text(p, p.ext_data, "the group")]])


def _leave_group(p: PhpPacket) -> Action:
    return Execute([[Cmd.LEAVE_GROUP, p.connection_id, _text(p, p.ext_data, "the group")]])


def _ungroup(p: PhpPacket) -> Action:
    return Execute([[Cmd.UNGROUP, _text(p, p.ext_data, "the group")]])


def _set_session(p: PhpPacket) -> Action:
    if not p.ext_data:
        return Execute([[Cmd.SET_SESSION, p.connection_id, None]])
    session = session_from_php(p.ext_data, p.name)
    return Execute([[Cmd.SET_SESSION, p.connection_id, pack_session(session)]])


def _update_session(p: PhpPacket) -> Action:
    if not p.ext_data:
        return Execute([])
    return Execute([[Cmd.UPDATE_SESSION, p.connection_id, session_from_php(p.ext_data, p.name)]])


def _ping(p: PhpPacket) -> Action:
    return Nothing()


def _gateway_client_connect(p: PhpPacket) -> Action:
    try:
        info = jsondepth.loads(p.body) if p.body_is_scalar else None
    except ValueError:
        info = None
    secret = info.get("secret_key") if isinstance(info, dict) else None
    if type(secret) is not str:
        raise CommandError(p.name, 'the body must be {"secret_key": "..."}')
    return Authenticate(secret)


# ---- queries ------------------------------------------------------------------------------


def _is_online(p: PhpPacket) -> Action:
    conn_id = p.connection_id
    return Answer(lambda ask: int(conn_id > 0 and ask(Cmd.Q_CLIENT_INFO, conn_id) is not None))


def _get_session_by_client_id(p: PhpPacket) -> Action:
    conn_id = p.connection_id

    def compute(ask: Ask) -> Any:
        info = ask(Cmd.Q_CLIENT_INFO, conn_id) if conn_id else None
        if info is None:
            return None  # offline: PHP's getSession() returns null
        return unpack_session(info["session"])

    return Answer(compute)


def _sessions(members: dict[int, bytes | None]) -> dict[int, bytes]:
    return {conn_id: session_to_php(blob) for conn_id, blob in members.items()}


def _get_all_client_sessions(p: PhpPacket) -> Action:
    return Answer(lambda ask: _sessions(ask(Cmd.Q_GROUPS, None, "sessions")[""]))


def _get_client_sessions_by_group(p: PhpPacket) -> Action:
    group = _text(p, p.ext_data, "the group")
    return Answer(lambda ask: _sessions(ask(Cmd.Q_GROUPS, [group], "sessions")[group]))


def _get_client_count_by_group(p: PhpPacket) -> Action:
    if not p.ext_data:  # getAllClientIdCount(): every client of this gateway
        return Answer(lambda ask: ask(Cmd.Q_GROUPS, None, "count")[""])
    group = _text(p, p.ext_data, "the group")
    return Answer(lambda ask: ask(Cmd.Q_GROUPS, [group], "count")[group])


def _batch_get_client_count_by_group(p: PhpPacket) -> Action:
    groups = _names(p, _json(p), "groups")
    return Answer(lambda ask: dict(ask(Cmd.Q_GROUPS, groups, "count")))


def _get_client_id_by_uid(p: PhpPacket) -> Action:
    uid = _text(p, p.ext_data, "the uid")
    return Answer(lambda ask: ask(Cmd.Q_UIDS, [uid]).get(uid, []))


def _batch_get_client_id_by_uid(p: PhpPacket) -> Action:
    uids = _names(p, _json(p), "uids")

    def compute(ask: Ask) -> Any:
        found = ask(Cmd.Q_UIDS, uids)
        return {uid: found.get(uid, []) for uid in uids}

    return Answer(compute)


def _get_group_id_list(p: PhpPacket) -> Action:
    return Answer(lambda ask: [_php_key(g) for g in ask(Cmd.Q_ALL_GROUPS, "count")])


def _select(p: PhpPacket) -> Action:
    spec = _json(p)
    if not isinstance(spec, dict) or not isinstance(spec.get("fields"), list):
        raise CommandError(p.name, 'ext_data must be {"fields": [...], "where": {...}}')
    fields = spec["fields"]
    if not all(type(f) is str and f in SELECT_FIELDS for f in fields):
        raise CommandError(p.name, f"fields must be among {sorted(SELECT_FIELDS)}")
    where = spec.get("where") or {}
    if not isinstance(where, dict) or not where.keys() <= _SELECT_WHERE:
        raise CommandError(
            p.name, f"where must be an object with keys among {sorted(_SELECT_WHERE)}"
        )
    conditions = [
        (
            key,
            _conn_ids(p, items, key, keys=False)
            if key == "connection_id"
            else _names(p, items, key),
        )
        for key, items in where.items()
    ]
    return Answer(lambda ask: _selected(ask, fields, conditions))


def _selected(ask: Ask, fields: list[str], conditions: list[tuple[str, list[Any]]]) -> Any:
    """``CMD_SELECT``'s reply: ``{conn_id: {field: value}}`` of the connections that
    match any condition (all of this gateway's without conditions)."""
    ids: list[int] = []
    for key, items in conditions:
        if key == "groups":
            members = ask(Cmd.Q_GROUPS, items, "ids")
            ids.extend(c for group in items for c in members[group])
        elif key == "uid":
            bound = ask(Cmd.Q_UIDS, items)
            ids.extend(c for uid in items for c in bound.get(uid, ()))
        else:
            ids.extend(items)
    if not conditions:
        ids = ask(Cmd.Q_GROUPS, None, "ids")[""]
    rows: dict[int, dict[str, Any]] = {}
    for conn_id in dict.fromkeys(ids):
        info = ask(Cmd.Q_CLIENT_INFO, conn_id)
        if info is not None:
            rows[conn_id] = {name: _field(info, name) for name in fields}
    # GatewayClient's getAllGroupUidList/getAllGroupClientIdList stop reading a
    # gateway's rows at the first one without uid or groups: those go last, so the
    # PHP app gets every group (the PHP gateway's order truncated those lists).
    return dict(sorted(rows.items(), key=lambda item: not _complete(item[1])))


def _complete(row: dict[str, Any]) -> bool:
    return all(value for name, value in row.items() if name != "session")


def _field(info: dict[str, Any], name: str) -> Any:
    if name == "uid":
        return info["uid"]
    if name == "groups":
        return {group: group for group in info["groups"]} or None
    return session_to_php(info["session"])


_HANDLERS: dict[int, Callable[[PhpPacket], Action]] = {
    cmd: globals()["_" + cmd.name.lower()] for cmd in PhpCmd if "_" + cmd.name.lower() in globals()
}
"""One handler per supported command, found by name (``SEND_TO_GROUP`` ->
``_send_to_group``); the others are unsupported."""
