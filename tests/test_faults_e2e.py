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
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cluster import cli, make_app
from tests.rc import RC, RemoteError
from tests.test_ops_e2e import (
    Cluster,
    Traffic,
    await_for,
    call,
    is_connected,
    open_clients,
    opened,
    processes,
    processes_of,
    start_cluster,
)

__all__ = ["opened", "start_cluster"]  # fixtures shared with test_ops_e2e

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
