"""Fake role runtimes for the supervisor tests (tests/test_master.py).

The tests copy this file into a temporary ``apps/fake/`` and declare subclasses of
the real declarations with ``runtime = "apps.fake.roles:serve_<role>"``, so the
master, the CLI and ``runtime.service.run_service`` are exercised for real while the
roles themselves stay tiny:

- the register accepts and closes connections;
- a gateway serves its public socket (accept, close) and answers ``HELLO`` /
  ``Q_CONNECTIONS`` / ``Q_STATS`` on its internal socket with the real wire format;
- a worker imports its Events class by import string (so a broken Events module
  fails the boot, and a reload loads edited code) and reports ``Events.VERSION``.

``FAKE_CRASH_AFTER=<seconds>`` in the environment makes workers exit with code 1
that long after they are ready (crash-loop test); ``FAKE_HANG_ON_STOP=1`` makes
gateways never finish stopping (bounded-stop test).
"""

from __future__ import annotations

import asyncio
import importlib
import os
import time
from typing import Any

from pygatewayworker.gateway.protocol import Cmd, Decoder, ProtocolError, encode
from pygatewayworker.runtime.service import run_service
from pygatewayworker.runtime.spec import ChildSpec


async def _close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()


class FakeRegister:
    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(_close, sock=self.spec.sockets["listen"])

    async def stop(self, graceful: bool) -> None:
        if self.server is not None:
            self.server.close()

    def stats(self) -> dict[str, Any]:
        return {}


class FakeGateway:
    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.servers: list[asyncio.Server] = []
        self.messages_in = 0
        self.started = time.time()
        self.tick: asyncio.Task[None] | None = None

    async def start(self) -> None:
        sockets = self.spec.sockets
        self.servers.append(await asyncio.start_server(_close, sock=sockets["public"]))
        self.servers.append(await asyncio.start_server(self.on_link, sock=sockets["internal"]))
        self.tick = asyncio.create_task(self.count())

    async def count(self) -> None:
        while True:  # a steady fake traffic of 10 messages per second
            await asyncio.sleep(0.1)
            self.messages_in += 1

    async def on_link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = Decoder()
        try:
            while data := await reader.read(65536):
                for packet in decoder.feed(data):
                    writer.write(self.answer(packet))
        except (ProtocolError, ConnectionError):
            pass
        writer.close()

    def answer(self, packet: list[Any]) -> bytes:
        cmd = packet[0]
        if cmd == Cmd.HELLO:
            if packet[3] != self.spec.config.secret:
                return encode(Cmd.ERROR, 0, "wrong secret")
            port = self.spec.sockets["internal"].getsockname()[1]
            info = {"lan_ip": "127.0.0.1", "port": port, "pid": os.getpid()}
            return encode(Cmd.WELCOME, info)  # what every link end checks
        if cmd == Cmd.Q_CONNECTIONS:
            port = self.spec.sockets["internal"].getsockname()[1]
            conn = {
                "client_id": f"7f000001{port:04x}{self.spec.index + 1:08x}",
                "remote": "127.0.0.1:50000",
                "uid": "alice",
                "groups": ["room1"],
                "age": time.time() - self.started,
                "bytes_in": 10,
                "bytes_out": 20,
            }
            if len(packet) == 4:  # a page: [Q_CONNECTIONS, req, after, limit]
                return encode(Cmd.REPLY, packet[1], [[conn] if packet[2] == 0 else [], None])
            return encode(Cmd.REPLY, packet[1], [conn])
        if cmd == Cmd.Q_STATS:
            return encode(Cmd.REPLY, packet[1], self.stats())
        return encode(Cmd.ERROR, 0, f"unexpected {cmd!r}")

    async def stop(self, graceful: bool) -> None:
        if os.environ.get("FAKE_HANG_ON_STOP"):
            await asyncio.sleep(3600)
        if self.tick is not None:
            self.tick.cancel()
        for server in self.servers:
            server.close()

    def stats(self) -> dict[str, Any]:
        return {
            "connections": 1,
            "messages_in": self.messages_in,
            "messages_out": 0,
            "send_failures": 0,
        }


class FakeWorker:
    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.version: Any = None
        self.crash: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        module_name, _, attr = self.spec.config.events.partition(":")
        events = getattr(importlib.import_module(module_name), attr)
        self.version = getattr(events, "VERSION", None)
        crash_after = os.environ.get("FAKE_CRASH_AFTER")
        if crash_after:
            self.crash = asyncio.get_running_loop().call_later(float(crash_after), os._exit, 1)

    async def stop(self, graceful: bool) -> None:
        if self.crash is not None:
            self.crash.cancel()

    def stats(self) -> dict[str, Any]:
        return {"events_version": self.version}


def serve_register(spec: ChildSpec) -> int:
    return run_service(spec, FakeRegister(spec))


def serve_gateway(spec: ChildSpec) -> int:
    return run_service(spec, FakeGateway(spec))


def serve_worker(spec: ChildSpec) -> int:
    return run_service(spec, FakeWorker(spec))
