"""The ``authenticate`` hook (issue 14, item 1): a business worker accepts or rejects a
WebSocket handshake before the gateway answers ``101``.

Over real sockets: the real register, gateway and business worker in this event loop
(as ``test_worker_gateway``), clients with the ``websockets`` library and a raw HTTP
socket; the protocol-level cases with a fake worker link (``gatewayharness``)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, ClassVar

import msgpack
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from pygatewayworker import Accept, BusinessWorker, Reject, context
from pygatewayworker.businessworker.worker import WorkerProcess
from pygatewayworker.gateway import server as server_mod
from pygatewayworker.gateway.config import Gateway
from pygatewayworker.gateway.protocol import MAX_SESSION, Cmd, pack_session, unpack_session
from pygatewayworker.gatewayclient import AsyncGatewayClient
from pygatewayworker.register import server as register_mod
from pygatewayworker.register.config import ConfigError, Register
from tests.gatewayharness import SECRET, FakeLink, running, ws

UNIT = 5.0


class HookEvents:
    """``?token=good`` is accepted as ann (lobby, a session); ``boom`` raises; ``slow``
    answers after 3 s; anything else gets 401."""

    connects: ClassVar[list[tuple[str, dict[str, Any]]]] = []
    requests: ClassVar[list[Any]] = []

    @staticmethod
    def authenticate(request: Any) -> Any:
        HookEvents.requests.append(request)
        token = request.query.get("token")
        if token == "boom":
            raise RuntimeError("the user database is down")
        if token == "slow":
            return _slowly()
        if token == "raise":
            raise Reject(403, b"go away")
        if token != "good":
            return Reject(401, "bad token", headers={"WWW-Authenticate": "Bearer"})
        return Accept(
            uid="ann",
            groups=["lobby"],
            session={"name": "Ann", "cookie": request.cookies.get("sid"), "path": request.path},
        )

    @staticmethod
    def on_connect(client_id: str) -> None:
        HookEvents.connects.append((client_id, dict(context.session or {})))


async def _slowly() -> Accept:
    await asyncio.sleep(3)
    return Accept(uid="late")


class PlainEvents:
    """No hook: handshakes are not held."""

    connects: ClassVar[list[str]] = []

    @staticmethod
    def on_connect(client_id: str) -> None:
        PlainEvents.connects.append(client_id)


@dataclass
class Cluster:
    gateway: server_mod.GatewayServer
    worker: WorkerProcess
    register: str

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.gateway.public_port}"


@pytest.fixture
def events(request: pytest.FixtureRequest) -> str:
    return getattr(request, "param", "tests.test_auth_hook:HookEvents")


@pytest.fixture
async def cluster(events: str) -> AsyncIterator[Cluster]:
    HookEvents.connects.clear()
    HookEvents.requests.clear()
    PlainEvents.connects.clear()
    register = register_mod.RegisterServer(Register(listen="127.0.0.1:0", secret=SECRET))
    await register.start()
    reg = f"127.0.0.1:{register.port}"
    gateway = server_mod.GatewayServer(
        Gateway(
            listen="127.0.0.1:0",
            register=reg,
            secret=SECRET,
            ping_interval=0,
            auth_timeout=0.5,
            keepalive_interval=1.0,  # housekeeping every 0.5 s: the timeout is swept in time
            link_timeout=3.0,
        ),
        0,
        internal_sock=server_mod.bind_socket("127.0.0.1", 0, False),
    )
    await gateway.start()
    worker = WorkerProcess(BusinessWorker(events=events, register=reg, secret=SECRET))
    try:
        async with asyncio.timeout(UNIT):
            while not register.addresses:
                await asyncio.sleep(0.01)
        await worker.start()
        yield Cluster(gateway, worker, reg)
    finally:
        await worker.stop(graceful=False)
        await gateway.stop(graceful=False)
        await register.stop(graceful=False)


async def _refused(url: str) -> tuple[int, Any, bytes]:
    with pytest.raises(InvalidStatus) as info:
        await connect(url, open_timeout=UNIT)
    response = info.value.response
    return response.status_code, response.headers, response.body or b""


async def _raw_handshake(port: int, path: str) -> tuple[str, dict[str, str], bytes]:
    """A raw HTTP upgrade request: the status line, headers and body of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    data = await asyncio.wait_for(reader.read(), UNIT)  # the gateway closes after it
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return status_line, headers, body


def _no_client(cluster: Cluster) -> None:
    assert HookEvents.connects == []
    assert len(cluster.gateway.directory) == 0


# ---- through the real worker ----------------------------------------------------------


async def test_a_rejection_gets_401_with_body_and_header_and_no_client_id(
    cluster: Cluster,
) -> None:
    status, headers, body = await _refused(f"{cluster.url}/ws?token=bad")
    assert status == 401
    assert headers["WWW-Authenticate"] == "Bearer"
    assert body == b"bad token"
    line, raw_headers, raw_body = await _raw_handshake(
        cluster.gateway.public_port, "/ws?token=nope"
    )
    assert line == "HTTP/1.1 401 Unauthorized"
    assert raw_headers["www-authenticate"] == "Bearer"
    assert raw_headers["content-length"] == str(len(b"bad token"))
    assert raw_body == b"bad token"
    # a raised Reject is the same, with its status
    assert (await _refused(f"{cluster.url}/?token=raise"))[::2] == (403, b"go away")
    assert [r.query.get("token") for r in HookEvents.requests] == ["bad", "nope", "raise"]
    await asyncio.sleep(0.2)  # nothing else arrives late either
    _no_client(cluster)
    assert cluster.gateway.stats()["refused_auth"] == 3
    assert cluster.worker.stats()["authenticate"]["rejected"] == 3


async def test_an_accepted_connection_is_bound_before_its_first_message(
    cluster: Cluster,
) -> None:
    async with AsyncGatewayClient(register=cluster.register, secret=SECRET) as push:
        await push.send_to_uid("nobody", "warm-up")  # the push client has the routes
        client = await connect(
            f"{cluster.url}/chat?token=good", additional_headers={"Cookie": "sid=abc"}
        )
        # issued the moment the handshake is done: the hook's uid and group are bound
        await push.send_to_uid("ann", "to ann")
        await push.send_to_group("lobby", "to lobby")
        assert await asyncio.wait_for(client.recv(), UNIT) == "to ann"
        assert await asyncio.wait_for(client.recv(), UNIT) == "to lobby"
        async with asyncio.timeout(UNIT):
            while not HookEvents.connects:
                await asyncio.sleep(0.01)
        client_id, session = HookEvents.connects[0]
        assert session == {"name": "Ann", "cookie": "abc", "path": "/chat"}
        assert await push.get_client_id_by_uid("ann") == [client_id]
        assert await push.get_session(client_id) == session
        request = HookEvents.requests[0]
        assert request.remote_ip == "127.0.0.1" and request.headers["cookie"] == "sid=abc"
        await client.close()


async def test_a_hook_that_raises_gets_500_and_one_log_line(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="businessworker"):
        status, _, body = await _refused(f"{cluster.url}/?token=boom")
    assert (status, body) == (500, b"authentication failed\n")
    lines = [r for r in caplog.records if "raised" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].exc_info and "the user database is down" in str(lines[0].exc_info[1])
    _no_client(cluster)
    assert cluster.worker.stats()["authenticate"]["failed"] == 1


async def test_a_hook_that_does_not_answer_in_time_gets_503(cluster: Cluster) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    status, headers, _ = await _refused(f"{cluster.url}/?token=slow")
    assert status == 503 and headers["Retry-After"] == "1"
    assert loop.time() - started < 2.0  # auth_timeout 0.5 s, swept every 0.5 s
    await asyncio.sleep(3)  # the late Accept is ignored
    _no_client(cluster)
    assert cluster.gateway.stats()["refused_auth_unavailable"] == 1
    assert not cluster.gateway.core.clients.auth.held


@pytest.mark.parametrize("events", ["tests.test_auth_hook:PlainEvents"], indirect=True)
async def test_a_worker_without_the_hook_does_not_hold_handshakes(cluster: Cluster) -> None:
    client = await connect(f"{cluster.url}/?token=bad")
    async with asyncio.timeout(UNIT):
        while not PlainEvents.connects:
            await asyncio.sleep(0.01)
    assert cluster.worker.stats()["authenticate"] == {}
    await client.close()


# ---- the gateway side, with a fake worker ------------------------------------------------


async def _hook_worker(server: server_mod.GatewayServer) -> FakeLink:
    link = await FakeLink.open(server)
    link.send(Cmd.HELLO, "worker", "w", SECRET, os.getpid(), {"hooks": ["authenticate"]})
    await link.expect(Cmd.WELCOME)
    return link


async def test_the_gateway_holds_asks_and_applies_the_answer() -> None:
    async with running() as server:
        worker = await _hook_worker(server)
        pending = asyncio.ensure_future(ws(server, "/room?x=1"))
        ask = await worker.expect(Cmd.AUTHENTICATE)
        _, req, info = ask
        assert info["path"] == "/room" and info["query"] == "x=1"
        assert len(server.directory) == 0 and not pending.done()  # held: no 101 yet
        worker.send(Cmd.AUTH_REPLY, req, 0, b"", [], "u1", ["g"], pack_session({"a": 1}))
        client = await pending
        connected = await worker.expect(Cmd.EV_CONNECT)
        assert unpack_session(connected[2]) == {"a": 1}
        entry = server.directory.get(connected[1])
        assert entry is not None and entry.uid == "u1" and entry.groups == {"g"}
        # a late or repeated answer is ignored
        worker.send(Cmd.AUTH_REPLY, req, 401, b"", [], None, [], None)
        await client.send("hi")
        await worker.expect(Cmd.EV_WS_CONNECT)
        assert (await worker.expect(Cmd.EV_MESSAGE))[5] == "hi"
        await client.close()


async def test_an_accept_with_a_session_over_max_session_is_refused_and_the_link_kept() -> None:
    async with running() as server:
        worker = await _hook_worker(server)
        pending = asyncio.ensure_future(ws(server, "/"))
        _, req, _ = await worker.expect(Cmd.AUTHENTICATE)
        big = msgpack.packb({"blob": "x" * MAX_SESSION})  # past pack_session's check
        worker.send(Cmd.AUTH_REPLY, req, 0, b"", [], "u", [], big)
        with pytest.raises(InvalidStatus) as info:
            await pending
        assert info.value.response.status_code == 500 and len(server.directory) == 0
        pending = asyncio.ensure_future(ws(server, "/"))  # the same link still answers
        _, req, _ = await worker.expect(Cmd.AUTHENTICATE)
        worker.send(Cmd.AUTH_REPLY, req, 0, b"", [], None, [], None)
        client = await pending
        assert (await worker.expect(Cmd.EV_CONNECT))[0] == Cmd.EV_CONNECT
        await client.close()


async def test_a_worker_without_hooks_is_never_asked() -> None:
    async with running() as server:
        worker = await FakeLink.linked(server)  # a 5-field HELLO, as old workers send
        client = await ws(server, "/")
        assert (await worker.recv())[0] == Cmd.EV_CONNECT
        await client.close()


async def test_no_worker_to_ask_gets_the_failure_status_at_once() -> None:
    async with running(auth_failure_status=500) as server:
        worker = await _hook_worker(server)
        pending = asyncio.ensure_future(ws(server, "/"))
        await worker.expect(Cmd.AUTHENTICATE)
        await worker.close()  # the worker goes away while asked: refused at once
        with pytest.raises(InvalidStatus) as info:
            await asyncio.wait_for(pending, UNIT)
        assert info.value.response.status_code == 500
        # a gateway that had the hook and has no worker now does not let anyone in
        with pytest.raises(InvalidStatus) as info:
            await ws(server, "/")
        assert info.value.response.status_code == 500
        assert len(server.directory) == 0
        assert server.stats()["refused_auth_unavailable"] == 2
        # workers without the hook linking: the app dropped it, handshakes go through
        plain = await FakeLink.linked(server)
        client = await ws(server, "/")
        assert (await plain.recv())[0] == Cmd.EV_CONNECT
        await client.close()


async def test_bytes_before_the_answer_drop_the_connection() -> None:
    async with running() as server:
        worker = await _hook_worker(server)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.public_port)
        writer.write(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        _, req, _ = await worker.expect(Cmd.AUTHENTICATE)
        writer.write(b"\x81\x80abcd")  # a frame before the 101
        assert await asyncio.wait_for(reader.read(), UNIT) == b""
        writer.close()
        worker.send(Cmd.AUTH_REPLY, req, 0, b"", [], "u", [], None)  # too late: ignored
        await asyncio.sleep(0.1)
        assert len(server.directory) == 0 and not server.core.clients.auth.held


def test_rejections_and_the_config_are_checked() -> None:
    with pytest.raises(ValueError, match="300..599"):
        Reject(101)
    with pytest.raises(ValueError, match="written by the gateway"):
        Reject(401, headers={"Content-Length": "3"})
    with pytest.raises(ValueError, match="bad value"):
        Reject(401, headers={"X-A": "a\r\nSet-Cookie: x"})
    with pytest.raises(ValueError, match="4096"):
        Reject(401, "x" * 5000)
    with pytest.raises(ConfigError, match="auth_timeout"):
        Gateway(auth_timeout=0)
    with pytest.raises(ConfigError, match="auth_failure_status"):
        Gateway(auth_failure_status=200)
