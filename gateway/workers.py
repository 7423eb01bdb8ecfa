"""Which business worker receives each client's events: sticky least-connections
choice, holding during a worker's leave, and holding while no worker is linked.

How this works
--------------
A client's events all go to one worker, chosen (the linked worker with the fewest
clients) at its first event and kept: its events run in order, in one place. The
choice is made again when that worker is gone or leaving.

A worker that *leaves* (``WORKER_LEAVE``, a reload or a graceful stop) may still be
running or queueing events of its clients. So that a client's events never run on
two workers at once, the next events of its clients are *held* on its link
(:meth:`Workers.hold_for`) until it *releases* them (``RELEASE``: it finished that
client's events), or its link ends, or more than ``pending_event_limit`` are held.
A released client's held events then go, in order, to the worker it gets now,
encoded at that moment (with the session the leaving worker wrote back).

With no worker linked at all, events wait in one queue (bounded in number and age)
and go, in order, to the first worker that links (:meth:`Workers.add`).

This module is pure: the core calls it, and it writes through the links' writers.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from pygatewayworker.gateway.config import Gateway
from pygatewayworker.gateway.directory import Directory
from pygatewayworker.gateway.protocol import Cmd, encode
from pygatewayworker.gateway.records import Client, HeldEvents, Link

__all__ = ["Workers", "event_packet"]

log = logging.getLogger("gateway")


def event_packet(client: Client, cmd: Cmd, payload: Any) -> bytes:
    """The ``EV_*`` packet of ``client`` (with its session as it is now)."""
    return encode(
        cmd, client.conn_id, client.session, client.remote_ip, client.remote_port, payload
    )


class Workers:
    """The business workers linked to this gateway and the routing of client events
    to them (see the module docstring)."""

    def __init__(
        self, config: Gateway, directory: Directory[Client], clock: Callable[[], float]
    ) -> None:
        self._config = config
        self._directory = directory
        self._clock = clock
        self.linked: list[Link] = []
        """Linked workers that take new clients."""
        self.pending: deque[tuple[float, Client, Cmd, bytes]] = deque()
        """Events held while no worker is linked: (deadline, client, cmd, packet)."""
        self._pending_dropped = 0

    # ---- events -------------------------------------------------------------------
    def send(self, client: Client, cmd: Cmd, payload: Any) -> None:
        """Send one client event to the client's worker (or hold it)."""
        link = client.worker
        if link is not None and link.held is not None:
            self.hold_for(link, client, cmd, payload)
            return
        self.forward(client, cmd, event_packet(client, cmd, payload))

    def forward(self, client: Client, cmd: Cmd, packet: bytes) -> None:
        """Send an encoded event to the client's worker, choosing one if it has none
        (or it left); hold it in :attr:`pending` when no worker is linked."""
        link = client.worker
        if link is None or link.leaving:
            link = self.assign(client)
        if link is None:
            self._hold(client, cmd, packet)
            return
        link.writer.send(packet)
        if cmd == Cmd.EV_CLOSE:
            link.clients -= 1
            client.worker = None

    def assign(self, client: Client) -> Link | None:
        """Choose the linked worker with the fewest clients for ``client``."""
        old = client.worker
        if old is not None:
            old.clients -= 1
        best: Link | None = None
        for link in self.linked:
            if best is None or link.clients < best.clients:
                best = link
        client.worker = best
        if best is not None:
            best.clients += 1
        return best

    # ---- a leaving worker ----------------------------------------------------------
    def leave(self, link: Link) -> None:
        """``link``'s worker leaves: no new clients; hold its clients' next events."""
        link.leaving = True
        if link in self.linked:
            self.linked.remove(link)
        if link.held is None:
            link.held = {}

    def hold_for(self, link: Link, client: Client, cmd: Cmd, payload: Any) -> None:
        """Hold an event of a client of the leaving worker ``link``. It is encoded
        when released, with the session as it is then."""
        held = link.held
        assert held is not None
        held.setdefault(client, []).append((cmd, payload))
        link.held_events += 1
        if link.held_events > self._config.pending_event_limit:
            log.warning(
                "%r: more than %d events held for its clients; releasing them all",
                link,
                self._config.pending_event_limit,
            )
            self.release_all(link)

    def release_ids(self, link: Link, conn_ids: list[int]) -> None:
        """The leaving worker is done with the clients ``conn_ids``."""
        held = link.held
        if held is None:
            return
        for conn_id in conn_ids:
            client = self._directory.get(conn_id)
            if client is None:  # closed meanwhile: its EV_CLOSE may be held
                client = next((c for c in held if c.conn_id == conn_id), None)
            if client is not None:
                self.release(link, client, held)

    def release_all(self, link: Link, keep: frozenset[int] = frozenset()) -> None:
        """Release every client of the leaving worker ``link`` except the conn_ids in
        ``keep``; with nothing kept, stop holding for it altogether."""
        held = link.held
        if held is None:
            return
        if not keep:
            link.held = None
        clients = self._directory.entries()
        mine = [c for c in clients if c.worker is link and c.conn_id not in keep]
        seen = set(mine)
        mine.extend(c for c in held if c.conn_id not in keep and c not in seen)
        for client in mine:
            self.release(link, client, held)

    def release(self, link: Link, client: Client, held: HeldEvents) -> None:
        """``link`` is done with ``client``: forward its held events, in order, to
        the worker it gets now."""
        events = held.pop(client, ())
        link.held_events -= len(events)
        if client.worker is link:
            link.clients -= 1
            client.worker = None
        for cmd, payload in events:
            self.forward(client, cmd, event_packet(client, cmd, payload))

    # ---- links coming and going ------------------------------------------------------
    def add(self, link: Link) -> None:
        """A worker linked: it takes new clients and the events that wait for one."""
        self.linked.append(link)
        self.expire(self._clock())
        pending = self.pending
        while pending and self.linked:
            _, client, cmd, packet = pending.popleft()
            self.forward(client, cmd, packet)

    def remove(self, link: Link) -> None:
        """``link`` is gone (or rejected): it takes nothing more; what was held for
        it is released."""
        if link in self.linked:
            self.linked.remove(link)
        self.release_all(link)

    # ---- no worker linked ------------------------------------------------------------
    def _hold(self, client: Client, cmd: Cmd, packet: bytes) -> None:
        cfg = self._config
        if len(self.pending) >= cfg.pending_event_limit:
            self._pending_dropped += 1
            return
        if not self.pending:
            log.warning(
                "no business worker linked: holding client events for up to %g s",
                cfg.pending_event_seconds,
            )
        self.pending.append((self._clock() + cfg.pending_event_seconds, client, cmd, packet))

    def expire(self, now: float) -> None:
        """Drop the held events older than ``pending_event_seconds`` (logged)."""
        pending = self.pending
        expired = 0
        while pending and pending[0][0] <= now:
            pending.popleft()
            expired += 1
        dropped, self._pending_dropped = self._pending_dropped + expired, 0
        if dropped:
            log.warning(
                "dropped %d client events: no business worker linked for %.1f s "
                "(or more than %d events held)",
                dropped,
                self._config.pending_event_seconds,
                self._config.pending_event_limit,
            )
