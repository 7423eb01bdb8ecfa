"""Reaching a key's decider gateway (the table is ``gateway.decider``).

How this works
--------------
The decider of a key is the gateway with the highest weight ``hash(key, address)``
over the gateway addresses this process knows (rendezvous hashing): every worker
that knows the same gateways picks the same one, without asking anybody, and a
gateway joining or leaving moves only the keys it wins or held. Gateways respawn at
the same internal address, so a restarted gateway is the decider of the same keys
again (its table is empty: it answers "unknown key" and is seeded anew).

Every request carries the *epoch* of the set it was chosen from (:func:`epoch_of`),
so a decider whose keys may have moved away and back empties its table instead of
answering from stale entries.

:class:`DeciderLink` sends the three internal requests (``Q_DECIDE_JOIN``,
``Q_DECIDE_LEAVE``, ``Q_DECIDE_SEED``) on the open link to the decider, with the
API's ``query_timeout``. It raises what a query raises when the decider cannot be
asked (:class:`~gatewayclient.errors.GatewayUnavailable` when it is not linked,
``QueryTimeout``, ``LinkClosed``, ``RemoteError``); what to do then is the caller's
choice (``pusher.decide`` retries, then falls back to its read rule).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from typing import Any

from pygatewayworker.gateway.protocol import Cmd
from pygatewayworker.gatewayclient.api import GatewayAPI
from pygatewayworker.gatewayclient.errors import GatewayUnavailable

__all__ = ["DeciderLink", "decider_of", "epoch_of"]

log = logging.getLogger("gatewayclient")


def _weight(key: str, address: str) -> bytes:
    return hashlib.blake2b(f"{address}\0{key}".encode(), digest_size=8).digest()


def decider_of(key: str, gateways: Iterable[str]) -> str | None:
    """The gateway address that decides ``key`` (``None`` when there is none)."""
    return max(gateways, key=lambda address: (_weight(key, address), address), default=None)


def epoch_of(gateways: Iterable[str]) -> int:
    """A number naming the gateway set (the same set gives the same number)."""
    text = "\n".join(sorted(gateways)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=6).digest(), "big")


class DeciderLink:
    """The decider requests of one process, over its Gateway API's links."""

    __slots__ = ("api", "_epoch_of")

    def __init__(self, api: GatewayAPI) -> None:
        self.api = api
        self._epoch_of: tuple[frozenset[str], int] = (frozenset(), epoch_of(()))

    def _route(self, key: str) -> tuple[Any, int]:
        gateways = self.api.known_gateways
        known, epoch = self._epoch_of
        if gateways != known:
            epoch = epoch_of(gateways)
            self._epoch_of = (gateways, epoch)
            log.info("deciders chosen among %s (epoch %x)", ", ".join(sorted(gateways)), epoch)
        address = decider_of(key, gateways)
        link = None if address is None else self.api.links.get(address)
        if link is None or not link.is_open:
            raise GatewayUnavailable(f"the decider of {key} ({address}) is not linked")
        return link, epoch

    async def _ask(self, cmd: Cmd, key: str, *args: Any) -> Any:
        link, epoch = self._route(key)
        return await link.request(cmd, epoch, key, *args, timeout=self.api.query_timeout)

    async def join(self, key: str, member: str, conn: str) -> tuple[bool, bool] | None:
        """``(member_new, key_new)``, or ``None``: the decider does not hold ``key``."""
        answer = await self._ask(Cmd.Q_DECIDE_JOIN, key, member, conn)
        return None if answer is None else (bool(answer[0]), bool(answer[1]))

    async def leave(self, key: str, member: str, conn: str) -> tuple[bool, bool] | None:
        """``(member_last, key_last)``, or ``None``: the decider does not hold ``key``."""
        answer = await self._ask(Cmd.Q_DECIDE_LEAVE, key, member, conn)
        return None if answer is None else (bool(answer[0]), bool(answer[1]))

    async def seed(self, key: str, members: dict[str, list[str]]) -> bool:
        """Offer ``key``'s live members; ``True`` when this seed was taken."""
        return bool(await self._ask(Cmd.Q_DECIDE_SEED, key, members))
