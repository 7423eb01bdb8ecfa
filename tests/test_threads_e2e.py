"""Thread mode with the real roles (``start.py start -d``): Django's ORM in plain
callbacks, a blocking client beside a quick one with one worker of four threads, a
burst that stays in order without overlapping, the session and the Gateway API from
threads, a callback that raises, the slow-callback log line, and a reload across a
blocking callback (tests/fixtures/apps/rcsync and djangonotes)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pygatewayworker.cluster.pidfile import pid_alive
from tests import opsharness as ops
from tests.cluster import PYTHON, ROOT, AppSpec
from tests.rc import RC, RemoteError

start_cluster = ops.start_cluster  # the fixtures, shared with the operations tests
opened = ops.opened
call = ops.call

SLOW = 5.0
"""Seconds a callback blocks its thread across a reload (above the 3 s a
non-graceful stop would give it)."""

WORKER_OPTIONS = "callbacks='thread', threads=4, slow_callback=1.0"


def log_of(spec: AppSpec) -> str:
    return (spec.run_dir / "gatewayworker.log").read_text(errors="replace")


def slow_lines(spec: AppSpec) -> list[str]:
    return [line for line in log_of(spec).splitlines() if "slow callback:" in line]


async def send_raw(rc: RC, rid: int, op: str, *args: Any) -> asyncio.Future[dict[str, Any]]:
    """Send one request without waiting; the future gets its reply."""
    future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    rc.replies[rid] = future
    await rc.ws.send(json.dumps({"id": rid, "op": op, "args": list(args)}))
    return future


async def test_django_orm_in_plain_callbacks(
    start_cluster: Callable[..., ops.Cluster],
    opened: list[RC],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Thread mode: an Events class writes and reads Django models on connect and on
    message; each reply carries what the database holds."""
    database = tmp_path / "notes.sqlite3"
    monkeypatch.setenv("NOTES_DB", str(database))
    created = subprocess.run(
        [PYTHON, "-c", "from tests.fixtures.apps.djangonotes.db import create_tables as c; c()"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert created.returncode == 0, created.stderr
    cluster = start_cluster(
        gateways=1, workers=1, worker_options=WORKER_OPTIONS, source="djangonotes"
    )
    spec = cluster.spec

    from websockets.asyncio.client import connect

    async with connect(spec.ws_url) as a:
        init_a = json.loads(await asyncio.wait_for(a.recv(), 30))
        assert (init_a["type"], init_a["notes"]) == ("init", 1)
        b = await connect(spec.ws_url)
        init_b = json.loads(await asyncio.wait_for(b.recv(), 30))
        assert init_b["notes"] == 2
        replies = []
        for ws, text in ((a, "hello"), (b, "hi"), (a, "again")):
            await ws.send(text)
            replies.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
        await b.close()
    assert replies == [
        {"notes": 3, "mine": ["connected", "hello"]},
        {"notes": 4, "mine": ["connected", "hi"]},
        {"notes": 5, "mine": ["connected", "hello", "again"]},
    ]
    with sqlite3.connect(database) as db:
        assert db.execute("select count(*) from djangonotes_note").fetchone() == (5,)
    log = log_of(spec)
    assert "SynchronousOnlyOperation" not in log and "raised" not in log


async def test_one_worker_four_threads_blocking_beside_quick_and_a_burst_in_order(
    start_cluster: Callable[..., ops.Cluster], opened: list[RC]
) -> None:
    cluster = start_cluster(gateways=1, workers=1, worker_options=WORKER_OPTIONS, source="rcsync")
    spec = cluster.spec
    a, b, c = [await RC.open(spec.ws_url) for _ in range(3)]
    opened.extend([a, b, c])
    where = await call(a, "where")
    assert where["loop"] is False and ".cb" in where["thread"]

    slow = asyncio.create_task(call(a, "sleep", 2, timeout=30))
    name = f"{spec.name}.businessworker.0"
    await ops.await_for(lambda: ops.stats_of(spec, name).get("threads_busy", 0) >= 1, 10)
    asked = time.monotonic()
    assert await call(b, "echo", "quick") == ["quick"]
    took = time.monotonic() - asked
    assert took < 1.0, f"the quick client waited {took:.2f} s behind the blocked one"
    assert not slow.done()

    arrived: list[int] = []
    futures = []
    for seq in range(50):  # sent back to back, answered one by one
        future = await send_raw(c, 900_000 + seq, "tick", seq)
        future.add_done_callback(lambda f: arrived.append(f.result()["ok"][0]))
        futures.append(future)
    replies = [(await asyncio.wait_for(f, 30))["ok"] for f in futures]
    assert arrived == list(range(50))
    assert [most for _, most in replies] == [1] * 50  # never two of c's events at once

    assert await slow is None
    await ops.await_for(lambda: slow_lines(spec), 10, "the slow-callback line")
    await asyncio.sleep(0.5)  # a second line would have come by now
    lines = slow_lines(spec)
    assert len(lines) == 1, lines
    assert f"Events.on_message of client {a.client_id} has been running for 1." in lines[0]


async def test_an_inline_callback_blocking_a_worker_process_loop_is_reported_once(
    start_cluster: Callable[..., ops.Cluster], opened: list[RC]
) -> None:
    """A real worker process (its loop-lag probe running, so the watchdog reads the
    probe's pulse and keeps no timer of its own): a plain callback run inline that
    sleeps 2 s blocks the loop, and that is logged once, naming it and its client."""
    cluster = start_cluster(
        gateways=1,
        workers=1,
        worker_options="callbacks='inline', slow_callback=0.5",
        source="rcsync",
    )
    spec = cluster.spec
    a = await RC.open(spec.ws_url)
    opened.append(a)
    await asyncio.sleep(1.5)  # the worker idle: its probe slows to 2 a second
    assert await call(a, "sleep", 2, timeout=30) is None
    await ops.await_for(lambda: slow_lines(spec), 10, "the slow-callback line")
    await asyncio.sleep(0.5)  # a second line would have come by now
    lines = slow_lines(spec)
    assert len(lines) == 1, lines
    assert f"Events.on_message of client {a.client_id} has blocked the event loop" in lines[0]
    assert await call(a, "echo", "after") == ["after"]


async def test_session_api_and_errors_from_thread_callbacks(
    start_cluster: Callable[..., ops.Cluster], opened: list[RC]
) -> None:
    cluster = start_cluster(workers=1, worker_options=WORKER_OPTIONS, source="rcsync")
    spec = cluster.spec
    a, b = await ops.clients_on_both_gateways(spec, 1)
    a, b = a[0], b[0]
    opened.extend([a, b])

    await call(a, "set", k=1)
    assert (await call(a, "session"))["k"] == 1  # written back after the first event
    assert (await call(b, "get_session", a.client_id))["k"] == 1  # a blocking query
    assert await call(a, "get_all_client_count") == 2
    await call(a, "send_to_client", b.client_id, "hello b")
    assert await b.expect() == "hello b"
    await call(a, "bind_uid", a.client_id, "ua")
    assert await call(a, "is_uid_online", "ua") is True  # asked after the bind
    await call(b, "join_group", b.client_id, "g")
    await call(a, "send_to_group", "g", "to g")
    assert await b.expect() == "to g"
    with pytest.raises(RemoteError, match="InvalidClientId"):
        await call(a, "get_session", "not-a-client-id")  # a query's error reaches the caller

    await send_raw(a, 800_001, "raise")  # no reply: the callback raises
    assert await call(a, "echo", "still here") == ["still here"]
    raised = f"on_message of client {a.client_id} raised; the worker keeps serving"
    await ops.await_for(lambda: raised in log_of(spec), 10, "the exception's log line")
    await ops.await_for(lambda: "RuntimeError: boom requested by the test" in log_of(spec), 10)


async def test_reload_lets_the_old_worker_finish_a_blocking_thread_callback(
    start_cluster: Callable[..., ops.Cluster], opened: list[RC]
) -> None:
    """count=1, thread mode: a callback blocks its thread 5 s across a reload. The old
    worker finishes it (its reply arrives), the client's next event runs on the new
    worker and only after it; nobody is disconnected."""
    cluster = start_cluster(workers=1, worker_options=WORKER_OPTIONS, source="rcsync")
    spec = cluster.spec
    name = f"{spec.name}.businessworker.0"
    a, b = await ops.clients_on_both_gateways(spec, 1)
    clients = a + b
    opened.extend(clients)
    old = ops.processes(spec)[name]["pid"]
    order: list[str] = []

    async def tagged(tag: str, answer: Any) -> Any:
        result = await answer
        order.append(tag)
        return result

    slow = asyncio.create_task(tagged("slow", call(clients[0], "sleep", SLOW, timeout=60)))
    await ops.await_for(lambda: ops.stats_of(spec, name).get("threads_busy", 0) >= 1, 10)
    asked = time.monotonic()
    reloading = asyncio.create_task(ops.acli(spec, "reload"))
    await ops.await_for(
        lambda: "leaves the gateways and finishes its events" in log_of(spec),
        SLOW * 4,
        "the old worker to leave the gateways",
    )
    # the follow-up must reach a gateway that already took the leave (else it goes,
    # correctly, to the old worker, behind the slow event): both gateways log it
    await ops.await_for(
        lambda: log_of(spec).count(" is leaving; ") >= 2, SLOW * 4, "both gateways took the leave"
    )
    follow = asyncio.create_task(tagged("follow", call(clients[0], "where", timeout=60)))
    reloaded = await reloading
    took = time.monotonic() - asked
    assert await slow is None
    new = ops.processes(spec)[name]["pid"]
    assert (await follow)["pid"] == new
    assert order == ["slow", "follow"]
    cluster.remember_pids()

    assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr
    assert took >= SLOW / 2  # the reload waited for the event
    assert new != old and not pid_alive(old)
    assert all(ops.is_connected(c) for c in clients)
    log = log_of(spec)
    assert "left the gateways; finishing the events of 1 client(s)" in log
    assert "dropped" not in log and "left behind" not in log
