"""M9: fan-out to one big Pusher channel through the Pusher HTTP events API, beside the
native ``send_to_group`` on the same cluster.

How this works
--------------
A cluster of the Pusher benchmark app (``bench/apps/pusherapp``: the shipped
:class:`~pygatewayworker.pusher.PusherEvents`, gateways with the Pusher heartbeat)
and its HTTP API role (:class:`PusherBenchCluster`). The load generators connect
``members`` Pusher clients (``/app/<key>?protocol=7``), each subscribing to the
public channel ``bench`` (``bench.loadgen``); the connections held at the end are
the first figure. Then the same burst of ~100-byte events is sent twice, and timed
until every member has every event (deliveries/s):

- through the Pusher HTTP API: one ``POST /apps/1/events`` per event, on one
  keep-alive connection, signed as the ``pusher`` server SDKs sign (``auth_key``,
  ``auth_timestamp``, ``auth_version``, ``body_md5``, ``auth_signature``), each
  request answered before the next is sent (an SDK's ``trigger``); the calls/s the
  sender achieved are reported too;
- natively: ``send_to_group("pusher:1:bench", frame)`` from an
  :class:`~pygatewayworker.AsyncGatewayClient` in the runner, with the frame the
  HTTP API would have built.

The difference is the price of the HTTP API (HTTP parsing, the signature check, one
request per event); the gateways' work per delivery is the same.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from bench.apps.pusherapp.Events import APP_ID, KEY, SECRET
from bench.cluster import BenchCluster, ClusterConfig, free_port_block
from bench.metrics import QUICK, Bench
from bench.pusherload import CHANNEL, EVENT
from pygatewayworker.gatewayclient import AsyncGatewayClient
from pygatewayworker.pusher.httpauth import string_to_sign
from pygatewayworker.pusher.protocol import PING_DATA, group_of, message, sign

__all__ = ["PusherSizes", "PusherBenchCluster", "PusherHTTP", "measure_pusher_fanout"]


@dataclass(frozen=True, slots=True)
class PusherSizes:
    """The sizes of M9 (:data:`FULL` and :data:`QUICK`)."""

    members: int = 10_000
    deliveries: int = 2_000_000  # per burst: events = deliveries / members
    gateways: int = 2  # one per core, as M4
    gens: int = 2


FULL = PusherSizes()
QUICK_SIZES = PusherSizes(members=60, deliveries=3_000)


class PusherBenchCluster(BenchCluster):
    """The bench cluster running the Pusher app (``ClusterConfig(app="pusherapp")``),
    with the Pusher heartbeat, plus its HTTP API role."""

    ping_data = PING_DATA

    def __init__(self, config: ClusterConfig) -> None:
        super().__init__(config)
        self.api_port = free_port_block(1)

    def _write_app(self) -> None:
        super()._write_app()
        register = f"127.0.0.1:{self.register_port}"
        (self.apps_dir / self.config.app / "start_pusherapi.py").write_text(
            "from pygatewayworker.pusher import PusherAPI\n"
            f"api = PusherAPI(events='apps.{self.config.app}.Events:Events', "
            f"listen='127.0.0.1:{self.api_port}', register={register!r})\n"
        )


class PusherHTTP:
    """One keep-alive HTTP/1.1 connection to the Pusher HTTP API; every request is
    signed as the ``pusher`` server SDKs sign it."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.address = (host, port)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, params: list[tuple[str, str]] | None = None, body: bytes = b""
    ) -> tuple[int, bytes]:
        """``(status, body)`` of one signed request (connecting when needed)."""
        if self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection(*self.address)
        assert self._reader is not None
        pairs = [("auth_key", KEY), ("auth_timestamp", str(int(time.time())))]
        pairs += [("auth_version", "1.0"), *(params or [])]
        if body:
            pairs.append(("body_md5", hashlib.md5(body).hexdigest()))
        pairs.append(("auth_signature", sign(SECRET, string_to_sign(method, path, pairs))))
        head = f"{method} {path}?{urlencode(pairs)} HTTP/1.1\r\nHost: {self.address[0]}\r\n"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self._writer.write(head.encode() + b"\r\n" + body)
        answer = await self._reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in answer.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return int(answer[9:12]), await self._reader.readexactly(length)

    async def trigger(self, data: str) -> None:
        """``POST /apps/<id>/events``: event ``B`` with ``data`` on the bench channel."""
        doc = {"name": EVENT, "channel": CHANNEL, "data": data}
        status, answer = await self.request(
            "POST", f"/apps/{APP_ID}/events", body=json.dumps(doc).encode()
        )
        if status != 200:
            raise RuntimeError(f"Pusher HTTP API answered {status}: {answer[:200]!r}")

    async def subscribers(self) -> int:
        """The channel's ``subscription_count``, as the HTTP API counts it (0 while
        the API cannot answer yet)."""
        path = f"/apps/{APP_ID}/channels/{CHANNEL}"
        try:
            status, answer = await self.request("GET", path, [("info", "subscription_count")])
        except (OSError, asyncio.IncompleteReadError):
            await self.close()
            return 0
        return int(json.loads(answer).get("subscription_count", 0)) if status == 200 else 0

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


async def _api_sees(api: PusherHTTP, members: int, timeout: float = 30.0) -> int:
    """Until the HTTP API counts every subscriber (it has found every gateway)."""
    deadline = time.monotonic() + timeout
    seen = await api.subscribers()
    while seen < members and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        seen = await api.subscribers()
    return seen


async def measure_pusher_fanout(bench: Bench) -> dict[str, Any]:
    """M9 (see the module docstring): connections held, and deliveries/s to one
    channel through the Pusher HTTP events API and through ``send_to_group``."""
    size = QUICK_SIZES if bench.sizes is QUICK else FULL
    config = ClusterConfig(size.gateways, 1, bench.sizes.ping_interval, 2, app="pusherapp")
    with bench.setup("M9", config, size.gens, PusherBenchCluster):
        assert isinstance(bench.cluster, PusherBenchCluster) and bench.pool is not None
        connect = await bench.connect(
            size.members, {"protocol": "7"}, protocol="pusher", path=f"/app/{KEY}"
        )
        members = connect["ready"]
        bench.log(f"M9: {members} Pusher clients subscribed at {connect['per_s']}/s")
        count = max(5, size.deliveries // max(1, members))
        api = PusherHTTP(bench.cluster.api_port)
        try:
            seen = await _api_sees(api, members)
            http = await bench._burst(api.trigger, members, count)
        finally:
            await api.close()
        http["calls_per_s"] = round(count / max(1e-9, http["send_seconds"]))
        bench.log(f"M9: HTTP events API: {http}")
        native = await _native_burst(bench, members, count)
        bench.log(f"M9: send_to_group: {native}")
        held = sum(r["open"] for r in await bench.pool.call({"op": "status"}))
        await bench.close_all()
    return {
        "M9": {
            "connections_held": held,
            "subscribed": members,
            "api_subscription_count": seen,
            "connect": connect,
            "http_events_api": http,
            "send_to_group": native,
            "http_share_of_native": round(
                http["deliveries_per_s"] / max(1, native["deliveries_per_s"]), 3
            ),
        }
    }


async def _native_burst(bench: Bench, members: int, count: int) -> dict[str, Any]:
    """The same burst with ``send_to_group`` to the channel's group."""
    assert bench.cluster is not None
    client = AsyncGatewayClient(f"127.0.0.1:{bench.cluster.register_port}", timeout=10)
    await client.connect()
    group = group_of(APP_ID, CHANNEL)
    try:
        return await bench._burst(
            lambda data: client.send_to_group(group, message(EVENT, data, CHANNEL)),
            members,
            count,
        )
    finally:
        await client.close()
