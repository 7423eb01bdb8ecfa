"""examples/order_lock against a real cluster: subscribing to ``private-order.{id}``
locks the order row, a second subscriber is refused, unsubscribing unlocks, and so
does the death (SIGKILL) of the gateway that held the subscriber's connection. And
in-process: the hooks wait for a busy database in a thread, not on the event loop."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pygatewayworker.pusher import Subscription
from pygatewayworker.pusher.protocol import PING_DATA
from tests.cluster import ROOT, AppSpec
from tests.ports import reserve_ports
from tests.pusher_cluster import PusherClient, cluster_env, gateway_of

EXAMPLE = ROOT / "examples" / "order_lock" / "apps" / "orders"
KEY, SECRET = "order-key", "order-test-secret"


@pytest.fixture
def orders_cluster(tmp_path: Path) -> Iterator[tuple[AppSpec, Path]]:
    apps = tmp_path / "apps"
    apps.mkdir()
    (apps / "__init__.py").write_text("")
    shutil.copytree(
        EXAMPLE, apps / "orders", ignore=shutil.ignore_patterns("start_*.py", "__pycache__")
    )
    block = reserve_ports(4)
    spec = AppSpec(tmp_path, "orders", block, block + 1, block + 2, 2, 2, "", tmp_path / "run")
    register = f"127.0.0.1:{spec.register_port}"
    start = apps / "orders"
    (start / "start_register.py").write_text(
        f"from pygatewayworker import Register\nregister = Register(listen={register!r})\n"
    )
    (start / "start_gateway.py").write_text(
        "from pygatewayworker import Gateway\n"
        f"gateway = Gateway(listen='127.0.0.1:{spec.public_port}', count=2, "
        f"start_port={spec.start_port}, register={register!r}, ping_data={PING_DATA!r})\n"
    )
    (start / "start_businessworker.py").write_text(
        "from pygatewayworker import BusinessWorker\n"
        f"worker = BusinessWorker(events='.Events:Events', count=2, register={register!r}, "
        "gateway_lost_timeout=2)\n"
    )
    db = tmp_path / "orders.sqlite3"
    with cluster_env(spec, ORDER_LOCK_DB=str(db), PUSHER_APP_KEY=KEY, PUSHER_APP_SECRET=SECRET):
        yield spec, db


def _holder(db: Path, order: int) -> str | None:
    if not db.exists():
        return None
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT locked_by FROM orders WHERE id = ?", (order,)).fetchone()
    return None if row is None else row[0]


async def _wait_holder(db: Path, order: int, expected: str | None, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while _holder(db, order) != expected:
        assert time.monotonic() < deadline, f"order {order} held by {_holder(db, order)!r}"
        await asyncio.sleep(0.1)


async def _client(spec: AppSpec, gateway: str | None = None) -> PusherClient:
    """A connected client (on ``gateway``, if given); retried while the cluster boots."""
    url = f"ws://127.0.0.1:{spec.public_port}/app/{KEY}?protocol=7"
    deadline = time.monotonic() + 40
    while True:
        try:
            client = await PusherClient.open(url)
        except (OSError, AssertionError, TimeoutError):
            assert time.monotonic() < deadline, "cluster not ready"
            await asyncio.sleep(0.3)
            continue
        if gateway is None or gateway_of(client.socket_id) == gateway:
            return client
        await client.close()


async def test_order_is_locked_while_subscribed_and_unlocked_when_its_gateway_dies(
    orders_cluster: tuple[AppSpec, Path],
) -> None:
    spec, db = orders_cluster
    first = await _client(spec)
    other = await _client(spec)
    try:
        ok = await first.subscribe("private-order.42", secret=SECRET, key=KEY)
        assert ok["event"] == "pusher_internal:subscription_succeeded"
        assert _holder(db, 42) == first.socket_id
        refused = await other.subscribe("private-order.42", secret=SECRET, key=KEY)
        assert refused["event"] == "pusher:subscription_error"
        assert refused["data"]["status"] == 409 and "order 42" in refused["data"]["error"]
        await first.send("pusher:unsubscribe", {"channel": "private-order.42"})
        await _wait_holder(db, 42, None)
        ok = await other.subscribe("private-order.42", secret=SECRET, key=KEY)
        assert ok["event"] == "pusher_internal:subscription_succeeded"
        assert _holder(db, 42) == other.socket_id
        await other.close()  # a closed connection unlocks too
        await _wait_holder(db, 42, None)
    finally:
        await first.close()

    # the gateway holding the subscriber dies: the workers unlock for it
    state = json.loads((spec.run_dir / "state.json").read_text())
    gateways = {
        f"{int(p['addresses']['internal'].rpartition(':')[2]):04x}": p["pid"]
        for p in state["processes"]
        if p["role"] == "gateway"
    }
    doomed = sorted(gateways)[0]
    victim = await _client(spec, doomed)
    ok = await victim.subscribe("private-order.7", secret=SECRET, key=KEY)
    assert ok["event"] == "pusher_internal:subscription_succeeded"
    assert _holder(db, 7) == victim.socket_id
    os.kill(gateways[doomed], signal.SIGKILL)
    await _wait_holder(db, 7, None, timeout=30)
    await victim.close()


async def test_the_hooks_wait_for_a_busy_database_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process holds the database's write lock: ``on_subscribe`` waits for it
    (sqlite's busy timeout) in a thread while the loop keeps running, then locks."""
    apps = tmp_path / "apps"
    shutil.copytree(EXAMPLE, apps / "orders", ignore=shutil.ignore_patterns("__pycache__"))
    (apps / "__init__.py").write_text("")
    db = tmp_path / "orders.sqlite3"
    monkeypatch.setenv("ORDER_LOCK_DB", str(db))
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "apps" or m.startswith("apps.")]:
        monkeypatch.delitem(sys.modules, name)
    from apps.orders.Events import Events

    events = Events()
    sub = Subscription("1", "private-order.5", "00000001000100000001", "1.1")
    await events.on_subscribe(sub)  # creates the table
    await events.on_unsubscribe(sub, "unsubscribe")
    blocker = sqlite3.connect(db)
    blocker.execute("BEGIN IMMEDIATE")  # the write lock, as a busy worker would hold it
    try:
        subscribing = asyncio.create_task(events.on_subscribe(sub))
        ticks = 0
        while ticks < 10:  # the loop runs while the hook waits for the lock
            await asyncio.sleep(0.02)
            ticks += 1
        assert not subscribing.done()
    finally:
        blocker.rollback()
        blocker.close()
    await asyncio.wait_for(subscribing, 5)
    assert _holder(db, 5) == "1.1"
    for name in [m for m in sys.modules if m == "apps" or m.startswith("apps.")]:
        del sys.modules[name]
