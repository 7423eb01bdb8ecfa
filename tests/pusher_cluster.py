"""Helpers for the Pusher protocol tests: a real cluster running the ``pusherapp``
fixture (2 gateways, 2 workers, the Pusher HTTP API role), raw protocol clients,
and a signing helper for the HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection, connect

from pygatewayworker.pusher.protocol import PING_DATA, channel_signature, client_id_of
from tests.cluster import AppSpec, ForegroundCluster, make_app, wait_ports_free
from tests.ports import reserve_ports

APP_ID, KEY, SECRET = "1001", "key-one", "secret-one-123"
APP2_ID, KEY2, SECRET2 = "1002", "key-two", "secret-two-456"


@dataclass
class PusherCluster:
    """A running cluster of the pusherapp fixture."""

    spec: AppSpec
    api_port: int
    hooks_log: Path

    @property
    def ws_port(self) -> int:
        return self.spec.public_port

    def ws_url(self, key: str = KEY, query: str = "protocol=7&client=js&version=8.4.0") -> str:
        return f"ws://127.0.0.1:{self.spec.public_port}/app/{key}?{query}"

    def hooks(self) -> list[dict[str, Any]]:
        """What the fixture's hooks wrote so far."""
        if not self.hooks_log.exists():
            return []
        return [json.loads(line) for line in self.hooks_log.read_text().splitlines() if line]

    def sdk(self, secret: str = SECRET, app_id: str = APP_ID, key: str = KEY) -> Any:
        """The ``pusher`` server SDK pointed at our HTTP API."""
        import pusher

        return pusher.Pusher(
            app_id=app_id, key=key, secret=secret, host="127.0.0.1", port=self.api_port, ssl=False
        )


def make_pusher_app(tmp_path: Path, gateways: int = 2, workers: int = 2) -> tuple[AppSpec, int]:
    """The pusherapp fixture with free ports and an HTTP API start file."""
    spec = make_app(
        tmp_path,
        "pusherapp",
        gateways=gateways,
        workers=workers,
        gateway_options=f"ping_interval=30, ping_data={PING_DATA!r},",
        worker_options="gateway_lost_timeout=2, query_timeout=3,",
    )
    api_port = reserve_ports(1)
    (spec.apps_dir / "pusherapp" / "start_pusherapi.py").write_text(
        "from pygatewayworker.pusher import PusherAPI\n"
        f"api = PusherAPI(events='.Events:Events', listen='127.0.0.1:{api_port}', "
        f"register='127.0.0.1:{spec.register_port}')\n"
    )
    return spec, api_port


@contextlib.contextmanager
def running_pusher(tmp_path: Path, webhook: str = "", gateways: int = 2) -> Iterator[PusherCluster]:
    """Start the cluster (hooks log and webhook URL passed by environment) until the
    block ends."""
    spec, api_port = make_pusher_app(tmp_path, gateways=gateways)
    hooks_log = tmp_path / "hooks.jsonl"
    with cluster_env(spec, PUSHER_TEST_LOG=str(hooks_log), PUSHER_TEST_WEBHOOK=webhook):
        cluster = PusherCluster(spec, api_port, hooks_log)
        asyncio.run(wait_pusher_ready(cluster))
        yield cluster
    wait_ports_free([api_port])


@contextlib.contextmanager
def cluster_env(spec: AppSpec, **env: str) -> Iterator[None]:
    """``start.py start`` of ``spec`` with ``env`` set (the workers inherit it) until the
    block ends; then Ctrl-C, which must exit 0."""
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    proc = ForegroundCluster(spec).start()
    try:
        wait_running(spec)
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        assert proc.interrupt() == 0, proc.output()
        wait_ports_free(spec.all_ports())


def wait_running(spec: AppSpec, timeout: float = 60.0) -> None:
    """Until the master reports every process started (``state.json`` phase
    ``running``): a test that kills a child before then would abort the start."""
    path = spec.run_dir / "state.json"
    deadline = time.monotonic() + timeout
    while True:
        try:
            if json.loads(path.read_text())["master"]["phase"] == "running":
                return
        except (OSError, ValueError, KeyError):
            pass
        assert time.monotonic() < deadline, f"the cluster did not finish starting in {timeout:g} s"
        time.sleep(0.1)


def gateway_of(socket_id: str) -> str:
    """The gateway (internal port, hex) a socket_id's connection is on."""
    return client_id_of(socket_id)[8:12]


async def wait_pusher_ready(cluster: PusherCluster, timeout: float = 40.0) -> None:
    """Until both gateways answer the handshake and the HTTP API answers."""
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    last: Exception | None = None
    while time.monotonic() < deadline and len(seen) < cluster.spec.gateways:
        try:
            async with connect(cluster.ws_url(), open_timeout=2) as ws:
                established = await recv_event(ws, 2)
                if established["event"] == "pusher:connection_established":
                    seen.add(gateway_of(established["data"]["socket_id"]))
                    continue
        except (TimeoutError, OSError, websockets.exceptions.WebSocketException) as exc:
            last = exc
        await asyncio.sleep(0.2)
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{cluster.api_port}/", timeout=2)
        except urllib.error.HTTPError:
            return  # it answers (404)
        except OSError as exc:
            last = exc
        await asyncio.sleep(0.2)
    raise TimeoutError(f"pusher cluster not ready (gateways seen {seen}, last error {last!r})")


async def recv_event(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    """The next frame, with a JSON-string ``data`` decoded (as pusher-js does)."""
    while True:
        doc = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if doc.get("event") == "pusher:ping":
            await ws.send(json.dumps({"event": "pusher:pong", "data": {}}))
            continue
        if isinstance(doc.get("data"), str):
            with contextlib.suppress(ValueError):
                doc["data"] = json.loads(doc["data"])
        return doc


async def recv_until(ws: ClientConnection, event: str, timeout: float = 5.0) -> dict[str, Any]:
    """Frames until one named ``event``; return it."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no {event} within {timeout} s")
        doc = await recv_event(ws, left)
        if doc.get("event") == event:
            return doc


async def expect_silence(ws: ClientConnection, seconds: float = 0.5) -> None:
    """Assert that nothing but pings arrives for ``seconds``."""
    with contextlib.suppress(TimeoutError):
        doc = await recv_event(ws, seconds)
        raise AssertionError(f"unexpected frame {doc}")


class PusherClient:
    """A raw protocol-7 client (for the protocol error tests)."""

    def __init__(self, ws: ClientConnection, socket_id: str) -> None:
        self.ws = ws
        self.socket_id = socket_id

    @classmethod
    async def open(cls, url: str, origin: str | None = None) -> PusherClient:
        ws = await connect(url, open_timeout=5, origin=origin)  # type: ignore[arg-type]
        established = await recv_event(ws)
        assert established["event"] == "pusher:connection_established", established
        return cls(ws, established["data"]["socket_id"])

    async def send(self, event: str, data: Any, channel: str | None = None) -> None:
        doc: dict[str, Any] = {"event": event, "data": data}
        if channel is not None:
            doc["channel"] = channel
        await self.ws.send(json.dumps(doc))

    async def send_subscribe(
        self, channel: str, channel_data: Any = None, secret: str | None = SECRET, key: str = KEY
    ) -> None:
        """Send ``pusher:subscribe``, signed with ``secret`` (``None``: unsigned)."""
        data: dict[str, Any] = {"channel": channel}
        encoded = None if channel_data is None else json.dumps(channel_data)
        if secret is not None and channel.startswith(("private-", "presence-")):
            data["auth"] = f"{key}:{channel_signature(secret, self.socket_id, channel, encoded)}"
        if encoded is not None:
            data["channel_data"] = encoded
        await self.send("pusher:subscribe", data)

    async def subscribe(
        self, channel: str, secret: str | None = SECRET, channel_data: Any = None, key: str = KEY
    ) -> dict[str, Any]:
        """Subscribe; the first answer on ``channel`` (or a ``pusher:error``)."""
        await self.send_subscribe(channel, channel_data, secret, key)
        while True:
            answer = await recv_event(self.ws)
            if answer.get("channel") == channel or answer["event"] == "pusher:error":
                return answer

    async def close(self) -> None:
        await self.ws.close()
