"""The worker's side of the decider (``pusher.decide``): ask, rebuild an unknown key
from the live members, seed (the first seed wins), retry; and when the decider
cannot decide, ``None`` for the caller's read rule. Against the real table, behind a
stand-in that answers after the other tasks had their turn (no sockets)."""

from __future__ import annotations

import asyncio

from pygatewayworker.gatewayclient.errors import RemoteError
from pygatewayworker.pusher.decide import Decide
from tests.test_pusher_channels import TableDecider


def _live(members: dict[str, list[str]] | None):  # type: ignore[no-untyped-def]
    calls: list[int] = []

    async def rebuild() -> dict[str, list[str]] | None:
        calls.append(1)
        await asyncio.sleep(0)
        return members

    rebuild.calls = calls  # type: ignore[attr-defined]
    return rebuild


async def test_an_unknown_key_is_rebuilt_from_the_live_members_then_asked_again() -> None:
    peer = TableDecider()
    decide = Decide(peer, pause=0)
    rebuild = _live({"ann": ["a1"]})  # a1 is in and decided; a2 joins
    assert await decide.join("k", "ann", "a2", rebuild) == (False, False)
    assert rebuild.calls == [1] and decide.seeds == 1  # type: ignore[attr-defined]
    assert await decide.join("k", "bob", "b1", rebuild) == (True, False)  # held now
    assert rebuild.calls == [1]  # type: ignore[attr-defined]


async def test_two_rebuilds_at_once_one_seed_wins_and_both_answers_are_exact() -> None:
    """Two connections of one user join an unknown key at once: each rebuilds (both
    pending, so neither is in the seed), one seed is taken, the other refused; the
    retried joins then find the key, and exactly one is first."""
    peer = TableDecider()
    decide = Decide(peer, pause=0)
    rebuild = _live({})
    answers = await asyncio.gather(
        decide.join("k", "ann", "a1", rebuild), decide.join("k", "ann", "a2", rebuild)
    )
    assert sorted(answers) == [(False, False), (True, True)]
    assert decide.seeds == 2 and decide.fallbacks == 0
    # the restarted decider: both leave at once, the key unknown again
    peer.forget()
    answers = await asyncio.gather(
        decide.leave("k", "ann", "a1", _live({})), decide.leave("k", "ann", "a2", _live({}))
    )
    assert sorted(answers) == [(False, False), (True, True)]  # ghosts: once


async def test_no_decision_when_the_rebuild_cannot_read_every_gateway() -> None:
    decide = Decide(TableDecider(), pause=0)
    assert await decide.join("k", "ann", "a1", _live(None)) is None
    assert decide.fallbacks == 1


async def test_an_unlinked_decider_is_tried_again_then_given_up() -> None:
    peer = TableDecider()
    peer.reachable = False
    decide = Decide(peer, attempts=3, pause=0)
    assert await decide.join("k", "ann", "a1", _live({})) is None
    assert decide.fallbacks == 1

    async def come_back() -> None:
        await asyncio.sleep(0)
        peer.reachable = True

    decide = Decide(peer, attempts=50, pause=0.001)
    peer.reachable = False
    back = asyncio.ensure_future(come_back())
    assert await decide.join("k", "ann", "a1", _live({})) == (True, True)
    await back


async def test_an_error_from_the_decider_gives_no_decision_at_once() -> None:
    class Refusing(TableDecider):
        async def join(self, key: str, member: str, conn: str) -> tuple[bool, bool] | None:
            raise RemoteError("unexpected command Q_DECIDE_JOIN")  # an older gateway

    decide = Decide(Refusing(), pause=0)
    assert await decide.join("k", "ann", "a1", _live({})) is None
    assert decide.fallbacks == 1 and decide.seeds == 0
