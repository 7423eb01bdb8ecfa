"""runtime.gcfreeze: what survives a tick is frozen, freed objects leave the frozen
generation by their reference counts, cycles wait for a full collection; and a real
gateway's clients leave no cyclic garbage behind them."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pygatewayworker.runtime import gcfreeze
from pygatewayworker.runtime.gcfreeze import FrozenHeap
from tests import opsharness
from tests.opsharness import await_for, stats_of

start_cluster = opsharness.start_cluster


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def cycles(n: int) -> list[Node]:
    made = []
    for _ in range(n):
        a, b = Node(), Node()
        a.other, b.other = b, a
        made.append(a)
    return made


@pytest.fixture
def heap() -> Iterator[FrozenHeap]:
    """A heap whose first tick is done; this test process is unfrozen afterwards."""
    gc.collect()
    frozen = FrozenHeap()
    frozen.tick()
    yield frozen
    gc.unfreeze()
    gc.collect()


def test_the_first_tick_sets_the_base_and_later_ticks_freeze_what_survived(
    heap: FrozenHeap,
) -> None:
    assert heap.base > 0 and abs(heap.base - gc.get_freeze_count()) < 500
    kept = [[n] for n in range(5000)]  # tracked containers
    heap.tick()
    assert gc.get_freeze_count() >= heap.base + 5000
    assert heap.stats()["gc_frozen_objects"] == gc.get_freeze_count()
    del kept  # frozen objects are still freed by their reference counts
    assert gc.get_freeze_count() < heap.base + 100
    assert heap.full_collections == 0


def test_frozen_cycles_wait_for_a_full_collection_which_logs_them(
    heap: FrozenHeap, caplog: pytest.LogCaptureFixture
) -> None:
    garbage = cycles(3000)
    heap.tick()
    del garbage
    assert gc.collect() < 6000  # the automatic collections cannot see them
    with caplog.at_level(logging.INFO, logger="cluster"):
        found = heap.collect_all(gc.get_freeze_count())
    assert found >= 6000
    assert heap.stats()["gc_reclaimed_objects"] == found
    assert heap.stats()["gc_full_collections"] == 1
    assert abs(heap.base - gc.get_freeze_count()) < 500
    (record,) = [r for r in caplog.records if "full garbage collection" in r.message]
    assert record.levelno == logging.WARNING and f"{found} of" in record.message


def test_a_full_collection_runs_only_once_the_frozen_objects_doubled_and_grew(
    heap: FrozenHeap, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gcfreeze, "FULL_MIN_GROWTH", 1000)
    heap.base = gc.get_freeze_count() // 2 + 2000  # 4,000 short of double: not yet
    heap.tick()
    assert heap.full_collections == 0
    kept = [[n] for n in range(6000)]
    heap.tick()  # now over double, and grown by more than 1000
    assert heap.full_collections == 1
    assert abs(heap.base - gc.get_freeze_count()) < 500
    heap.tick()
    assert heap.full_collections == 1
    del kept


# ---- a real gateway -------------------------------------------------------------------


async def test_clients_of_a_real_gateway_leave_nothing_in_the_frozen_generation(
    start_cluster: Callable[..., Any],
) -> None:
    """Clients that joined a group, bound a uid and set a session, frozen by the
    gateway's housekeeping, then gone: the gateway's frozen count falls back to
    where it was (no cycle holds them), and no full collection was needed."""
    cluster = start_cluster(gateways=1, workers=1)
    spec = cluster.spec
    name = f"{spec.name}.gateway.0"

    def frozen() -> int:
        return int(stats_of(spec, name).get("gc_frozen_objects", 0))

    await await_for(lambda: frozen() > 0, what="the gateway's first tick")
    await asyncio.sleep(1.5)
    before = frozen()
    clients = await opsharness.open_clients(spec, 300)
    try:
        for n, rc in enumerate(clients):
            await rc.call("join_group", rc.client_id, f"g{n % 7}")
            await rc.call("bind_uid", rc.client_id, f"u{n}")
            await rc.call("set", "k", "v" * 50)
        await await_for(lambda: frozen() > before + 300 * 5, what="the clients frozen")
    finally:
        for rc in clients:
            await rc.close()
    await await_for(lambda: stats_of(spec, name).get("connections") == 0, what="all gone")
    deadline = time.monotonic() + 15
    while frozen() > before + 300 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    stats = stats_of(spec, name)
    assert stats["gc_frozen_objects"] <= before + 300, (before, stats["gc_frozen_objects"])
    assert stats["gc_full_collections"] == 0
