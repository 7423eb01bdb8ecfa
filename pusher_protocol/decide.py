"""The worker's side of the decider: ask, rebuild an unknown key, retry.

How this works
--------------
:meth:`Decide.join` and :meth:`Decide.leave` ask the key's decider gateway
(``gatewayclient.decider``; the table is ``gateway.decider``). The decider answers
at once when it holds the key. When it does not (it restarted empty, or the gateway
set changed and the key moved to it), it answers "unknown key"; then:

1. ``rebuild()`` (given by the caller) reads the key's live members from every
   gateway: the decided connections only (a join still on its way to the decider is
   pending in its session and left out: it will be counted when it arrives);
2. ``seed`` offers them to the decider; the first seed wins, a later one is refused,
   and either way
3. the operation is asked again (it now finds the key).

``None`` means "the decider could not decide": it is not linked (a short wait and
another try, :data:`ATTEMPTS` in all, for a gateway that is respawning), it did not
answer, the rebuild could not read every gateway (a seed from part of the cluster
would be wrong), or the key kept vanishing. The caller then falls back to its read
rule, which is never lost but may announce twice (``pusher.presence``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from pygatewayworker.gatewayclient.errors import GatewayError, GatewayUnavailable

__all__ = ["Decide", "DeciderPeer", "Rebuild", "ATTEMPTS", "PAUSE"]

log = logging.getLogger("pusher")

ATTEMPTS = 8
"""Tries of one operation (each: ask; on "unknown key", rebuild and seed)."""
PAUSE = 0.25
"""Seconds between tries while the decider is not linked (it may be respawning)."""

Rebuild = Callable[[], Awaitable[dict[str, list[str]] | None]]
"""Reads the key's decided members, ``{member: [conn, ...]}``; ``None`` when not
every gateway answered."""
Answer = tuple[bool, bool] | None


class DeciderPeer(Protocol):
    """What :class:`Decide` needs of the link (``gatewayclient.decider.DeciderLink``)."""

    async def join(self, key: str, member: str, conn: str) -> Answer: ...

    async def leave(self, key: str, member: str, conn: str) -> Answer: ...

    async def seed(self, key: str, members: dict[str, list[str]]) -> bool: ...


class Decide:
    """Exactly-once answers for join and leave, with the rebuild of unknown keys."""

    def __init__(self, peer: DeciderPeer, attempts: int = ATTEMPTS, pause: float = PAUSE) -> None:
        self.peer = peer
        self.attempts = attempts
        self.pause = pause
        self.seeds = 0
        """Seeds this process offered (taken or refused): keys rebuilt."""
        self.fallbacks = 0
        """Operations the decider could not decide (the caller's read rule did)."""

    async def join(self, key: str, member: str, conn: str, rebuild: Rebuild) -> Answer:
        """``(member_new, key_new)`` for ``conn`` of ``member`` joining ``key``."""
        return await self._run(self.peer.join, key, member, conn, rebuild)

    async def leave(self, key: str, member: str, conn: str, rebuild: Rebuild) -> Answer:
        """``(member_last, key_last)`` for ``conn`` of ``member`` leaving ``key``."""
        return await self._run(self.peer.leave, key, member, conn, rebuild)

    async def _run(
        self,
        ask: Callable[[str, str, str], Awaitable[Answer]],
        key: str,
        member: str,
        conn: str,
        rebuild: Rebuild,
    ) -> Answer:
        why = "the key kept vanishing"
        for _ in range(self.attempts):
            try:
                answer = await ask(key, member, conn)
                if answer is not None:
                    return answer
                members = await rebuild()
                if members is None:
                    why = "not every gateway answered the rebuild"
                    break
                self.seeds += 1
                await self.peer.seed(key, members)
            except GatewayUnavailable as exc:
                why = str(exc)
                await asyncio.sleep(self.pause)
            except GatewayError as exc:
                why = f"{type(exc).__name__}: {exc}"
                break
        self.fallbacks += 1
        log.warning("pusher: no decision for %s on %s (%s); deciding by reading", conn, key, why)
        return None
