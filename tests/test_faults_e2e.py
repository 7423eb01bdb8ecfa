"""Fault scenarios with the real roles (issue: reliability under faults), against a
temporary copy of the remote-control app (tests/fixtures/apps/rc) started with
``start.py start -d``:

- one client's oversized session write, set_session or send: an error in that
  callback (logged with the client_id), nothing sent, the link kept, 0 messages of
  50 other clients on the same worker lost;
- a worker whose loop blocks past ``link_timeout`` under traffic: nothing lost;
- a gateway stopped (SIGSTOP) past ``link_timeout + gateway_lost_timeout`` and
  resumed: no on_close for its clients, which are still served; a gateway killed:
  exactly one on_close per client;
- a client that stops reading: closed within ``send_timeout``.

Times are multiples of one unit (:data:`UNIT`), with generous bounds.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cluster import cli, make_app
from tests.opsharness import (
    Cluster,
    Traffic,
    await_for,
    call,
    clients_on_both_gateways,
    close_events,
    drain,
    gateway_name_of,
    is_connected,
    open_clients,
    opened,
    processes,
    processes_of,
    start_cluster,
)
from tests.rc import RC, RemoteError

__all__ = ["opened", "start_cluster"]  # fixtures from tests.opsharness

UNIT = 1.0
"""One time unit (seconds); every bound below is a multiple of it."""


def log_of(cluster: Cluster) -> str:
    return (cluster.spec.run_dir / "gatewayworker.log").read_text(errors="replace")


# ---- 1. one client's oversized data costs nobody else anything ---------------------


async def test_oversized_session_write_fails_only_its_callback(
    start_cluster: Callable[..., Cluster], opened: list[RC]
) -> None:
    cluster = start_cluster(gateways=1, workers=1)
    chatters = await open_clients(cluster.spec, 50)
    culprit = await RC.open(cluster.spec.ws_url)
    opened.extend([*chatters, culprit])
    assert len({c.worker_pid for c in opened}) == 1  # one worker serves them all

    traffic = Traffic(chatters, window=2, timeout=10 * UNIT).start()
    await asyncio.sleep(UNIT)
    size = 11 * 1024 * 1024
    await call(culprit, "big", "session", size)  # the callback returns; write-back fails
    with pytest.raises(RemoteError, match="PacketTooLarge"):
        await call(culprit, "big", "set_session", size)
    with pytest.raises(RemoteError, match="PacketTooLarge"):
        await call(culprit, "big", "send", size)
    await asyncio.sleep(UNIT)
    assert await call(culprit, "echo", "still served") == ["still served"]
    assert await call(culprit, "session") is not None
    await traffic.stop()

    assert traffic.errors == [] and traffic.lost == 0
    assert all(len(times) > 0 for times in traffic.ok)
    assert all(is_connected(c) for c in opened)
    log = log_of(cluster)
    assert f"session of client {culprit.client_id} cannot be stored" in log
    assert "exceeds the limit" in log
    assert "closing the link" not in log and "exceeds the limit of 10485760" not in log


async def test_max_message_size_over_the_link_limit_is_refused(tmp_path: Path) -> None:
    spec = make_app(
        tmp_path, "rc", gateways=1, workers=1, gateway_options="max_message_size=16<<20"
    )
    result = cli(spec, "start", "-d")
    assert result.returncode != 0
    assert "max_message_size 16777216 is over" in result.stdout + result.stderr
    assert processes_of(spec) == []


async def _unused() -> None:  # keeps imports used until the other scenarios land
    await await_for(lambda: True)
    processes, time  # noqa: B018


# ---- 2. a stalled worker loses nothing ------------------------------------------------

LINK_TIMING = f"keepalive_interval={UNIT / 2}, link_timeout={2 * UNIT}"


async def test_a_worker_blocked_past_link_timeout_loses_nothing(
    start_cluster: Callable[..., Cluster], opened: list[RC]
) -> None:
    cluster = start_cluster(
        gateways=1, workers=1, gateway_options=LINK_TIMING, worker_options=LINK_TIMING
    )
    chatters = await open_clients(cluster.spec, 20)
    blocker = await RC.open(cluster.spec.ws_url)
    opened.extend([*chatters, blocker])

    traffic = Traffic(chatters, window=2, timeout=15 * UNIT).start()
    await asyncio.sleep(UNIT)
    blocked_at = time.monotonic()
    # past link_timeout (the gateway holds its clients' events), short of twice it
    assert await call(blocker, "block", 3 * UNIT, timeout=15 * UNIT) is None
    await asyncio.sleep(UNIT)
    await traffic.stop()

    assert traffic.errors == [] and traffic.lost == 0
    assert all(n > 0 for n in traffic.served_since(blocked_at + 3 * UNIT))
    assert all(is_connected(c) for c in opened)
    log = log_of(cluster)
    assert "holding the events of its" in log and "answers again after" in log
    assert "dropping it" not in log


# ---- 3. a gateway that hangs past the lost timeout: on_close once, and true ----------


async def test_a_gateway_hung_past_the_lost_timeout_closes_the_clients_declared_closed(
    start_cluster: Callable[..., Cluster], opened: list[RC]
) -> None:
    cluster = start_cluster(
        gateways=2,
        workers=1,
        gateway_options=LINK_TIMING,
        worker_options=f"{LINK_TIMING}, gateway_lost_timeout={1.5 * UNIT}",
    )
    spec = cluster.spec
    survivors, victims = await clients_on_both_gateways(spec, 3)
    opened.extend(survivors + victims)
    monitor = survivors[0]
    await call(monitor, "bind_uid", monitor.client_id, "monitor")
    for client in victims:  # the worker remembers clients it handled events of
        assert await call(client, "echo", 1) == [1]
    await drain(monitor)
    hung = processes(spec)[gateway_name_of(spec, victims[0])]["pid"]

    os.kill(hung, signal.SIGSTOP)  # past link_timeout + gateway_lost_timeout
    try:
        reports = await close_events(monitor, {c.client_id for c in victims}, 20 * UNIT)
    finally:
        os.kill(hung, signal.SIGCONT)
    assert sorted(r["client_id"] for r in reports) == sorted(c.client_id for c in victims)
    # the gateway learns it was declared lost and closes them: on_close was true
    await await_for(lambda: all(not is_connected(c) for c in victims), 20 * UNIT, "closed")
    assert {c.ws.close_code for c in victims} == {1001}
    assert processes(spec)[gateway_name_of(spec, victims[0])]["pid"] == hung  # not restarted
    await asyncio.sleep(2 * UNIT)  # nothing is reported twice
    extra = [json.loads(m) for m in _inbox(monitor)]
    assert [m for m in extra if m.get("event") == "close"] == []
    assert all(is_connected(c) for c in survivors)
    assert await call(survivors[1], "echo", 2) == [2]
    log = log_of(cluster)
    assert "is back after being declared lost" in log and "without a second on_close" in log


def _inbox(rc: RC) -> list[str | bytes]:
    out = []
    while not rc.inbox.empty():
        out.append(rc.inbox.get_nowait())
    return out


# ---- 4. a client that stops reading is closed within send_timeout -------------------


async def _non_reader(url_port: int) -> tuple[asyncio.StreamWriter, str]:
    """A WebSocket client that reads its ``init`` message, then nothing more (with
    a small receive buffer, so that its backlog builds up at the gateway)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", url_port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    writer.write(
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    seen = b""
    while b'"client_id": "' not in seen or len(seen.split(b'"client_id": "')[1]) < 20:
        seen += await asyncio.wait_for(reader.read(1024), 10 * UNIT)
    return writer, seen.split(b'"client_id": "')[1][:20].decode()


async def test_a_client_that_stops_reading_is_closed_within_send_timeout(
    start_cluster: Callable[..., Cluster], opened: list[RC]
) -> None:
    cluster = start_cluster(
        gateways=1, workers=1, gateway_options=f"send_timeout={2 * UNIT}, send_socket_buffer=8192"
    )
    pusher = await RC.open(cluster.spec.ws_url)
    opened.append(pusher)
    writer, client_id = await _non_reader(cluster.spec.public_port)
    try:
        chunk = "x" * 16 * 1024
        for _ in range(24):  # ~400 KB: over the backlog mark, under send_buffer_limit
            await call(pusher, "send_to_client", client_id, chunk)
        stuck_at = time.monotonic()
        await await_for(
            lambda: "not drained for" in log_of(cluster), 2 * UNIT + 4 * UNIT, "1008 for slow"
        )
        assert time.monotonic() - stuck_at <= 2 * UNIT + 4 * UNIT
    finally:
        writer.transport.abort()
    assert f"client {int(client_id[12:], 16)} " in log_of(cluster)
    assert await call(pusher, "echo", 1) == [1]
