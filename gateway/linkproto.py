"""The internal links' protocol rules, written once for both ends: sans-I/O.

How this works
--------------
``gateway.protocol`` says what a packet looks like; this module says what the two
ends of an internal link do with the packets that are not traffic: the handshake,
the keep-alive, request ids and their replies, and the ``ROUTES`` state. One object
per link end, no sockets, no asyncio, no clock of its own (every method that needs
the time takes ``now``; any monotonic clock will do, as long as one link end always
uses the same one):

- :class:`LinkServer` is the gateway's end (``gateway.core``). It checks the first
  packet (``HELLO``: role, name, pid, the secret compared in constant time), makes
  ``WELCOME``, ``REPLY`` and ``ERROR`` packets, and decides the link's upkeep.
- :class:`LinkClient` is the other end: business workers and push clients
  (``gatewayclient.link``) and the command line's queries (``cluster.query``). It
  makes ``HELLO``, checks ``WELCOME``, allocates request ids and matches ``REPLY``
  and ``ERROR`` packets to them (timeouts by deadline), answers ``PING``, and keeps
  the uids and groups that have members on the gateway (``ROUTES``).

Both inherit the one keep-alive rule from :class:`KeepAlive`: the I/O layer writes
``last_recv`` when bytes arrive and ``last_send`` when it writes (plain attributes,
cheap enough for the read path), and calls :meth:`KeepAlive.keepalive` every
:attr:`KeepAlive.period` seconds or so; it answers ``PING`` (send one now), ``SILENT``
(nothing heard for ``link_timeout``: drop the link) or ``NOTHING``.

Traffic (client events ``EV_*``, the ``SEND_*`` commands and the other state
commands) does not go through these objects: the endpoints dispatch it by command
as before, so the per-message path costs what it did.

Errors: :class:`~gateway.protocol.ProtocolError` when the peer sent something the
rules forbid (close that link); :class:`LinkRefused` when a gateway refuses a
``HELLO`` (answer ``ERROR`` and close); ``RuntimeError`` when our own caller uses an
object in the wrong state (a bug here, not the peer's).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Any

from pygatewayworker.gateway.client_id import encode_client_id
from pygatewayworker.gateway.protocol import (
    ROUTES_CHANGES,
    ROUTES_STATE,
    ROUTES_STATE_END,
    Cmd,
    ProtocolError,
    encode,
    encode_body,
)

__all__ = [
    "KeepAlive",
    "Upkeep",
    "LinkServer",
    "LinkClient",
    "LinkRefused",
    "Hello",
    "Welcomed",
    "Refused",
    "Replied",
    "Failed",
    "Notice",
    "Answer",
    "LeaveAcked",
    "RoutesUpdated",
    "ClientEvent",
    "ROLES",
    "PING",
    "PONG",
    "HELLO_TIMEOUT",
    "route_packets",
    "iter_route_packets",
    "ROUTES_CHUNK",
    "ROUTES_CHUNK_BYTES",
]

ROLES = ("worker", "client")
"""What may link to a gateway: a business worker (gets client events) or a push
client (gets none; the command line's queries link as clients too)."""
PING = encode(Cmd.PING)
PONG = encode(Cmd.PONG)
HELLO_TIMEOUT = 5.0
"""Seconds a new link has to say ``HELLO`` (and a refused one to close its side)."""
MAX_REQ = 2**31 - 1
"""Request ids go 1..MAX_REQ, then start over at 1 (0 means "not a reply")."""
ROUTES_CHUNK = 5000
"""At most this many keys per ``ROUTES`` packet (a large state goes in several)."""
ROUTES_CHUNK_BYTES = 256 * 1024
"""About this much key text per ``ROUTES`` packet, at most."""


# ---- keep-alive ---------------------------------------------------------------------


class Upkeep(IntEnum):
    """What :meth:`KeepAlive.keepalive` and :meth:`LinkServer.upkeep` ask for."""

    NOTHING = 0
    PING = 1
    """Send ``PING`` now (the object has already counted it as sent)."""
    SILENT = 2
    """Nothing heard for more than ``link_timeout``: drop the link."""
    HELLO_LATE = 3
    """Gateway side: no ``HELLO`` within :data:`HELLO_TIMEOUT`: refuse the link."""
    LINGERED = 4
    """Gateway side: a refused peer did not close within :data:`HELLO_TIMEOUT`: drop
    it."""


class KeepAlive:
    """The keep-alive rule of one link end (both ends use the same one).

    Send ``PING`` when nothing was written for ``keepalive_interval``, or when nothing
    was heard for that long and no ``PING`` went out for that long either (a busy
    writer still probes a quiet peer, once per interval). Give up when nothing was
    heard for ``link_timeout``. The peer answers every ``PING``, so a live peer is
    never silent for much more than an interval.

    The I/O layer assigns ``last_recv`` when bytes arrive and ``last_send`` when it
    writes; it calls :meth:`keepalive` every :attr:`period` seconds or so.
    """

    __slots__ = ("keepalive_interval", "link_timeout", "last_recv", "last_send", "last_ping")

    def __init__(self, keepalive_interval: float, link_timeout: float, now: float) -> None:
        self.keepalive_interval = keepalive_interval
        self.link_timeout = link_timeout
        self.last_recv = now
        """When bytes last arrived (the I/O layer writes it)."""
        self.last_send = now
        """When bytes were last written (the I/O layer writes it)."""
        self.last_ping = now

    @property
    def period(self) -> float:
        """How often to call :meth:`keepalive`: a quarter of the shorter timing."""
        return max(0.02, min(self.keepalive_interval, self.link_timeout) / 4)

    def silence(self, now: float) -> float:
        """Seconds since anything was heard."""
        return now - self.last_recv

    def stalled(self, late: float, now: float) -> None:
        """Our own loop was stalled ``late`` seconds (its keep-alive timer fired that
        late: a blocking callback, a stopped process). What the peer sent meanwhile
        may still be unread in the socket (uvloop runs a timer that fell due during
        a stall before the next poll), so that time is not the peer's silence."""
        if late > 0.0:
            self.last_recv = min(now, self.last_recv + late)

    def keepalive(self, now: float) -> Upkeep:
        """``SILENT``, ``PING`` (noted as written now) or ``NOTHING``."""
        if now - self.last_recv > self.link_timeout:
            return Upkeep.SILENT
        interval = self.keepalive_interval
        if now - self.last_send >= interval or (
            now - self.last_recv >= interval and now - self.last_ping >= interval
        ):
            self.last_send = self.last_ping = now
            return Upkeep.PING
        return Upkeep.NOTHING


# ---- the gateway's end --------------------------------------------------------------


class LinkRefused(Exception):
    """A gateway refuses a link's ``HELLO``; the message says why (it goes to the peer
    in ``ERROR``)."""


@dataclass(slots=True, frozen=True)
class Hello:
    """An accepted ``HELLO``: who linked."""

    role: str
    name: str
    pid: int
    hooks: frozenset[str] = frozenset()
    """App hooks the worker runs (``"authenticate"``), from HELLO's optional sixth
    field ``{"hooks": [...]}``."""


class ServerState(Enum):
    AWAITING_HELLO = "awaiting hello"
    OPEN = "open"
    REFUSED = "refused"


class LinkServer(KeepAlive):
    """The gateway's end of one internal link.

    ``receive_hello`` checks the first packet; then ``welcome`` makes the answer. A
    link that breaks the rules gets ``refuse`` (an ``ERROR`` packet to send before a
    half-close). ``upkeep(now)``, about once a second, says what the link needs.
    """

    __slots__ = ("secret", "hello_timeout", "opened", "refused", "state")

    def __init__(
        self,
        secret: str,
        keepalive_interval: float,
        link_timeout: float,
        now: float,
        hello_timeout: float = HELLO_TIMEOUT,
    ) -> None:
        KeepAlive.__init__(self, keepalive_interval, link_timeout, now)
        self.secret = secret.encode()
        self.hello_timeout = hello_timeout
        self.opened = now
        self.refused = 0.0
        """When :meth:`refuse` was called; 0: not refused."""
        self.state = ServerState.AWAITING_HELLO

    def receive_hello(self, packet: list[Any]) -> Hello:
        """Check the link's first packet ``[HELLO, role, name, secret, pid]``, with an
        optional sixth field ``{"hooks": [names]}`` (a worker's app hooks).

        Returns who linked; raises :class:`LinkRefused` (not ``HELLO``, malformed, an
        unknown role, a wrong secret).
        """
        if self.state is not ServerState.AWAITING_HELLO:
            raise RuntimeError(f"HELLO checked on a link that is {self.state.value}")
        if packet[0] != Cmd.HELLO or len(packet) not in (5, 6):
            raise LinkRefused("the first packet must be HELLO")
        _, role, name, secret, pid = packet[:5]
        if role not in ROLES or type(name) is not str or type(pid) is not int:
            raise LinkRefused("malformed HELLO")
        if type(secret) is not str or not hmac.compare_digest(secret.encode(), self.secret):
            raise LinkRefused("wrong secret key")
        hooks: frozenset[str] = frozenset()
        if len(packet) == 6:
            named = packet[5].get("hooks") if type(packet[5]) is dict else None
            if type(named) is not list or not all(type(h) is str for h in named):
                raise LinkRefused("malformed HELLO features")
            hooks = frozenset(named)
        self.state = ServerState.OPEN
        return Hello(role, name, pid, hooks)

    def welcome(self, info: dict[str, Any]) -> bytes:
        """The ``WELCOME`` packet for an accepted link (``info``: ``lan_ip``, ``port``,
        ``public_host``, ``public_port``, ``name``, ``index``, ``pid``)."""
        return encode(Cmd.WELCOME, info)

    def refuse(self, req: int, reason: str, now: float) -> bytes:
        """The link is refused (bad hello, garbage, a bad command): return the
        ``ERROR`` packet to send before half-closing; :meth:`upkeep` says
        ``LINGERED`` if the peer does not close within ``hello_timeout``."""
        self.state = ServerState.REFUSED
        self.refused = now
        return encode(Cmd.ERROR, req, reason)

    @staticmethod
    def request_id(packet: list[Any]) -> int:
        """The request id of a query ``[Q_*, req, *args]``; raises ``ValueError`` when
        it is missing or not an int (the peer's mistake: refuse the link)."""
        if len(packet) < 2 or type(packet[1]) is not int:
            raise ValueError("request id must be an int")
        req: int = packet[1]
        return req

    @staticmethod
    def reply(req: int, result: Any) -> bytes:
        """The ``REPLY`` packet answering request ``req``."""
        return encode(Cmd.REPLY, req, result)

    def upkeep(self, now: float) -> Upkeep:
        """What the link needs now: ``LINGERED`` (refused, the peer did not close),
        ``HELLO_LATE``, ``SILENT``, ``PING`` or ``NOTHING``."""
        state = self.state
        if state is ServerState.OPEN:
            return self.keepalive(now)
        if state is ServerState.REFUSED:
            return Upkeep.LINGERED if now - self.refused > self.hello_timeout else Upkeep.NOTHING
        return Upkeep.HELLO_LATE if now - self.opened > self.hello_timeout else Upkeep.NOTHING


def route_packets(
    full: bool,
    uids_added: list[str],
    uids_removed: list[str],
    groups_added: list[str],
    groups_removed: list[str],
) -> list[bytes]:
    """Encoded ``ROUTES`` packets, each with at most :data:`ROUTES_CHUNK` keys and
    about :data:`ROUTES_CHUNK_BYTES` of key text (far below the packet limit, whatever
    the key lengths). A full state (``full``) is one or more packets, the last marked
    ``ROUTES_STATE_END``, and at least one even when empty (an empty state is news
    too); changes are ``ROUTES_CHANGES`` packets, none when nothing changed."""
    return [
        packet
        for packet, _ in iter_route_packets(
            full, uids_added, uids_removed, groups_added, groups_removed
        )
    ]


def iter_route_packets(
    full: bool,
    uids_added: list[str],
    uids_removed: list[str],
    groups_added: list[str],
    groups_removed: list[str],
) -> Iterator[tuple[bytes, int]]:
    """:func:`route_packets` one packet at a time, each with the number of keys it
    holds: a large state is cut and encoded as it is sent (``GatewayCore``'s
    ``RouteState``, a packet per loop turn)."""
    lists = [uids_added, uids_removed, groups_added, groups_removed]
    if not full and not any(lists):
        return
    kind = ROUTES_STATE if full else ROUTES_CHANGES
    held: list[list[str]] | None = None  # a whole chunk, sent once we know it is not the last
    held_count = 0
    parts: list[list[str]] = [[], [], [], []]
    count = size = 0
    for i, keys in enumerate(lists):
        for key in keys:
            cost = len(key.encode()) + 8
            if count and (count >= ROUTES_CHUNK or size + cost > ROUTES_CHUNK_BYTES):
                if held is not None:
                    yield encode(Cmd.ROUTES, kind, *held), held_count
                held, held_count = parts, count
                parts, count, size = [[], [], [], []], 0, 0
            parts[i].append(key)
            count += 1
            size += cost
    if held is not None:
        yield encode(Cmd.ROUTES, kind, *held), held_count
    yield encode(Cmd.ROUTES, ROUTES_STATE_END if full else ROUTES_CHANGES, *parts), count


# ---- the other end: what LinkClient.receive returns -----------------------------------


@dataclass(slots=True, frozen=True)
class Welcomed:
    """``WELCOME`` arrived: the link is open. ``info`` is the gateway's dict."""

    info: dict[str, Any]


@dataclass(slots=True, frozen=True)
class Refused:
    """The gateway answered ``HELLO`` with ``ERROR`` (e.g. a wrong secret)."""

    message: str


@dataclass(slots=True, frozen=True)
class Replied:
    """The ``REPLY`` to request ``req``; ``token`` is what :meth:`LinkClient.request`
    was given."""

    req: int
    token: Any
    result: Any


@dataclass(slots=True, frozen=True)
class Failed:
    """An ``ERROR`` answering request ``req`` (the gateway then closes the link)."""

    req: int
    token: Any
    message: str


@dataclass(slots=True, frozen=True)
class Notice:
    """An ``ERROR`` that answers no pending request (the gateway then closes)."""

    message: str


@dataclass(slots=True, frozen=True)
class Answer:
    """Write ``data`` now, after everything queued before (``PONG`` to a ``PING``)."""

    data: bytes


@dataclass(slots=True, frozen=True)
class LeaveAcked:
    """The gateway acknowledged ``WORKER_LEAVE``."""


@dataclass(slots=True, frozen=True)
class RoutesUpdated:
    """A ``ROUTES`` packet was applied: :attr:`LinkClient.uids` and
    :attr:`LinkClient.groups` may be new sets (a complete state replaces them)."""


ClientEvent = Welcomed | Refused | Replied | Failed | Notice | Answer | LeaveAcked | RoutesUpdated


class ClientState(Enum):
    NEW = "new"
    HELLO_SENT = "hello sent"
    OPEN = "open"
    CLOSED = "closed"


_LEAVE_ACKED = LeaveAcked()
_ROUTES_UPDATED = RoutesUpdated()
_ANSWER_PONG = Answer(PONG)


class LinkClient(KeepAlive):
    """A worker's, push client's or query's end of one link to a gateway.

    :meth:`hello` makes the first packet; :meth:`receive` takes every packet from the
    gateway except client events (``EV_*``, which the endpoint dispatches itself)
    and returns what happened (:data:`ClientEvent`, or ``None``: nothing for the
    endpoint to do). :meth:`request` allocates a request id; :meth:`expire` and
    :meth:`close` end requests that will get no reply. :attr:`uids` and
    :attr:`groups` follow ``ROUTES`` (see :meth:`note_uid`).
    """

    __slots__ = (
        "role",
        "name",
        "secret",
        "pid",
        "hooks",
        "state",
        "info",
        "gateway_address",
        "client_id_prefix",
        "pending",
        "next_req",
        "uids",
        "groups",
        "pin_pending",
        "_routes_incoming",
        "_pinned_uids",
        "_pinned_groups",
        "_pings_sent",
        "_pongs_seen",
    )

    def __init__(
        self,
        role: str,
        name: str,
        secret: str,
        pid: int,
        keepalive_interval: float = 10.0,
        link_timeout: float = 30.0,
        now: float = 0.0,
        hooks: tuple[str, ...] = (),
    ) -> None:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, not {role!r}")
        KeepAlive.__init__(self, keepalive_interval, link_timeout, now)
        self.role = role
        self.name = name
        self.secret = secret
        self.pid = pid
        self.hooks = hooks
        """App hooks announced in HELLO (only when there are some: gateways older than
        the hooks refuse a sixth field)."""
        self.state = ClientState.NEW
        self.info: dict[str, Any] = {}
        """What ``WELCOME`` said: ``lan_ip``, ``port``, ``public_host``,
        ``public_port``, ``name``, ``pid``."""
        self.gateway_address = ""
        """``lan_ip:port`` from ``WELCOME`` (the address client_ids encode)."""
        self.client_id_prefix = ""
        """The first 12 characters of every client_id of this gateway."""
        self.pending: dict[int, tuple[Any, Cmd, float]] = {}
        """Requests without a reply: ``req -> (token, cmd, deadline)``."""
        self.next_req = 1
        self.uids: set[str] | None = None
        """uids with connections on this gateway (``ROUTES``); ``None``: not known yet."""
        self.groups: set[str] | None = None
        """groups with members on this gateway (``ROUTES``); ``None``: not known yet."""
        self.pin_pending = False
        """True when a ``PING`` should follow the commands queued now (:meth:`ping`)."""
        self._routes_incoming: tuple[set[str], set[str]] | None = None
        # Keys we bound/joined ourselves, pinned until the gateway has answered a PING
        # sent after our command ("ping number" -> key): a removal it reported before
        # handling our command must not undo them. See note_uid.
        self._pinned_uids: dict[str, int] = {}
        self._pinned_groups: dict[str, int] = {}
        self._pings_sent = 0
        self._pongs_seen = 0

    @property
    def is_open(self) -> bool:
        """True between ``WELCOME`` and :meth:`close`."""
        return self.state is ClientState.OPEN

    # ---- handshake -----------------------------------------------------------------
    def hello(self, now: float) -> bytes:
        """The first packet: ``[HELLO, role, name, secret, pid]`` (plus
        ``{"hooks": [...]}`` when the worker runs app hooks)."""
        if self.state is not ClientState.NEW:
            raise RuntimeError(f"HELLO on a link that is {self.state.value}")
        self.state = ClientState.HELLO_SENT
        self.last_recv = self.last_send = self.last_ping = now
        if self.hooks:
            return encode(
                Cmd.HELLO, self.role, self.name, self.secret, self.pid, {"hooks": list(self.hooks)}
            )
        return encode(Cmd.HELLO, self.role, self.name, self.secret, self.pid)

    def _receive_welcome(self, packet: list[Any]) -> Welcomed:
        if self.state is not ClientState.HELLO_SENT:
            raise ProtocolError(f"WELCOME on a link that is {self.state.value}")
        info = packet[1] if len(packet) == 2 else None
        if (
            not isinstance(info, dict)
            or not isinstance(info.get("lan_ip"), str)
            or info.get("port").__class__ is not int
        ):
            raise ProtocolError("WELCOME without a valid info dict (lan_ip, port)")
        try:
            self.client_id_prefix = encode_client_id(info["lan_ip"], info["port"], 1)[:12]
        except ValueError as exc:
            raise ProtocolError(f"WELCOME with an unusable address: {exc}") from None
        self.info = info
        self.gateway_address = f"{info['lan_ip']}:{info['port']}"
        self.state = ClientState.OPEN
        return Welcomed(info)

    # ---- packets from the gateway ---------------------------------------------------
    def receive(self, packet: list[Any]) -> ClientEvent | None:
        """Take one packet that is not a client event; raises
        :class:`~gateway.protocol.ProtocolError` when the gateway broke the rules
        (close the link)."""
        cmd = packet[0]
        if cmd is Cmd.REPLY:
            return self._receive_reply(packet)
        if cmd is Cmd.ROUTES:
            self._receive_routes(packet)
            return _ROUTES_UPDATED
        if cmd is Cmd.PING:
            return _ANSWER_PONG
        if cmd is Cmd.PONG:
            self._receive_pong()
            return None
        if cmd is Cmd.ERROR:
            return self._receive_error(packet)
        if cmd is Cmd.WELCOME:
            return self._receive_welcome(packet)
        if cmd is Cmd.LEAVE_ACK:
            if self.state is not ClientState.OPEN:
                raise ProtocolError("LEAVE_ACK before WELCOME")
            return _LEAVE_ACKED
        raise ProtocolError(f"unexpected command {cmd.name}")

    def _receive_error(self, packet: list[Any]) -> Refused | Failed | Notice:
        if len(packet) != 3:
            raise ProtocolError("ERROR packet must be [ERROR, req, message]")
        req, message = packet[1], str(packet[2])[:500]
        if self.state is ClientState.HELLO_SENT:
            self.state = ClientState.CLOSED
            return Refused(message)
        pending = self.pending.pop(req, None) if req else None
        if pending is None:
            return Notice(message)
        return Failed(req, pending[0], message)

    def _receive_reply(self, packet: list[Any]) -> Replied | None:
        if len(packet) != 3 or self.state is not ClientState.OPEN:
            raise ProtocolError("REPLY packet must be [REPLY, req, result] on an open link")
        req = packet[1]
        pending = self.pending.pop(req, None)
        if pending is None:
            return None  # a reply after its timeout, or to a request we forgot
        return Replied(req, pending[0], packet[2])

    # ---- requests ------------------------------------------------------------------
    def request(
        self, cmd: Cmd, args: tuple[Any, ...], deadline: float, token: Any = None
    ) -> tuple[int, bytes]:
        """Allocate a request id for query ``[cmd, req, *args]``; return it and the
        packet to send. ``token`` (the caller's future, say) comes back in the
        :class:`Replied` or :class:`Failed` event, or from :meth:`expire` once
        ``deadline`` has passed, or from :meth:`close`."""
        if self.state is not ClientState.OPEN:
            raise RuntimeError(f"request on a link that is {self.state.value}")
        req = self.next_req
        self.next_req = req + 1 if req < MAX_REQ else 1
        self.pending[req] = (token, cmd, deadline)
        return req, encode_body(cmd, (req, *args))

    def forget(self, req: int) -> None:
        """The caller gave up on request ``req`` (a reply, if any, is ignored)."""
        self.pending.pop(req, None)

    def expire(self, now: float) -> list[tuple[int, Any, Cmd]]:
        """Remove and return ``(req, token, cmd)`` of the requests whose deadline is
        ``now`` or earlier: they failed by timeout."""
        late = [req for req, (_, _, deadline) in self.pending.items() if deadline <= now]
        out = []
        for req in late:
            token, cmd, _ = self.pending.pop(req)
            out.append((req, token, cmd))
        return out

    def close(self) -> list[Any]:
        """The link is closed: return the tokens of every request that gets no reply."""
        self.state = ClientState.CLOSED
        pending, self.pending = self.pending, {}
        return [token for token, _, _ in pending.values()]

    # ---- keep-alive and routes -------------------------------------------------------
    def ping(self) -> bytes:
        """A ``PING`` to write now (keep-alive, or behind pinned keys: every ``PING``
        must go through here, because ``PONG`` packets are counted)."""
        self._pings_sent += 1
        self.pin_pending = False
        return PING

    def note_uid(self, uid: str) -> None:
        """We bound a connection of this gateway to ``uid`` (the ``BIND_UID`` is
        queued): route ``uid`` here from now on. The key stays pinned until the
        gateway answers a ``PING`` queued behind our command (the endpoint writes
        :meth:`ping` after its queue while :attr:`pin_pending`), so a removal it
        reported before handling the command cannot undo it."""
        if self.uids is not None:
            self.uids.add(uid)
        self._pinned_uids[uid] = self._pin()

    def note_group(self, group: str) -> None:
        """We added a connection of this gateway to ``group``: as :meth:`note_uid`."""
        if self.groups is not None:
            self.groups.add(group)
        self._pinned_groups[group] = self._pin()

    def mark(self) -> int:
        """Ask for one ``PING`` behind everything queued now (:attr:`pin_pending`;
        the endpoint writes :meth:`ping` at its next flush); return the
        :attr:`pongs_seen` count from which on the gateway has handled all of it."""
        return self._pin()

    @property
    def pongs_seen(self) -> int:
        """``PONG`` packets received so far (every ``PING`` is answered, in order)."""
        return self._pongs_seen

    def _pin(self) -> int:
        self.pin_pending = True
        return self._pings_sent + 1

    def _receive_pong(self) -> None:
        """A ``PONG`` unpins the keys noted before its ``PING`` (the gateway has
        handled our commands and reported the result); pongs come in ping order."""
        self._pongs_seen += 1
        seen = self._pongs_seen
        for pinned in (self._pinned_uids, self._pinned_groups):
            if pinned:
                for key in [k for k, number in pinned.items() if number <= seen]:
                    del pinned[key]

    def _receive_routes(self, packet: list[Any]) -> None:
        if self.state is not ClientState.OPEN or len(packet) != 6 or packet[1].__class__ is not int:
            raise ProtocolError("ROUTES must be [ROUTES, kind, 4 lists of str] on an open link")
        _, kind, uids_added, uids_removed, groups_added, groups_removed = packet
        for keys in (uids_added, uids_removed, groups_added, groups_removed):
            if keys.__class__ is not list or not all(k.__class__ is str for k in keys):
                raise ProtocolError("ROUTES lists must hold str keys")
        if kind == ROUTES_CHANGES:
            uids, groups = self.uids, self.groups
            if uids is None or groups is None:
                raise ProtocolError("ROUTES changes before the state")
            uids.update(uids_added)
            groups.update(groups_added)
            _remove_unpinned(uids, uids_removed, self._pinned_uids)
            _remove_unpinned(groups, groups_removed, self._pinned_groups)
        elif kind in (ROUTES_STATE, ROUTES_STATE_END):
            incoming = self._routes_incoming
            if incoming is None:
                incoming = self._routes_incoming = (set(), set())
            incoming[0].update(uids_added)
            incoming[1].update(groups_added)
            if kind == ROUTES_STATE_END:
                # the state may predate our own binds/joins: keep those
                incoming[0].update(self._pinned_uids)
                incoming[1].update(self._pinned_groups)
                self.uids, self.groups = incoming
                self._routes_incoming = None
        else:
            raise ProtocolError(f"ROUTES of unknown kind {kind!r}")


def _remove_unpinned(keys: set[str], removed: Iterable[str], pinned: dict[str, int]) -> None:
    """Drop ``removed`` from ``keys``, except keys we pinned (see note_uid)."""
    if pinned:
        keys.difference_update(k for k in removed if k not in pinned)
    else:
        keys.difference_update(removed)
