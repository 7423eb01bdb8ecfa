"""runtime.gcfreeze: what survives a tick is frozen, freed objects leave the frozen
generation by their reference counts, cycles wait for a full collection (run when
the process's memory doubled); and a real gateway's clients leave no cyclic garbage
behind them."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Iterator

import pytest
import uvloop

from pygatewayworker.gateway.protocol import Cmd, pack_session
from pygatewayworker.runtime import gcfreeze
from pygatewayworker.runtime.footprint import rss_bytes
from pygatewayworker.runtime.gcfreeze import FrozenHeap
from tests.gatewayharness import FakeLink, running, wait_until


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


def test_a_tick_freezes_what_survived_and_freed_objects_leave_by_refcount(
    heap: FrozenHeap,
) -> None:
    assert heap.base == rss_bytes() or abs(heap.base - rss_bytes()) < 8 << 20
    before = gc.get_freeze_count()
    kept = [[n] for n in range(5000)]  # tracked containers
    heap.tick()
    assert gc.get_freeze_count() >= before + 5000
    assert gc.collect() == 0 and gc.get_freeze_count() >= before + 5000  # out of reach
    del kept  # frozen objects are still freed by their reference counts
    assert gc.get_freeze_count() < before + 100
    assert heap.full_collections == 0 and heap.stats()["gc_full_collections"] == 0


def test_frozen_cycles_wait_for_a_full_collection_which_logs_them(
    heap: FrozenHeap, caplog: pytest.LogCaptureFixture
) -> None:
    garbage = cycles(3000)
    heap.tick()
    del garbage
    assert gc.collect() < 6000  # the automatic collections cannot see them
    with caplog.at_level(logging.INFO, logger="cluster"):
        found = heap.collect_all()
    assert found >= 6000
    assert heap.stats() == {"gc_full_collections": 1, "gc_reclaimed_objects": found}
    (record,) = [r for r in caplog.records if "full garbage collection" in r.message]
    assert record.levelno == logging.WARNING and f"{found} of" in record.message


def test_a_full_collection_runs_once_the_memory_doubled_and_grew_at_a_quiet_tick(
    heap: FrozenHeap, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gcfreeze, "FULL_MIN_GROWTH", 1 << 20)
    heap.tick()
    assert heap.full_collections == 0 and heap.due is None
    ballast = bytearray(heap.base + (8 << 20))  # resident once written
    ballast[::4096] = b"x" * len(ballast[::4096])
    heap.tick(activity=10_000)  # over double and grown by more than 1 MiB, but busy
    assert heap.full_collections == 0 and heap.due is not None
    heap.tick(activity=20_000)  # still busy
    assert heap.full_collections == 0
    heap.tick(activity=20_050)  # quiet: 50 since the last tick
    assert heap.full_collections == 1 and heap.due is None
    assert heap.base > len(ballast)  # the new base includes the ballast
    heap.tick(activity=20_060)
    assert heap.full_collections == 1
    del ballast


def test_a_due_full_collection_waits_for_a_quiet_tick_at_most_max_delay(
    heap: FrozenHeap, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gcfreeze, "FULL_MIN_GROWTH", 1 << 20)
    monkeypatch.setattr(gcfreeze, "MAX_DELAY", 0.0)
    ballast = bytearray(heap.base + (8 << 20))
    ballast[::4096] = b"x" * len(ballast[::4096])
    heap.tick(activity=10_000)  # due and busy, but it has waited long enough
    assert heap.full_collections == 1
    del ballast


# ---- a real gateway -------------------------------------------------------------------


def test_clients_of_a_real_gateway_leave_no_cycles_in_the_frozen_generation() -> None:
    """300 clients of a gateway in this process, on uvloop as in a gateway process,
    each with a uid, a group and a session, frozen by a tick, then gone: a full
    collection finds far fewer objects in cycles than there were clients (each
    client is some eight tracked objects, all freed by their reference counts; the
    worker's link is one small cycle). (On asyncio's own loop each closed socket
    transport is a cycle of five objects, its own: ``uvloop`` is a dependency.)"""
    uvloop.run(_churn_clients())


async def _churn_clients() -> None:
    gc.collect()
    heap = FrozenHeap()
    heap.tick()
    try:
        async with running() as server:
            worker = await FakeLink.linked(server)
            conns = []
            for n in range(300):
                reader, writer = await asyncio.open_connection("127.0.0.1", server.public_port)
                writer.write(
                    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    b"Sec-WebSocket-Version: 13\r\n\r\n"
                )
                await reader.readuntil(b"\r\n\r\n")
                conn_id = (await worker.expect(Cmd.EV_CONNECT))[1]
                await worker.expect(Cmd.EV_WS_CONNECT)
                worker.send(Cmd.BIND_UID, conn_id, f"u{n}")
                worker.send(Cmd.JOIN_GROUP, conn_id, f"g{n % 7}")
                worker.send(Cmd.SET_SESSION, conn_id, pack_session({"name": "x" * 40, "n": n}))
                conns.append(writer)
            await wait_until(lambda: len(server.directory.route_keys()[0]) == 300)
            heap.tick()  # the clients are frozen now
            for writer in conns:
                writer.close()
            await wait_until(lambda: server.stats()["connections"] == 0)
            await worker.close()
        found = heap.collect_all()
        assert found < 100, found
    finally:
        gc.unfreeze()
        gc.collect()
