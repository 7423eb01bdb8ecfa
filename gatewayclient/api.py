"""The Gateway API: every call of the original GatewayWorker API, in snake_case.

How this works
--------------
:class:`GatewayAPI` works over a mapping ``"ip:port" -> GatewayLink`` that its owner
(a business worker or a push client) keeps up to date; the API never connects by
itself. Its methods are the calls of the table in ``gatewayclient.spec`` (names,
arguments, kind, cost class; a test holds them to it). Three cost classes decide
where a call goes:

- **T** (one gateway): the client_id names its gateway (``gateway.client_id``), so
  the packet goes only there. When that gateway is not linked the call raises
  :class:`~gatewayclient.errors.GatewayUnavailable`.
- **B** (broadcast): one packet, encoded once, written to the linked gateways that
  need it. ``send_to_uid`` and ``send_to_group`` go only to gateways
  that have a connection with one of the uids / a member of one of the groups, as
  each gateway reports (``Cmd.ROUTES``, kept in ``GatewayLink.uids``/``groups``); a
  gateway whose report has not arrived yet gets the packet anyway. A bind or join
  made through this API counts at once for this process's own routing; one made
  by another process counts here once its gateway's report arrives (the same loop
  turn on the gateway, plus one hop). ``send_to_all`` with a list of client_ids (and
  every ``exclude`` list) is split per gateway by decoding the ids, so it goes only
  to the gateways that hold them; plain ``send_to_all`` goes to every gateway.
- **S** (query): asked of every linked gateway at once, each bounded by
  ``query_timeout``; the answers are merged (``gatewayclient.merge``). A gateway
  that does not answer makes the call raise :class:`~gatewayclient.errors.
  QueryTimeout` with the merged answer of the others in ``partial`` (same shape as
  the call's result).

Sends and state commands are plain calls that return ``None`` once the packet is
queued on the link (no awaiting: safe inside any callback). Queries are coroutines.

Arguments are checked before anything is sent: a malformed client_id raises
``gateway.client_id.InvalidClientId``; a uid or group that is not a non-empty ``str``
or an ``int`` raises ``ValueError``; a message that is not ``str`` (text frame) or
``bytes`` (binary frame) raises ``TypeError`` (encode JSON yourself); a message,
session (over ``protocol.MAX_SESSION``, 4 MiB packed) or batch whose packet would
exceed the internal link limit (10 MiB) raises ``PacketTooLarge`` (a ``ValueError``)
and nothing is sent: the gateway would have to close the whole link for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from typing import Any, TypeVar

from pygatewayworker.gateway.client_id import HEX_DIGITS as _HEX
from pygatewayworker.gateway.client_id import decode_client_id
from pygatewayworker.gateway.protocol import (
    MAX_KEY_LENGTH,
    MAX_SESSION,
    Cmd,
    check_close,
    check_packet_size,
    encode,
    pack_session,
    unpack_session,
)
from pygatewayworker.gatewayclient import merge
from pygatewayworker.gatewayclient.errors import (
    GatewayUnavailable,
    LinkClosed,
    QueryTimeout,
    RemoteError,
)
from pygatewayworker.gatewayclient.link import GatewayLink
from pygatewayworker.gatewayclient.spec import Key, Message

__all__ = ["GatewayAPI", "Message", "Key"]

T = TypeVar("T")

_ALL = ""
"""The group name meaning *every client* in group queries (as in the original)."""


ROUTE_CACHE_SIZE = 4096
"""client_ids whose route is cached (most recently used): about 170 bytes each (the
gateway strings are shared), so at most about 0.7 MB per worker or push-client
process however many distinct client_ids it sees (measured: 0.69 MB after 100k).
A hit costs about 0.09 us, a miss about 1.2 us (the gateway address comes from
:data:`_GATEWAYS`, one entry per gateway, instead of the 2 us of a full
``decode_client_id``); the former 65536 entries held about 17 MB."""

_GATEWAYS: dict[str, str] = {}
"""The first 12 hex characters of a client_id (ip and port) -> ``"ip:port"``; one
entry per gateway address seen (bounded by :data:`_GATEWAYS_MAX`)."""
_GATEWAYS_MAX = 4096


@lru_cache(maxsize=ROUTE_CACHE_SIZE)
def _route_of(client_id: str) -> tuple[str, int]:
    prefix = client_id[:12]
    gateway = _GATEWAYS.get(prefix)
    if gateway is None or len(client_id) != 20 or not _HEX.issuperset(client_id):
        address = decode_client_id(client_id)  # validates, raises InvalidClientId
        if len(_GATEWAYS) < _GATEWAYS_MAX:
            _GATEWAYS[prefix] = address.gateway
        return address.gateway, address.conn_id
    conn_id = int(client_id[12:], 16)
    if not conn_id:
        decode_client_id(client_id)  # raises the right InvalidClientId
    return gateway, conn_id


def _may_hold(held: set[str] | None, keys: list[str]) -> bool:
    """Whether a gateway that reported ``held`` (``None``: not reported yet) may have
    members of one of ``keys``."""
    if held is None:
        return True
    if len(keys) == 1:  # most sends name one key: no generator
        return keys[0] in held
    return any(key in held for key in keys)


def route(client_id: object) -> tuple[str, int]:
    """``(gateway "ip:port", conn_id)`` of a client_id; raises ``InvalidClientId``."""
    if client_id.__class__ is not str:
        decode_client_id(client_id)  # raises the right InvalidClientId
    return _route_of(client_id)  # type: ignore[arg-type]


def check_message(message: object) -> None:
    """Raise ``TypeError`` unless ``message`` is ``str`` or ``bytes``."""
    if message.__class__ is str or message.__class__ is bytes or isinstance(message, str | bytes):
        return
    raise TypeError(
        f"message must be str (text frame) or bytes (binary frame), not "
        f"{type(message).__name__}; encode it first (e.g. json.dumps)"
    )


def check_key(value: object, what: str) -> str:
    """A uid or group as ``str``: a non-empty ``str`` of at most ``MAX_KEY_LENGTH``
    characters, or an ``int`` (not ``bool``)."""
    if value.__class__ is str:
        if value and len(value) <= MAX_KEY_LENGTH:  # type: ignore[arg-type]
            return value  # type: ignore[return-value]
    elif isinstance(value, int) and not isinstance(value, bool):
        key = str(int(value))
        if len(key) <= MAX_KEY_LENGTH:
            return key
        value = key  # an int of more digits than a key may have: refused as its str
    elif isinstance(value, str) and value and len(value) <= MAX_KEY_LENGTH:
        return str(value)
    if isinstance(value, str) and value:
        raise ValueError(f"{what} is {len(value)} characters long; at most {MAX_KEY_LENGTH}")
    raise ValueError(f"{what} must be a non-empty str or an int, got {value!r}")


def check_keys(value: object, what: str) -> list[str]:
    """One key or an iterable of keys (list, tuple, set...) -> distinct ``str`` keys."""
    if value.__class__ is str and value and len(value) <= MAX_KEY_LENGTH:  # type: ignore[arg-type]
        return [value]  # type: ignore[list-item]  # the common case, checked at once
    if isinstance(value, str | int | bytes | dict) or not isinstance(value, Iterable):
        return [check_key(value, what)]
    return list(dict.fromkeys(check_key(item, what) for item in value))


def split_client_ids(client_ids: object) -> dict[str, list[int]]:
    """One client_id or an iterable of them -> ``{gateway: [conn_id, ...]}``."""
    if isinstance(client_ids, str):
        client_ids = (client_ids,)
    if not isinstance(client_ids, Iterable):
        raise TypeError(f"expected a client_id or a list of them, got {type(client_ids).__name__}")
    split: dict[str, list[int]] = {}
    for client_id in client_ids:
        gateway, conn_id = route(client_id)
        bucket = split.get(gateway)
        if bucket is None:
            split[gateway] = [conn_id]
        else:
            bucket.append(conn_id)
    return split


def _check_dict(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"{what} must be a dict, not {type(value).__name__}")
    return value


class GatewayAPI:
    """Every Gateway API call over ``links`` (``"ip:port" -> GatewayLink``, owned and
    updated by the caller). ``sent`` counts the packets written by sends.

    ``unlinked`` (optional) returns the gateways that are listed by the registers but
    have no open link right now: S-class queries report them as missing instead of
    silently answering without them.
    """

    __slots__ = ("_links", "_unlinked", "query_timeout", "sent")

    def __init__(
        self,
        links: Mapping[str, GatewayLink],
        query_timeout: float = 5.0,
        unlinked: Callable[[], Iterable[str]] | None = None,
    ) -> None:
        self._links = links
        self._unlinked = unlinked
        self.query_timeout = query_timeout
        self.sent = 0

    # ---- plumbing ------------------------------------------------------------------

    @property
    def links(self) -> Mapping[str, GatewayLink]:
        """The open links by gateway address (read only; for ``gatewayclient.decider``)."""
        return self._links

    @property
    def known_gateways(self) -> frozenset[str]:
        """Every gateway address this process knows: linked, or listed by the
        registers and not linked right now."""
        unlinked = self._unlinked() if self._unlinked is not None else ()
        return frozenset((*self._links, *unlinked))

    def _link_of(self, client_id: object) -> tuple[GatewayLink, int]:
        gateway, conn_id = route(client_id)
        link = self._links.get(gateway)
        if link is None or not link.is_open:
            raise GatewayUnavailable(f"gateway {gateway} of client {client_id} is not linked")
        return link, conn_id

    def _to_client(self, cmd: Cmd, client_id: object, *fields: Any) -> None:
        link, conn_id = self._link_of(client_id)
        link.send(encode(cmd, conn_id, *fields))
        self.sent += 1

    def _broadcast(self, data: bytes) -> None:
        for link in self._links.values():
            if link.is_open:
                link.send(data)
                self.sent += 1

    def _to_holders(self, data: bytes, keys: list[str], uids: bool) -> None:
        """Write ``data`` to every linked gateway that may hold one of the uids
        (``uids`` true) or groups (see :func:`_may_hold`)."""
        for link in self._links.values():
            if link.is_open and _may_hold(link.uids if uids else link.groups, keys):
                link.send(data)
                self.sent += 1

    def _per_gateway(
        self, build: Callable[[str], bytes | None], groups: list[str] | None = None
    ) -> None:
        """Write ``build(gateway)`` to every linked gateway (``None``: skip it); with
        ``groups``, only to those that may hold one of them."""
        for gateway, link in self._links.items():
            if link.is_open and (groups is None or _may_hold(link.groups, groups)):
                data = build(gateway)
                if data is not None:
                    link.send(data)
                    self.sent += 1

    async def _ask_one(self, client_id: object, cmd: Cmd, *args: Any) -> Any:
        link, conn_id = self._link_of(client_id)
        return await link.request(cmd, conn_id, *args, timeout=self.query_timeout)

    async def _ask_all(
        self, cmd: Cmd, args: tuple[Any, ...], combine: Callable[[merge.Answers], T]
    ) -> T:
        """Ask every linked gateway at once; merge; raise QueryTimeout if any is missing."""
        asked: list[GatewayLink] = []
        futures: list[asyncio.Future[Any]] = []
        missing: list[str] = []
        if self._unlinked is not None:
            # Listed but not linked (just joined, unreachable, relinking): its clients
            # would be absent from the answer, so the answer is incomplete.
            missing.extend(a for a in self._unlinked() if a not in self._links)
        for link in list(self._links.values()):
            try:
                futures.append(link.request_future(cmd, *args, timeout=self.query_timeout))
                asked.append(link)
            except LinkClosed:
                missing.append(link.gateway_address)
        results = await asyncio.gather(*futures, return_exceptions=True)
        answers: list[tuple[merge.Origin, Any]] = []
        for link, result in zip(asked, results, strict=True):
            if isinstance(result, QueryTimeout | LinkClosed):
                missing.append(link.gateway_address)
            elif isinstance(result, BaseException):
                raise result
            else:
                answers.append((link, result))
        try:
            merged = combine(answers)
        except (TypeError, ValueError, AttributeError, KeyError) as exc:
            raise RemoteError(f"a gateway sent an unexpected answer to {cmd.name}: {exc}") from None
        if missing:
            raise QueryTimeout(
                f"gateway(s) {', '.join(missing)} did not answer {cmd.name} within "
                f"{self.query_timeout:g} s",
                merged,
                tuple(missing),
            )
        return merged

    # ---- sends (return None) -------------------------------------------------------

    def send_to_client(self, client_id: str, message: Message) -> None:
        """Send ``message`` to one connection."""
        check_message(message)
        self._to_client(Cmd.SEND_TO_CLIENT, client_id, message)

    def send_to_all(
        self,
        message: Message,
        client_ids: Iterable[str] | None = None,
        exclude: Iterable[str] | str | None = None,
    ) -> None:
        """Send to every client, or only to ``client_ids`` (an empty list sends
        nothing), minus ``exclude``. Listed ids go only to the gateways holding them;
        ids on a gateway that is not linked are skipped (those clients are gone)."""
        check_message(message)
        excluded = split_client_ids(exclude) if exclude else {}
        if client_ids is None:
            if not excluded:
                self._broadcast(encode(Cmd.SEND_TO_ALL, message, None, None))
            else:
                self._per_gateway(
                    lambda gw: encode(Cmd.SEND_TO_ALL, message, None, excluded.get(gw))
                )
            return
        targets = split_client_ids(client_ids)
        for gateway, conn_ids in targets.items():
            link = self._links.get(gateway)
            if link is None or not link.is_open:
                continue
            skip = excluded.get(gateway)
            if skip:
                skip_set = set(skip)
                conn_ids = [conn_id for conn_id in conn_ids if conn_id not in skip_set]
                if not conn_ids:
                    continue
            link.send(encode(Cmd.SEND_TO_ALL, message, conn_ids, None))
            self.sent += 1

    def send_to_uid(self, uid: Key | Iterable[Key], message: Message) -> None:
        """Send to every connection bound to the uid (or to any of the uids); only
        gateways holding one of them get the packet."""
        uids = check_keys(uid, "uid")
        check_message(message)
        if uids:
            self._to_holders(encode(Cmd.SEND_TO_UID, uids, message), uids, True)

    def send_to_group(
        self,
        group: Key | Iterable[Key],
        message: Message,
        exclude: Iterable[str] | str | None = None,
    ) -> None:
        """Send to every member of the group(s) minus ``exclude`` (client_ids);
        only gateways with members get the packet."""
        groups = check_keys(group, "group")
        check_message(message)
        if not groups:
            return
        excluded = split_client_ids(exclude) if exclude else {}
        if not excluded:
            self._to_holders(encode(Cmd.SEND_TO_GROUP, groups, message, None), groups, False)
        else:
            self._per_gateway(
                lambda gw: encode(Cmd.SEND_TO_GROUP, groups, message, excluded.get(gw)), groups
            )

    def close_client(
        self, client_id: str, message: Message | None = None, code: int = 1000, reason: str = ""
    ) -> None:
        """Optionally send a last message, then close after flushing with close
        ``code`` (1000 or 3000-4999, else ``ValueError``) and ``reason`` (at most 123
        UTF-8 bytes)."""
        if message is not None:
            check_message(message)
        check_close(code, reason)
        if code == 1000 and not reason:  # the short form: gateways of any age read it
            self._to_client(Cmd.CLOSE_CLIENT, client_id, message)
        else:
            self._to_client(Cmd.CLOSE_CLIENT, client_id, message, code, reason)

    def destroy_client(self, client_id: str) -> None:
        """Drop the connection at once."""
        self._to_client(Cmd.DESTROY_CLIENT, client_id)

    def bind_uid(self, client_id: str, uid: Key) -> None:
        """Bind the connection to ``uid`` (rebinding replaces the previous uid)."""
        key = check_key(uid, "uid")
        link, conn_id = self._link_of(client_id)
        link.send(encode(Cmd.BIND_UID, conn_id, key))
        self.sent += 1
        link.note_uid(key)

    def unbind_uid(self, client_id: str, uid: Key) -> None:
        """Unbind the connection from ``uid`` (only if bound to that uid)."""
        self._to_client(Cmd.UNBIND_UID, client_id, check_key(uid, "uid"))

    def join_group(self, client_id: str, group: Key) -> None:
        """Add the connection to ``group``."""
        key = check_key(group, "group")
        link, conn_id = self._link_of(client_id)
        link.send(encode(Cmd.JOIN_GROUP, conn_id, key))
        self.sent += 1
        link.note_group(key)

    def leave_group(self, client_id: str, group: Key) -> None:
        """Remove the connection from ``group`` (an empty group vanishes)."""
        self._to_client(Cmd.LEAVE_GROUP, client_id, check_key(group, "group"))

    def ungroup(self, group: Key) -> None:
        """Dissolve ``group`` on every gateway (not only those we know hold it: a
        join another process made a moment ago must not survive the dissolution)."""
        self._broadcast(encode(Cmd.UNGROUP, check_key(group, "group")))

    def set_session(self, client_id: str, session: dict[str, Any]) -> None:
        """Replace the connection's session."""
        packed = pack_session(_check_dict(session, "session"))
        self._to_client(Cmd.SET_SESSION, client_id, packed)

    def update_session(self, client_id: str, partial: dict[str, Any]) -> None:
        """Merge ``partial`` into the session (recursively, in the gateway)."""
        link, conn_id = self._link_of(client_id)
        data = encode(Cmd.UPDATE_SESSION, conn_id, _check_dict(partial, "session update"))
        if len(data) > MAX_SESSION:  # the merged session could never be stored
            check_packet_size(len(data), Cmd.UPDATE_SESSION, MAX_SESSION)
        link.send(data)
        self.sent += 1

    # ---- T-class queries -----------------------------------------------------------

    async def is_online(self, client_id: str) -> bool:
        """Whether the connection exists."""
        return await self._ask_one(client_id, Cmd.Q_CLIENT_INFO) is not None

    async def get_session(self, client_id: str) -> dict[str, Any] | None:
        """The connection's session (``{}`` if never set), ``None`` when offline."""
        info = await self._ask_one(client_id, Cmd.Q_CLIENT_INFO)
        return None if info is None else unpack_session(info.get("session"))

    async def get_uid_by_client_id(self, client_id: str) -> str | None:
        """The uid the connection is bound to, ``None`` if unbound or offline."""
        info = await self._ask_one(client_id, Cmd.Q_CLIENT_INFO)
        return None if info is None else info.get("uid")

    # ---- S-class queries -----------------------------------------------------------

    async def is_uid_online(self, uid: Key) -> bool:
        """Whether any connection is bound to ``uid``."""
        key = check_key(uid, "uid")
        return await self._ask_all(Cmd.Q_UIDS, ([key],), lambda a: merge.uids_online(a, [key])[key])

    async def get_client_id_by_uid(self, uid: Key) -> list[str]:
        """The client_ids bound to ``uid``."""
        key = check_key(uid, "uid")
        return await self._ask_all(
            Cmd.Q_UIDS, ([key],), lambda a: merge.client_ids_by_uid(a, [key])[key]
        )

    async def is_uids_online(self, uids: Iterable[Key]) -> dict[str, bool]:
        """``{uid: online}`` for many uids in one round trip."""
        keys = check_keys(uids, "uid")
        return await self._ask_all(Cmd.Q_UIDS, (keys,), lambda a: merge.uids_online(a, keys))

    async def batch_get_client_id_by_uid(self, uids: Iterable[Key]) -> dict[str, list[str]]:
        """``{uid: [client_id, ...]}`` for many uids in one round trip."""
        keys = check_keys(uids, "uid")
        return await self._ask_all(Cmd.Q_UIDS, (keys,), lambda a: merge.client_ids_by_uid(a, keys))

    async def _group_query(self, group: Key, what: str, combine: Callable[..., Any]) -> Any:
        """One group (``""``: every client) -> that group's merged entry."""
        key = _ALL if group == _ALL else check_key(group, "group")
        groups = None if key == _ALL else [key]
        return await self._ask_all(Cmd.Q_GROUPS, (groups, what), lambda a: combine(a, [key])[key])

    async def get_client_count_by_group(self, group: Key = _ALL) -> int:
        """Members of ``group`` (``""``: every client)."""
        count: int = await self._group_query(group, "count", merge.group_counts)
        return count

    async def get_client_sessions_by_group(self, group: Key) -> dict[str, dict[str, Any]]:
        """``{client_id: session}`` of the members of ``group`` (``""``: all)."""
        sessions: dict[str, dict[str, Any]] = await self._group_query(
            group, "sessions", merge.group_sessions
        )
        return sessions

    async def get_client_id_list_by_group(self, group: Key) -> list[str]:
        """The client_ids in ``group`` (``""``: all)."""
        ids: list[str] = await self._group_query(group, "ids", merge.group_client_ids)
        return ids

    async def get_uid_list_by_group(self, group: Key) -> list[str]:
        """The distinct uids bound to members of ``group`` (``""``: all)."""
        uids: list[str] = await self._group_query(group, "uids", merge.group_uids)
        return uids

    async def get_uid_count_by_group(self, group: Key) -> int:
        """How many distinct uids are bound to members of ``group``."""
        return len(await self.get_uid_list_by_group(group))

    async def batch_get_client_count_by_group(self, groups: Iterable[Key]) -> dict[str, int]:
        """``{group: members}`` for many groups in one round trip."""
        keys = check_keys(groups, "group")
        return await self._ask_all(
            Cmd.Q_GROUPS, (keys, "count"), lambda a: merge.group_counts(a, keys)
        )

    async def get_all_client_count(self) -> int:
        """Every connection of the cluster."""
        return await self.get_client_count_by_group(_ALL)

    async def get_all_client_sessions(self) -> dict[str, dict[str, Any]]:
        """``{client_id: session}`` of every connection."""
        return await self.get_client_sessions_by_group(_ALL)

    async def get_all_client_id_list(self) -> list[str]:
        """Every client_id."""
        return await self.get_client_id_list_by_group(_ALL)

    async def get_all_uid_list(self) -> list[str]:
        """Every bound uid, once."""
        return await self._ask_all(Cmd.Q_ALL_UIDS, (), merge.all_uids)

    async def get_all_uid_count(self) -> int:
        """How many distinct uids are bound."""
        return len(await self.get_all_uid_list())

    async def get_all_group_id_list(self) -> list[str]:
        """Every non-empty group."""
        return list(await self._ask_all(Cmd.Q_ALL_GROUPS, ("count",), merge.group_counts))

    async def get_all_group_count(self) -> int:
        """How many non-empty groups exist."""
        return len(await self.get_all_group_id_list())

    async def get_all_group_uid_list(self) -> dict[str, list[str]]:
        """``{group: [uid, ...]}`` for every non-empty group."""
        return await self._ask_all(Cmd.Q_ALL_GROUPS, ("uids",), merge.group_uids)

    async def get_all_group_client_id_list(self) -> dict[str, list[str]]:
        """``{group: [client_id, ...]}`` for every non-empty group."""
        return await self._ask_all(Cmd.Q_ALL_GROUPS, ("ids",), merge.group_client_ids)

    # ---- operator queries ----------------------------------------------------------

    async def get_connections(self) -> list[dict[str, Any]]:
        """One dict per connection of the cluster (``Q_CONNECTIONS``), each with a
        ``"gateway"`` key naming its gateway."""
        return await self._ask_all(Cmd.Q_CONNECTIONS, (), merge.tagged_rows)

    async def get_gateway_stats(self) -> dict[str, dict[str, Any]]:
        """``{gateway address: counters}`` (``Q_STATS``)."""
        return await self._ask_all(Cmd.Q_STATS, (), merge.tagged)
