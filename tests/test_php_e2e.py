"""PHP's GatewayClient calls against a real cluster (2 gateways x 2 business workers,
with a secret, started with ``start.py``): from a Python stand-in that speaks
GatewayProtocol byte for byte (tests/phpclient.py), and from php-cli running a script
of our own (tests/fixtures/php/push.php) when php is installed. WebSocket clients are
the rc app's (tests/rc.py), so the Python side of each session is visible too."""

from __future__ import annotations

import asyncio
import json
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pygatewayworker import AsyncGatewayClient
from tests import phpclient as php
from tests.cluster import AppSpec, ForegroundCluster, make_app, wait_ready
from tests.phpclient import PhpClient, PhpError, ext_json, packet, split_client_id
from tests.rc import RC, clients

__all__ = ["clients"]  # the fixture: three clients on each of the two gateways

SECRET = "php secret/key"
PHP = shutil.which("php")
PUSH_PHP = Path(__file__).resolve().parent / "fixtures" / "php" / "push.php"


@pytest.fixture(scope="module")
def running_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForegroundCluster]:
    spec = make_app(
        tmp_path_factory.mktemp("php"),
        "rc",
        gateways=2,
        workers=2,
        secret=SECRET,
        gateway_options="ping_interval=0",
    )
    proc = ForegroundCluster(spec).start()
    try:
        asyncio.run(wait_ready(spec, init=True))
        yield proc
    finally:
        code = proc.interrupt()
        assert code == 0, proc.output()


@pytest.fixture(scope="module")
def cluster(running_cluster: ForegroundCluster) -> AppSpec:
    return running_cluster.spec


@pytest.fixture
def client(cluster: AppSpec) -> PhpClient:
    return PhpClient(f"127.0.0.1:{cluster.register_port}", SECRET)


async def settle() -> None:
    """PHP sends get no answer; a query on the same gateway after them is ordered
    after them, but another gateway's may not be: give the sends a moment."""
    await asyncio.sleep(0.1)


async def logged(cluster: ForegroundCluster, *lines: str, timeout: float = 10.0) -> None:
    """Wait until the cluster's log holds every one of ``lines`` (the master copies
    children's lines from a pipe, so they appear a moment after the event)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        output = cluster.output()
        missing = [line for line in lines if line not in output]
        if not missing:
            return
        assert loop.time() < deadline, f"not logged within {timeout:g} s: {missing}"
        await asyncio.sleep(0.05)


# ---- sends ------------------------------------------------------------------------------


async def test_sends(client: PhpClient, clients: list[RC]) -> None:
    a, b, c = clients[0], clients[1], clients[2]  # a and c on one gateway, b on the other
    await client.send_to_client(b.client_id, "to b")
    assert await b.expect() == "to b"
    await client.send_to_client(b.client_id, b"\x00\xff")  # not UTF-8: a binary frame
    assert await b.expect() == b"\x00\xff"
    await client.send_to_all("to all")
    for rc in clients:
        assert await rc.expect() == "to all"
    await client.send_to_all("listed", [a.client_id, b.client_id])
    assert await a.expect() == "listed" and await b.expect() == "listed"
    await client.send_to_all("but b", exclude=[b.client_id])
    for rc in clients:
        if rc is not b:
            assert await rc.expect() == "but b"
    await b.nothing()
    await c.nothing(0)
    await client.send_to_client(a.client_id, b"\x81\x03raw", raw=True)
    assert await a.expect() == "raw"


async def test_uids(client: PhpClient, clients: list[RC]) -> None:
    a, b = clients[0], clients[1]
    await client.bind_uid(a.client_id, "pu1")
    await client.bind_uid(b.client_id, "pu1")
    await client.bind_uid(clients[2].client_id, 42)
    await settle()
    assert sorted(await client.get_client_id_by_uid("pu1")) == sorted([a.client_id, b.client_id])
    batch = await client.batch_get_client_id_by_uid(["pu1", 42, "nobody"])
    assert sorted(batch["pu1"]) == sorted([a.client_id, b.client_id])
    assert batch[42] == [clients[2].client_id] and batch["nobody"] == []
    await client.send_to_uid(["pu1", 42], "for uids")
    for rc in clients[:3]:
        assert await rc.expect() == "for uids"
    # getUidByClientId and getAllUidList are CMD_SELECT calls
    assert (await client.select(["uid"], {"client_id": [a.client_id]}))[a.client_id] == {
        "uid": "pu1"
    }
    every_uid = {row["uid"] for row in (await client.select(["uid"])).values() if row["uid"]}
    assert {"pu1", "42"} <= every_uid
    # the Python API sees the same bindings
    assert await a.call("get_uid_by_client_id", b.client_id) == "pu1"
    await client.unbind_uid(b.client_id, "pu1")
    await settle()
    assert await client.get_client_id_by_uid("pu1") == [a.client_id]


async def test_groups(client: PhpClient, clients: list[RC]) -> None:
    members = clients[:3]
    for rc in members:
        await client.join_group(rc.client_id, "pg1")
    await client.join_group(clients[3].client_id, "pg2")
    await client.bind_uid(clients[1].client_id, "pgu")
    await settle()
    assert await client.get_client_count_by_group("pg1") == 3
    assert await client.batch_get_client_count_by_group(["pg1", "pg2", "none"]) == {
        "pg1": 3,
        "pg2": 1,
        "none": 0,
    }
    in_group = await client.select(["uid"], {"groups": ["pg1"]})
    assert sorted(in_group) == sorted(rc.client_id for rc in members)  # getClientIdListByGroup
    assert {row["uid"] for row in in_group.values() if row["uid"]} == {"pgu"}  # getUidListByGroup
    assert {"pg1", "pg2"} <= set(await client.get_all_group_id_list())
    # getAllGroupClientIdList: GatewayClient stops reading a gateway's rows at the first
    # without groups, so every row with groups must come first
    group_clients: dict[str, set[str]] = {}
    for client_id, row in (await client.select(["groups"])).items():
        if not row["groups"]:
            continue
        for group in row["groups"].values():
            group_clients.setdefault(group, set()).add(client_id)
    assert group_clients["pg1"] == {rc.client_id for rc in members}
    await client.send_to_group(["pg1", "pg2"], "to groups", exclude=[clients[2].client_id])
    for rc in (clients[0], clients[1], clients[3]):
        assert await rc.expect() == "to groups"
    await clients[2].nothing()
    await client.leave_group(clients[0].client_id, "pg1")
    await settle()
    assert await client.get_client_count_by_group("pg1") == 2
    await client.ungroup("pg1")
    await settle()
    assert await client.get_client_count_by_group("pg1") == 0
    assert "pg1" not in await client.get_all_group_id_list()


async def test_sessions_are_shared_with_python(client: PhpClient, clients: list[RC]) -> None:
    a, b = clients[0], clients[1]
    await client.set_session(b.client_id, {"user": {"id": 7}, "roles": ["admin"]})
    await client.update_session(b.client_id, {"user": {"name": "ann"}})
    await settle()
    assert await b.call("session") == {"user": {"id": 7, "name": "ann"}, "roles": ["admin"]}
    await a.call("set", name="alice", n=1)  # set in Events
    session = await client.get_session(a.client_id)
    assert session["name"] == "alice" and session["n"] == 1 and "ws" in session
    sessions = await client.get_all_client_sessions()
    assert sessions[b.client_id]["user"] == {"id": 7, "name": "ann"}
    await client.join_group(b.client_id, "sess")
    await settle()
    assert list(await client.get_all_client_sessions("sess")) == [b.client_id]
    rows = await client.select(["session"], {"client_id": [b.client_id]})
    assert rows[b.client_id]["session"].startswith('a:2:{s:4:"user";')


async def test_replies_byte_for_byte(client: PhpClient, clients: list[RC]) -> None:
    a = clients[0]
    address, conn_id = split_client_id(a.client_id)
    assert await client.ask_raw(address, packet(php.IS_ONLINE, conn_id)) == b"i:1;"
    assert await client.ask_raw(address, packet(php.IS_ONLINE, 1)) == b"i:0;"
    stored = b'a:2:{s:4:"name";s:5:"alice";s:5:"roles";a:1:{i:0;s:5:"admin";}}'
    await client.send_raw(address, packet(php.SET_SESSION, conn_id, stored))
    assert await client.ask_raw(address, packet(php.GET_SESSION_BY_CLIENT_ID, conn_id)) == stored
    await client.send_raw(address, packet(php.BIND_UID, conn_id, "exact"))
    by_uid = await client.ask_raw(address, packet(php.GET_CLIENT_ID_BY_UID, 0, "exact"))
    assert by_uid == b"a:1:{i:0;i:%d;}" % conn_id
    select = ext_json({"fields": ["uid"], "where": {"connection_id": {str(conn_id): conn_id}}})
    assert await client.ask_raw(address, packet(php.SELECT, 0, select)) == (
        b'a:1:{i:%d;a:1:{s:3:"uid";s:5:"exact";}}' % conn_id
    )
    assert await client.ask_raw(address, packet(php.GET_SESSION_BY_CLIENT_ID, 1)) == b"N;"


async def test_counts_match_the_python_api(client: PhpClient, clients: list[RC]) -> None:
    assert await client.get_client_count_by_group() == await clients[0].call("get_all_client_count")
    assert await client.is_online(clients[1].client_id) == 1


async def test_close_and_destroy(client: PhpClient, clients: list[RC]) -> None:
    closing, destroyed = clients[1], clients[2]
    await client.close_client(closing.client_id, "bye")
    assert await closing.expect() == "bye"
    await asyncio.wait_for(closing.ws.wait_closed(), 5)
    assert closing.ws.close_code == 1000
    await client.destroy_client(destroyed.client_id)
    await asyncio.wait_for(destroyed.ws.wait_closed(), 5)
    assert destroyed.ws.close_code == 1006
    assert await client.is_online(closing.client_id) == 0
    assert await client.get_session(destroyed.client_id) is None


# ---- refusals and bad input ---------------------------------------------------------------


async def test_wrong_or_missing_secret_is_refused(
    running_cluster: ForegroundCluster, cluster: AppSpec, clients: list[RC]
) -> None:
    a = clients[0]
    for secret in ("wrong", ""):
        intruder = PhpClient(f"127.0.0.1:{cluster.register_port}", secret)
        address, conn_id = split_client_id(a.client_id)
        with pytest.raises(PhpError, match="wrong secret key|without GATEWAY_CLIENT_CONNECT"):
            await intruder.ask(address, packet(php.IS_ONLINE, conn_id))
        await intruder.send_raw(address, packet(php.SEND_TO_ONE, conn_id, b"", "intruder"))
    await a.nothing()
    output = running_cluster.output()
    assert "wrong secret key (Gateway::$secretKey); closing the link" in output
    assert "CMD_SEND_TO_ONE without GATEWAY_CLIENT_CONNECT" in output


async def raw_link(address: str, data: bytes) -> bytes:
    """Write ``data`` to a gateway; everything it answers before closing."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    seen = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return seen


async def test_bad_packets_close_only_their_link(
    running_cluster: ForegroundCluster, client: PhpClient, clients: list[RC]
) -> None:
    a = clients[0]
    address, conn_id = split_client_id(a.client_id)
    auth = client.auth()
    garbage = struct.pack(">IBIHIHIBHI", 40, 22, 0, 0, 0, 0, 0, 1, 0, 99) + bytes(12)
    oversized = struct.pack(">IBIHIHIBHI", 0x7FFFFFFF, 22, 0, 0, 0, 0, 0, 1, 0, 0)
    assert await raw_link(address, auth + garbage) == b""
    assert await raw_link(address, auth + oversized) == b""
    host, port = address.rsplit(":", 1)
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(auth + packet(php.SEND_TO_ONE, conn_id, b"", "truncated" * 4)[:40])
    await writer.drain()
    writer.close()
    # a msgpack push client and PHP calls work on the same gateways meanwhile
    async with AsyncGatewayClient(client.register, SECRET) as push:
        await push.send_to_client(a.client_id, "msgpack")
        await client.send_to_client(a.client_id, "php")
        got = {await a.expect(), await a.expect()}
        assert got == {"msgpack", "php"}
    await logged(
        running_cluster,
        "runs past the 40-byte packet; closing the link",
        "exceeds the limit",
        "closed in the middle of a packet (40 of 64 bytes)",
    )


async def test_unsupported_command_gets_an_error_and_a_log_line(
    running_cluster: ForegroundCluster, client: PhpClient, clients: list[RC]
) -> None:
    address, _ = split_client_id(clients[0].client_id)
    worker_connect = packet(php.WORKER_CONNECT, 0, b"", ext_json({"secret_key": SECRET}))
    seen = await raw_link(address, client.auth() + worker_connect)
    assert seen[4:].startswith(b"#gateway error: CMD_WORKER_CONNECT: a PHP BusinessWorker")
    await logged(running_cluster, "CMD_WORKER_CONNECT: a PHP BusinessWorker cannot link")


# ---- php-cli ------------------------------------------------------------------------------


@pytest.mark.skipif(PHP is None, reason="php-cli is not installed (scripts/test.sh installs it)")
async def test_php_cli_pushes_through_our_gateways(cluster: AppSpec, clients: list[RC]) -> None:
    a, b = clients[0], clients[1]  # on different gateways
    await a.call("set", who="python")
    assert PHP is not None
    done = await asyncio.to_thread(
        subprocess.run,
        [
            PHP,
            str(PUSH_PHP),
            f"127.0.0.1:{cluster.register_port}",
            SECRET,
            a.client_id,
            b.client_id,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out: dict[str, Any] = json.loads(done.stdout)
    assert await a.expect() == "hello from php"  # b was excluded
    assert await a.expect() == "to php-user"
    await b.nothing()
    assert out["online_a"] == 1
    assert out["session_a"]["who"] == "python" and "ws" in out["session_a"]
    assert out["session_b"] == {"from": "php", "list": [1, 2, 3], "nested": {"k": "v"}}
    assert await b.call("session") == {"from": "php", "list": [1, 2, 3], "nested": {"k": "v"}}
    assert out["count"] == await a.call("get_all_client_count")
    assert out["room_count"] == 2
    assert out["uid_clients"] == [a.client_id]
    assert out["room"] == {
        a.client_id: {"uid": "php-user", "groups": {"php-room": "php-room"}},
        b.client_id: {"uid": None, "groups": {"php-room": "php-room"}},
    }
    assert "php-room" in out["groups"]
    assert out["wrong_secret"].startswith("ErrorException: unserialize(): Error at offset 0")
