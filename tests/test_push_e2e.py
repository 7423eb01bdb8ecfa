"""Both push clients (AsyncGatewayClient, GatewayClient) against a real cluster of 2
gateways x 2 business workers started with ``start.py``: every call, routing to the
right gateway, a register that is down or refuses the secret, a gateway and register
restart, and the sync client shared by many threads."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pygatewayworker.gateway.client_id import InvalidClientId
from pygatewayworker.gatewayclient import (
    AsyncGatewayClient,
    GatewayClient,
    GatewayUnavailable,
    NoRegister,
)
from tests.cluster import AppSpec, ForegroundCluster, make_app, wait_ready
from tests.ports import refused_port
from tests.rc import RC

SECRET = "push-e2e"
Call = Callable[..., Awaitable[Any]]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppSpec]:
    root: Path = tmp_path_factory.mktemp("push")
    spec = make_app(
        root, "rc", gateways=2, workers=2, secret=SECRET, gateway_options="ping_interval=0"
    )
    proc = ForegroundCluster(spec).start()
    try:
        asyncio.run(wait_ready(spec, init=True))
        yield spec
    finally:
        code = proc.interrupt()
        assert code == 0, proc.output()


async def open_on_both(spec: AppSpec, per_gateway: int = 1) -> tuple[list[RC], list[RC]]:
    """``(chosen, opened)``: clients alternating between the two gateways."""
    opened: list[RC] = []
    for _ in range(60):
        opened.append(await RC.open(spec.ws_url))
        ports = [c.gateway_port for c in opened]
        if len(set(ports)) == 2 and all(ports.count(p) >= per_gateway for p in set(ports)):
            break
    ports = sorted({c.gateway_port for c in opened})
    assert len(ports) == 2, "clients did not spread over both gateways"
    groups = [[c for c in opened if c.gateway_port == p][:per_gateway] for p in ports]
    return [c for pair in zip(*groups, strict=True) for c in pair], opened


@pytest.fixture
async def two(cluster: AppSpec) -> AsyncIterator[list[RC]]:
    chosen, opened = await open_on_both(cluster)
    try:
        yield chosen
    finally:
        for client in opened:
            await client.close()


@pytest.fixture(params=["async", "sync"])
async def call(request: pytest.FixtureRequest, cluster: AppSpec) -> AsyncIterator[Call]:
    """``await call("send_to_uid", uid, message)`` through either push client (the sync
    one runs in a worker thread, as in a WSGI app)."""
    register = f"127.0.0.1:{cluster.register_port}"
    if request.param == "async":
        client = AsyncGatewayClient(register=register, secret=SECRET, timeout=5.0, name="e2e")

        async def call_async(name: str, *args: Any) -> Any:
            return await getattr(client, name)(*args)

        yield call_async
        await client.close()
    else:
        sync = GatewayClient(register=register, secret=SECRET, timeout=5.0, name="e2e-sync")

        async def call_sync(name: str, *args: Any) -> Any:
            return await asyncio.to_thread(getattr(sync, name), *args)

        yield call_sync
        await asyncio.to_thread(sync.close)


async def test_sends_and_state_changes(call: Call, two: list[RC]) -> None:
    a, b = two
    await call("send_to_client", a.client_id, "text")
    await call("send_to_client", b.client_id, b"\x00bin")
    assert (await a.expect(), await b.expect()) == ("text", b"\x00bin")
    await call("bind_uid", a.client_id, "u1")
    await call("bind_uid", b.client_id, 1)
    await call("send_to_uid", ["u1", "1"], "uids")
    assert (await a.expect(), await b.expect()) == ("uids", "uids")
    await call("join_group", a.client_id, "g")
    await call("join_group", b.client_id, "g")
    await call("send_to_group", "g", "group", b.client_id)
    assert await a.expect() == "group"
    await b.nothing()
    await call("send_to_all", "all-but-a", None, [a.client_id])
    assert await b.expect() == "all-but-a"
    await call("send_to_all", "listed", [a.client_id])
    assert await a.expect() == "listed"
    await call("send_to_all", "nobody", [])
    await call("leave_group", b.client_id, "g")
    await call("unbind_uid", a.client_id, "u1")
    await call("send_to_group", "g", "after leave")
    assert await a.expect() == "after leave"
    await call("send_to_uid", "u1", "after unbind")
    await call("ungroup", "g")
    await call("send_to_group", "g", "after ungroup")
    await a.nothing()
    await b.nothing()
    await call("set_session", a.client_id, {"x": {"y": 1}})
    await call("update_session", a.client_id, {"x": {"z": 2}})
    assert await call("get_session", a.client_id) == {"x": {"y": 1, "z": 2}}
    await call("close_client", a.client_id, "last words")
    assert await a.expect() == "last words"
    await call("destroy_client", b.client_id)
    for client in two:
        await asyncio.wait_for(client.ws.wait_closed(), 5)
    assert not await call("is_online", a.client_id)
    assert await call("get_session", b.client_id) is None


async def test_queries(call: Call, two: list[RC]) -> None:
    a, b = two
    tag = f"q{os.getpid()}{time.monotonic_ns()}"
    await call("bind_uid", a.client_id, f"{tag}a")
    await call("bind_uid", b.client_id, f"{tag}b")
    await call("join_group", a.client_id, tag)
    await call("join_group", b.client_id, tag)
    await call("set_session", b.client_id, {"name": "bee"})
    assert await call("is_online", a.client_id) is True
    assert await call("get_uid_by_client_id", b.client_id) == f"{tag}b"
    assert await call("is_uid_online", f"{tag}a") is True
    assert await call("get_client_id_by_uid", f"{tag}b") == [b.client_id]
    assert await call("get_client_count_by_group", tag) == 2
    assert await call("get_client_count_by_group") >= 2
    sessions = await call("get_client_sessions_by_group", tag)
    assert sessions[b.client_id] == {"name": "bee"} and a.client_id in sessions
    assert sorted(await call("get_client_id_list_by_group", tag)) == sorted(
        [a.client_id, b.client_id]
    )
    assert sorted(await call("get_uid_list_by_group", tag)) == [f"{tag}a", f"{tag}b"]
    assert await call("get_uid_count_by_group", tag) == 2
    assert await call("get_all_client_count") >= 2
    assert {a.client_id, b.client_id} <= set(await call("get_all_client_id_list"))
    assert (await call("get_all_client_sessions"))[b.client_id] == {"name": "bee"}
    assert {f"{tag}a", f"{tag}b"} <= set(await call("get_all_uid_list"))
    assert await call("get_all_uid_count") >= 2
    assert tag in await call("get_all_group_id_list")
    assert await call("get_all_group_count") >= 1
    assert sorted((await call("get_all_group_uid_list"))[tag]) == [f"{tag}a", f"{tag}b"]
    assert len((await call("get_all_group_client_id_list"))[tag]) == 2
    assert await call("is_uids_online", [f"{tag}a", "nobody"]) == {
        f"{tag}a": True,
        "nobody": False,
    }
    assert await call("batch_get_client_id_by_uid", [f"{tag}a"]) == {f"{tag}a": [a.client_id]}
    assert await call("batch_get_client_count_by_group", [tag, "none"]) == {tag: 2, "none": 0}
    assert len(await call("get_connections")) >= 2
    assert len(await call("get_gateway_stats")) == 2


async def test_clear_errors(call: Call, cluster: AppSpec) -> None:
    with pytest.raises(InvalidClientId):
        await call("send_to_client", "not-a-client-id", "x")
    with pytest.raises(ValueError, match="empty|''"):
        await call("send_to_uid", "", "x")
    unknown_gateway = "7f000001" + "0001" + "00000001"  # 127.0.0.1:1, never linked
    with pytest.raises(GatewayUnavailable):
        await call("send_to_client", unknown_gateway, "x")


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_register_down_or_wrong_secret_raises_no_register(
    kind: str, cluster: AppSpec
) -> None:
    cases = [
        (f"127.0.0.1:{refused_port()}", SECRET, "127.0.0.1"),
        (f"127.0.0.1:{cluster.register_port}", "wrong", "secret"),
    ]
    for register, secret, words in cases:
        started = time.monotonic()
        if kind == "async":
            async with AsyncGatewayClient(register=register, secret=secret, timeout=1.0) as client:
                with pytest.raises(NoRegister, match=words):
                    await client.get_all_client_count()
        else:
            with (
                GatewayClient(register=register, secret=secret, timeout=1.0) as sync,
                pytest.raises(NoRegister, match=words),
            ):
                await asyncio.to_thread(sync.send_to_all, "x")
        assert time.monotonic() - started < 8


async def test_sync_client_shared_by_many_threads(cluster: AppSpec, two: list[RC]) -> None:
    a, b = two
    threads, per_thread = 8, 40
    sync = GatewayClient(
        register=f"127.0.0.1:{cluster.register_port}", secret=SECRET, name="threads"
    )
    errors: list[BaseException] = []
    counts: list[int] = []

    def work(t: int) -> None:
        try:
            for i in range(per_thread):
                sync.send_to_client(a.client_id, f"{t}:{i}")
                if i % 10 == 0:
                    counts.append(sync.get_all_client_count())
            sync.send_to_client(b.client_id, f"done {t}")
        except BaseException as exc:  # reported below
            errors.append(exc)

    try:
        workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        for thread in workers:
            thread.start()
        await asyncio.to_thread(lambda: [thread.join(60) for thread in workers])
        assert not errors, errors
        received = [await a.expect(10) for _ in range(threads * per_thread)]
        done = sorted([await b.expect(10) for _ in range(threads)])
    finally:
        await asyncio.to_thread(sync.close)
    assert done == sorted(f"done {t}" for t in range(threads))
    for t in range(threads):  # each thread's sends arrive complete and in order
        assert [m for m in received if str(m).startswith(f"{t}:")] == [
            f"{t}:{i}" for i in range(per_thread)
        ]
    assert len(counts) == threads * per_thread // 10 and min(counts) >= 2


# ---- restarts ---------------------------------------------------------------------------


def _pid(spec: AppSpec, role: str, index: int = 0) -> int:
    state = json.loads((spec.run_dir / "state.json").read_text())
    (pid,) = [p["pid"] for p in state["processes"] if (p["role"], p["index"]) == (role, index)]
    return int(pid)


async def _client_on_port(spec: AppSpec, port: int, opened: list[RC]) -> RC:
    for _ in range(60):
        try:
            client = await RC.open(spec.ws_url)
        except (OSError, TimeoutError):
            await asyncio.sleep(0.2)
            continue
        opened.append(client)
        if client.gateway_port == port:
            return client
    raise AssertionError(f"no client landed on gateway port {port}")


async def test_clients_recover_after_gateway_and_register_restart(tmp_path: Path) -> None:
    spec = make_app(tmp_path, "rc", gateways=2, workers=1, gateway_options="ping_interval=0")
    proc = ForegroundCluster(spec).start()
    register = f"127.0.0.1:{spec.register_port}"
    client = AsyncGatewayClient(register=register, timeout=3.0)
    sync = GatewayClient(register=register, timeout=3.0)
    opened: list[RC] = []
    try:
        await wait_ready(spec, init=True)
        first = await _client_on_port(spec, spec.start_port, opened)
        await client.send_to_client(first.client_id, "before")
        await asyncio.to_thread(sync.send_to_client, first.client_id, "before sync")
        assert sorted([await first.expect(), await first.expect()]) == ["before", "before sync"]

        for pid in [_pid(spec, "register"), _pid(spec, "gateway", 0)]:  # first's gateway
            os.kill(pid, signal.SIGKILL)
        await asyncio.wait_for(first.ws.wait_closed(), 10)

        deadline = time.monotonic() + 30
        while True:  # the respawned gateway comes back on the same internal port
            try:
                await wait_ready(spec, timeout=5, init=True)
                again = await _client_on_port(spec, spec.start_port, opened)
                await client.send_to_client(again.client_id, "after")
                await asyncio.to_thread(sync.send_to_client, again.client_id, "after sync")
                break
            except (GatewayUnavailable, TimeoutError, AssertionError):
                assert time.monotonic() < deadline, proc.output()[-3000:]
                await asyncio.sleep(0.5)
        # two clients, two links: no order between them
        assert sorted([await again.expect(), await again.expect()]) == ["after", "after sync"]
        assert await client.get_all_client_count() >= 1
        assert len(client.gateways) == 2
    finally:
        for rc in opened:
            await rc.close()
        await client.close()
        await asyncio.to_thread(sync.close)
        assert proc.interrupt() == 0, proc.output()[-3000:]
