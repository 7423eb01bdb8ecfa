"""A client of the remote-control test app (tests/fixtures/apps/rc), and the
``clients`` fixture that spreads such clients over a cluster's two gateways (for a
test module whose ``cluster`` fixture gives an ``AppSpec``)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.cluster import AppSpec


class RemoteError(Exception):
    """The worker reported an exception for our request."""


class RC:
    """One WebSocket client whose messages make the worker call the Gateway API."""

    _ids = itertools.count(1)

    def __init__(self, ws: ClientConnection, init: dict[str, Any]) -> None:
        self.ws = ws
        self.client_id: str = init["client_id"]
        self.worker_pid: int = init["pid"]
        self.inbox: asyncio.Queue[str | bytes] = asyncio.Queue()
        self.replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.reader = asyncio.create_task(self._read())

    @property
    def gateway_port(self) -> int:
        return int(self.client_id[8:12], 16)

    @classmethod
    async def open(cls, url: str, **kwargs: Any) -> RC:
        ws = await connect(url, ping_interval=None, max_size=None, **kwargs)
        init = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert init["type"] == "init", init
        return cls(ws, init)

    async def _read(self) -> None:
        # destroy_client drops the TCP connection without a close frame: that ends the
        # reader quietly (tests look at ws.close_code / wait_closed()).
        with contextlib.suppress(ConnectionClosed):
            async for raw in self.ws:
                if isinstance(raw, str) and raw.startswith('{"re"'):
                    reply = json.loads(raw)
                    future = self.replies.pop(reply["re"], None)
                    if future and not future.done():
                        future.set_result(reply)
                    continue
                await self.inbox.put(raw)

    async def call(self, op: str, *args: Any, **kwargs: Any) -> Any:
        rid = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.replies[rid] = future
        await self.ws.send(json.dumps({"id": rid, "op": op, "args": list(args), "kwargs": kwargs}))
        reply = await asyncio.wait_for(future, 15)
        if "error" in reply:
            raise RemoteError(reply["error"])
        return reply["ok"]

    async def expect(self, timeout: float = 5.0) -> str | bytes:
        return await asyncio.wait_for(self.inbox.get(), timeout)

    async def expect_json(self, timeout: float = 5.0) -> Any:
        return json.loads(await self.expect(timeout))

    async def nothing(self, wait: float = 0.4) -> None:
        await asyncio.sleep(wait)
        assert self.inbox.empty(), f"unexpected message {self.inbox.get_nowait()!r}"

    async def close(self) -> None:
        await self.ws.close()
        self.reader.cancel()


def b(data: bytes) -> dict[str, str]:
    """An argument that the rc app turns into bytes."""
    return {"__bytes__": data.hex()}


@pytest.fixture
async def clients(cluster: AppSpec) -> AsyncIterator[list[RC]]:
    """At least three clients on each of the two gateways."""
    opened: list[RC] = []
    try:
        for _ in range(40):
            opened.append(await RC.open(cluster.ws_url))
            ports = [c.gateway_port for c in opened]
            if len(set(ports)) == 2 and all(ports.count(p) >= 3 for p in set(ports)):
                break
        ports = sorted({c.gateway_port for c in opened})
        assert len(ports) == 2, "clients did not spread over both gateways"
        by_gateway = [[c for c in opened if c.gateway_port == p][:3] for p in ports]
        # interleave: even index on gateway 0, odd on gateway 1
        chosen = [c for pair in zip(*by_gateway, strict=True) for c in pair]
        for extra in opened:
            if extra not in chosen:
                await extra.close()
        yield chosen
    finally:
        for client in opened:
            await client.close()
