"""The register server and its clients, over real loopback sockets on port 0."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import uvloop

from pygatewayworker.register import lines
from pygatewayworker.register import server as register_server
from pygatewayworker.register.config import Register
from pygatewayworker.register.discovery import GatewayAnnouncer, GatewayDirectoryWatcher
from pygatewayworker.register.server import RegisterServer, serve
from pygatewayworker.runtime.spec import ChildSpec
from tests.ports import HeldPort, refused_port

SECRET = 'top"secret\\key\n{}'
TIMEOUT = 5.0
RETRY = 0.1


async def until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Poll ``predicate`` until it holds; fail the test after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


class Peer:
    """A raw line client of the register."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> Peer:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, doc: dict[str, Any] | bytes) -> None:
        self.writer.write(doc if isinstance(doc, bytes) else lines.encode(doc))
        await self.writer.drain()

    async def recv(self) -> dict[str, Any]:
        line = await asyncio.wait_for(self.reader.readline(), TIMEOUT)
        assert line, "connection closed while a document was expected"
        return json.loads(line)

    async def expect_closed(self) -> None:
        rest = await asyncio.wait_for(self.reader.read(), TIMEOUT)
        assert rest == b"", f"unexpected data before close: {rest!r}"

    async def subscribe(self, secret: str = SECRET) -> list[str]:
        await self.send({"event": "worker_connect", "secret_key": secret})
        doc = await self.recv()
        assert doc["event"] == "broadcast_addresses"
        return doc["addresses"]

    async def announce(self, address: str, secret: str = SECRET) -> None:
        await self.send({"event": "gateway_connect", "address": address, "secret_key": secret})
        await self.send(lines.PING)
        assert await self.recv() == {"event": "pong"}

    def close(self) -> None:
        self.writer.close()


RegisterFactory = Callable[..., Awaitable[RegisterServer]]


@pytest.fixture
async def make_register() -> AsyncIterator[RegisterFactory]:
    servers: list[RegisterServer] = []

    async def make(
        port: int = 0, sock: socket.socket | None = None, **overrides: Any
    ) -> RegisterServer:
        settings: dict[str, Any] = {"secret": SECRET, **overrides}
        config = Register(listen=f"127.0.0.1:{port}", **settings)
        server = RegisterServer(config, sock)
        await server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop(graceful=False)


@pytest.fixture
async def closing() -> AsyncIterator[list[Any]]:
    """Things with an async ``close()`` (clients) or ``close()`` (peers) to clean up."""
    items: list[Any] = []
    yield items
    for item in items:
        result = item.close()
        if asyncio.iscoroutine(result):
            await result


# ---- the server ---------------------------------------------------------------------


async def test_subscribers_get_the_list_on_subscribe_and_on_every_change(make_register):
    reg = await make_register()
    sub = await Peer.connect(reg.port)
    assert await sub.subscribe() == []

    gw_a = await Peer.connect(reg.port)
    await gw_a.announce("127.0.0.1:2300")
    assert (await sub.recv())["addresses"] == ["127.0.0.1:2300"]
    gw_b = await Peer.connect(reg.port)
    await gw_b.announce("127.0.0.2:2301")
    assert (await sub.recv())["addresses"] == ["127.0.0.1:2300", "127.0.0.2:2301"]

    late = await Peer.connect(reg.port)
    assert await late.subscribe() == ["127.0.0.1:2300", "127.0.0.2:2301"]

    gw_a.close()
    assert (await sub.recv())["addresses"] == ["127.0.0.2:2301"]
    assert (await late.recv())["addresses"] == ["127.0.0.2:2301"]
    assert reg.stats()["gateways"] == 1
    for peer in (sub, gw_b, late):
        peer.close()


async def test_same_address_from_a_new_connection_replaces_the_old(make_register):
    reg = await make_register()
    sub = await Peer.connect(reg.port)
    await sub.subscribe()
    old = await Peer.connect(reg.port)
    await old.announce("127.0.0.1:2300")
    assert (await sub.recv())["addresses"] == ["127.0.0.1:2300"]
    new = await Peer.connect(reg.port)
    await new.announce("127.0.0.1:2300")
    old.close()
    await asyncio.sleep(0.2)
    assert reg.addresses == ["127.0.0.1:2300"]  # the old connection's close unlists nothing
    new.close()
    assert (await sub.recv())["addresses"] == []
    sub.close()


async def test_holder_closing_hands_the_address_to_another_announcer(make_register):
    reg = await make_register()
    first = await Peer.connect(reg.port)
    await first.announce("127.0.0.1:2300")
    second = await Peer.connect(reg.port)
    await second.announce("127.0.0.1:2300")  # now the holder
    second.close()
    await asyncio.sleep(0.2)
    assert reg.addresses == ["127.0.0.1:2300"]  # still announced by `first`
    first.close()
    await until(lambda: reg.addresses == [])


async def test_ping_is_answered_before_and_after_the_handshake(make_register):
    reg = await make_register()
    peer = await Peer.connect(reg.port)
    await peer.send({"event": "ping"})
    assert await peer.recv() == {"event": "pong"}
    await peer.subscribe()
    await peer.send(lines.PING + lines.PING)
    assert [await peer.recv(), await peer.recv()] == [{"event": "pong"}] * 2
    peer.close()


async def test_secret_with_quotes_and_backslashes_works(make_register):
    reg = await make_register()
    assert "\\" in SECRET and '"' in SECRET
    peer = await Peer.connect(reg.port)
    assert await peer.subscribe(SECRET) == []
    peer.close()


async def test_empty_secret_accepts_a_missing_secret_key(make_register):
    reg = await make_register(secret="")
    peer = await Peer.connect(reg.port)
    await peer.send({"event": "worker_connect"})
    assert (await peer.recv())["event"] == "broadcast_addresses"
    peer.close()


@pytest.mark.parametrize(
    "first_line",
    [
        {"event": "worker_connect", "secret_key": "wrong"},
        {"event": "gateway_connect", "address": "127.0.0.1:2300", "secret_key": "wrong"},
        {"event": "worker_connect", "secret_key": SECRET[:-1]},
        {"event": "worker_connect"},
    ],
)
async def test_wrong_secret_gets_an_error_and_close(make_register, caplog, first_line):
    reg = await make_register()
    sub = await Peer.connect(reg.port)
    await sub.subscribe()
    with caplog.at_level(logging.WARNING, logger="register"):
        bad = await Peer.connect(reg.port)
        await bad.send(first_line)
        await bad.send(lines.PING)  # must not be answered: the register closed first
        assert await bad.recv() == {"event": "error", "message": "wrong secret key"}
        await bad.expect_closed()
    assert "wrong secret key" in caplog.text
    assert reg.addresses == []
    assert reg.stats()["rejected"] == 1
    sub.close()


BAD_INPUT = {
    "garbage line": (b"hello register\n", "not valid JSON"),
    "binary garbage": (bytes(range(128, 256)) + b"\n", "UTF-8"),
    "control bytes": (bytes(range(10)) + b"\n", "not valid JSON"),
    "oversized line": (b'{"event":"ping","pad":"' + b"x" * (70 * 1024), "longer than"),
    "unknown event": (b'{"event":"launch_missiles"}\n', "unknown event"),
    "no event": (b'{"hello":1}\n', "event"),
    "array": (b'["ping"]\n', "not an object"),
    "bad address": (
        lines.encode({"event": "gateway_connect", "address": "0.0.0.0", "secret_key": SECRET}),
        "not 'ip:port'",
    ),
    "ipv6 address": (
        lines.encode({"event": "gateway_connect", "address": "::1:2300", "secret_key": SECRET}),
        "IPv4",
    ),
}


@pytest.mark.parametrize("name", list(BAD_INPUT))
async def test_bad_input_closes_only_that_connection(make_register, caplog, name):
    data, reason = BAD_INPUT[name]
    reg = await make_register()
    sub = await Peer.connect(reg.port)
    await sub.subscribe()
    gateway = await Peer.connect(reg.port)
    await gateway.announce("127.0.0.1:2300")
    assert (await sub.recv())["addresses"] == ["127.0.0.1:2300"]

    with caplog.at_level(logging.WARNING, logger="register"):
        bad = await Peer.connect(reg.port)
        await bad.send(data)
        doc = await bad.recv()
        assert doc["event"] == "error"
        assert reason in doc["message"]
        await bad.expect_closed()
    assert reason in caplog.text

    # everybody else is still served
    other = await Peer.connect(reg.port)
    await other.announce("127.0.0.1:2301")
    assert (await sub.recv())["addresses"] == ["127.0.0.1:2300", "127.0.0.1:2301"]
    await gateway.send(lines.PING)
    assert await gateway.recv() == {"event": "pong"}
    for peer in (sub, gateway, other):
        peer.close()


async def test_garbage_after_the_handshake_unlists_the_gateway(make_register):
    reg = await make_register()
    sub = await Peer.connect(reg.port)
    await sub.subscribe()
    gateway = await Peer.connect(reg.port)
    await gateway.announce("127.0.0.1:2300")
    assert (await sub.recv())["addresses"] == ["127.0.0.1:2300"]
    await gateway.send(b"\x00\x01\x02\n")
    assert (await gateway.recv())["event"] == "error"
    await gateway.expect_closed()
    assert (await sub.recv())["addresses"] == []
    sub.close()


async def test_second_handshake_is_refused(make_register):
    reg = await make_register()
    peer = await Peer.connect(reg.port)
    await peer.subscribe()
    await peer.send({"event": "gateway_connect", "address": "127.0.0.1:2300", "secret_key": SECRET})
    doc = await peer.recv()
    assert doc == {"event": "error", "message": "already connected as worker"}
    await peer.expect_closed()
    assert reg.addresses == []


async def test_silence_before_the_first_line_closes_after_handshake_timeout(make_register, caplog):
    reg = await make_register(handshake_timeout=0.3)
    with caplog.at_level(logging.WARNING, logger="register"):
        silent = await Peer.connect(reg.port)
        pinger = await Peer.connect(reg.port)  # a ping is not a handshake
        for _ in range(3):
            await pinger.send(lines.PING)
            assert await pinger.recv() == {"event": "pong"}
            await asyncio.sleep(0.1)
        good = await Peer.connect(reg.port)
        await good.subscribe()
        loop = asyncio.get_running_loop()
        started = loop.time()
        for peer in (silent, pinger):
            doc = await peer.recv()
            assert doc["event"] == "error" and "no handshake" in doc["message"]
            await peer.expect_closed()
        assert loop.time() - started < 3.0
    assert "no handshake within 0.3 s" in caplog.text
    await asyncio.sleep(0.5)
    await good.send(lines.PING)  # the subscriber that did its handshake stays
    assert await good.recv() == {"event": "pong"}
    assert reg.stats()["connections"] == 1
    good.close()


async def test_a_flood_of_idle_peers_logs_a_count_not_a_line_each(make_register, caplog):
    reg = await make_register(handshake_timeout=0.3)
    with caplog.at_level(logging.WARNING, logger="register"):
        peers = [await Peer.connect(reg.port) for _ in range(60)]
        await until(lambda: reg.stats()["connections"] == 0)
        refused = [r for r in caplog.records if "no handshake within" in r.message]
        assert len(refused) == 20  # the burst of one window; the rest are counted
        reg._reject_log._start -= 10.0  # the window ends: its sweep reports the count
        reg.sweep(asyncio.get_running_loop().time())
    assert "40 similar log lines were skipped in the last 10 s" in caplog.text
    for peer in peers:
        peer.close()


async def test_connections_silent_after_the_handshake_are_dropped(make_register):
    reg = await make_register(idle_timeout=0.5)
    sub = await Peer.connect(reg.port)
    await sub.subscribe()
    quiet = await Peer.connect(reg.port)
    await quiet.announce("127.0.0.1:2300")
    assert (await sub.recv())["addresses"] == ["127.0.0.1:2300"]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 1.5
    while loop.time() < deadline:  # sub keeps pinging, quiet says nothing
        await sub.send(lines.PING)
        doc = await sub.recv()
        if doc["event"] == "broadcast_addresses":
            assert doc["addresses"] == []
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the silent gateway was not dropped")
    doc = await quiet.recv()
    assert doc["event"] == "error" and "silent" in doc["message"]
    await quiet.expect_closed()
    assert reg.stats()["subscribers"] == 1
    sub.close()


async def test_stats_and_given_socket():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = RegisterServer(Register(listen="127.0.0.1:1", secret=SECRET), sock)
    await server.start()
    try:
        assert server.port == port
        sub = await Peer.connect(port)
        await sub.subscribe()
        gateway = await Peer.connect(port)
        await gateway.announce("127.0.0.1:2300")
        await sub.recv()
        stats = server.stats()
        assert stats["gateways"] == 1
        assert stats["subscribers"] == 1
        assert stats["connections"] == 2
        assert stats["rejected"] == 0
        assert stats["uptime"] >= 0
        json.dumps(stats)
    finally:
        await server.stop(graceful=True)
    await sub.expect_closed()
    await gateway.expect_closed()


def test_serve_hands_the_server_to_run_service(monkeypatch):
    seen: dict[str, Any] = {}

    def run_service(spec: ChildSpec, service: Any, *, fast_loop: bool = True) -> int:
        seen["spec"], seen["service"], seen["fast_loop"] = spec, service, fast_loop
        return 0

    monkeypatch.setattr(register_server, "run_service", run_service)
    sock = socket.socket()
    try:
        spec = ChildSpec(role="register", config=Register(), sockets={"listen": sock})
        assert serve(spec) == 0
        assert isinstance(seen["service"], RegisterServer)
        assert seen["service"].config is spec.config
        assert seen["service"]._sock is sock
        assert seen["fast_loop"] is False  # asyncio's own loop: no uvloop in the register
    finally:
        sock.close()


# ---- the clients --------------------------------------------------------------------


async def test_announcer_and_watcher_end_to_end(make_register, closing):
    reg = await make_register()
    changes: list[frozenset[str]] = []
    watcher = GatewayDirectoryWatcher(
        (f"127.0.0.1:{reg.port}",), SECRET, on_change=changes.append, retry_interval=RETRY
    )
    closing.append(watcher)
    await watcher.start()
    assert await watcher.wait_first_list(TIMEOUT)
    assert watcher.addresses == frozenset() and watcher.registers_connected == 1

    announcer = GatewayAnnouncer((f"127.0.0.1:{reg.port}",), SECRET, "127.0.0.1:2300")
    await announcer.start()
    assert await announcer.wait_announced(TIMEOUT)
    assert announcer.connected == 1
    await until(lambda: watcher.addresses == {"127.0.0.1:2300"})
    assert changes == [frozenset({"127.0.0.1:2300"})]

    await announcer.close()
    assert announcer.connected == 0
    await until(lambda: watcher.addresses == frozenset())
    assert changes[-1] == frozenset()


async def test_watcher_merges_two_registers(make_register, closing):
    reg1, reg2 = await make_register(), await make_register()
    both = (f"127.0.0.1:{reg1.port}", f"127.0.0.1:{reg2.port}")
    gw_a = GatewayAnnouncer(both[:1], SECRET, "127.0.0.1:2300", retry_interval=RETRY)
    gw_b = GatewayAnnouncer(both[1:], SECRET, "127.0.0.2:2300", retry_interval=RETRY)
    watcher = GatewayDirectoryWatcher(both, SECRET, retry_interval=RETRY)
    closing.extend([gw_a, gw_b, watcher])
    for client in (gw_a, gw_b, watcher):
        await client.start()
    assert await gw_a.wait_announced(TIMEOUT) and await gw_b.wait_announced(TIMEOUT)
    await until(lambda: watcher.addresses == {"127.0.0.1:2300", "127.0.0.2:2300"})
    assert watcher.registers_connected == 2

    # register 1 stops: only what register 2 says counts
    await reg1.stop(graceful=False)
    await until(lambda: watcher.registers_connected == 1)
    await until(lambda: watcher.addresses == {"127.0.0.2:2300"})
    gw_c = GatewayAnnouncer(both, SECRET, "127.0.0.3:2300", retry_interval=RETRY)
    closing.append(gw_c)
    await gw_c.start()
    assert await gw_c.wait_announced(TIMEOUT)
    assert gw_c.connected == 1
    await until(lambda: watcher.addresses == {"127.0.0.2:2300", "127.0.0.3:2300"})

    # every register down: the last union is kept
    await reg2.stop(graceful=False)
    await until(lambda: watcher.registers_connected == 0)
    await asyncio.sleep(3 * RETRY)
    assert watcher.addresses == {"127.0.0.2:2300", "127.0.0.3:2300"}
    assert watcher.last_error is not None and "127.0.0.1:" in watcher.last_error


async def test_announcer_reconnects_after_the_register_restarts(make_register, closing, caplog):
    held = HeldPort()  # the port stays ours (and refuses) while the register is down
    closing.append(held)
    port = held.port
    reg = await make_register(port, held.listener())
    address = f"127.0.0.1:{port}"
    announcer = GatewayAnnouncer((address,), SECRET, "127.0.0.1:2300", retry_interval=RETRY)
    watcher = GatewayDirectoryWatcher((address,), SECRET, retry_interval=RETRY)
    closing.extend([announcer, watcher])
    await announcer.start()
    await watcher.start()
    assert await announcer.wait_announced(TIMEOUT)
    await until(lambda: watcher.addresses == {"127.0.0.1:2300"})

    with caplog.at_level(logging.INFO, logger="register"):
        await reg.stop(graceful=True)
        await until(lambda: announcer.connected == 0)
        await asyncio.sleep(10 * RETRY)  # several failed retries
        assert watcher.addresses == {"127.0.0.1:2300"}  # kept while the register is down
        reg = await make_register(port, held.listener())
        assert await announcer.wait_announced(TIMEOUT)
        await until(lambda: reg.addresses == ["127.0.0.1:2300"])
        await until(lambda: watcher.registers_connected == 1)
    failures = [r for r in caplog.records if r.levelno == logging.WARNING and address in r.message]
    # one line per client when the connection dropped, none per retry
    assert len(failures) == 2, [r.message for r in failures]
    assert any("is back" in r.message for r in caplog.records)
    assert announcer.last_error is None


async def test_wrong_secret_is_reported_at_once(make_register, closing, caplog):
    reg = await make_register()
    address = f"127.0.0.1:{reg.port}"
    watcher = GatewayDirectoryWatcher((address,), "not the secret", retry_interval=RETRY)
    announcer = GatewayAnnouncer((address,), "", "127.0.0.1:2300", retry_interval=RETRY)
    closing.extend([watcher, announcer])
    await watcher.start()
    await announcer.start()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with caplog.at_level(logging.ERROR, logger="register"):
        assert not await watcher.wait_first_list(30.0)
        assert not await announcer.wait_announced(30.0)
    assert loop.time() - started < TIMEOUT
    assert watcher.last_error == f"register {address} refused us: wrong secret key"
    assert announcer.last_error == f"register {address} refused us: wrong secret key"
    assert reg.addresses == []
    await asyncio.sleep(5 * RETRY)  # keeps retrying, logs once per client
    assert len([r for r in caplog.records if "refused us" in r.message]) == 2


async def test_one_refusing_register_does_not_end_the_wait(make_register, closing):
    good = await make_register()
    bad = await make_register(secret="other")
    registers = (f"127.0.0.1:{bad.port}", f"127.0.0.1:{good.port}")
    watcher = GatewayDirectoryWatcher(registers, SECRET, retry_interval=RETRY)
    closing.append(watcher)
    await watcher.start()
    assert await watcher.wait_first_list(TIMEOUT)
    await until(lambda: watcher.last_error is not None)
    assert watcher.registers_connected == 1


async def test_wait_times_out_when_no_register_is_up(closing):
    address = f"127.0.0.1:{refused_port()}"
    watcher = GatewayDirectoryWatcher((address,), SECRET, retry_interval=RETRY)
    closing.append(watcher)
    await watcher.start()
    assert not await watcher.wait_first_list(0.5)
    assert watcher.last_error is not None and "unreachable" in watcher.last_error


async def test_on_change_errors_are_logged_not_fatal(make_register, closing, caplog):
    reg = await make_register()
    address = f"127.0.0.1:{reg.port}"

    def explode(addresses: frozenset[str]) -> None:
        raise RuntimeError("boom")

    watcher = GatewayDirectoryWatcher((address,), SECRET, on_change=explode, retry_interval=RETRY)
    closing.append(watcher)
    await watcher.start()
    assert await watcher.wait_first_list(TIMEOUT)
    with caplog.at_level(logging.ERROR, logger="register"):
        gateway = await Peer.connect(reg.port)
        closing.append(gateway)
        await gateway.announce("127.0.0.1:2300")
        await until(lambda: watcher.addresses == {"127.0.0.1:2300"})
        gateway2 = await Peer.connect(reg.port)
        closing.append(gateway2)
        await gateway2.announce("127.0.0.1:2301")
        await until(lambda: len(watcher.addresses) == 2)
    assert "on_change callback failed" in caplog.text
    assert watcher.registers_connected == 1


async def _watching(server: asyncio.Server, closing: list[Any]) -> GatewayDirectoryWatcher:
    """A started watcher of ``server`` pinging every 0.1 s (closed by the fixture)."""
    port = server.sockets[0].getsockname()[1]
    watcher = GatewayDirectoryWatcher(
        (f"127.0.0.1:{port}",), SECRET, keepalive=0.1, retry_interval=RETRY
    )
    closing.append(watcher)
    await watcher.start()
    return watcher


async def test_clients_ping_and_detect_a_silent_register(closing):
    """A register that accepts but never answers is dropped after 3 keep-alives."""
    pings = 0

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal pings
        while line := await reader.readline():
            pings += line == lines.PING
        writer.close()

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    try:
        watcher = await _watching(server, closing)
        # under load an earlier attempt may fail otherwise first (a slow connect): the
        # silent-register verdict must come, whatever came before it
        await until(lambda: "silent" in (watcher.last_error or ""))
        assert pings >= 2
        await watcher.close()
    finally:
        server.close()


async def test_a_client_does_not_take_its_own_stall_for_a_silent_register(closing):
    """A loop blocked past 3 keep-alives (a blocking callback in a worker) then woken:
    the register answered every ping it got, so the connection is kept."""
    connections = 0

    async def ponger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while line := await reader.readline():
            if line == lines.PING:
                writer.write(lines.PONG)
        writer.close()

    server = await asyncio.start_server(ponger, "127.0.0.1", 0)
    try:
        watcher = await _watching(server, closing)
        await until(lambda: connections == 1)
        await asyncio.sleep(0.25)  # a few pings answered
        time.sleep(0.6)  # the loop stalls for 6 keep-alive intervals
        await asyncio.sleep(0.5)
        assert "silent" not in (watcher.last_error or ""), watcher.last_error
        assert connections == 1
        await watcher.close()
    finally:
        server.close()


def test_clients_validate_their_arguments():
    with pytest.raises(ValueError):
        GatewayDirectoryWatcher((), SECRET)
    with pytest.raises(ValueError):
        GatewayAnnouncer(("127.0.0.1:1238",), SECRET, "127.0.0.1:2300", keepalive=0)


def test_the_whole_story_under_uvloop():
    """Children run uvloop, whose transports differ from asyncio's: run a scenario there."""

    async def scenario() -> None:
        config = Register(listen="127.0.0.1:0", secret=SECRET, handshake_timeout=0.3)
        reg = RegisterServer(config)
        await reg.start()
        address = f"127.0.0.1:{reg.port}"
        watcher = GatewayDirectoryWatcher((address,), SECRET, retry_interval=RETRY)
        announcer = GatewayAnnouncer((address,), SECRET, "127.0.0.1:2300", retry_interval=RETRY)
        try:
            await watcher.start()
            await announcer.start()
            assert await watcher.wait_first_list(TIMEOUT)
            assert await announcer.wait_announced(TIMEOUT)
            await until(lambda: watcher.addresses == {"127.0.0.1:2300"})
            bad = await Peer.connect(reg.port)
            await bad.send(b"\xff" * (70 * 1024))
            assert "longer than" in (await bad.recv())["message"]
            await bad.expect_closed()
            silent = await Peer.connect(reg.port)
            assert "no handshake" in (await silent.recv())["message"]
            await silent.expect_closed()
            await announcer.close()
            await until(lambda: watcher.addresses == frozenset())
            assert reg.stats()["rejected"] == 2
        finally:
            await announcer.close()
            await watcher.close()
            await reg.stop(graceful=True)

    uvloop.run(scenario())


async def test_a_declared_keepalive_sets_how_soon_a_silent_peer_is_dropped(make_register):
    reg = await make_register(idle_timeout=60.0)
    sub = await Peer.connect(reg.port)
    await sub.subscribe()
    quiet = await Peer.connect(reg.port)
    await quiet.send(lines.gateway_connect("127.0.0.1:2300", SECRET, keepalive=0.4))
    assert (await sub.recv())["addresses"] == ["127.0.0.1:2300"]
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + 5.0
    while loop.time() < deadline:  # sub keeps pinging; quiet said it pings every 0.4 s
        await sub.send(lines.PING)
        doc = await sub.recv()
        if doc["event"] == "broadcast_addresses":
            assert doc["addresses"] == []
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the silent gateway was kept despite its declared keepalive")
    assert loop.time() - started < 3.5  # max(1, 3 x 0.4) s plus the sweep, not 60 s


async def test_an_invalid_keepalive_is_refused(make_register):
    reg = await make_register()
    peer = await Peer.connect(reg.port)
    await peer.send({"event": "worker_connect", "secret_key": SECRET, "keepalive": "soon"})
    doc = await peer.recv()
    assert doc["event"] == "error" and "keepalive" in doc["message"]
