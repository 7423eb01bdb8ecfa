"""Clients of a gateway that died: run ``on_close`` for them anyway.

How this works
--------------
A gateway tells the client's worker ``EV_CLOSE`` when a connection ends. A gateway
*process* that dies (SIGKILL, OOM, a crash) sends nothing, so without help the
business logic would never hear that its clients are gone. :class:`GatewayMemory`
is that help; the dispatcher feeds it every event the worker receives:

- per gateway (its ``lan_ip:port`` address) it remembers each client whose events
  this worker handled: ``conn_id -> [last session bytes, remote ip, remote port]``;
  ``EV_CLOSE`` forgets the client, a session write-back updates it;
- when a link to that address opens again and ``WELCOME`` names another gateway
  *instance* (another ``pid``, or another ``started_at`` when the gateway reports
  one), the old process is gone with its clients: the memory hands one synthetic
  ``EV_CLOSE`` per remembered client to the dispatcher, which runs ``on_close`` in
  the client's queue with ``context.session`` set to the last session seen;
- when the address stays without an open link for ``lost_timeout`` seconds and the
  registers no longer list it (the gateway was removed, or cannot come back), the
  same happens; a gateway still listed is alive but unreachable from here (a
  partition), and its clients may be served by other workers, so nothing runs;
- when a link comes back to the *same* instance (a network blip), the gateway has
  moved those clients to other workers: they are alive, so they are only forgotten;
- but when the timeout path ran ``on_close`` and the link comes back to the same
  instance (the gateway hung: SIGSTOP, a VM pause, past both timeouts), the worker
  tells it ``DECLARED_CLOSED`` with those conn_ids and the gateway closes them
  without ``EV_CLOSE``: their on_close was true, and none runs twice.

Limits (documented in the README): a worker remembers only clients it received an
event from; a client whose worker was replaced (reload, crash) is remembered again
by its new worker from its next event on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from typing import Any

from pygatewayworker.gateway.protocol import Cmd, encode
from pygatewayworker.gatewayclient.link import GatewayLink

__all__ = ["GatewayMemory", "OrphanCallback"]

logger = logging.getLogger("businessworker")

OrphanCallback = Callable[[GatewayLink, list[list[Any]]], None]
"""Receives the (closed) link of the dead gateway and one ``EV_CLOSE`` packet per
client: ``[EV_CLOSE, conn_id, session, remote_ip, remote_port, None]``."""

Clients = dict[int, list[Any]]


def instance_of(link: GatewayLink) -> tuple[Any, Any]:
    """What tells two processes behind one gateway address apart."""
    info = link.info
    return (info.get("pid"), info.get("started_at"))


class _Gateway:
    """What this worker remembers about one gateway address."""

    __slots__ = ("address", "link", "instance", "clients", "lost_since")

    def __init__(self, link: GatewayLink) -> None:
        self.address = link.gateway_address
        self.link = link
        self.instance = instance_of(link)
        self.clients: Clients = {}
        self.lost_since: float | None = None


class GatewayMemory:
    """See the module docstring. ``lost_timeout`` 0 disables the timeout path."""

    def __init__(self, lost_timeout: float, on_orphans: OrphanCallback) -> None:
        self.lost_timeout = lost_timeout
        self._on_orphans = on_orphans
        self._gateways: dict[str, _Gateway] = {}
        self._by_link: dict[GatewayLink, Clients] = {}
        self._declared: dict[str, tuple[tuple[Any, Any], list[int]]] = {}
        """Per address: the instance declared lost (timeout path) and the conn_ids
        whose on_close ran, until a link to that address opens again."""
        self.orphan_closes = 0

    @property
    def remembered(self) -> int:
        """Clients remembered, over every gateway."""
        return sum(len(g.clients) for g in self._gateways.values())

    def note(self, link: GatewayLink, packet: list[Any]) -> None:
        """An event arrived on ``link`` (called for every event: keep it cheap)."""
        clients = self._by_link.get(link)
        if clients is None:
            clients = self._adopt(link)
        conn_id = packet[1]
        if packet[0] is Cmd.EV_CLOSE:
            clients.pop(conn_id, None)
            return
        entry = clients.get(conn_id)
        if entry is None:
            clients[conn_id] = [packet[2], packet[3], packet[4]]
        else:
            entry[0] = packet[2]

    def note_session(self, link: GatewayLink, conn_id: int, session: bytes) -> None:
        """The worker wrote ``session`` back for ``conn_id``."""
        entry = self._by_link.get(link, {}).get(conn_id)
        if entry is not None:
            entry[0] = session

    def sweep(
        self, links: Mapping[str, GatewayLink], now: float, listed: Collection[str] = ()
    ) -> None:
        """Compare what is remembered with the open ``links`` (about once a second);
        ``listed``: the gateway addresses the registers list now."""
        if self._declared:
            self._tell_declared(links)
        for gateway in list(self._gateways.values()):
            link = links.get(gateway.address)
            if link is not None and link.is_open:
                gateway.lost_since = None
                if link is not gateway.link:
                    self._relinked(gateway, link)
                continue
            if not gateway.clients:
                self._forget(gateway)
            elif gateway.lost_since is None:
                gateway.lost_since = now
            elif (
                self.lost_timeout
                and now - gateway.lost_since >= self.lost_timeout
                and gateway.address not in listed
            ):
                ids = list(gateway.clients)
                self._orphan(gateway, f"unreachable for {self.lost_timeout:g} s")
                self._declared[gateway.address] = (gateway.instance, ids)
                self._forget(gateway)

    def _tell_declared(self, links: Mapping[str, GatewayLink]) -> None:
        """A gateway declared lost is linked again: if it is the same process (it
        hung), it closes the clients whose on_close ran (``DECLARED_CLOSED``)."""
        for address, (instance, ids) in list(self._declared.items()):
            link = links.get(address)
            if link is None or not link.is_open:
                continue
            del self._declared[address]
            if instance_of(link) != instance:
                continue  # it did die: its clients are gone
            logger.warning(
                "gateway %s is back after being declared lost: asking it to close the "
                "%d client(s) whose on_close ran",
                address,
                len(ids),
            )
            known = self._by_link.get(link, {})
            for conn_id in ids:
                known.pop(conn_id, None)  # events they sent since are not remembered
            link.send(encode(Cmd.DECLARED_CLOSED, ids))

    # ---- internals -----------------------------------------------------------------

    def _adopt(self, link: GatewayLink) -> Clients:
        gateway = self._gateways.get(link.gateway_address)
        if gateway is None:
            gateway = self._gateways[link.gateway_address] = _Gateway(link)
            self._by_link[link] = gateway.clients
        elif gateway.link is not link:
            self._relinked(gateway, link)
        return gateway.clients

    def _relinked(self, gateway: _Gateway, link: GatewayLink) -> None:
        new = instance_of(link)
        if new != gateway.instance:
            self._orphan(gateway, f"restarted (pid {gateway.instance[0]} -> {new[0]})")
        elif gateway.clients:
            logger.info(
                "relinked to gateway %s: its %d client(s) known here moved to other "
                "workers; forgetting them",
                gateway.address,
                len(gateway.clients),
            )
            gateway.clients.clear()
        self._by_link.pop(gateway.link, None)
        gateway.link, gateway.instance = link, new
        self._by_link[link] = gateway.clients

    def _orphan(self, gateway: _Gateway, why: str) -> None:
        clients = gateway.clients
        if not clients:
            return
        logger.warning(
            "gateway %s %s: running on_close for the %d client(s) it had here",
            gateway.address,
            why,
            len(clients),
        )
        packets = [
            [Cmd.EV_CLOSE, conn_id, entry[0], entry[1], entry[2], None]
            for conn_id, entry in clients.items()
        ]
        clients.clear()
        self.orphan_closes += len(packets)
        self._on_orphans(gateway.link, packets)

    def _forget(self, gateway: _Gateway) -> None:
        self._by_link.pop(gateway.link, None)
        del self._gateways[gateway.address]
