"""The client/uid/group directory of one gateway process.

How this works
--------------
Every connection that completed its handshake is an :class:`Entry` (``conn_id``,
``uid``, ``groups``, ``session``). The server's connection class subclasses
:class:`Entry`, so one object per connection carries both the socket glue and this
state; tests use plain entries. The :class:`Directory` indexes entries three ways:

- ``conn_id -> entry``
- ``uid -> {conn_id: entry}``   (a connection has at most one uid)
- ``group -> {conn_id: entry}`` (a connection may be in many groups)

Index maps are dicts keyed by conn_id, so sends iterate ``dict.values()`` directly
with no list built, and membership changes are O(1). Empty uids and groups vanish.

Route changes: when a uid or group *appears* on this gateway (its first member) or
*vanishes* (its last member left), the key is added to :attr:`Directory.dirty_uids` /
:attr:`Directory.dirty_groups` and ``on_dirty`` (if set) is called once until
:meth:`Directory.take_route_changes` empties them. The server uses this to tell its
links which uids and groups it holds (``Cmd.ROUTES``), so uid and group sends go
only to the gateways that have members.

This module is pure: no sockets, no asyncio. Invalid arguments (a uid that is not a
non-empty str, an unknown ``what``) raise ``ValueError``/``TypeError``; the server
turns those into an ``ERROR`` packet for the link that sent them.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

from pygatewayworker.gateway.protocol import (
    MAX_KEY_LENGTH,
    MAX_SESSION,
    Cmd,
    ProtocolError,
    check_packet_size,
    pack_session,
    unpack_session,
)

__all__ = ["Entry", "Directory", "WHATS", "merge_session"]

WHATS = frozenset({"count", "ids", "sessions", "uids"})
"""The ``what`` values of group queries (see ``Cmd.Q_GROUPS``)."""


class Entry:
    """The directory's state of one connection. ``groups`` is ``None`` until the
    connection joins its first group (an empty set per idle connection is memory we
    do not need to spend)."""

    __slots__ = ("conn_id", "uid", "groups", "session")

    def __init__(self, conn_id: int) -> None:
        self.conn_id = conn_id
        self.uid: str | None = None
        self.groups: set[str] | None = None
        self.session: bytes | None = None


E = TypeVar("E", bound=Entry)


def _check_name(value: object, what: str) -> str:
    if type(value) is not str:
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{what} must not be empty")
    if len(value) > MAX_KEY_LENGTH:
        raise ValueError(f"{what} is {len(value)} characters long; at most {MAX_KEY_LENGTH}")
    return value


def merge_session(base: dict[str, Any], partial: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``partial`` into ``base`` (in place) and return ``base``.
    Nested dicts merge key by key; any other value (lists too) replaces."""
    for key, value in partial.items():
        old = base.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            merge_session(old, value)
        else:
            base[key] = value
    return base


LISTING_SECONDS = 30.0
"""How long a listing's snapshot of conn_ids serves its pages (:meth:`Directory.page`)."""


class Directory(Generic[E]):
    """Connections, uid bindings, groups and sessions of one gateway process."""

    __slots__ = (
        "_conns",
        "_uids",
        "_groups",
        "dirty_uids",
        "dirty_groups",
        "on_dirty",
        "_listing",
        "_listed_at",
    )

    def __init__(self, on_dirty: Callable[[], None] | None = None) -> None:
        self._conns: dict[int, E] = {}
        self._uids: dict[str, dict[int, E]] = {}
        self._groups: dict[str, dict[int, E]] = {}
        self.dirty_uids: set[str] = set()
        """uids that appeared or vanished since the last :meth:`take_route_changes`."""
        self.dirty_groups: set[str] = set()
        """groups that appeared or vanished since the last :meth:`take_route_changes`."""
        self.on_dirty = on_dirty
        """Called when the first change after a :meth:`take_route_changes` is noted."""
        self._listing: list[int] | None = None  # the conn_ids of a listing (page)
        self._listed_at = 0.0

    # ---- connections -----------------------------------------------------------
    def __len__(self) -> int:
        return len(self._conns)

    def __contains__(self, conn_id: object) -> bool:
        return conn_id in self._conns

    def __iter__(self) -> Iterator[E]:
        return iter(self._conns.values())

    def entries(self) -> Iterable[E]:
        """Every entry (a live view: do not add or remove while iterating)."""
        return self._conns.values()

    def page(self, after: int, limit: int) -> tuple[list[E], int | None]:
        """At most ``limit`` entries whose conn_id is above ``after``, in conn_id
        order, and the conn_id to pass as ``after`` for the next page (``None``: no
        more).

        A listing reads the conn_ids sorted once, at its first page (``after`` 0):
        a linear pass, as they are handed out in increasing order but where the
        counter wrapped. Its later pages look the cursor up in that snapshot (for
        :data:`LISTING_SECONDS` at most), so a page costs its own rows, not the
        whole directory; an entry gone since is left out, one added since is not
        in this listing."""
        keys = self._listing
        if not after or keys is None or time.monotonic() - self._listed_at > LISTING_SECONDS:
            keys = self._listing = sorted(self._conns)
            self._listed_at = time.monotonic()
        start = bisect_right(keys, after)
        chosen = keys[start : start + limit]
        more = start + limit < len(keys)
        if not more:
            self._listing = None  # the listing is complete: drop the snapshot
        conns = self._conns
        entries = [entry for entry in map(conns.get, chosen) if entry is not None]
        return entries, (chosen[-1] if more else None)

    def get(self, conn_id: int) -> E | None:
        """The entry of ``conn_id``, or ``None``."""
        return self._conns.get(conn_id)

    def add(self, entry: E) -> None:
        """Register a new connection. Raises ``ValueError`` for a conn_id in use."""
        if entry.conn_id in self._conns:
            raise ValueError(f"connection id {entry.conn_id} is already in the directory")
        self._conns[entry.conn_id] = entry

    def remove(self, conn_id: int) -> E | None:
        """Forget a connection: unbind its uid and leave all its groups. Returns the
        entry (its ``session`` is still there: the last value for ``EV_CLOSE``)."""
        entry = self._conns.pop(conn_id, None)
        if entry is None:
            return None
        if entry.uid is not None:
            self._drop(self._uids, self.dirty_uids, entry.uid, conn_id)
            entry.uid = None
        if entry.groups:
            for group in entry.groups:
                self._drop(self._groups, self.dirty_groups, group, conn_id)
        entry.groups = None
        return entry

    def _drop(
        self, index: dict[str, dict[int, E]], dirty: set[str], key: str, conn_id: int
    ) -> None:
        members = index.get(key)
        if members is not None:
            members.pop(conn_id, None)
            if not members:
                del index[key]
                self._changed(dirty, key)

    def _members(self, index: dict[str, dict[int, E]], dirty: set[str], key: str) -> dict[int, E]:
        """The member map of ``key``, created (and noted as a change) if new."""
        members = index.get(key)
        if members is None:
            members = index[key] = {}
            self._changed(dirty, key)
        return members

    def _changed(self, dirty: set[str], key: str) -> None:
        if not self.dirty_uids and not self.dirty_groups and self.on_dirty is not None:
            self.on_dirty()
        dirty.add(key)

    # ---- route changes ---------------------------------------------------------
    def take_route_changes(self) -> tuple[list[str], list[str], list[str], list[str]]:
        """``(uids added, uids removed, groups added, groups removed)`` since the last
        call, judged by the state now (a key that appeared and vanished again is
        reported as removed, which the receiver treats as a no-op)."""
        uids, groups = self.dirty_uids, self.dirty_groups
        self.dirty_uids, self.dirty_groups = set(), set()
        u_index, g_index = self._uids, self._groups
        return (
            [u for u in uids if u in u_index],
            [u for u in uids if u not in u_index],
            [g for g in groups if g in g_index],
            [g for g in groups if g not in g_index],
        )

    def route_keys(self) -> tuple[list[str], list[str]]:
        """Every uid and every group held here now (for a link's first ``ROUTES``)."""
        return list(self._uids), list(self._groups)

    # ---- uids ------------------------------------------------------------------
    def bind_uid(self, conn_id: int, uid: str) -> bool:
        """Bind ``conn_id`` to ``uid``, replacing a previous binding. False when the
        connection is unknown."""
        _check_name(uid, "uid")
        entry = self._conns.get(conn_id)
        if entry is None:
            return False
        if entry.uid is not None:
            if entry.uid == uid:
                return True
            self._drop(self._uids, self.dirty_uids, entry.uid, conn_id)
        entry.uid = uid
        self._members(self._uids, self.dirty_uids, uid)[conn_id] = entry
        return True

    def unbind_uid(self, conn_id: int, uid: str) -> bool:
        """Unbind ``conn_id`` if (and only if) it is bound to ``uid``."""
        _check_name(uid, "uid")
        entry = self._conns.get(conn_id)
        if entry is None or entry.uid != uid:
            return False
        self._drop(self._uids, self.dirty_uids, uid, conn_id)
        entry.uid = None
        return True

    # ---- groups ----------------------------------------------------------------
    def join_group(self, conn_id: int, group: str) -> bool:
        """Add ``conn_id`` to ``group``. False when the connection is unknown."""
        _check_name(group, "group")
        entry = self._conns.get(conn_id)
        if entry is None:
            return False
        if entry.groups is None:
            entry.groups = set()
        entry.groups.add(group)
        self._members(self._groups, self.dirty_groups, group)[conn_id] = entry
        return True

    def leave_group(self, conn_id: int, group: str) -> bool:
        """Remove ``conn_id`` from ``group``; False when it was not a member."""
        _check_name(group, "group")
        entry = self._conns.get(conn_id)
        if entry is None or not entry.groups or group not in entry.groups:
            return False
        entry.groups.discard(group)
        if not entry.groups:
            entry.groups = None
        self._drop(self._groups, self.dirty_groups, group, conn_id)
        return True

    def ungroup(self, group: str) -> int:
        """Dissolve ``group``; return how many members it had."""
        _check_name(group, "group")
        members = self._groups.pop(group, None)
        if not members:
            return 0
        self._changed(self.dirty_groups, group)
        for entry in members.values():
            if entry.groups:
                entry.groups.discard(group)
                if not entry.groups:
                    entry.groups = None
        return len(members)

    # ---- sessions --------------------------------------------------------------
    def set_session(self, conn_id: int, session: bytes | None) -> bool:
        """Replace the packed session of ``conn_id`` (``None`` clears it). Raises
        ``TypeError``/``ProtocolError`` when ``session`` is not a packed dict."""
        if session is not None:
            if type(session) is not bytes:
                raise TypeError(f"session must be packed bytes, got {type(session).__name__}")
            if len(session) > MAX_SESSION:
                check_packet_size(len(session), Cmd.SET_SESSION, MAX_SESSION)
            unpack_session(session)  # validate now, not when a worker reads it
        entry = self._conns.get(conn_id)
        if entry is None:
            return False
        entry.session = session or None
        return True

    def update_session(self, conn_id: int, partial: dict[str, Any]) -> bool:
        """Recursively merge ``partial`` into the session of ``conn_id``."""
        if not isinstance(partial, dict):
            raise TypeError(f"session update must be a dict, got {type(partial).__name__}")
        entry = self._conns.get(conn_id)
        if entry is None:
            return False
        try:
            current = unpack_session(entry.session)
        except ProtocolError:  # cannot happen through set_session; be safe
            current = {}
        entry.session = pack_session(merge_session(current, partial))
        return True

    # ---- recipients (for sends) -----------------------------------------------
    def recipients_all(
        self, conn_ids: Iterable[int] | None = None, exclude: Iterable[int] | None = None
    ) -> Iterable[E]:
        """Entries for ``SEND_TO_ALL``: every connection, or only ``conn_ids``, minus
        ``exclude``; each at most once."""
        skip = set(exclude) if exclude else None
        if conn_ids is None:
            if not skip:
                return self._conns.values()
            return (e for cid, e in self._conns.items() if cid not in skip)
        conns = self._conns
        wanted = dict.fromkeys(conn_ids)
        if skip:
            return [conns[c] for c in wanted if c in conns and c not in skip]
        return [conns[c] for c in wanted if c in conns]

    def recipients_uids(self, uids: Iterable[str]) -> Iterable[E]:
        """Entries bound to any of ``uids``; each at most once (a connection has one
        uid, so distinct uids never share a connection)."""
        index = self._uids
        found = [index[u] for u in dict.fromkeys(uids) if u in index]
        if len(found) == 1:
            return found[0].values()
        return (e for members in found for e in members.values())

    def recipients_groups(
        self, groups: Iterable[str], exclude: Iterable[int] | None = None
    ) -> Iterable[E]:
        """Members of any of ``groups`` minus ``exclude``; each at most once even
        when it is in several of the groups."""
        index = self._groups
        found = [index[g] for g in dict.fromkeys(groups) if g in index]
        skip = set(exclude) if exclude else None
        if len(found) == 1:
            members = found[0]
            if not skip:
                return members.values()
            return (e for cid, e in members.items() if cid not in skip)
        union: dict[int, E] = {}
        for members in found:
            union.update(members)
        if skip:
            for cid in skip:
                union.pop(cid, None)
        return union.values()

    # ---- queries (shapes documented on gateway.protocol.Cmd) --------------------
    def client_info(self, conn_id: int) -> dict[str, Any] | None:
        """``Q_CLIENT_INFO``: ``None`` when offline, else uid, session and groups."""
        entry = self._conns.get(conn_id)
        if entry is None:
            return None
        return {
            "uid": entry.uid,
            "session": entry.session,
            "groups": sorted(entry.groups) if entry.groups else [],
        }

    def uids_info(self, uids: Iterable[str]) -> dict[str, list[int]]:
        """``Q_UIDS``: ``{uid: [conn_id, ...]}`` for the uids with connections here."""
        index = self._uids
        return {u: list(index[u]) for u in dict.fromkeys(uids) if u in index}

    def groups_info(self, groups: Iterable[str] | None, what: str) -> dict[str, Any]:
        """``Q_GROUPS``: ``what`` of each requested group (empty when unknown);
        ``groups`` ``None`` means every client of this gateway, under key ``""``."""
        _check_what(what)
        if groups is None:
            return {"": _describe(self._conns, what)}
        empty: dict[int, E] = {}
        index = self._groups
        return {g: _describe(index.get(g, empty), what) for g in dict.fromkeys(groups)}

    def all_groups_info(self, what: str) -> dict[str, Any]:
        """``Q_ALL_GROUPS``: ``what`` of every non-empty group."""
        _check_what(what)
        return {g: _describe(members, what) for g, members in self._groups.items()}

    def all_uids(self) -> list[str]:
        """``Q_ALL_UIDS``: every uid bound here."""
        return list(self._uids)

    def group_names(self) -> list[str]:
        """Every non-empty group."""
        return list(self._groups)


def _check_what(what: object) -> None:
    if what not in WHATS:
        raise ValueError(f"unknown query kind {what!r}; expected one of {sorted(WHATS)}")


def _describe(members: dict[int, Any], what: str) -> Any:
    if what == "count":
        return len(members)
    if what == "ids":
        return list(members)
    if what == "sessions":
        return {cid: e.session for cid, e in members.items()}
    return list(dict.fromkeys(e.uid for e in members.values() if e.uid is not None))
