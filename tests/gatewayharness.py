"""A gateway in the test's event loop, and fake workers speaking its internal protocol.

Shared by the gateway tests (``test_gateway_server``, ``test_gateway_stop``,
``test_routes``, ``test_secret_warnings``): :func:`running` starts a
:class:`GatewayServer` on port 0 with no register reachable, :class:`FakeLink` is a
worker or push client over raw streams, and the WebSocket helpers drive clients with
the ``websockets`` client library.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from pygatewayworker.gateway.config import Gateway
from pygatewayworker.gateway.protocol import Cmd, Decoder, encode
from pygatewayworker.gateway.server import GatewayServer
from tests.ports import refused_port

SECRET = "s3cret"
TIMEOUT = 5.0


def make_config(**options: Any) -> Gateway:
    base: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "start_port": 0,
        "count": 1,
        "lan_ip": "127.0.0.1",
        "register": f"127.0.0.1:{refused_port()}",  # the announcer retries quietly
        "secret": SECRET,
        "ping_interval": 0,
    }
    base.update(options)
    return Gateway(**base)


@contextlib.asynccontextmanager
async def running(**options: Any) -> AsyncIterator[GatewayServer]:
    server = GatewayServer(make_config(**options))
    await server.start()
    try:
        yield server
    finally:
        await server.stop(graceful=False)


class FakeLink:
    """A worker or push client speaking the internal protocol over raw streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = Decoder()
        self.packets: deque[list[Any]] = deque()
        self.routes: list[list[Any]] = []  # ROUTES packets, kept apart from the rest
        self.req = 0

    @classmethod
    async def open(cls, server: GatewayServer) -> FakeLink:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.internal_port)
        return cls(reader, writer)

    @classmethod
    async def linked(
        cls,
        server: GatewayServer,
        role: str = "worker",
        name: str = "w",
        hooks: tuple[str, ...] = (),
    ) -> FakeLink:
        link = await cls.open(server)
        features = ({"hooks": list(hooks)},) if hooks else ()
        link.send(Cmd.HELLO, role, name, SECRET, os.getpid(), *features)
        welcome = await link.expect(Cmd.WELCOME)
        assert welcome[1]["port"] == server.internal_port
        assert welcome[1]["public_port"] == server.public_port
        return link

    def send(self, cmd: Cmd, *fields: Any) -> None:
        self.writer.write(encode(cmd, *fields))

    async def recv(self, timeout: float | None = TIMEOUT) -> list[Any]:
        """The next packet other than ``ROUTES`` (those go to :attr:`routes`)."""
        while not self.packets:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                raise EOFError("link closed")
            for packet in self.decoder.feed(data):
                if packet[0] == Cmd.ROUTES:
                    self.routes.append(packet)
                else:
                    self.packets.append(packet)
        return self.packets.popleft()

    async def wait_routes(self, count: int, timeout: float = TIMEOUT) -> list[list[Any]]:
        """Read until :attr:`routes` holds ``count`` packets (others are kept)."""
        async with asyncio.timeout(timeout):
            while len(self.routes) < count:
                data = await self.reader.read(65536)
                if not data:
                    raise EOFError("link closed")
                for packet in self.decoder.feed(data):
                    (self.routes if packet[0] == Cmd.ROUTES else self.packets).append(packet)
        return self.routes

    async def expect(self, cmd: Cmd, timeout: float = TIMEOUT) -> list[Any]:
        """The next packet that is ``cmd``, skipping keep-alive pings."""
        async with asyncio.timeout(timeout):
            while True:
                packet = await self.recv(timeout=None)
                if packet[0] == cmd:
                    return packet
                if packet[0] != Cmd.PING:
                    raise AssertionError(f"expected {cmd.name}, got {packet}")

    async def skip_until(self, cmd: Cmd, conn_id: int, timeout: float = TIMEOUT) -> list[Any]:
        """The next ``cmd`` packet about ``conn_id``, skipping everything else."""
        async with asyncio.timeout(timeout):
            while True:
                packet = await self.recv(timeout=None)
                if packet[0] == cmd and packet[1] == conn_id:
                    return packet

    async def query(self, cmd: Cmd, *args: Any) -> Any:
        self.req += 1
        self.send(cmd, self.req, *args)
        reply = await self.expect(Cmd.REPLY)
        assert reply[1] == self.req
        return reply[2]

    async def closed(self, timeout: float = TIMEOUT) -> list[list[Any]]:
        """Read until the gateway closes the link; return what came before."""
        seen = []
        async with asyncio.timeout(timeout):
            while True:
                try:
                    seen.append(await self.recv(timeout=None))
                except (EOFError, ConnectionResetError):
                    return seen

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


async def ws(server: GatewayServer, path: str = "/", **kwargs: Any) -> ClientConnection:
    kwargs.setdefault("ping_interval", None)
    return await connect(f"ws://127.0.0.1:{server.public_port}{path}", **kwargs)


async def open_client(server: GatewayServer, worker: FakeLink, path: str = "/") -> tuple:
    """Connect a client; return it with its conn_id (from EV_CONNECT)."""
    client = await ws(server, path)
    connected = await worker.expect(Cmd.EV_CONNECT)
    await worker.expect(Cmd.EV_WS_CONNECT)
    return client, connected[1]


async def recv(client: ClientConnection) -> str | bytes:
    return await asyncio.wait_for(client.recv(), TIMEOUT)


async def close_code(client: ClientConnection) -> int | None:
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(TIMEOUT):
            while True:
                await client.recv()
    return client.close_code


async def wait_until(predicate, timeout: float = TIMEOUT) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)
