"""Regressions: a gateway stops fast with thousands of clients while its register
connection is live; connection ids start at a random offset; conn_id fields are
validated; the heartbeat sweeps its clients in slices."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from pygatewayworker.gateway import clients as clients_mod
from pygatewayworker.gateway import server as server_mod
from pygatewayworker.gateway.client_id import MAX_CONN_ID
from pygatewayworker.gateway.clients import HeartbeatSweep, first_conn_id
from pygatewayworker.gateway.protocol import Cmd
from pygatewayworker.gateway.records import Client
from pygatewayworker.gateway.server import GatewayServer
from pygatewayworker.gateway.websocket import ServerConnection, State
from pygatewayworker.register.config import Register
from pygatewayworker.register.discovery import GatewayAnnouncer
from pygatewayworker.register.server import RegisterServer
from tests.gatewayharness import (
    SECRET,
    TIMEOUT,
    FakeLink,
    make_config,
    open_client,
    recv,
    running,
)

CLIENTS = 2000
_UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


class _Idle(asyncio.Protocol):
    """A raw WebSocket client that upgrades and then stays silent."""

    def __init__(self, upgraded: asyncio.Future[None], lost: list[int]) -> None:
        self.upgraded = upgraded
        self.lost = lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(_UPGRADE)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if not self.upgraded.done() and data.startswith(b"HTTP/1.1 101"):
            self.upgraded.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(1)


async def test_stop_with_thousands_of_clients_and_a_live_register_is_fast() -> None:
    register = RegisterServer(Register(listen="127.0.0.1:0", secret=SECRET))
    await register.start()
    server = GatewayServer(make_config(register=f"127.0.0.1:{register.port}"))
    await server.start()
    try:
        assert await server._announcer.wait_announced(TIMEOUT)
        worker = await FakeLink.linked(server)
        loop = asyncio.get_running_loop()
        lost: list[int] = []
        transports = []
        for batch in range(0, CLIENTS, 200):
            upgraded = [loop.create_future() for _ in range(min(200, CLIENTS - batch))]
            for fut in upgraded:
                transport, _ = await loop.create_connection(
                    lambda fut=fut: _Idle(fut, lost), "127.0.0.1", server.public_port
                )
                transports.append(transport)
            await asyncio.wait_for(asyncio.gather(*upgraded), TIMEOUT)
        assert len(server.directory) == CLIENTS
        started = time.monotonic()
        await asyncio.wait_for(server.stop(graceful=False), 10)
        assert time.monotonic() - started < 5
        async with asyncio.timeout(TIMEOUT):
            while len(lost) < CLIENTS:
                await asyncio.sleep(0.01)
        closes = [p for p in await worker.closed() if p[0] == Cmd.EV_CLOSE]
        assert len(closes) == CLIENTS
        await worker.close()
    finally:
        await server.stop(graceful=False)
        await register.stop(False)


async def _close_announcers_while_pongs_arrive(rounds: int) -> list[float]:
    register = RegisterServer(Register(listen="127.0.0.1:0"))
    await register.start()
    slowest: list[float] = []
    try:
        for i in range(rounds):
            announcer = GatewayAnnouncer(
                (f"127.0.0.1:{register.port}",), "", f"127.0.0.1:{20000 + i}", keepalive=0.001
            )
            await announcer.start()
            await announcer.wait_announced(TIMEOUT)
            await asyncio.sleep(0.001 * (i % 7))
            started = time.monotonic()
            # shield: a timeout here must not cancel close() (that would unstick it)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(announcer.close()), 1.5)
            slowest.append(time.monotonic() - started)
            for task in announcer._tasks:
                task.cancel()
    finally:
        await register.stop(False)
    return slowest


def test_register_close_is_not_lost_while_pongs_arrive() -> None:
    """The cause of gateways hanging in stop(): on Python 3.11 asyncio.wait_for
    swallowed a cancel that arrived as the register's pong did, and close() waited
    forever (about 4 % of closes with pongs flowing, before the fix). Every close
    must finish at once."""
    factory = asyncio.new_event_loop
    with contextlib.suppress(ImportError):
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        durations = runner.run(_close_announcers_while_pongs_arrive(150))
    assert max(durations) < 1.0, sorted(durations)[-5:]


def test_conn_ids_start_at_a_random_offset_and_wrap_skipping_ids_in_use() -> None:
    firsts = {first_conn_id() for _ in range(50)}
    assert len(firsts) > 40 and all(1 <= f < 2**31 for f in firsts)
    a, b = GatewayServer(make_config()).core.clients, GatewayServer(make_config()).core.clients
    assert a.new_conn_id() != b.new_conn_id()  # two processes' lives differ

    class Entry:
        def __init__(self, conn_id: int) -> None:
            self.conn_id = conn_id

    a._next_conn_id = MAX_CONN_ID - 1
    assert a.new_conn_id() == MAX_CONN_ID
    a.directory._conns[1] = Entry(1)  # type: ignore[assignment]
    a.directory._conns[2] = Entry(2)  # type: ignore[assignment]
    assert a.new_conn_id() == 3


def test_first_conn_id_uses_the_whole_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clients_mod.secrets, "randbelow", lambda n: n - 1)
    assert first_conn_id() == 2**31 - 1
    monkeypatch.setattr(clients_mod.secrets, "randbelow", lambda n: 0)
    assert first_conn_id() == 1


@pytest.mark.parametrize(
    "packet",
    [
        [Cmd.SEND_TO_CLIENT, "7", "hi"],
        [Cmd.SEND_TO_CLIENT, 0, "hi"],
        [Cmd.SEND_TO_CLIENT, 2**32, "hi"],
        [Cmd.SEND_TO_CLIENT, True, "hi"],
        [Cmd.SEND_TO_CLIENT, 1.0, "hi"],
        [Cmd.CLOSE_CLIENT, -1, None],
        [Cmd.DESTROY_CLIENT, None],
        [Cmd.BIND_UID, "1", "u"],
        [Cmd.JOIN_GROUP, 2**40, "g"],
        [Cmd.SET_SESSION, [1], None],
        [Cmd.SEND_TO_ALL, "x", [0], None],
        [Cmd.SEND_TO_GROUP, ["g"], "x", [2**32]],
    ],
    ids=lambda p: p[0].name if isinstance(p, list) else str(p),
)
async def test_bad_conn_id_gets_error_and_closes_only_that_link(
    packet: list, caplog: pytest.LogCaptureFixture
) -> None:
    async with running() as server:
        worker = await FakeLink.linked(server)
        client, conn_id = await open_client(server, worker)
        rogue = await FakeLink.linked(server, role="client")
        rogue.send(*packet)
        seen = await rogue.closed()
        assert seen and seen[0][0] == Cmd.ERROR
        assert "conn_id" in seen[0][2]
        assert any("closing the link" in r.getMessage() for r in caplog.records)
        worker.send(Cmd.SEND_TO_CLIENT, conn_id, "still served")
        assert await recv(client) == "still served"
        await rogue.close()
        await client.close()
        await worker.close()


async def test_stop_does_not_wait_forever_for_the_registers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = GatewayServer(make_config())
    await server.start()

    async def never() -> None:
        await asyncio.Event().wait()

    real_close = server._announcer.close
    server._announcer.close = never  # type: ignore[method-assign]
    started = time.monotonic()
    await asyncio.wait_for(server.stop(graceful=False), 10)
    assert time.monotonic() - started < 5
    assert any("withdrawing from the registers" in r.getMessage() for r in caplog.records)
    await real_close()


class _Writer:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self, code: int, reason: str = "") -> None:
        self.writes.append(b"<close>")

    def abort(self) -> None:
        self.writes.append(b"<abort>")


def _idle_clients(server: GatewayServer, conn_ids: range) -> dict[int, _Writer]:
    writers = {}
    for conn_id in conn_ids:
        ws = ServerConnection(1000)
        ws.state = State.OPEN
        client = Client(ws, writers.setdefault(conn_id, _Writer()))
        client.conn_id = conn_id
        client.silent = 0  # silent for a whole interval: the next sweep pings
        server.directory.add(client)
    return writers


def test_heartbeat_sweeps_one_slice_of_the_clients_at_a_time() -> None:
    server = GatewayServer(make_config(ping_interval=10, ping_data="p"))
    transports = _idle_clients(server, range(1, 31))
    server.core.clients.heartbeat(3, 10)
    pinged = sorted(c for c, t in transports.items() if t.writes)
    assert pinged == [3, 13, 23]
    server.core.clients.heartbeat()  # no slices: everyone
    assert all(t.writes for t in transports.values())
    assert len(transports[3].writes) == 2


async def test_heartbeat_task_walks_the_slices_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    server = GatewayServer(make_config(ping_interval=0.2, ping_data="p"))
    calls: list[tuple[int, int]] = []
    sweep = server.core.clients.heartbeat_sweep

    def recorded(part: int, parts: int) -> HeartbeatSweep:
        calls.append((part, parts))
        return sweep(part, parts)

    monkeypatch.setattr(server.core.clients, "heartbeat_sweep", recorded)
    task = asyncio.create_task(server._heartbeat())
    try:
        async with asyncio.timeout(TIMEOUT):
            while len(calls) < server_mod.HEARTBEAT_SLICES + 2:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
    slices = server_mod.HEARTBEAT_SLICES
    assert [c[0] for c in calls[: slices + 2]] == [*range(slices), 0, 1]
    assert {c[1] for c in calls} == {slices}
