"""The ``authenticate`` hook through the real CLI (issue 14, item 1): ``start.py start
-d`` runs the register, 2 gateways and a business worker in their own processes, with
an app whose Events define ``authenticate(request)`` (tests/fixtures/apps/authhook).

What is checked, over real sockets, as a user's browser and backend see it:

- a rejection is an HTTP ``401`` with the hook's body and header instead of the
  ``101``, and nothing reaches ``on_connect``: the app's own log of ``on_connect``
  calls stays as it was, the worker counts no connect event, and the push client's
  ``get_all_client_count`` sees no connection;
- an accepted connection is bound to the hook's uid and group before anyone else
  sees it: a ``send_to_uid`` and a ``send_to_group`` issued the moment the
  handshake is done reach it, and ``on_connect`` sees the hook's session;
- a hook that does not answer within ``auth_timeout`` gets ``503`` with
  ``Retry-After`` (the documented policy), its late acceptance is ignored, and the
  cluster keeps accepting and serving other connections.

(tests/test_auth_hook.py covers the same hook with the roles in one process, and
the protocol cases with a fake worker link.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from pygatewayworker.cluster.pidfile import pid_alive
from pygatewayworker.gatewayclient import AsyncGatewayClient
from tests.cluster import AppSpec, cli, make_app, recv_json, recv_until, wait_ready
from tests.opsharness import wait_for

SECRET = "e2e-auth-secret"
UNIT = 10.0
"""A generous bound for one step (a handshake, a message, a stats file update)."""


@dataclass
class HookCluster:
    spec: AppSpec
    connects_path: Path

    @property
    def register(self) -> str:
        return f"127.0.0.1:{self.spec.register_port}"

    def connects(self) -> list[dict[str, Any]]:
        """The app's log of ``on_connect`` calls, one dict per call."""
        if not self.connects_path.exists():
            return []
        return [json.loads(line) for line in self.connects_path.read_text().splitlines()]

    def worker_stats(self) -> dict[str, Any]:
        """The business worker's stats file (rewritten every second)."""
        path = self.spec.run_dir / "stats" / "authhook.businessworker.0.json"
        try:
            return dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            return {}

    def url(self, token: str, path: str = "/") -> str:
        return f"ws://127.0.0.1:{self.spec.public_port}{path}?token={token}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HookCluster]:
    root = tmp_path_factory.mktemp("authhook")
    spec = make_app(
        root,
        "authhook",
        gateways=2,
        workers=1,
        secret=SECRET,
        gateway_options="ping_interval=0, auth_timeout=1.0",
    )
    hook = HookCluster(spec, root / "connects.jsonl")
    result = cli(spec, "start", "-d", env={"AUTHHOOK_CONNECTS": str(hook.connects_path)})
    assert result.returncode == 0, result.stdout + result.stderr
    try:
        asyncio.run(wait_ready(spec, query="?token=user-probe"))
        yield hook
    finally:
        state = json.loads((spec.run_dir / "state.json").read_text())
        pids = [p.get("pid") for p in state.get("processes", [])]
        stopped = cli(spec, "stop", "--timeout", "10")
        for pid in pids:
            if pid and pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr


def raw_handshake(port: int, target: str) -> tuple[str, dict[str, str], bytes]:
    """A raw upgrade request: the status line, headers and body of the answer (read
    until the gateway closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=UNIT) as sock:
        sock.sendall(
            (
                f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return status_line, headers, body


async def client_count(cluster: HookCluster) -> int:
    async with AsyncGatewayClient(register=cluster.register, secret=SECRET) as push:
        return int(await push.get_all_client_count())


@dataclass
class Before:
    """What the app and the worker had seen when a test began."""

    connect_events: int
    """The worker's ``connect`` events."""
    logged: int
    """Lines in the app's log of ``on_connect`` calls."""
    hook: dict[str, int]
    """The worker's counts of the hook's outcomes."""


async def settled(cluster: HookCluster) -> Before:
    """Wait until no client is connected (the previous test's closes are done) and
    the worker's stats file is current; what was seen so far."""
    deadline = time.monotonic() + UNIT
    while await client_count(cluster):
        assert time.monotonic() < deadline, "clients left over"
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.5)  # a stats file written after the last close
    return Before(connect_events(cluster), len(cluster.connects()), hook_counts(cluster))


def connect_events(cluster: HookCluster) -> int:
    return int(cluster.worker_stats()["events_in"].get("connect", 0))


def hook_counts(cluster: HookCluster) -> dict[str, int]:
    return dict(cluster.worker_stats().get("authenticate", {}))


async def test_a_rejection_is_a_401_before_101_and_nothing_reaches_on_connect(
    cluster: HookCluster,
) -> None:
    before = await settled(cluster)
    port = cluster.spec.public_port

    for attempt in range(6):  # several, so that both gateways answer some
        line, headers, body = await asyncio.to_thread(raw_handshake, port, f"/?token=bad{attempt}")
        assert line == "HTTP/1.1 401 Unauthorized"
        assert headers["www-authenticate"] == 'Bearer realm="e2e"'
        assert headers["content-length"] == str(len(b"bad token\n"))
        assert body == b"bad token\n"
    with pytest.raises(InvalidStatus) as info:  # a WebSocket library sees the same
        await connect(cluster.url("forged"), open_timeout=UNIT)
    assert info.value.response.status_code == 401
    assert info.value.response.body == b"bad token\n"

    await asyncio.to_thread(
        wait_for,
        lambda: hook_counts(cluster)["rejected"] == before.hook["rejected"] + 7,
        UNIT,
        "the worker's count of 7 rejections",
    )
    assert cluster.connects()[before.logged :] == []  # on_connect never ran for them
    assert connect_events(cluster) == before.connect_events
    assert await client_count(cluster) == 0  # no client_id was issued


async def test_an_accepted_connection_is_bound_before_its_first_message(
    cluster: HookCluster,
) -> None:
    await settled(cluster)
    opened: list[ClientConnection] = []
    gateways: set[str] = set()
    async with AsyncGatewayClient(register=cluster.register, secret=SECRET) as push:
        await push.send_to_uid("nobody", "warm-up")  # the push client has its routes
        try:
            for i in range(20):  # until both gateways accepted one
                uid = f"u{i}"
                ws = await connect(cluster.url(f"user-{uid}", "/chat"), open_timeout=UNIT)
                opened.append(ws)
                # issued the moment the handshake is done: the hook's uid and group
                await push.send_to_uid(uid, json.dumps(f"to {uid}"))
                await push.send_to_group("lobby", json.dumps(f"lobby {i}"))
                # the next three messages, in any order (the pushes may come first)
                got = [await recv_json(ws, UNIT) for _ in range(3)]
                init = next(m for m in got if isinstance(m, dict))
                assert sorted(m for m in got if isinstance(m, str)) == [f"lobby {i}", f"to {uid}"]
                assert init["type"] == "init" and init["session"] == {"uid": uid, "path": "/chat"}
                assert await push.get_client_id_by_uid(uid) == [init["client_id"]]
                gateways.add(init["client_id"][8:12])
                if len(gateways) == 2:
                    break
            assert len(gateways) == 2, "the connections did not spread over both gateways"
            assert await push.get_client_count_by_group("lobby") == len(opened)
            logged = {c["client_id"]: c["session"] for c in cluster.connects()}
            assert logged[init["client_id"]] == {"uid": uid, "path": "/chat"}
        finally:
            for ws in opened:
                await ws.close()


async def test_a_hook_that_does_not_answer_in_time_gets_503_and_others_are_served(
    cluster: HookCluster,
) -> None:
    before = await settled(cluster)

    line, headers, _ = await asyncio.to_thread(
        raw_handshake, cluster.spec.public_port, "/?token=slow"
    )
    assert line == "HTTP/1.1 503 Service Unavailable"
    assert headers["retry-after"] == "1"

    # the cluster keeps serving: a good token is accepted and its messages echoed
    async with connect(cluster.url("user-after"), open_timeout=UNIT) as ws:
        init = await recv_json(ws, UNIT)
        assert init["type"] == "init"
        await ws.send('"ping-pong"')
        assert await recv_until(ws, lambda m: m == "ping-pong", UNIT) == "ping-pong"
        # the slow hook answers at last (the worker counts its Accept): ignored
        await asyncio.to_thread(
            wait_for,
            lambda: hook_counts(cluster)["accepted"] == before.hook["accepted"] + 2,
            UNIT,
            "the late acceptance",
        )
        await asyncio.sleep(0.5)
        assert [c["client_id"] for c in cluster.connects()[before.logged :]] == [init["client_id"]]
        assert await client_count(cluster) == 1
    await asyncio.sleep(1.5)  # the stats file catches up
    assert connect_events(cluster) == before.connect_events + 1
