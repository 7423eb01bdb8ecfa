"""Observability end to end: a real cluster (2 gateways x 2 workers, a push API)
started with ``start.py start -d --metrics-listen 127.0.0.1:0``.

- ``/metrics``, parsed with ``prometheus_client``'s own parser, moves by exactly what
  the test causes: connections, messages, a rejected handshake, a heartbeat timeout,
  broadcast deliveries, push API requests, client closes, a worker restart after
  ``kill -9``; processes are labelled by app, role and index, never by a client_id.
- ``--log-format json``: every line of ``run/gatewayworker.log`` is a JSON object,
  and a callback's exception carries the client_id as a field.
- ``/healthz`` and ``/readyz`` turn 503 (naming the worker) when a worker is killed
  and 200 again once it is back.
- The operator page in headless Chromium: 401 without the token; with it, the charts
  are drawn (canvas pixels checked on a screenshot) and the process table follows a
  restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from pygatewayworker.cluster.pidfile import pid_alive
from tests.chromium import browser  # noqa: F401 - the fixture
from tests.cluster import AppSpec, cli, make_app
from tests.ports import reserve_ports
from tests.rc import RC

TOKEN = "ops-t0ken"
PUSH_TOKEN = "push-t0ken"
CLIENT_ID = re.compile(r"^[0-9a-f]{20}$")
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


# ---- helpers ---------------------------------------------------------------------------


class MetricsCluster:
    """A started app copy with a metrics listener; the fixture stops it."""

    def __init__(self, spec: AppSpec, push_port: int) -> None:
        self.spec = spec
        self.push_port = push_port
        self.port = 0

    def state(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.spec.run_dir / "state.json").read_text()))
        except (OSError, ValueError):
            return {}

    def process(self, name: str) -> dict[str, Any]:
        return next(p for p in self.state()["processes"] if p["name"] == name)

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", headers=headers or {}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def scrape(self) -> Samples:
        status, body = self.get("/metrics")
        assert status == 200
        out: Samples = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out

    def push(self, verb: str, document: dict[str, Any], token: str | None = PUSH_TOKEN) -> int:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.push_port}/{verb}",
            data=json.dumps(document).encode(),
            headers=headers,
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)


def wait_for(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return result


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


@pytest.fixture
def metrics_cluster(tmp_path: Path) -> Iterator[Callable[..., MetricsCluster]]:
    started: list[MetricsCluster] = []

    def start(
        *extra: str,
        source: str = "rc",
        workers: int = 2,
        gateway_options: str = "ping_interval=1.5, ping_not_response_limit=1",
        worker_options: str = "",
    ) -> MetricsCluster:
        spec = make_app(
            tmp_path / f"c{len(started)}",
            source,
            gateways=2,
            workers=workers,
            gateway_options=gateway_options,
            worker_options=worker_options,
        )
        push_port = reserve_ports(1)
        (spec.apps_dir / source / "start_pushapi.py").write_text(
            "from pygatewayworker import PushAPI\n"
            f"push = PushAPI(listen='127.0.0.1:{push_port}', "
            f"register='127.0.0.1:{spec.register_port}', token={PUSH_TOKEN!r})\n"
        )
        cluster = MetricsCluster(spec, push_port)
        started.append(cluster)
        args = ["--metrics-listen", "127.0.0.1:0", "--metrics-token", TOKEN, *extra]
        result = cli(spec, "start", "-d", *args)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "gatewayworker.metrics.0" in result.stdout and "/metrics" in result.stdout
        listen = cluster.process("gatewayworker.metrics.0")["addresses"]["listen"]
        cluster.port = int(listen.rpartition(":")[2])
        wait_for(lambda: cluster.get("/readyz")[0] == 200, 30, "readyz 200 after start")
        return cluster

    yield start
    for cluster in started:
        pids = [p.get("pid") for p in cluster.state().get("processes", [])]
        cli(cluster.spec, "stop", "--timeout", "10")
        for pid in pids:
            if pid and pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


async def open_client(url: str, keepalive: bool = True) -> RC:
    """A remote-control client; ``keepalive`` pings every second (activity for the
    gateway's heartbeat), without it the client stays silent."""
    ws = await connect(url, ping_interval=1 if keepalive else None, max_size=None)
    init = json.loads(await asyncio.wait_for(ws.recv(), 10))
    return RC(ws, init)


def bad_upgrade(port: int) -> int:
    """An upgrade request without Sec-WebSocket-Key; the status the gateway answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        head = sock.recv(4096).decode("latin-1")
    return int(head.split()[1])


async def flood(url: str, messages: int) -> int:
    """A client that sends ``messages`` echo requests at once; its close code."""
    ws = await connect(url, ping_interval=None)
    await asyncio.wait_for(ws.recv(), 10)  # init
    request = json.dumps({"id": 0, "op": "echo", "args": [], "kwargs": {}})
    with contextlib.suppress(ConnectionClosed):
        for _ in range(messages):
            await ws.send(request)
        while True:  # read the replies up to the close frame
            await asyncio.wait_for(ws.recv(), 10)
    return int(ws.close_code or 0)


def worker_pid(cluster: MetricsCluster, index: int) -> int:
    return int(cluster.process(f"rc.businessworker.{index}")["pid"])


# ---- /metrics -----------------------------------------------------------------------------


async def test_metrics_move_by_what_the_test_causes(
    metrics_cluster: Callable[..., MetricsCluster],
) -> None:
    cluster = metrics_cluster("--log-format", "json")
    spec = cluster.spec
    before = cluster.scrape()

    def delta(name: str, **labels: str) -> float:
        return total(cluster.scrape(), name, **labels) - total(before, name, **labels)

    clients = [await open_client(spec.ws_url) for _ in range(6)]
    victim = await open_client(spec.ws_url, keepalive=False)
    for round_ in range(4):
        replies = await asyncio.gather(*(c.call("echo", round_) for c in clients))
        assert replies == [[round_]] * 6
    status = await asyncio.to_thread(bad_upgrade, spec.public_port)
    assert status == 400
    await asyncio.wait_for(victim.ws.wait_closed(), 20)  # the gateway drops the silent one
    for _ in range(3):
        assert await asyncio.to_thread(cluster.push, "send_to_all", {"message": "hi"}) == 200
    assert await asyncio.to_thread(cluster.push, "send_to_all", {"message": "x"}, None) == 401
    for client in clients:
        assert await client.expect() == "hi"

    expected = {
        ("gatewayworker_gateway_connections_opened_total", ()): 7,
        ("gatewayworker_gateway_messages_received_total", ()): 24,
        ("gatewayworker_worker_events_total", (("kind", "message"),)): 24,
        ("gatewayworker_worker_events_total", (("kind", "connect"),)): 7,
        ("gatewayworker_worker_events_total", (("kind", "websocket_connect"),)): 7,
        ("gatewayworker_gateway_handshake_failures_total", (("status", "400"),)): 1,
        ("gatewayworker_gateway_connections_closed_total", (("reason", "heartbeat_timeout"),)): 1,
        ("gatewayworker_gateway_broadcast_deliveries_total", ()): 18,
        ("gatewayworker_pushapi_requests_total", (("status", "200"), ("verb", "send_to_all"))): 3,
        ("gatewayworker_pushapi_requests_total", (("status", "401"), ("verb", "send_to_all"))): 1,
    }

    def moved() -> dict[tuple[str, Any], float]:
        return {key: delta(key[0], **dict(key[1])) for key in expected}

    await asyncio.to_thread(wait_for, lambda: moved() == expected, 20, "the expected deltas")
    now = cluster.scrape()
    assert total(now, "gatewayworker_gateway_connections") == 6
    assert total(now, "gatewayworker_gateway_connections_closed_total", reason="client_gone") == 0
    callbacks = "gatewayworker_worker_callback_duration_seconds_count"
    assert total(now, callbacks) - total(before, callbacks) >= 24 + 14
    hist = "gatewayworker_pushapi_request_duration_seconds_count"
    assert total(now, hist) - total(before, hist) == 4
    assert total(now, "gatewayworker_register_peers", kind="gateway") == 2
    assert total(now, "gatewayworker_register_peers", kind="subscriber") == 3  # 2 workers, push
    assert total(now, "gatewayworker_worker_gateway_links", state="linked") == 4

    # a callback that raises: logged with the client_id as a field
    await clients[0].ws.send(json.dumps({"id": 1, "op": "raise", "args": [], "kwargs": {}}))
    await asyncio.to_thread(
        wait_for,
        lambda: delta("gatewayworker_worker_callback_errors_total") == 1,
        20,
        "the callback error",
    )

    for client in clients:
        await client.close()
    await asyncio.to_thread(
        wait_for,
        lambda: (
            delta("gatewayworker_gateway_connections_closed_total", reason="client_close") == 6
            and total(cluster.scrape(), "gatewayworker_gateway_connections") == 0
        ),
        20,
        "six client closes",
    )

    os.kill(worker_pid(cluster, 1), signal.SIGKILL)
    restarts = "gatewayworker_process_restarts_total"
    labels = {"app": "rc", "role": "businessworker", "index": "1"}
    await asyncio.to_thread(
        wait_for,
        lambda: (
            delta(restarts, **labels) == 1
            and total(cluster.scrape(), "gatewayworker_up", **labels) == 1
        ),
        30,
        "the worker restart",
    )
    assert delta(restarts) == 1

    final = cluster.scrape()
    label_sets = [dict(ls) for _, ls in final]
    assert {ls["app"] for ls in label_sets} == {"", "rc", "gatewayworker"}
    for role in ("gateway", "businessworker"):
        assert {ls["index"] for ls in label_sets if ls.get("role") == role} == {"0", "1"}
    assert not [v for ls in label_sets for v in ls.values() if CLIENT_ID.match(v)]
    assert len(final) < 400  # bounded: no series per client

    lines = (spec.run_dir / "gatewayworker.log").read_text().splitlines()
    docs = [json.loads(line) for line in lines]  # every line parses
    assert all({"time", "level", "process", "pid", "logger", "message"} <= set(d) for d in docs)
    failed = [d for d in docs if d.get("client_id") == clients[0].client_id]
    assert failed and failed[0]["level"] == "ERROR" and "boom" in failed[0]["exception"]
    assert any(d.get("worker") == "rc.businessworker.0" for d in docs)
    assert any(d.get("gateway", "").startswith("127.0.0.1:") for d in docs)
    assert {d["process"] for d in docs} >= {"master", "rc.gateway.0", "gatewayworker.metrics.0"}


async def test_limits_refusals_and_callback_threads_have_their_series(
    metrics_cluster: Callable[..., MetricsCluster],
) -> None:
    """A rate-limited client moves ``reason="rate_limit"`` by exactly one, an
    oversized message ``size_limit`` by one, a refused origin the refusal counters by
    one; the worker's callback threads show as busy and queued while they are."""
    cluster = metrics_cluster(
        source="rcsync",
        workers=1,
        gateway_options=(
            "max_message_size=4096, message_rate=20, message_burst=20, "
            "allowed_origins=['http://ok.example']"
        ),
        worker_options="threads=2",
    )
    url = cluster.spec.ws_url
    closed = "gatewayworker_gateway_connections_closed_total"
    before = cluster.scrape()

    def delta(name: str, **labels: str) -> float:
        return total(cluster.scrape(), name, **labels) - total(before, name, **labels)

    assert await flood(url, 200) == 1008
    big = await connect(url, ping_interval=None, additional_headers={"Origin": "http://ok.example"})
    await asyncio.wait_for(big.recv(), 10)
    await big.send("x" * 5000)
    await asyncio.wait_for(big.wait_closed(), 10)
    assert big.close_code == 1009
    with pytest.raises(InvalidStatus) as refused:
        await connect(url, additional_headers={"Origin": "http://evil.example"})
    assert refused.value.response.status_code == 403
    expected = {
        (closed, "rate_limit"): 1,
        (closed, "size_limit"): 1,
        ("gatewayworker_gateway_handshakes_refused_total", "origin"): 1,
    }

    def moved() -> dict[tuple[str, str], float]:
        return {(n, r): delta(n, reason=r) for n, r in expected}

    await asyncio.to_thread(wait_for, lambda: moved() == expected, 20, "the limit closes")
    failures = "gatewayworker_gateway_handshake_failures_total"
    assert delta(failures, status="403") == 1
    assert delta(closed) == 2  # nothing else closed, nothing counted twice
    assert total(cluster.scrape(), "gatewayworker_worker_callback_threads") == 2

    # four clients' callbacks block: two threads busy, two callbacks waiting for one
    sleepers = [await open_client(url) for _ in range(4)]
    sleep = json.dumps({"id": 1, "op": "sleep", "args": [4], "kwargs": {}})
    for client in sleepers:
        await client.ws.send(sleep)

    def gauges() -> tuple[float, float]:
        now = cluster.scrape()
        return (
            total(now, "gatewayworker_worker_callback_threads_busy"),
            total(now, "gatewayworker_worker_callback_threads_queued"),
        )

    await asyncio.to_thread(wait_for, lambda: gauges() == (2, 2), 20, "2 busy, 2 queued")
    await asyncio.to_thread(wait_for, lambda: gauges() == (0, 0), 30, "the threads idle again")
    for client in sleepers:
        await client.close()


# ---- probes and the operator page -----------------------------------------------------------


def see_probes_fail(cluster: MetricsCluster, name: str, timeout: float = 10.0) -> dict[str, Any]:
    """Poll /healthz until it is 503; its document (which must name ``name``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = cluster.get("/healthz")
        if status == 503:
            document = json.loads(body)
            assert any(m.startswith(name) for m in document["missing"]), document
            assert cluster.get("/readyz")[0] == 503  # the respawn waits a second
            return dict(document)
        time.sleep(0.02)
    raise AssertionError("/healthz never turned 503")


async def test_probes_flip_and_the_operator_page_draws(
    metrics_cluster: Callable[..., MetricsCluster],
    browser: Any,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    cluster = metrics_cluster()
    base = f"http://127.0.0.1:{cluster.port}"
    status, body = cluster.get("/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    assert cluster.get("/readyz")[0] == 200

    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    refused = await page.goto(f"{base}/ops")
    assert refused is not None and refused.status == 401
    clients = [await open_client(cluster.spec.ws_url) for _ in range(3)]
    traffic = asyncio.create_task(_traffic(clients))
    try:
        answer = await page.goto(f"{base}/ops?token={TOKEN}")
        assert answer is not None and answer.status == 200 and page.url == f"{base}/ops"
        await page.wait_for_function(
            "document.body.dataset.updated && document.querySelectorAll('#processes tbody tr').length == 8",
            timeout=15_000,
        )
        await asyncio.sleep(4)  # a few samples of traffic for the charts
        await page.screenshot(path=str(tmp_path / "ops.png"), full_page=True)
        for chart in ("#chart-connections", "#chart-messages"):
            shot = tmp_path / f"{chart[1:]}.png"
            await page.locator(chart).screenshot(path=str(shot))
            assert _colors(shot) >= 3, f"{chart} looks blank"
            inked = await page.evaluate(_INKED_PIXELS, chart)
            assert inked > 200, f"{chart}: {inked} coloured pixels"
        names = await page.locator("#processes tbody tr").evaluate_all(
            "rows => rows.map(r => r.dataset.name)"
        )
        assert names[0] == "master" and "rc.businessworker.0" in names

        # a worker killed: the probes say so, then recover; the page counts the restart
        os.kill(worker_pid(cluster, 0), signal.SIGKILL)
        first = await asyncio.to_thread(
            wait_for, lambda: cluster.process("rc.businessworker.0")["restarts"] == 1, 20
        )
        assert first
        await asyncio.to_thread(
            wait_for, lambda: cluster.get("/healthz")[0] == 200, 20, "healthz after respawn"
        )
        os.kill(worker_pid(cluster, 0), signal.SIGKILL)  # again: respawned after 1 s
        document = await asyncio.to_thread(see_probes_fail, cluster, "rc.businessworker.0")
        assert document["status"] == "fail"
        await asyncio.to_thread(
            wait_for,
            lambda: cluster.get("/healthz")[0] == 200 and cluster.get("/readyz")[0] == 200,
            30,
            "healthz and readyz back after the respawn",
        )
        await page.wait_for_function(_RESTARTS_SHOWN, arg="rc.businessworker.0", timeout=15_000)
    finally:
        traffic.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await traffic
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close()
        await page.close()


async def _traffic(clients: list[RC]) -> None:
    n = 0
    while True:
        with contextlib.suppress(Exception):
            await asyncio.gather(*(c.call("echo", n) for c in clients))
        n += 1
        await asyncio.sleep(0.05)


_RESTARTS_SHOWN = """
name => {
  const row = document.querySelector(`#processes tbody tr[data-name="${name}"]`);
  return row !== null && row.cells[9].textContent === "2";
}
"""

_INKED_PIXELS = """
selector => {
  const c = document.querySelector(selector);
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (d[i + 3] && (d[i] < 200 || d[i + 1] < 200 || d[i + 2] < 200)) n++;
  }
  return n;
}
"""


def _colors(path: Path) -> int:
    """Distinct colours in a screenshot (a blank canvas has one)."""
    from PIL import Image

    with Image.open(path) as image:
        colors = image.convert("RGB").getcolors(maxcolors=1 << 16)
    return len(colors) if colors is not None else 1 << 16
