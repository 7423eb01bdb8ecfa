"""Push clients (AsyncGatewayClient, GatewayClient) against fake gateways listed in a
fixed ``gateways`` list (and once through a real register)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import AsyncIterator

import pytest

from pygatewayworker.gateway.client_id import InvalidClientId
from pygatewayworker.gateway.protocol import Cmd
from pygatewayworker.gatewayclient import (
    AsyncGatewayClient,
    GatewayClient,
    GatewayError,
    GatewayUnavailable,
    NoRegister,
    QueryTimeout,
)
from tests.fakegateway import (
    UNIT,
    FakeGateway,
    announced_register,
    wait_until,
)
from tests.ports import refused_port


@pytest.fixture
async def gateways() -> AsyncIterator[tuple[FakeGateway, FakeGateway]]:
    gw1 = await FakeGateway(secret="s").start()
    gw2 = await FakeGateway(secret="s").start()
    try:
        yield gw1, gw2
    finally:
        await gw1.stop()
        await gw2.stop()


async def test_async_client_routes_and_merges(gateways: tuple[FakeGateway, FakeGateway]) -> None:
    gw1, gw2 = gateways
    cid1 = gw1.add_client(1)
    cid2 = gw2.add_client(2, groups=("room",))
    async with AsyncGatewayClient(
        gateways=[gw1.address, gw2.address], secret="s", timeout=1.0, name="web"
    ) as client:
        await client.send_to_client(cid1, "to one")
        await client.send_to_uid("u", b"to uid")
        await client.bind_uid(cid1, "alice")
        await client.bind_uid(cid2, "alice")
        await client.set_session(cid2, {"user": 1})
        await client.update_session(cid2, {"seen": True})
        assert sorted(await client.get_client_id_by_uid("alice")) == sorted([cid1, cid2])
        assert await client.get_session(cid2) == {"user": 1, "seen": True}
        assert await client.get_all_client_count() == 2
        assert await client.get_client_count_by_group("room") == 1
        assert await client.is_uids_online(["alice", "bob"]) == {"alice": True, "bob": False}
        assert sorted(client.gateways) == sorted([gw1.address, gw2.address])
        with pytest.raises(InvalidClientId):
            await client.send_to_client("not-an-id", "x")
        with pytest.raises(TypeError):
            await client.send_to_uid("u", {"not": "encoded"})  # type: ignore[arg-type]
    assert gw1.packets(Cmd.SEND_TO_CLIENT) == [[Cmd.SEND_TO_CLIENT, 1, "to one"]]
    assert gw2.packets(Cmd.SEND_TO_CLIENT) == []
    for gw in gateways:
        assert gw.packets(Cmd.SEND_TO_UID) == [[Cmd.SEND_TO_UID, ["u"], b"to uid"]]
        assert [packet[1:3] for packet in gw.packets(Cmd.HELLO)] == [["client", "web"]]
    await wait_until(lambda: not gw1.links and not gw2.links)  # closed on exit


async def test_async_client_relinks_after_gateway_restart(
    gateways: tuple[FakeGateway, FakeGateway],
) -> None:
    gw1, _ = gateways
    client = AsyncGatewayClient(gateways=[gw1.address], secret="s", timeout=1.0)
    try:
        await client.send_to_all("first")
        await wait_until(lambda: len(gw1.packets(Cmd.SEND_TO_ALL)) == 1)
        port = gw1.port
        await gw1.stop()
        await wait_until(lambda: not client.gateways)
        await gw1.start(port)
        await wait_until(lambda: client.gateways == [gw1.address])
        await client.send_to_all("second")
        await wait_until(lambda: len(gw1.packets(Cmd.SEND_TO_ALL)) == 2)
    finally:
        await client.close()


async def test_queries_report_a_listed_gateway_that_is_not_linked(
    gateways: tuple[FakeGateway, FakeGateway],
) -> None:
    gw1, _ = gateways
    gw1.add_client(1)
    dead = f"127.0.0.1:{refused_port()}"
    client = AsyncGatewayClient(gateways=[gw1.address, dead], secret="s", timeout=0.5)
    try:
        with pytest.raises(QueryTimeout) as info:
            await client.get_all_client_count()
        assert info.value.missing == (dead,)
        assert info.value.partial == 1  # what the linked gateway said
    finally:
        await client.close()


async def test_async_client_without_register_raises_no_register() -> None:
    client = AsyncGatewayClient(register=f"127.0.0.1:{refused_port()}", timeout=0.5)
    try:
        with pytest.raises(NoRegister, match="no register answered"):
            await client.send_to_uid("u", "x")
    finally:
        await client.close()


async def test_async_client_without_gateway_raises_unavailable() -> None:
    port = refused_port()
    client = AsyncGatewayClient(gateways=[f"127.0.0.1:{port}"], timeout=0.3)
    try:
        with pytest.raises(GatewayUnavailable, match=f"cannot link to gateway 127.0.0.1:{port}"):
            await client.send_to_uid("u", "x")
    finally:
        await client.close()


async def test_async_client_sustains_a_high_send_rate(
    gateways: tuple[FakeGateway, FakeGateway],
) -> None:
    gw1, _ = gateways
    count = 20000
    async with AsyncGatewayClient(gateways=[gw1.address], secret="s") as client:
        await client.connect()
        started = time.perf_counter()
        for i in range(count):
            await client.send_to_uid(i % 100, "price update")
        rate = count / (time.perf_counter() - started)
        await wait_until(lambda: len(gw1.packets(Cmd.SEND_TO_UID)) == count, 6 * UNIT)
    print(f"send_to_uid: {rate:,.0f}/s")
    assert rate > 5000  # loose bound for a loaded test machine; the target is 30,000/s


async def test_sync_client_from_eight_threads(gateways: tuple[FakeGateway, FakeGateway]) -> None:
    gw1, gw2 = gateways
    ids = [gw1.add_client(n) if n % 2 else gw2.add_client(n) for n in range(1, 9)]
    client = GatewayClient(gateways=[gw1.address, gw2.address], secret="s", timeout=2.0)

    def work(n: int) -> int:
        for i in range(50):
            client.send_to_uid(f"user{n}", f"{n}:{i}")
        client.bind_uid(ids[n], f"user{n}")
        client.send_to_client(ids[n], "direct")
        with pytest.raises(InvalidClientId):
            client.send_to_client("bad", "x")
        return client.get_all_client_count()

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=8)
    loop = asyncio.get_running_loop()
    try:
        counts = await asyncio.gather(*(loop.run_in_executor(pool, work, n) for n in range(8)))
        assert counts == [8] * 8
        for gw in gateways:
            assert len(gw.packets(Cmd.SEND_TO_UID)) == 400
            per_thread = [p[2] for p in gw.packets(Cmd.SEND_TO_UID) if p[1] == ["user3"]]
            assert per_thread == [f"3:{i}" for i in range(50)]  # one thread's order kept
        assert len(gw1.packets(Cmd.SEND_TO_CLIENT)) == len(gw2.packets(Cmd.SEND_TO_CLIENT)) == 4
        assert len(gw1.packets(Cmd.HELLO)) == 1  # one persistent link per gateway
        assert await loop.run_in_executor(pool, client.is_uid_online, "user5") is True
    finally:
        await loop.run_in_executor(pool, client.close)
        pool.shutdown()
    with pytest.raises(GatewayError, match="closed"):
        client.send_to_all("after close")


async def test_sync_client_through_a_real_register(
    gateways: tuple[FakeGateway, FakeGateway],
) -> None:
    async with announced_register([gw.address for gw in gateways], "s") as register:
        # (the blocking calls run in threads: this loop also serves the fake gateways)
        client = GatewayClient(register=register, secret="s")
        await asyncio.to_thread(client.send_to_group, ["a", "b"], "hello")
        await asyncio.to_thread(client.close)
        expected = [[Cmd.SEND_TO_GROUP, ["a", "b"], "hello", None]]
        await wait_until(lambda: all(gw.packets(Cmd.SEND_TO_GROUP) == expected for gw in gateways))
        bad = GatewayClient(register=register, secret="bad", timeout=1)
        with pytest.raises(NoRegister, match="refused"):
            await asyncio.to_thread(bad.send_to_all, "x")
        await asyncio.to_thread(bad.close)


async def test_link_timings_reach_every_link_and_bad_ones_are_refused() -> None:
    gw = await FakeGateway(secret="s").start()
    try:
        async with AsyncGatewayClient(
            gateways=[gw.address], secret="s", timeout=1.0, keepalive_interval=0.2, link_timeout=1.0
        ) as client:
            await client.send_to_all("x")
            link = client._pool.links[gw.address]
            assert (link.keepalive_interval, link.link_timeout) == (0.2, 1.0)
            # idle for longer than the timeout: pings keep the link (the fake answers)
            await asyncio.sleep(1.5)
            assert client._pool.links.get(gw.address) is link and link.is_open
            assert len(gw.packets(Cmd.PING)) >= 3
    finally:
        await gw.stop()
    for keepalive, timeout in ((10.0, 15.0), (0.0, 5.0), (1.0, -1.0)):
        with pytest.raises(ValueError, match="push client"):
            AsyncGatewayClient(keepalive_interval=keepalive, link_timeout=timeout)
        with pytest.raises(ValueError, match="push client"):
            GatewayClient(keepalive_interval=keepalive, link_timeout=timeout)


def test_gateway_and_worker_refuse_a_link_timeout_within_two_keepalives() -> None:
    from pygatewayworker.businessworker import BusinessWorker
    from pygatewayworker.gateway import Gateway
    from pygatewayworker.register.config import ConfigError

    with pytest.raises(ConfigError, match=r"Gateway link_timeout \(15 s\) must be at least twice"):
        Gateway(keepalive_interval=10, link_timeout=15)
    with pytest.raises(ConfigError, match="BusinessWorker link_timeout"):
        BusinessWorker(events="a.b:C", keepalive_interval=5, link_timeout=5)
    assert Gateway(keepalive_interval=1, link_timeout=2).link_timeout == 2
