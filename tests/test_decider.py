"""The decider table (``gateway.decider``), pure, and the gateway answering its
requests (``Q_DECIDE_*``) byte-level through the core, and the choice of the decider
(``gatewayclient.decider``): no sockets."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from pygatewayworker.gateway.decider import DecisionTable
from pygatewayworker.gateway.protocol import Cmd
from pygatewayworker.gatewayclient.decider import decider_of, epoch_of
from tests.test_gateway_core import Harness, writer

E = 7  # an epoch


def test_join_answers_first_of_the_member_and_of_the_key() -> None:
    table = DecisionTable()
    assert table.join(E, "k", "ann", "a1") is None  # unknown: seed first
    assert table.seed(E, "k", {}, 0.0) is True
    assert table.seed(E, "k", {"x": ["x1"]}, 0.0) is False  # the first seed wins
    assert table.join(E, "k", "ann", "a1") == (True, True)
    assert table.join(E, "k", "ann", "a2") == (False, False)  # one member, two conns
    assert table.join(E, "k", "bob", "b1") == (True, False)
    assert table.join(E, "k", "bob", "b1") == (False, False)  # asked twice
    assert table.leave(E, "k", "ann", "a1") == (False, False)
    assert table.leave(E, "k", "bob", "b1") == (True, False)
    assert table.leave(E, "k", "ann", "a2") == (True, True)  # the last of all
    assert table.join(E, "k", "ann", "a3") == (True, True)  # occupied again


def test_of_two_at_once_exactly_one_is_first_and_one_is_last() -> None:
    """Whatever the order the gateway loop runs them in."""
    for first, second in itertools.permutations(("a1", "a2")):
        table = DecisionTable()
        table.seed(E, "k", {}, 0.0)
        answers = [table.join(E, "k", "ann", c) for c in (first, second)]
        assert answers == [(True, True), (False, False)]
        answers = [table.leave(E, "k", "ann", c) for c in (second, first)]
        assert answers == [(False, False), (True, True)]


def test_a_seed_holds_the_live_members() -> None:
    table = DecisionTable()
    table.seed(E, "k", {"ann": ["a1"], "": ["p1"], "empty": []}, 0.0)
    assert table.join(E, "k", "ann", "a2") == (False, False)
    assert table.join(E, "k", "bob", "b1") == (True, False)
    assert table.leave(E, "k", "", "p1") == (True, False)
    assert "empty" not in table.keys["k"].members


def test_ghost_leaves_answer_once_until_the_seed_settles() -> None:
    """Connections gone from their gateway when the seed was read leave a key that
    never had them: the first ghost of a member not held is its last, not the next."""
    table = DecisionTable(settle=10.0)
    table.seed(E, "k", {"bob": ["b1"]}, 0.0)
    assert table.leave(E, "k", "bob", "b0") == (False, False)  # bob is still held
    assert table.leave(E, "k", "ann", "a1") == (True, False)
    assert table.leave(E, "k", "ann", "a2") == (False, False)  # ann went already
    assert table.leave(E, "k", "bob", "b1") == (True, True)
    assert table.leave(E, "k", "bob", "b2") == (False, False)  # the key emptied already
    assert table.join(E, "k", "ann", "a3") == (True, True)  # back: the marks go
    assert table.leave(E, "k", "ann", "a3") == (True, True)
    table.sweep(11.0)  # settled: a ghost now (there should be none) counts as last
    assert table.leave(E, "k", "ann", "a4") == (True, True)


def test_a_new_epoch_empties_the_table() -> None:
    table = DecisionTable()
    table.seed(E, "k", {"ann": ["a1"]}, 0.0)
    assert table.join(E + 1, "k", "ann", "a2") is None  # the set changed: stale
    assert table.keys == {} and table.epoch == E + 1
    assert table.seed(E + 1, "k", {"ann": ["a1"]}, 0.0) is True
    assert table.join(E + 1, "k", "ann", "a2") == (False, False)


def test_sweep_drops_keys_empty_for_longer_than_linger() -> None:
    table = DecisionTable(linger=5.0)
    table.seed(E, "empty", {}, 0.0)
    table.seed(E, "used", {}, 0.0)
    table.join(E, "used", "", "c1")
    table.sweep(3.0)
    table.leave(E, "used", "", "c1")
    table.sweep(4.0)  # "used" empty from here
    table.sweep(6.0)
    assert set(table.keys) == {"used"}
    table.join(E, "used", "", "c2")  # in use again: kept
    table.sweep(100.0)
    assert set(table.keys) == {"used"}


# ---- the gateway answers them (through the core, as packets) ------------------------


def _ask(h: Harness, link: Any, *packets: list[Any]) -> list[Any]:
    h.feed(link, *packets)
    return [p[2] for p in writer(link).take(Cmd.ROUTES)]


def test_the_gateway_answers_decide_requests() -> None:
    h = Harness()
    w1, w2 = h.link(name="w1"), h.link(name="w2")
    assert _ask(h, w1, [Cmd.Q_DECIDE_JOIN, 1, E, "k", "ann", "a1"]) == [None]
    assert _ask(h, w1, [Cmd.Q_DECIDE_SEED, 2, E, "k", {"bob": ["b1"]}]) == [True]
    assert _ask(h, w2, [Cmd.Q_DECIDE_SEED, 3, E, "k", {}]) == [False]
    # two joins of one user at once, from two workers: one is first
    h.feed(w1, [Cmd.Q_DECIDE_JOIN, 4, E, "k", "ann", "a1"])
    h.feed(w2, [Cmd.Q_DECIDE_JOIN, 5, E, "k", "ann", "a2"])
    assert [p[2] for p in writer(w1).take(Cmd.ROUTES)] == [[True, False]]
    assert [p[2] for p in writer(w2).take(Cmd.ROUTES)] == [[False, False]]
    assert _ask(h, w2, [Cmd.Q_DECIDE_LEAVE, 6, E, "k", "bob", "b1"]) == [[True, False]]


@pytest.mark.parametrize(
    "packet",
    [
        [Cmd.Q_DECIDE_JOIN, 1, "7", "k", "ann", "a1"],
        [Cmd.Q_DECIDE_LEAVE, 1, E, "k", 5, "a1"],
        [Cmd.Q_DECIDE_SEED, 1, E, "k", {"ann": "a1"}],
        [Cmd.Q_DECIDE_SEED, 1, E, "k", ["ann"]],
    ],
)
def test_a_malformed_decide_request_is_refused_with_a_clear_error(packet: list[Any]) -> None:
    h = Harness()
    bad, good = h.link(name="bad"), h.link(name="good")
    h.feed(bad, packet)
    (error,) = writer(bad).take(Cmd.ROUTES)
    assert error[:2] == [Cmd.ERROR, 1] and "bad Q_DECIDE" in error[2]
    assert _ask(h, good, [Cmd.Q_DECIDE_SEED, 2, E, "k", {}]) == [True]  # it serves on


# ---- choosing the decider -------------------------------------------------------------


def test_rendezvous_is_stable_and_moves_only_the_keys_of_a_changed_gateway() -> None:
    three = ["10.0.0.1:2300", "10.0.0.2:2300", "10.0.0.3:2300"]
    keys = [f"pusher:1:presence-{i}" for i in range(300)]
    chosen = {k: decider_of(k, three) for k in keys}
    assert chosen == {k: decider_of(k, reversed(three)) for k in keys}  # order-free
    assert len(set(chosen.values())) == 3  # spread over all of them
    two = three[:2]
    for key in keys:
        if chosen[key] != three[2]:
            assert decider_of(key, two) == chosen[key]  # not moved
    assert decider_of("k", []) is None
    assert epoch_of(three) == epoch_of(reversed(three)) != epoch_of(two)
