"""The chat app end to end through ``python start.py start``, as a user runs it."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from websockets.asyncio.client import connect

from pygatewayworker.gatewayclient import AsyncGatewayClient
from tests.cluster import (
    ForegroundCluster,
    make_app,
    recv_json,
    recv_until,
    wait_ports_free,
    wait_ready,
)

CHAT_OPTIONS = 'ping_interval=10, ping_not_response_limit=2, ping_data=\'{"type":"ping"}\''
TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")


def processes_of(root: Path) -> list[psutil.Process]:
    """Every process whose command line mentions the temporary app."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(str(root) in part for part in proc.info["cmdline"] or []):
                found.append(proc)
        except psutil.Error:
            continue
    return found


async def login(ws, name: str, room: str) -> dict:
    await ws.send(f'{{"type":"login","client_name":"{name}","room_id":"{room}"}}')
    return await recv_until(ws, lambda m: m.get("type") == "login" and "client_list" in m)


@pytest.fixture
def chat(tmp_path: Path):
    spec = make_app(tmp_path, "chat", gateway_options=CHAT_OPTIONS)
    cluster = ForegroundCluster(spec).start()
    yield spec, cluster
    cluster.kill()
    for proc in processes_of(tmp_path):
        proc.kill()


async def test_chat_room_end_to_end_and_ctrl_c(chat) -> None:
    spec, cluster = chat
    await wait_ready(spec)

    async with (
        connect(spec.ws_url) as alice,
        connect(spec.ws_url) as bob,
        connect(spec.ws_url) as carol,
    ):
        ids = {}
        for name, ws in (("alice", alice), ("bob", bob), ("carol", carol)):
            init = await recv_json(ws)
            assert init["type"] == "init" and re.fullmatch(r"[0-9a-f]{20}", init["client_id"])
            ids[name] = init["client_id"]

        first = await login(alice, "Alice <b>", "7")
        assert first["client_id"] == ids["alice"]
        assert first["client_name"] == "Alice &lt;b&gt;"
        assert first["client_list"] == {ids["alice"]: "Alice &lt;b&gt;"}
        assert TIME.match(first["time"])

        second = await login(bob, "Bob", "7")
        assert second["client_list"] == {ids["alice"]: "Alice &lt;b&gt;", ids["bob"]: "Bob"}
        seen = await recv_until(alice, lambda m: m.get("type") == "login")
        assert seen["client_id"] == ids["bob"] and "client_list" not in seen

        other_room = await login(carol, "Carol", "8")
        assert other_room["client_list"] == {ids["carol"]: "Carol"}

        await alice.send('{"type":"say","to_client_id":"all","content":"hi <all>"}')
        for ws in (alice, bob):
            said = await recv_until(ws, lambda m: m.get("type") == "say")
            assert said["from_client_id"] == ids["alice"]
            assert said["content"] == "hi &lt;all&gt;"
            assert said["to_client_id"] == "all"
            assert TIME.match(said["time"])

        await alice.send(
            f'{{"type":"say","to_client_id":"{ids["bob"]}","to_client_name":"Bob",'
            f'"content":"psst"}}'
        )
        for ws in (bob, alice):
            private = await recv_until(ws, lambda m: m.get("type") == "say")
            assert private["to_client_id"] == ids["bob"]
            assert private["content"] == "psst"
            assert private["from_client_name"] == "Alice &lt;b&gt;"

        await carol.send('{"type":"pong"}')
        await carol.send('{"type":"say","to_client_id":"all","content":"room 8 only"}')
        said = await recv_until(carol, lambda m: m.get("type") == "say")
        assert said["content"] == "room 8 only"

        await bob.close()
        gone = await recv_until(alice, lambda m: m.get("type") == "logout")
        assert gone["from_client_id"] == ids["bob"] and gone["from_client_name"] == "Bob"

        # Carol never heard of room 7.
        with pytest.raises((asyncio.TimeoutError, TimeoutError)):
            await recv_until(carol, lambda m: True, timeout=0.5)

    # The cluster serves its own chat page on the public port.
    page = urllib.request.urlopen(f"http://127.0.0.1:{spec.public_port}/", timeout=5).read()
    assert b"new WebSocket" in page

    children = [p for p in processes_of(spec.root) if p.pid != cluster.proc.pid]
    assert len(children) >= 1 + spec.gateways + spec.workers
    assert cluster.interrupt() == 0, cluster.output()
    assert wait_ports_free(spec.all_ports()) == []
    deadline = time.monotonic() + 10
    while processes_of(spec.root) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_of(spec.root) == []


async def test_invalid_chat_requests_get_errors(chat) -> None:
    spec, _ = chat
    await wait_ready(spec)
    async with connect(spec.ws_url) as ws:
        await recv_json(ws)
        await ws.send("not json")
        assert (await recv_json(ws))["type"] == "error"
        await ws.send('{"type":"say","content":"before login"}')
        assert (await recv_json(ws))["type"] == "error"
        await ws.send('{"type":"fly"}')
        assert (await recv_json(ws))["type"] == "error"
        await login(ws, "Dan", "9")
        await ws.send('{"type":"say","to_client_id":"nonsense","content":"x"}')
        assert (await recv_json(ws))["type"] == "error"
        await ws.send('{"type":["login"]}')  # unhashable type: an error, not a traceback
        assert (await recv_json(ws))["type"] == "error"
        # a well-formed client_id of a gateway that does not exist
        await ws.send('{"type":"say","to_client_id":"0a0000090001000000ff","content":"x"}')
        assert (await recv_json(ws))["message"] == "that member is not online"
        await ws.send('{"type":"say","to_client_id":"all","content":"still here"}')
        assert (await recv_json(ws))["content"] == "still here"
        # nested past the parser's stack, and lone surrogate escapes: errors, one
        # warning each, no traceback
        await ws.send("[" * 5000 + "]" * 5000)
        assert (await recv_json(ws))["message"] == "invalid JSON"
        for bad in (
            r'{"type":"login","room_id":"\ud800"}',
            r'{"type":"login","room_id":"1","client_name":"\udfff"}',
            r'{"type":"say","to_client_id":"all","content":"a\ud83d"}',
        ):
            await ws.send(bad)
            assert "lone surrogate" in (await recv_json(ws))["message"], bad
        await ws.send(r'{"type":"say","to_client_id":"all","content":"\ud83d\ude00"}')
        assert (await recv_json(ws))["content"] == "\U0001f600"  # a pair is one character
        # a member whose session a backend wrote with values that are not text (PHP's
        # non-UTF-8 strings arrive as bytes): the room's newcomers still log in
        me = (await login(ws, "Dan", "9"))["client_id"]
        async with AsyncGatewayClient(
            register=f"127.0.0.1:{spec.register_port}", timeout=5.0
        ) as push:
            await push.update_session(me, {"client_name": b"\xffDan"})
        async with connect(spec.ws_url) as newcomer:
            await recv_json(newcomer)
            members = (await login(newcomer, "Eve", "9"))["client_list"]
            assert members[me] == "\ufffdDan"
        await recv_until(ws, lambda m: m.get("type") == "logout")
    log = (spec.run_dir / "gatewayworker.log").read_text()
    assert "Traceback" not in log, log[-3000:]
    assert log.count("sent a lone surrogate escape") == 3
    assert log.count("sent invalid JSON") == 2  # "not json" above, and the deep one
