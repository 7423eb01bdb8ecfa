"""Operations with the real roles: ``start.py`` in subprocesses against a temporary
copy of the remote-control app (tests/fixtures/apps/rc), the way an operator runs it.

Covers: ``start -d`` returns with everything listening, a second start is refused,
``status`` / ``status --json`` / ``status -d``, ``connections``, ``restart``,
``stop`` and ``stop -g`` (close code 1001), commands with nothing running, ``reload``
under continuous traffic with one and two workers (no disconnect, no lost request,
new Events code live), a reload across a 5 s callback (the old worker finishes it)
and one whose new worker cannot link to every gateway (the old one stays), SIGKILL of a business worker and of a gateway during traffic
(respawn, re-registration, ``on_close`` of the dead gateway's clients), a gateway
that stays away past ``gateway_lost_timeout``, a broken Events.py at start, and a
master killed with SIGKILL (children leave by themselves).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from pygatewayworker.cluster.pidfile import pid_alive
from tests import opsharness
from tests.cluster import PYTHON, ROOT, make_app, wait_ports_free
from tests.opsharness import (
    GATEWAY_OPTIONS,
    Cluster,
    Traffic,
    acli,
    all_pids,
    assert_nothing_left,
    await_for,
    call,
    clients_on_both_gateways,
    close_events,
    drain,
    gateway_name_of,
    is_connected,
    listening,
    open_clients,
    processes,
    processes_of,
    register_lists,
    state,
    stats_of,
)
from tests.ports import port_is_free
from tests.rc import RC, RemoteError

start_cluster = opsharness.start_cluster  # the fixtures, shared with test_threads_e2e
opened = opsharness.opened


# ---- start -d, status, connections, restart, stop -----------------------------------


async def test_start_status_connections_restart_stop(
    start_cluster: Callable[..., Cluster], opened: list[RC]
) -> None:
    cluster = start_cluster()
    spec = cluster.spec
    out = cluster.start_output
    for name in ["rc.register.0", "rc.gateway.0", "rc.gateway.1"]:
        assert name in out, out
    assert "rc.businessworker.0" in out and "rc.businessworker.1" in out
    assert f"public ws://127.0.0.1:{spec.public_port}" in out and "log: " in out
    assert all(listening(p) for p in spec.all_ports()), "start -d returned before listening"
    assert all(p["status"] == "running" for p in processes(spec).values())

    again = await acli(spec, "start", "-d")
    assert again.returncode != 0 and "already running" in again.stderr

    a, b = await clients_on_both_gateways(spec, 2)
    opened.extend(a + b)
    clients = a + b
    await call(clients[0], "bind_uid", clients[0].client_id, "alice")
    await call(clients[0], "join_group", clients[0].client_id, "room")
    for client in clients:
        for i in range(3):
            assert await call(client, "echo", i) == [i]

    table = await acli(spec, "status")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["PID", "ROLE", "NAME", "STATUS"]
    for name in processes(spec):
        assert any(name in line and " running " in line for line in lines), table.stdout
    assert "6 processes" in lines[-1] and "4 connections" in lines[-1], lines[-1]

    report = json.loads((await acli(spec, "status", "--json")).stdout)
    rows = {r["name"]: r for r in report["processes"]}
    assert set(rows) == {"master", *processes(spec)}
    for row in rows.values():
        assert pid_alive(row["pid"]) and row["memory"] > 1_000_000, row
        assert 0 <= row["uptime"] < 600, row
    gateways = [r for r in rows.values() if r["role"] == "gateway"]
    workers = [r for r in rows.values() if r["role"] == "businessworker"]
    assert sum(r["connections"] for r in gateways) == 4 == report["totals"]["connections"]
    assert sum(r["messages_in"] for r in gateways) >= 4 * 3 + 2
    assert sum(r["messages_in"] for r in workers) >= 4 * 3 + 2
    assert all(r["messages_out"] >= 6 for r in gateways)
    assert all(r["send_failures"] == 0 and r["restarts"] == 0 for r in gateways)
    assert all(isinstance(r["msg_per_s"], int | float) for r in gateways + workers)

    live = subprocess.Popen(
        [PYTHON, str(ROOT / "start.py"), "status", "-d", "--run-dir", str(spec.run_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    await asyncio.sleep(2.6)
    live.send_signal(signal.SIGINT)
    live_out, _ = await asyncio.to_thread(live.communicate, timeout=10)
    assert live_out.count("ROLE") >= 2, live_out  # refreshed at least once

    conns = await acli(spec, "connections")
    assert conns.returncode == 0, conns.stderr
    for client in clients:
        line = next(x for x in conns.stdout.splitlines() if x.startswith(client.client_id))
        assert gateway_name_of(spec, client) in line and "127.0.0.1:" in line
    alice = next(x for x in conns.stdout.splitlines() if x.startswith(clients[0].client_id))
    assert " alice " in alice and " room " in alice
    assert conns.stdout.splitlines()[-1] == "4 connections"
    listing = json.loads((await acli(spec, "connections", "--json")).stdout)
    assert {r["client_id"] for r in listing["connections"]} == {c.client_id for c in clients}
    assert all(r["bytes_in"] > 0 and r["bytes_out"] > 0 for r in listing["connections"])

    # restart: a new master and new children; the clients of the old ones are dropped
    old_pids = all_pids(spec)
    restarted = await acli(spec, "restart", "-d")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert "stopped" in restarted.stdout and "gatewayworker started" in restarted.stdout
    cluster.remember_pids()
    assert not any(pid_alive(p) for p in old_pids)
    assert set(all_pids(spec)).isdisjoint(old_pids)
    await await_for(lambda: not any(is_connected(c) for c in clients), 10, "old clients dropped")

    # stop -g: clients are told the server is going away (1001)
    fresh = await open_clients(spec, 3)
    opened.extend(fresh)
    pids = all_pids(spec)
    graceful = await acli(spec, "stop", "-g")
    assert graceful.returncode == 0, graceful.stderr
    await await_for(lambda: all(not is_connected(c) for c in fresh), 10, "clients closed")
    assert [c.ws.close_code for c in fresh] == [1001] * 3
    assert_nothing_left(spec, pids)

    # nothing runs: every command says so, naming the run directory; stop succeeds
    # (idempotent for scripts), the others fail
    looked = f"not running (looked in {spec.run_dir})"
    for command in (["status"], ["status", "--json"], ["reload"], ["connections"]):
        result = await acli(spec, *command)
        assert result.returncode == 1 and looked in result.stderr, command
    result = await acli(spec, "stop")
    assert result.returncode == 0 and looked in result.stdout

    # start after stop works; plain stop
    started = await acli(spec, "start", "-d")
    assert started.returncode == 0, started.stderr
    cluster.remember_pids()
    client = await RC.open(spec.ws_url)
    opened.append(client)
    assert await call(client, "echo", "again") == ["again"]
    pids = all_pids(spec)
    stopped = await acli(spec, "stop")
    assert stopped.returncode == 0 and stopped.stdout.strip().endswith("stopped")
    assert_nothing_left(spec, pids)
    assert not (spec.run_dir / "gatewayworker.pid").exists()
    log = (spec.run_dir / "gatewayworker.log").read_text()
    assert " master INFO cluster: master stopped" in log
    assert " rc.gateway.1 INFO " in log


# ---- reload -------------------------------------------------------------------------

NEW_OP = """    if op == "version":
        return {"version": 2, "pid": os.getpid()}
"""


@pytest.mark.parametrize("workers", [1, 2])
async def test_reload_under_traffic_drops_nothing_and_loads_new_code(
    start_cluster: Callable[..., Cluster], opened: list[RC], workers: int
) -> None:
    cluster = start_cluster(workers=workers)
    spec = cluster.spec
    a, b = await clients_on_both_gateways(spec, 3)
    clients = a + b
    opened.extend(clients)
    with pytest.raises(RemoteError):
        await call(clients[0], "version")
    before = processes(spec)

    events = spec.apps_dir / "rc" / "Events.py"
    source = events.read_text()
    marker = '    if op == "session":\n'
    events.write_text(source.replace(marker, NEW_OP + marker, 1))

    traffic = Traffic(clients).start()
    await asyncio.sleep(0.5)
    # a slow request per client: the old workers are still running them when told to go
    slow = [asyncio.create_task(call(c, "sleep", 0.4)) for c in clients]
    reloaded = await acli(spec, "reload")
    assert await asyncio.gather(*slow) == [None] * len(clients)
    await asyncio.sleep(0.5)
    await traffic.stop()
    cluster.remember_pids()

    assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr
    assert f"replaced {workers} business worker(s)" in reloaded.stdout
    assert traffic.errors == []
    assert traffic.lost == 0
    assert all(n > 5 for n in traffic.served_since(0)), traffic.served_since(0)
    assert all(is_connected(c) for c in clients), "a client was disconnected by the reload"

    after = processes(spec)
    for name, proc in after.items():
        same = proc["pid"] == before[name]["pid"]
        assert same == (proc["role"] != "businessworker"), (name, before[name], proc)
    new_workers = {p["pid"] for p in after.values() if p["role"] == "businessworker"}
    for client in clients:
        answer = await call(client, "version")
        assert answer["version"] == 2 and answer["pid"] in new_workers


SLOW = 5.0
"""Seconds of the slow callback that runs across a reload (above the 3 s a
non-graceful stop would give it)."""


async def test_reload_lets_the_old_worker_finish_a_slow_event(
    start_cluster: Callable[..., Cluster], opened: list[RC]
) -> None:
    """count=1: a callback runs 5 s across the reload. The old worker leaves the
    gateways (the new one serves everything else meanwhile), finishes the event (its
    reply reaches the client) and only then exits; no client disconnects."""
    cluster = start_cluster(workers=1)
    spec = cluster.spec
    name = f"{spec.name}.businessworker.0"
    a, b = await clients_on_both_gateways(spec, 2)
    clients = a + b
    opened.extend(clients)
    old = processes(spec)[name]["pid"]

    order: list[str] = []

    async def tagged(tag: str, answer: Awaitable[Any]) -> Any:
        result = await answer
        order.append(tag)
        return result

    slow = asyncio.create_task(tagged("slow", call(clients[0], "sleep", SLOW, timeout=SLOW * 6)))
    await await_for(
        lambda: stats_of(spec, name).get("clients", 0) >= 1, 10, "the slow event to run"
    )
    traffic = Traffic(clients[1:], timeout=SLOW * 3).start()
    asked = time.monotonic()
    reloading = asyncio.create_task(acli(spec, "reload"))
    log_path = spec.run_dir / "gatewayworker.log"
    await await_for(
        lambda: "leaves the gateways and finishes its events" in log_path.read_text(),
        SLOW * 4,
        "the old worker to leave the gateways",
    )
    # the same client's next event waits for its slow one (never two workers at once)
    follow = asyncio.create_task(tagged("follow", call(clients[0], "context", timeout=SLOW * 6)))
    reloaded = await reloading
    took = time.monotonic() - asked
    assert await slow is None  # the reply of the old worker's event reached the client
    new = processes(spec)[name]["pid"]
    assert (await follow)["pid"] == new
    assert order == ["slow", "follow"]
    await traffic.stop()
    cluster.remember_pids()

    assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr
    assert "replaced 1 business worker(s)" in reloaded.stdout
    assert took >= SLOW / 2  # the reload waited for the event (it had 4-5 s left)
    assert new != old and not pid_alive(old)
    assert traffic.errors == [] and traffic.lost == 0
    assert all(traffic.served_since(asked)), traffic.served_since(asked)
    assert all(is_connected(c) for c in clients), "a client was disconnected by the reload"
    answer = await call(clients[0], "context")
    assert answer["pid"] == new
    log = (spec.run_dir / "gatewayworker.log").read_text()
    assert f"{name} (pid {old}) leaves the gateways and finishes its events" in log
    assert "left the gateways; finishing the events of 1 client(s)" in log
    assert "dropped" not in log


async def test_reload_keeps_the_old_worker_when_the_new_one_cannot_link_everywhere(
    start_cluster: Callable[..., Cluster], opened: list[RC]
) -> None:
    """A gateway that does not answer new links (stopped with SIGSTOP): the new worker
    is not linked to every gateway within its start bound, so the reload fails with
    the reason and the old worker keeps serving; once the gateway is back, a reload
    works."""
    cluster = start_cluster(workers=1)
    spec = cluster.spec
    name = f"{spec.name}.businessworker.0"
    a, b = await clients_on_both_gateways(spec, 1)
    opened.extend(a + b)
    old = processes(spec)[name]["pid"]
    frozen = processes(spec)[gateway_name_of(spec, b[0])]["pid"]

    os.kill(frozen, signal.SIGSTOP)
    try:
        failed = await acli(spec, "reload")
    finally:
        os.kill(frozen, signal.SIGCONT)
    cluster.remember_pids()
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "not linked to every gateway" in failed.stderr, failed.stderr
    assert "the old workers keep running" in failed.stderr
    assert processes(spec)[name]["pid"] == old and pid_alive(old)
    for client in a + b:
        assert (await call(client, "context"))["pid"] == old

    reloaded = await acli(spec, "reload")
    cluster.remember_pids()
    assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr
    new = processes(spec)[name]["pid"]
    assert new != old
    for client in a + b:
        assert is_connected(client)
        assert (await call(client, "context"))["pid"] == new


# ---- crashes ------------------------------------------------------------------------


async def test_sigkill_worker_during_traffic_is_respawned(
    start_cluster: Callable[..., Cluster], opened: list[RC]
) -> None:
    cluster = start_cluster(workers=2)
    spec = cluster.spec
    a, b = await clients_on_both_gateways(spec, 3)
    clients = a + b
    opened.extend(clients)
    victim = processes(spec)["rc.businessworker.0"]

    traffic = Traffic(clients, timeout=3.0, strict=False).start()
    await asyncio.sleep(0.5)
    os.kill(victim["pid"], signal.SIGKILL)

    def respawned() -> dict[str, Any] | None:
        proc = processes(spec)["rc.businessworker.0"]
        ok = proc["pid"] not in (None, victim["pid"]) and proc["status"] == "running"
        return proc if ok else None

    proc = await await_for(respawned, 15, "the worker to be respawned")
    back = time.monotonic()
    await await_for(lambda: all(traffic.served_since(back)), 10, "every client served again")
    await asyncio.sleep(0.3)
    await traffic.stop()
    cluster.remember_pids()

    assert traffic.errors == []
    assert traffic.lost <= traffic.window * len(clients)  # only what the dead one held
    assert all(is_connected(c) for c in clients)
    assert proc["restarts"] == 1
    status = json.loads((await acli(spec, "status", "--json")).stdout)
    row = next(r for r in status["processes"] if r["name"] == "rc.businessworker.0")
    assert row["restarts"] == 1 and row["pid"] == proc["pid"]
    log = (spec.run_dir / "gatewayworker.log").read_text()
    assert f"rc.businessworker.0 (pid {victim['pid']}) killed by signal 9" in log


async def test_sigkill_gateway_drops_only_its_clients_and_reports_on_close(
    start_cluster: Callable[..., Cluster], opened: list[RC]
) -> None:
    cluster = start_cluster(workers=2)
    spec = cluster.spec
    survivors, victims = await clients_on_both_gateways(spec, 3)
    opened.extend(survivors + victims)
    monitor = survivors[0]
    await call(monitor, "bind_uid", monitor.client_id, "monitor")
    for i, client in enumerate(victims):
        await call(client, "set", tag=f"victim-{i}")
    await drain(monitor)
    dead_name = gateway_name_of(spec, victims[0])
    dead = processes(spec)[dead_name]

    traffic = Traffic(survivors[1:], timeout=5.0).start()
    os.kill(dead["pid"], signal.SIGKILL)
    reports = await close_events(monitor, {c.client_id for c in victims}, 15)
    await await_for(lambda: not any(is_connected(c) for c in victims), 5, "victims dropped")
    by_id = {r["client_id"]: r for r in reports}
    for i, client in enumerate(victims):
        assert by_id[client.client_id]["session"]["tag"] == f"victim-{i}"

    proc = processes(spec)[dead_name]
    assert proc["pid"] != dead["pid"] and proc["status"] == "running" and proc["restarts"] == 1
    internal = f"127.0.0.1:{victims[0].gateway_port}"
    deadline = time.monotonic() + 10
    while internal not in await register_lists(spec):
        assert time.monotonic() < deadline, "the respawned gateway did not re-register"
        await asyncio.sleep(0.2)

    newcomer = None
    for _ in range(40):
        client = await RC.open(spec.ws_url)
        opened.append(client)
        if client.gateway_port == victims[0].gateway_port:
            newcomer = client
            break
    assert newcomer is not None, "no new client reached the respawned gateway"
    assert await call(newcomer, "echo", "new") == ["new"]
    await asyncio.sleep(1.5)  # no second report for the same client
    await traffic.stop()
    cluster.remember_pids()
    extra = []
    while not monitor.inbox.empty():
        message = json.loads(monitor.inbox.get_nowait())
        if message.get("event") == "close":
            extra.append(message["client_id"])
    assert not set(extra) & set(by_id), extra
    assert len(reports) == len(by_id)
    assert traffic.errors == [] and all(is_connected(c) for c in survivors)


async def test_gateway_lost_past_the_timeout_reports_on_close(
    start_cluster: Callable[..., Cluster], opened: list[RC]
) -> None:
    cluster = start_cluster(workers=1, worker_options="gateway_lost_timeout=1.5")
    spec = cluster.spec
    survivors, victims = await clients_on_both_gateways(spec, 2)
    opened.extend(survivors + victims)
    monitor = survivors[0]
    await call(monitor, "bind_uid", monitor.client_id, "monitor")
    await drain(monitor)
    master = state(spec)["master"]["pid"]
    dead = processes(spec)[gateway_name_of(spec, victims[0])]

    os.kill(master, signal.SIGSTOP)  # no respawn: the gateway stays away
    try:
        killed_at = time.monotonic()
        os.kill(dead["pid"], signal.SIGKILL)
        await close_events(monitor, {c.client_id for c in victims}, 10)
        assert time.monotonic() - killed_at >= 1.4
    finally:
        os.kill(master, signal.SIGCONT)
    await await_for(
        lambda: processes(spec)[dead["name"]]["pid"] not in (None, dead["pid"]), 10, "respawn"
    )
    await asyncio.sleep(2.0)  # the worker relinks; nothing is reported twice
    assert monitor.inbox.empty()
    assert await call(monitor, "echo", 1) == [1]


async def test_broken_events_fails_the_start_and_leaves_nothing(tmp_path: Path) -> None:
    spec = make_app(tmp_path, "rc", gateways=2, workers=2, gateway_options=GATEWAY_OPTIONS)
    events = spec.apps_dir / "rc" / "Events.py"
    events.write_text(events.read_text() + "\nraise RuntimeError('broken on purpose')\n")
    try:
        result = await acli(spec, "start", "-d")
        assert result.returncode != 0
        assert "start failed" in result.stderr and "Events" in result.stderr
        assert "broken on purpose" in result.stderr, result.stderr
        assert processes_of(spec) == []
        assert wait_ports_free(spec.all_ports(), 5) == []
        assert not (spec.run_dir / "gatewayworker.pid").exists()
        status = await acli(spec, "status")
        assert status.returncode != 0 and "not running" in status.stderr
    finally:
        for pid in processes_of(spec):
            os.kill(pid, signal.SIGKILL)


async def test_port_in_use_and_bad_configuration_fail_the_start(tmp_path: Path) -> None:
    spec = make_app(tmp_path, "rc", gateways=2, workers=1, gateway_options=GATEWAY_OPTIONS)
    try:
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", spec.start_port + 1))
            holder.listen()
            result = await acli(spec, "start", "-d")
        assert result.returncode != 0
        assert f"127.0.0.1:{spec.start_port + 1}" in result.stderr, result.stderr
        assert f"in use by pid {os.getpid()}" in result.stderr
        assert processes_of(spec) == []
        start_file = spec.apps_dir / "rc" / "start_businessworker.py"
        start_file.write_text(start_file.read_text().replace("count=1", "count=0"))
        result = await acli(spec, "start", "-d")
        assert result.returncode != 0
        assert "start_businessworker.py line 2: ConfigError" in result.stderr, result.stderr
        assert processes_of(spec) == [] and wait_ports_free(spec.all_ports(), 5) == []
    finally:
        for pid in processes_of(spec):
            os.kill(pid, signal.SIGKILL)


async def test_children_leave_when_the_master_is_killed(
    start_cluster: Callable[..., Cluster],
) -> None:
    cluster = start_cluster(workers=1)
    spec = cluster.spec
    pids = all_pids(spec)
    os.kill(pids[0], signal.SIGKILL)
    assert_nothing_left(spec, pids)
    assert all(port_is_free(p) for p in spec.all_ports())
    status = await acli(spec, "status")
    assert status.returncode != 0 and "not running" in status.stderr
    again = await acli(spec, "start", "-d")
    assert again.returncode == 0, again.stderr
    cluster.remember_pids()
