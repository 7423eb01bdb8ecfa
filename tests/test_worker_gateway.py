"""The business worker and the push client with the real register and the real
gateway, in one event loop (port 0 everywhere), driven by a WebSocket client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
from websockets.asyncio import client as websockets_client

from pygatewayworker import BusinessWorker, api, context
from pygatewayworker.businessworker.worker import WorkerProcess
from pygatewayworker.gateway import server as server_mod
from pygatewayworker.gatewayclient import AsyncGatewayClient
from pygatewayworker.register import server as register_mod
from tests.fakegateway import UNIT, wait_until

SECRET = 'a "quoted" secret'


class EchoEvents:
    """Greets on connect, echoes with a per-client counter kept in the session."""

    seen: ClassVar[list[tuple[str, Any]]] = []

    @staticmethod
    def on_connect(client_id: str) -> None:
        api.send_to_current_client(json.dumps({"type": "init", "client_id": client_id}))

    @staticmethod
    async def on_message(client_id: str, message: str | bytes) -> None:
        session = context.session
        assert session is not None
        session["n"] = session.get("n", 0) + 1
        EchoEvents.seen.append((client_id, context.gateway_port))
        if isinstance(message, bytes):
            api.send_to_current_client(message[::-1])
        else:
            api.send_to_current_client(f"{session['n']}:{message}")

    @staticmethod
    def on_close(client_id: str) -> None:
        EchoEvents.seen.append((client_id, "closed"))


@dataclass
class Cluster:
    gateway: Any
    worker: WorkerProcess
    register_address: str

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.gateway.public_port}/"


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    from pygatewayworker.gateway.config import Gateway
    from pygatewayworker.register.config import Register

    EchoEvents.seen.clear()
    register = register_mod.RegisterServer(Register(listen="127.0.0.1:0", secret=SECRET))
    await register.start()
    reg = f"127.0.0.1:{register.port}"
    gateway = server_mod.GatewayServer(
        Gateway(listen="127.0.0.1:0", register=reg, secret=SECRET, ping_interval=0),
        0,
        internal_sock=server_mod.bind_socket("127.0.0.1", 0, False),
    )
    await gateway.start()
    worker = WorkerProcess(
        BusinessWorker(events="tests.test_worker_gateway:EchoEvents", register=reg, secret=SECRET)
    )
    try:
        await wait_until(lambda: bool(register.addresses))
        await worker.start()
        yield Cluster(gateway, worker, reg)
    finally:
        await worker.stop(graceful=True)
        await gateway.stop(graceful=False)
        await register.stop(graceful=False)


async def test_events_sessions_and_push_through_the_real_gateway(cluster: Cluster) -> None:
    assert cluster.worker.stats()["links"] == 1
    async with websockets_client.connect(cluster.url) as ws:
        init = json.loads(await asyncio.wait_for(ws.recv(), UNIT))
        client_id = init["client_id"]
        await ws.send("hello")
        assert await asyncio.wait_for(ws.recv(), UNIT) == "1:hello"
        await ws.send("again")  # the session written back after the first message
        assert await asyncio.wait_for(ws.recv(), UNIT) == "2:again"
        await ws.send(b"\x01\x02")
        assert await asyncio.wait_for(ws.recv(), UNIT) == b"\x02\x01"  # binary stays binary
        assert EchoEvents.seen[0] == (client_id, cluster.gateway.public_port)

        async with AsyncGatewayClient(register=cluster.register_address, secret=SECRET) as push:
            assert await push.get_session(client_id) == {"n": 3}
            await push.bind_uid(client_id, 42)
            await push.join_group(client_id, "room")
            assert await push.get_client_id_by_uid(42) == [client_id]
            await push.send_to_uid(42, "pushed to uid")
            assert await asyncio.wait_for(ws.recv(), UNIT) == "pushed to uid"
            await push.send_to_group("room", "pushed to group")
            assert await asyncio.wait_for(ws.recv(), UNIT) == "pushed to group"
            assert await push.get_all_client_count() == 1
            assert await push.get_client_count_by_group("room") == 1
    await wait_until(lambda: (client_id, "closed") in EchoEvents.seen)
