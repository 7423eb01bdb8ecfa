"""Helpers for the end-to-end tests that run ``start.py start -d`` against a copy of
a fixture app (tests/test_ops_e2e.py, tests/test_threads_e2e.py): the
``start_cluster`` and ``opened`` fixtures (import them into the test module), the
master's state and the children's stats, requests to the remote-control apps
(tests/fixtures/apps/rc and rcsync) with a chosen timeout, and steady traffic."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pygatewayworker.cluster.pidfile import pid_alive
from tests.cluster import AppSpec, cli, make_app, wait_ports_free
from tests.rc import RC, RemoteError

GATEWAY_OPTIONS = "ping_interval=0"
CALL_TIMEOUT = 10.0
_ids = itertools.count(10_000_000)


# ---- helpers ------------------------------------------------------------------------


async def acli(spec: AppSpec, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``cli`` in a thread, so that the test's clients keep reading meanwhile."""
    return await asyncio.to_thread(cli, spec, *args, timeout=timeout)


def state(spec: AppSpec) -> dict[str, Any]:
    """The master's ``state.json`` (empty when missing)."""
    try:
        return dict(json.loads((spec.run_dir / "state.json").read_text()))
    except (OSError, ValueError):
        return {}


def processes(spec: AppSpec) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in state(spec).get("processes", [])}


def all_pids(spec: AppSpec) -> list[int]:
    st = state(spec)
    pids = [st.get("master", {}).get("pid")] + [p.get("pid") for p in st.get("processes", [])]
    return [p for p in pids if p]


def processes_of(spec: AppSpec) -> list[int]:
    """Every live process started for this app copy (its path is on their command line)."""
    marker = str(spec.apps_dir).encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if marker in Path(f"/proc/{entry}/cmdline").read_bytes() and pid_alive(int(entry)):
                found.append(int(entry))
    return found


def wait_for(check: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


async def await_for(check: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or 'condition'}")
        await asyncio.sleep(0.05)


def assert_nothing_left(spec: AppSpec, pids: list[int]) -> None:
    wait_for(lambda: not any(pid_alive(p) for p in pids), 10, "every process to exit")
    assert processes_of(spec) == []
    assert wait_ports_free(spec.all_ports()) == []


async def call(rc: RC, op: str, *args: Any, timeout: float = CALL_TIMEOUT, **kwargs: Any) -> Any:
    """Like ``RC.call`` with a chosen timeout."""
    rid = next(_ids)
    future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    rc.replies[rid] = future
    await rc.ws.send(json.dumps({"id": rid, "op": op, "args": list(args), "kwargs": kwargs}))
    try:
        reply = await asyncio.wait_for(future, timeout)
    finally:
        rc.replies.pop(rid, None)
    if "error" in reply:
        raise RemoteError(reply["error"])
    return reply["ok"]


async def open_clients(spec: AppSpec, count: int) -> list[RC]:
    return [await RC.open(spec.ws_url) for _ in range(count)]


async def clients_on_both_gateways(spec: AppSpec, per_gateway: int) -> tuple[list[RC], list[RC]]:
    """``per_gateway`` clients on each of the two gateway processes (others closed)."""
    opened: list[RC] = []
    for _ in range(80):
        opened.append(await RC.open(spec.ws_url))
        ports = sorted({c.gateway_port for c in opened})
        if len(ports) == 2 and all(
            sum(c.gateway_port == p for c in opened) >= per_gateway for p in ports
        ):
            break
    ports = sorted({c.gateway_port for c in opened})
    assert len(ports) == 2, "clients did not spread over both gateways"
    groups = tuple([c for c in opened if c.gateway_port == p][:per_gateway] for p in ports)
    for extra in opened:
        if extra not in groups[0] and extra not in groups[1]:
            await extra.close()
    return groups[0], groups[1]


def is_connected(rc: RC) -> bool:
    return rc.ws.close_code is None and not rc.reader.done()


def gateway_name_of(spec: AppSpec, rc: RC) -> str:
    return f"{spec.name}.gateway.{rc.gateway_port - spec.start_port}"


@dataclass
class Traffic:
    """Every client sends echo requests with sequence numbers, ``window`` at a time,
    and checks that each reply carries its own sequence number."""

    clients: list[RC]
    window: int = 3
    timeout: float = CALL_TIMEOUT
    strict: bool = True
    """A request without a reply fails the test (else it is counted in ``lost``)."""
    ok: list[list[float]] = field(default_factory=list)
    lost: int = 0
    errors: list[str] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> Traffic:
        self.ok = [[] for _ in self.clients]
        self._tasks = [asyncio.create_task(self._run(i)) for i in range(len(self.clients))]
        return self

    async def _one(self, index: int, seq: int) -> None:
        client = self.clients[index]
        try:
            result = await call(client, "echo", index, seq, timeout=self.timeout)
        except TimeoutError:
            if self.strict:
                self.errors.append(f"client {index}: request {seq} got no reply")
            self.lost += 1
            return
        except Exception as exc:  # a closed connection, a remote error
            self.errors.append(f"client {index}: request {seq}: {exc!r}")
            return
        if result != [index, seq]:
            self.errors.append(f"client {index}: request {seq} got {result!r}")
        else:
            self.ok[index].append(time.monotonic())

    async def _run(self, index: int) -> None:
        seq = 0
        while not self._stop.is_set() and is_connected(self.clients[index]):
            batch = range(seq, seq + self.window)
            seq += self.window
            await asyncio.gather(*(self._one(index, s) for s in batch))

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def served_since(self, moment: float) -> list[int]:
        """Per client: replies received after ``moment`` (monotonic)."""
        return [sum(t > moment for t in times) for times in self.ok]

    @property
    def total(self) -> int:
        return sum(len(times) for times in self.ok)


@dataclass
class Cluster:
    """A started app copy; the fixture stops it and checks that nothing is left."""

    spec: AppSpec
    start_output: str = ""
    seen_pids: set[int] = field(default_factory=set)

    def remember_pids(self) -> None:
        self.seen_pids.update(all_pids(self.spec))


@pytest.fixture
def start_cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """``start_cluster(gateways=2, workers=2, worker_options="", source="rc")`` runs
    ``start -d`` on a copy of the fixture app ``source``."""
    started: list[Cluster] = []

    def start(
        gateways: int = 2, workers: int = 2, worker_options: str = "", source: str = "rc"
    ) -> Cluster:
        spec = make_app(
            tmp_path / f"c{len(started)}",
            source,
            gateways=gateways,
            workers=workers,
            gateway_options=GATEWAY_OPTIONS,
            worker_options=worker_options,
        )
        result = cli(spec, "start", "-d")
        cluster = Cluster(spec, result.stdout)
        started.append(cluster)
        assert result.returncode == 0, result.stdout + result.stderr
        cluster.remember_pids()
        return cluster

    yield start
    for cluster in started:
        cluster.remember_pids()
        if state(cluster.spec):
            cli(cluster.spec, "stop", "--timeout", "10")
        for pid in list(cluster.seen_pids) + processes_of(cluster.spec):
            with contextlib.suppress(ProcessLookupError):
                if pid_alive(pid):
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
async def opened() -> AsyncIterator[list[RC]]:
    """Clients to close at the end of a test, whatever happened."""
    clients: list[RC] = []
    yield clients
    for client in clients:
        with contextlib.suppress(Exception):
            await client.close()


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def register_lists(spec: AppSpec) -> list[str]:
    """What the register tells a worker: the gateways' internal addresses."""
    reader, writer = await asyncio.open_connection("127.0.0.1", spec.register_port)
    try:
        writer.write(b'{"event":"worker_connect","secret_key":""}\n')
        line = await asyncio.wait_for(reader.readline(), 5)
        return sorted(json.loads(line)["addresses"])
    finally:
        writer.close()


async def close_events(monitor: RC, want: set[str], timeout: float) -> list[dict[str, Any]]:
    """``on_close`` reports received by the monitor until every id in ``want`` came."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while not want <= {e["client_id"] for e in got}:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(
                f"on_close not reported for {want - {e['client_id'] for e in got}}"
            )
        message = await monitor.expect_json(left)
        if isinstance(message, dict) and message.get("event") == "close":
            got.append(message)
    return got


async def drain(rc: RC, wait: float = 0.3) -> None:
    await asyncio.sleep(wait)
    while not rc.inbox.empty():
        rc.inbox.get_nowait()


def stats_of(spec: AppSpec, name: str) -> dict[str, Any]:
    """A child's stats snapshot (empty when missing)."""
    try:
        return dict(json.loads((spec.run_dir / "stats" / f"{name}.json").read_text()))
    except (OSError, ValueError):
        return {}
