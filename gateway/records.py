"""What the gateway core keeps per client and per internal link, and the two small
interfaces through which it acts on them.

The core (``gateway.core``) is pure: it never touches a socket. Each client it
knows is a :class:`Client` record, each link a :class:`Link` record; the asyncio
shells (``gateway.connection``, ``gateway.links``) create the records and set their
``writer`` to themselves. The core writes bytes and closes through that writer:

- :class:`ClientWriter`: ``write(frame)``, ``close(code, reason)``, ``abort()``;
- :class:`LinkWriter`: ``send(packet)``, ``close()``, ``reject()``, ``abort()``.

Tests give the core writers that record what they are asked to do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pygatewayworker.gateway.directory import Entry
from pygatewayworker.gateway.linkproto import LinkServer
from pygatewayworker.gateway.protocol import DEFAULT_MAX_PACKET, Cmd, Decoder
from pygatewayworker.gateway.websocket import ServerConnection

__all__ = [
    "ClientWriter",
    "LinkWriter",
    "Client",
    "Link",
    "Counters",
    "HeldEvents",
    "CLOSE_REASONS",
]

CLOSE_REASONS = (
    "client_close",
    "client_gone",
    "heartbeat_timeout",
    "send_buffer_limit",
    "send_timeout",
    "size_limit",
    "rate_limit",
    "protocol_error",
    "app_close",
    "shutdown",
    "gateway_lost",
)
"""Why WebSocket clients closed (metrics, ``Counters.closed_by_reason``); see
docs/observability.md. The first reason set on a client (``Client.close_reason``)
wins; one with none when its connection ends is ``client_gone`` (``shutdown`` once
the gateway stops). ``gateway_lost``: closed (1001) because workers ran its
``on_close`` while this gateway was unreachable (``DECLARED_CLOSED``)."""


class ClientWriter(Protocol):
    """How the core acts on a client connection."""

    @property
    def write(self) -> Callable[[bytes], object]:
        """Write encoded frames as they are. Called once per recipient of every
        broadcast, so the asyncio shell makes it an attribute bound straight to its
        transport's ``write`` (no Python frame in between); a method does too."""

    def close(self, code: int, reason: str = "") -> None:
        """Start the WebSocket closing handshake (a close frame, then a bounded wait
        for the client's); nothing if the connection is not open."""

    def abort(self) -> None:
        """Drop the connection now."""


class LinkWriter(Protocol):
    """How the core acts on an internal link."""

    def send(self, packet: bytes) -> None:
        """Queue one encoded packet (written with whatever else is queued this loop
        turn); nothing once the link is closed or rejected."""

    def close(self) -> None:
        """Write what is queued, then close."""

    def reject(self) -> None:
        """Write what is queued (the ``ERROR``), half-close and discard input until
        the peer closes (closing at once, while the peer still sends, would reset the
        connection and could destroy the ``ERROR`` before the peer reads it)."""

    def abort(self) -> None:
        """Drop the link now."""

    def pause_reading(self) -> None:
        """Stop reading from the link (its input waits for a later loop turn): TCP
        back-pressure reaches the sender."""

    def resume_reading(self) -> None:
        """Read from the link again."""

    def peer_acked(self, within: float) -> bool:
        """Whether the peer's *kernel* acknowledged our data within ``within``
        seconds: its host is up even if the process is silent (stopped, its loop
        blocked). ``False`` when unknown."""


class Client(Entry):
    """One client connection: its directory entry (``conn_id``, ``uid``, ``groups``,
    ``session``) and what the core needs besides. ``conn_id`` is 0 until the
    WebSocket handshake completes (``GatewayCore.client_opened``)."""

    __slots__ = (
        "ws",
        "writer",
        "worker",
        "silent",
        "remote_ip",
        "remote_port",
        "since",
        "bytes_in",
        "bytes_out",
        "close_reason",
    )

    def __init__(
        self,
        ws: ServerConnection,
        writer: ClientWriter,
        remote_ip: str = "",
        remote_port: int = 0,
        since: float = 0.0,
    ) -> None:
        Entry.__init__(self, 0)
        self.ws = ws
        """The client's WebSocket protocol; the core reads only its ``state``
        (frames go to ``OPEN`` clients only)."""
        self.writer = writer
        self.worker: Link | None = None
        """The business worker that gets this client's events (sticky)."""
        self.silent = -1
        """Whole ping intervals of silence; -1: active since the last sweep."""
        self.remote_ip = remote_ip
        self.remote_port = remote_port
        self.since = since
        self.bytes_in = 0
        self.bytes_out = 0
        self.close_reason = ""
        """Why it closes (one of :data:`CLOSE_REASONS`); the first reason set wins."""

    def __repr__(self) -> str:
        return f"<client {self.conn_id} from {self.remote_ip}:{self.remote_port}>"


HeldEvents = dict[Client, list[tuple[Cmd, Any]]]
"""Events held for the clients of a leaving worker, per client, in order."""


class Link:
    """One business worker or push client on the internal port. ``proto`` (set by
    ``GatewayCore.link_opened``) is the link's protocol object: the shell notes its
    I/O there (``proto.last_recv``, ``proto.last_send``), the core asks it about the
    handshake and the upkeep; the core decides the rest."""

    proto: LinkServer
    """The link's end of the link protocol (``gateway.linkproto``)."""

    __slots__ = (
        "writer",
        "proto",
        "peer",
        "role",
        "name",
        "pid",
        "leaving",
        "clients",
        "opened",
        "rejected",
        "closed",
        "held",
        "held_events",
        "stalled",
        "unanswered",
        "hooks",
        "decoder",
        "inbox",
        "waiting",
        "paused",
        "route_backlog",
    )

    def __init__(self, writer: LinkWriter, peer: str = "", now: float = 0.0) -> None:
        self.writer = writer
        self.decoder = Decoder(DEFAULT_MAX_PACKET)
        """The link's input not yet handled, as bytes (``GatewayCore.link_data``)."""
        self.inbox: list[list[Any]] = []
        """Packets decoded but not handled yet: they wait behind a sliced broadcast."""
        self.waiting = False
        """Its input waits for a later loop turn (its reading is paused meanwhile)."""
        self.paused = False
        """Its reading is paused (``LinkWriter.pause_reading``)."""
        self.route_backlog: list[bytes] | None = None
        """``ROUTES`` changes held while its first full state is still being sent
        (``core.RouteState``); ``None``: the state is sent, changes go at once."""
        self.peer = peer
        self.role = ""
        """``"worker"`` or ``"client"`` once ``HELLO`` is accepted; ``""`` before."""
        self.name = ""
        self.pid = 0
        self.leaving = False
        """True when it takes no new client events (it left, or it is gone)."""
        self.clients = 0
        """Clients assigned to it (least-connections choice)."""
        self.opened = now
        self.rejected = 0.0
        """When we answered ``ERROR`` and half-closed; 0: not rejected."""
        self.closed = False
        self.held: HeldEvents | None = None
        """Set when this worker leaves: events of its clients held until it releases
        them (``RELEASE``) or its link ends; ``None``: not holding."""
        self.held_events = 0
        self.stalled = 0.0
        """When this worker was found silent for ``link_timeout`` (its clients' events
        are held, as for a leaving worker, until it speaks again); 0: not stalled."""
        self.unanswered = 0
        """Client events sent to it since it last sent us anything: what may be lost
        if it never speaks again."""
        self.hooks: frozenset[str] = frozenset()
        """The app hooks this worker runs (``HELLO`` features), e.g. ``authenticate``."""

    def __repr__(self) -> str:
        return f"<link {self.role or 'unauthenticated'} {self.name!r} from {self.peer}>"


@dataclass(slots=True)
class Counters:
    """Traffic counters of one gateway process (``status`` and ``Q_STATS``; the
    metrics listener reads them from the stats file, docs/observability.md)."""

    messages_in: int = 0
    messages_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    send_failures: int = 0
    events_lost: int = 0
    """Client events sent to a worker whose link was dropped for silence after they
    were sent (at most that many were lost; logged with the count)."""
    connections_opened: int = 0
    """WebSocket handshakes completed."""
    broadcast_deliveries: int = 0
    """Frames written by ``send_to_all``/``uid``/``group``, one per recipient."""
    closed_by_reason: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(CLOSE_REASONS, 0)
    )
    """Clients gone, by :data:`CLOSE_REASONS`."""
    handshake_failures: dict[str, int] = field(default_factory=dict)
    """Refused request heads by the HTTP status answered (``"400"``: count)."""
