"""The paced reader of ``gatewayclient/link.py``: a read of thousands of packets is
handled over several loop turns, in order, with the link's reading paused
meanwhile; what becomes of kept input when the link closes; garbage behind a kept
batch.

Each test links a real ``GatewayLink`` to the fake gateway (``tests/fakegateway.py``,
a real TCP server). A large read is handed to the link's ``data_received`` the way
its transport does, so that one read surely holds thousands of packets (over
loopback, how the kernel cuts the stream into reads is not ours to choose); what
the gateway sends afterwards comes over TCP. The scenarios run on asyncio's loop and
on uvloop (what worker processes run on).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest
import uvloop

from pygatewayworker.gateway.protocol import Cmd, encode
from pygatewayworker.gatewayclient import link as link_module
from pygatewayworker.gatewayclient.link import CHECK_EVERY, TURN_PACKETS, GatewayLink
from tests.fakegateway import UNIT, FakeGateway, wait_until

N = 5000  # packets in one large read: about 20 turns' worth


def events(start: int, count: int) -> bytes:
    """``count`` EV_MESSAGE packets of 100 clients; packet ``i`` carries ``i``."""
    return b"".join(
        encode(Cmd.EV_MESSAGE, 1 + i % 100, None, "203.0.113.7", 50000, i)
        for i in range(start, start + count)
    )


class Reader:
    """The link's ``on_event``: records each payload and whether the transport was
    reading while it was handled."""

    def __init__(self) -> None:
        self.seen: list[int] = []
        self.reading: list[bool] = []
        self.link: GatewayLink | None = None
        self.hook: Callable[[int], None] | None = None

    def __call__(self, link: GatewayLink, packet: list[Any]) -> None:
        self.seen.append(packet[5])
        self.reading.append(transport_of(link).is_reading())
        if self.hook is not None:
            self.hook(packet[5])


def transport_of(link: GatewayLink) -> asyncio.Transport:
    transport = link._transport
    assert transport is not None
    return transport


@contextlib.asynccontextmanager
async def linked(
    on_close: Callable[[GatewayLink], None] | None = None,
) -> AsyncIterator[tuple[FakeGateway, GatewayLink, Reader]]:
    """A fake gateway and a worker link to it; both closed at the end."""
    gw = await FakeGateway().start()
    reader = Reader()
    link = GatewayLink(gw.address, role="worker", on_event=reader, on_close=on_close)
    try:
        await link.connect()
        yield gw, link, reader
    finally:
        link.close()
        await gw.stop()


async def test_a_large_read_is_handled_over_several_turns_with_reading_paused() -> None:
    async with linked() as (gw, link, reader):
        loop = asyncio.get_running_loop()
        other: list[int] = []
        # the first event makes another callback runnable (as a task woken by it)
        reader.hook = lambda i: i == 0 and loop.call_soon(lambda: other.append(len(reader.seen)))
        link.data_received(events(0, N))
        first = len(reader.seen)
        assert 0 < first <= TURN_PACKETS
        assert not transport_of(link).is_reading()  # the rest is kept: TCP back-pressure
        await wait_until(lambda: len(reader.seen) == N)
        assert reader.seen == list(range(N))
        assert other == [first]  # it ran between the first turn and the second
        assert not any(reader.reading[first:])  # paused until the kept input was handled
        await wait_until(lambda: transport_of(link).is_reading())
        assert link.is_open


async def test_a_turn_ends_when_its_time_is_up(monkeypatch: pytest.MonkeyPatch) -> None:
    # no time at all: each turn stops at the first look at the clock
    monkeypatch.setattr(link_module, "TURN_SECONDS", 0.0)
    async with linked() as (gw, link, reader):
        link.data_received(events(0, N))
        assert len(reader.seen) == CHECK_EVERY
        await wait_until(lambda: len(reader.seen) == N)
        assert reader.seen == list(range(N))


async def test_order_is_kept_across_kept_batches_and_later_reads() -> None:
    async with linked() as (gw, link, reader):
        link.data_received(events(0, N))
        # a read delivered while input is kept goes behind it ...
        link.data_received(events(N, 10))
        # ... and so does what the gateway sends meanwhile (it waits in the socket)
        gw.links[0].write(events(N + 10, N))
        await wait_until(lambda: len(reader.seen) == 2 * N + 10)
        assert reader.seen == list(range(2 * N + 10))
        await wait_until(lambda: transport_of(link).is_reading())


async def test_a_graceful_close_handles_the_kept_packets_first() -> None:
    async with linked() as (gw, link, reader):
        # the last event's answer is queued by its callback and still goes out
        reply = encode(Cmd.SEND_TO_UID, ["u"], "after the last event")
        reader.hook = lambda i: i == N - 1 and link.send(reply)
        link.data_received(events(0, N))
        assert len(reader.seen) < N
        link.close()
        assert reader.seen == list(range(N))  # before close() returned
        await asyncio.wait_for(link.wait_closed(), UNIT)
        await wait_until(lambda: bool(gw.packets(Cmd.SEND_TO_UID)))
        assert gw.packets(Cmd.SEND_TO_UID)[0][2] == "after the last event"


async def test_an_abort_drops_the_kept_packets() -> None:
    async with linked() as (gw, link, reader):
        link.data_received(events(0, N))
        first = len(reader.seen)
        link.abort("test")
        await asyncio.wait_for(link.wait_closed(), UNIT)
        for _ in range(5):
            await asyncio.sleep(0)
        assert reader.seen == list(range(first))


async def test_a_connection_lost_while_packets_are_kept_handles_them_first() -> None:
    closed_after: list[int] = []
    async with linked(lambda _: closed_after.append(len(reader.seen))) as (gw, link, reader):
        link.data_received(events(0, N))
        assert len(reader.seen) < N
        transport_of(link).abort()  # the transport drops the connection, not the link
        await asyncio.wait_for(link.wait_closed(), UNIT)
        assert reader.seen == list(range(N))
        assert closed_after == [N]  # on_close comes after every received event


async def test_a_gateway_that_closes_after_a_burst_loses_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(link_module, "TURN_SECONDS", 0.0)  # keep input on every read
    async with linked() as (gw, link, reader):
        gw.links[0].write(events(0, N))
        gw.links[0].writer.close()
        await asyncio.wait_for(link.wait_closed(), UNIT)
        assert reader.seen == list(range(N))
        assert "closed by the gateway" in link.close_reason


async def test_garbage_behind_kept_batches_closes_the_link_with_one_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with linked() as (gw, link, reader):
        with caplog.at_level(logging.ERROR, logger="gatewayclient"):
            # bytes that are no msgpack array, behind N good packets
            link.data_received(events(0, N) + b"\x00\x00\x00\x03abc")
            assert link.is_open and len(reader.seen) < N
            await asyncio.wait_for(link.wait_closed(), UNIT)
        assert "protocol error" in link.close_reason
        errors = [r for r in caplog.records if r.name == "gatewayclient"]
        assert len(errors) == 1 and "sent garbage" in errors[0].getMessage()
        # the good packets came in order; the batch the garbage was decoded with is
        # dropped with it (as a read with garbage always was)
        assert len(reader.seen) >= TURN_PACKETS
        assert reader.seen == list(range(len(reader.seen)))


async def test_a_malformed_event_behind_kept_batches_closes_the_link_there(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with linked() as (gw, link, reader):
        bad = 4000
        with caplog.at_level(logging.ERROR, logger="gatewayclient"):
            # valid msgpack, but connection id 0 is no client
            blob = events(0, bad) + encode(Cmd.EV_MESSAGE, 0, None, "x", 1, "bad")
            link.data_received(blob + events(bad + 1, N - bad - 1))
            await asyncio.wait_for(link.wait_closed(), UNIT)
        assert reader.seen == list(range(bad))  # every event before it, none after
        errors = [r for r in caplog.records if r.name == "gatewayclient"]
        assert len(errors) == 1 and "malformed EV_MESSAGE" in errors[0].getMessage()


# ---- the same scenarios on uvloop (what worker processes run on) ---------------------

UVLOOP_SCENARIOS: list[Callable[[], Coroutine[Any, Any, None]]] = [
    test_a_large_read_is_handled_over_several_turns_with_reading_paused,
    test_order_is_kept_across_kept_batches_and_later_reads,
    test_a_graceful_close_handles_the_kept_packets_first,
    test_an_abort_drops_the_kept_packets,
    test_a_connection_lost_while_packets_are_kept_handles_them_first,
]


async def test_a_failing_flush_of_a_held_link_spares_the_reader_and_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A reader's turn made three links send; one transport's write raises: that is
    logged, the reader's link stays open and the other two links' packets go out."""
    async with linked() as (gw, link, reader):
        gw_other, gw_broken = await FakeGateway().start(), await FakeGateway().start()
        other = GatewayLink(gw_other.address, role="client")
        broken = GatewayLink(gw_broken.address, role="client")
        await other.connect()
        await broken.connect()

        def fail(data: bytes) -> None:
            raise OSError("the write failed")

        transport_of(broken).write = fail  # type: ignore[method-assign]

        def hook(payload: int) -> None:
            broken.send(encode(Cmd.SEND_TO_ALL, "lost", None, None))
            link.send(encode(Cmd.SEND_TO_CLIENT, 1, "reply", None))
            other.send(encode(Cmd.SEND_TO_ALL, "other", None, None))

        reader.hook = hook
        try:
            with caplog.at_level(logging.ERROR, logger="gatewayclient"):
                gw.emit(Cmd.EV_MESSAGE, 1, 7)
                await wait_until(lambda: bool(gw.packets(Cmd.SEND_TO_CLIENT)))
                await wait_until(lambda: bool(gw_other.packets(Cmd.SEND_TO_ALL)))
            assert link.is_open and reader.seen == [7]
            failed = [r for r in caplog.records if "flushing the link" in r.getMessage()]
            assert len(failed) == 1 and gw_broken.address in failed[0].getMessage()
        finally:
            other.close()
            broken.abort("test over")
            await gw_other.stop()
            await gw_broken.stop()


async def test_a_reader_turn_holds_back_only_its_own_threads_flushes() -> None:
    """What a reader's callbacks send is flushed when the turn of input ends; a link
    of another loop (another thread: a sync push client's beside a worker's loop)
    that sends meanwhile flushes on its own, in its own thread, at once."""
    gw_a, gw_b = await FakeGateway().start(), await FakeGateway().start()
    a_inside, b_seen, stop = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, Any] = {}

    def on_event(link: GatewayLink, packet: list[Any]) -> None:
        link.send(encode(Cmd.SEND_TO_CLIENT, packet[1], "reply", None))  # held
        a_inside.set()
        seen["b_while_a_handled"] = b_seen.wait(UNIT)

    async def serve(address: str, role: str, b: bool) -> None:
        link = GatewayLink(address, role=role, on_event=None if b else on_event)
        await link.connect()
        seen[f"ready_{role}"] = True
        while not stop.is_set():
            if b and a_inside.is_set() and "sent" not in seen:
                link.send(encode(Cmd.SEND_TO_ALL, "from b", None, None))
                seen["sent"] = True
            await asyncio.sleep(0.002)
        link.close()

    threads = [
        threading.Thread(target=asyncio.run, args=(serve(gw_a.address, "worker", False),)),
        threading.Thread(target=asyncio.run, args=(serve(gw_b.address, "client", True),)),
    ]
    for thread in threads:
        thread.start()
    try:
        await wait_until(lambda: "ready_worker" in seen and "ready_client" in seen)
        gw_a.emit(Cmd.EV_MESSAGE, 5, "hi")
        await wait_until(lambda: bool(gw_b.packets(Cmd.SEND_TO_ALL)))
        assert not gw_a.packets(Cmd.SEND_TO_CLIENT)  # a's turn is still going on
        b_seen.set()
        await wait_until(lambda: bool(gw_a.packets(Cmd.SEND_TO_CLIENT)))
        assert seen["b_while_a_handled"] is True
    finally:
        b_seen.set()
        stop.set()
        for thread in threads:
            await asyncio.to_thread(thread.join, UNIT)
        await gw_a.stop()
        await gw_b.stop()


@pytest.mark.parametrize("scenario", UVLOOP_SCENARIOS, ids=lambda s: s.__name__)
def test_on_uvloop(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(scenario(), 30))
