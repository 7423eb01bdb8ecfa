"""Every Gateway API call, made from Events in real worker processes, across a
cluster of 2 gateways x 2 business workers started with ``start.py``."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pygatewayworker.gateway.protocol import Cmd, Decoder, encode
from tests.cluster import AppSpec, ForegroundCluster, make_app, wait_ready
from tests.rc import RC, RemoteError, b, clients

__all__ = ["clients"]  # the fixture: three clients on each of the two gateways

SECRET = 'top "secret" \\ key'


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppSpec]:
    root: Path = tmp_path_factory.mktemp("rc")
    spec = make_app(
        root,
        "rc",
        gateways=2,
        workers=2,
        secret=SECRET,
        gateway_options="max_message_size=65536, ping_interval=0",
    )
    proc = ForegroundCluster(spec).start()
    try:
        asyncio.run(wait_ready(spec, init=True))
        yield spec
    finally:
        code = proc.interrupt()
        assert code == 0, proc.output()


async def test_send_to_client_across_gateways_keeps_text_and_binary(clients: list[RC]) -> None:
    a, other = clients[0], clients[1]
    assert a.gateway_port != other.gateway_port
    await a.call("send_to_client", other.client_id, "hello")
    assert await other.expect() == "hello"
    await a.call("send_to_client", other.client_id, b(b"\x00\xffbin"))
    got = await other.expect()
    assert got == b"\x00\xffbin" and isinstance(got, bytes)
    await other.ws.send(b"\x01\x02")
    assert await other.expect() == b"echo:\x01\x02"


async def test_send_to_all_with_lists_and_exclusions(clients: list[RC]) -> None:
    a = clients[0]
    # Other test modules' clients may exist; everyone of ours must receive.
    await a.call("send_to_all", "to everyone")
    for c in clients:
        assert await c.expect() == "to everyone"
    listed = [clients[1].client_id, clients[2].client_id]
    await a.call("send_to_all", "listed", listed)
    assert await clients[1].expect() == "listed"
    assert await clients[2].expect() == "listed"
    await a.call("send_to_all", "nobody", [])
    await a.call("send_to_all", "but three", None, [clients[3].client_id])
    for c in clients:
        if c is clients[3]:
            continue
        assert await c.expect() == "but three"
    await clients[3].nothing()
    await clients[0].nothing(0)


async def test_uid_binding(clients: list[RC]) -> None:
    a, x, y = clients[0], clients[1], clients[2]  # x on the other gateway than y
    await a.call("bind_uid", x.client_id, "u1")
    await a.call("bind_uid", y.client_id, "u1")
    await a.call("bind_uid", a.client_id, 42)
    assert sorted(await a.call("get_client_id_by_uid", "u1")) == sorted([x.client_id, y.client_id])
    assert await a.call("is_uid_online", "u1") is True
    assert await a.call("is_uid_online", "nobody") is False
    assert await a.call("get_uid_by_client_id", a.client_id) == "42"
    await a.call("send_to_uid", "u1", "for u1")
    assert await x.expect() == "for u1" and await y.expect() == "for u1"
    await a.call("send_to_uid", ["u1", "42"], "for both")
    for c in (a, x, y):
        assert await c.expect() == "for both"
    assert set(await a.call("get_all_uid_list")) >= {"u1", "42"}
    assert await a.call("get_all_uid_count") >= 2
    assert await a.call("is_uids_online", ["u1", "zz"]) == {"u1": True, "zz": False}
    batch = await a.call("batch_get_client_id_by_uid", ["u1", "zz"])
    assert sorted(batch["u1"]) == sorted([x.client_id, y.client_id]) and batch["zz"] == []
    # rebinding replaces
    await a.call("bind_uid", x.client_id, "u2")
    assert await a.call("get_client_id_by_uid", "u1") == [y.client_id]
    # unbinding another uid is a no-op; the right one unbinds
    await a.call("unbind_uid", y.client_id, "u2")
    assert await a.call("get_uid_by_client_id", y.client_id) == "u1"
    await a.call("unbind_uid", y.client_id, "u1")
    assert await a.call("is_uid_online", "u1") is False
    assert await a.call("get_uid_by_client_id", y.client_id) is None


async def test_groups(clients: list[RC]) -> None:
    a = clients[0]
    members = clients[:3]
    for c in members:
        await a.call("join_group", c.client_id, "g1")
    await a.call("join_group", clients[3].client_id, "g2")
    await a.call("bind_uid", clients[1].client_id, "gu")
    assert await a.call("get_client_count_by_group", "g1") == 3
    assert sorted(await a.call("get_client_id_list_by_group", "g1")) == sorted(
        c.client_id for c in members
    )
    assert await a.call("get_uid_list_by_group", "g1") == ["gu"]
    assert await a.call("get_uid_count_by_group", "g1") == 1
    sessions = await a.call("get_client_sessions_by_group", "g1")
    assert set(sessions) == {c.client_id for c in members}
    assert all(s["ws"]["path"] == "/" for s in sessions.values())
    assert {"g1", "g2"} <= set(await a.call("get_all_group_id_list"))
    assert await a.call("get_all_group_count") >= 2
    group_uids = await a.call("get_all_group_uid_list")
    assert group_uids["g1"] == ["gu"]
    group_ids = await a.call("get_all_group_client_id_list")
    assert sorted(group_ids["g1"]) == sorted(c.client_id for c in members)
    assert await a.call("batch_get_client_count_by_group", ["g1", "g2", "none"]) == {
        "g1": 3,
        "g2": 1,
        "none": 0,
    }
    await a.call("send_to_group", ["g1", "g2"], "groups", [clients[2].client_id])
    for c in (clients[0], clients[1], clients[3]):
        assert await c.expect() == "groups"
    await clients[2].nothing()
    await a.call("leave_group", clients[0].client_id, "g1")
    assert await a.call("get_client_count_by_group", "g1") == 2
    await a.call("ungroup", "g1")
    assert await a.call("get_client_count_by_group", "g1") == 0
    assert "g1" not in await a.call("get_all_group_id_list")
    await a.call("send_to_group", "g1", "dissolved")
    for c in members:
        await c.nothing(0.1)


async def test_sessions(clients: list[RC]) -> None:
    a, other = clients[0], clients[1]
    first = await a.call("session")
    assert first["ws"]["path"] == "/"  # written back after on_websocket_connect
    await a.call("set", name="alice", n=1)
    assert (await a.call("session"))["name"] == "alice"  # visible in the next event
    await a.call("set_session", other.client_id, {"x": {"y": 1}, "keep": True})
    assert await other.call("session") == {"x": {"y": 1}, "keep": True}
    await a.call("update_session", other.client_id, {"x": {"z": 2}, "new": "v"})
    assert await a.call("get_session", other.client_id) == {
        "x": {"y": 1, "z": 2},
        "keep": True,
        "new": "v",
    }
    assert (await other.call("session"))["new"] == "v"


async def test_on_websocket_connect_gets_the_request_as_an_object(cluster: AppSpec) -> None:
    """The rc app stores what ``on_websocket_connect`` read, by attribute and
    dict-style, in the session; the first event after it returns that session."""
    query = "token=abc&room=1&room=2&empty=&name=J%C3%B6rg+M"
    client = await RC.open(
        f"{cluster.ws_url}ws/room?{query}",
        additional_headers={"Cookie": "token=t1; theme=dark", "X-Trace": "a"},
        user_agent_header="rc-test/1",
    )
    try:
        session = await client.call("session")
        local_port = client.ws.local_address[1]
    finally:
        await client.close()
    request = session["request"]
    assert request["type"] == "ConnectRequest"
    assert request["path"] == "/ws/room"
    assert request["query_string"] == query
    assert request["query"] == {"token": "abc", "room": "1", "empty": "", "name": "Jörg M"}
    assert request["query_lists"]["room"] == ["1", "2"]
    assert request["headers"]["user-agent"] == "rc-test/1"
    assert request["headers"]["x-trace"] == "a"
    assert request["headers"]["host"] == f"127.0.0.1:{cluster.public_port}"
    assert request["cookies"] == {"token": "t1", "theme": "dark"}
    assert (request["remote_ip"], request["remote_port"]) == ("127.0.0.1", local_port)
    assert request["keys"] == sorted(
        ["path", "query", "headers", "cookies", "remote_ip", "remote_port"]
    )
    # dict-style reads still give what the dict gave: the raw query among them
    assert session["ws"] == {"path": "/ws/room", "query": query, "cookie": "t1", "ua": "rc-test/1"}


async def test_cluster_wide_queries_and_context(cluster: AppSpec, clients: list[RC]) -> None:
    a = clients[0]
    total = await a.call("get_all_client_count")
    assert total >= len(clients)
    assert await a.call("get_client_count_by_group", "") == total
    ids = await a.call("get_all_client_id_list")
    assert {c.client_id for c in clients} <= set(ids)
    sessions = await a.call("get_all_client_sessions")
    assert {c.client_id for c in clients} <= set(sessions)
    assert await a.call("is_online", clients[1].client_id) is True
    ctx = await a.call("context")
    assert ctx["client_id"] == a.client_id
    assert ctx["client_ip"] == "127.0.0.1" and ctx["client_port"] > 0
    assert ctx["gateway_ip"] == "127.0.0.1" and ctx["gateway_port"] == cluster.public_port


async def closes_reported(monitor: RC, wanted: set[str]) -> dict[str, dict[str, Any]]:
    """The on_close reports (sent by the rc app to uid "monitor") of the ``wanted``
    client_ids, by client_id. Clients closed by the fixture (or earlier tests) may
    report to the monitor too, later than it was bound: those are skipped, bounded."""
    reports: dict[str, dict[str, Any]] = {}
    for _ in range(40):
        if wanted <= reports.keys():
            break
        report = await monitor.expect_json()
        assert report["event"] == "close", report
        reports[report["client_id"]] = report
    assert wanted <= reports.keys(), f"no on_close for {sorted(wanted - reports.keys())}"
    return reports


async def request_op(client: RC, op: str, *args: Any) -> None:
    """Ask the client's worker to run ``op`` without waiting for the reply: after the
    current-client close calls there is no connection left to carry one."""
    await client.ws.send(json.dumps({"id": None, "op": op, "args": list(args)}))


async def test_close_and_destroy_run_on_close(clients: list[RC]) -> None:
    monitor, closing, destroyed = clients[0], clients[1], clients[2]
    await monitor.call("bind_uid", monitor.client_id, "monitor")
    await monitor.call("close_client", closing.client_id, "bye")
    assert await closing.expect() == "bye"
    await asyncio.wait_for(closing.ws.wait_closed(), 5)
    assert closing.ws.close_code == 1000
    await monitor.call("destroy_client", destroyed.client_id)
    await asyncio.wait_for(destroyed.ws.wait_closed(), 5)
    await closes_reported(monitor, {closing.client_id, destroyed.client_id})
    assert await monitor.call("is_online", closing.client_id) is False
    assert await monitor.call("get_session", closing.client_id) is None


async def test_close_current_client_sends_the_last_message_then_closes(
    clients: list[RC],
) -> None:
    monitor, leaving = clients[0], clients[1:3]  # one leaving client on each gateway
    assert len({c.gateway_port for c in leaving}) == 2
    await monitor.call("bind_uid", monitor.client_id, "monitor")
    for client in leaving:
        await client.call("set", leaving=client.client_id)  # seen again by on_close
        await request_op(client, "close_current_client", "bye")
    for client in leaving:
        assert await client.expect() == "bye"
        await asyncio.wait_for(client.ws.wait_closed(), 5)
        assert client.ws.close_code == 1000  # a normal close, after the last message
        assert client.inbox.empty()
    reports = await closes_reported(monitor, {c.client_id for c in leaving})
    for client in leaving:
        # on_close ran for this client, with its own context (session)
        assert reports[client.client_id]["session"]["leaving"] == client.client_id
        assert await monitor.call("is_online", client.client_id) is False


async def test_destroy_current_client_drops_the_connection_at_once(clients: list[RC]) -> None:
    monitor, dropped = clients[0], clients[1:3]  # one dropped client on each gateway
    assert len({c.gateway_port for c in dropped}) == 2
    await monitor.call("bind_uid", monitor.client_id, "monitor")
    for client in dropped:
        await client.call("set", dropped=client.client_id)
        await request_op(client, "destroy_current_client")
    for client in dropped:
        await asyncio.wait_for(client.ws.wait_closed(), 5)
        assert client.ws.close_code == 1006  # no close handshake: the TCP link was cut
        assert client.inbox.empty()
    reports = await closes_reported(monitor, {c.client_id for c in dropped})
    for client in dropped:
        assert reports[client.client_id]["session"]["dropped"] == client.client_id
        assert await monitor.call("is_online", client.client_id) is False


async def test_bad_calls_raise_clear_errors(clients: list[RC]) -> None:
    a = clients[0]
    with pytest.raises(RemoteError, match="InvalidClientId"):
        await a.call("send_to_client", "nonsense", "x")
    with pytest.raises(RemoteError, match="InvalidClientId"):
        await a.call("is_online", "7F00000108FC00000001")
    with pytest.raises(RemoteError, match="ValueError"):
        await a.call("bind_uid", a.client_id, "")
    with pytest.raises(RemoteError, match="ValueError"):
        await a.call("join_group", a.client_id, None)
    with pytest.raises(RemoteError, match="ValueError"):
        await a.call("send_to_group", "", "x")
    with pytest.raises(RemoteError, match="AttributeError"):
        await a.call("no_such_call")


async def test_exception_in_events_keeps_the_worker_serving(
    cluster: AppSpec, clients: list[RC]
) -> None:
    a = clients[0]
    rid_before = await a.call("echo", 1)
    assert rid_before == [1]
    await a.ws.send(json.dumps({"id": 999999, "op": "raise"}))
    assert await a.call("echo", 2) == [2]  # same worker, same client, next event
    log = cluster.run_dir / "gatewayworker.log"
    for _ in range(50):
        text = log.read_text(errors="replace") if log.exists() else ""
        if "boom requested by the test" in text and any(
            a.client_id in line and "ERROR" in line for line in text.splitlines()
        ):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the exception was not logged with the client_id and traceback")


async def test_oversized_websocket_message_closes_1009(cluster: AppSpec, clients: list[RC]) -> None:
    victim = clients[0]
    await victim.ws.send("x" * 70000)
    await asyncio.wait_for(victim.ws.wait_closed(), 5)
    assert victim.ws.close_code == 1009
    assert await clients[1].call("echo", "alive") == ["alive"]


def _internal_exchange(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except TimeoutError:
            pass
        except ConnectionResetError:
            # The peer closed with our unread input still queued: the kernel turns
            # that close into a reset after the answer was sent.
            chunks.append(b"<reset>")
    return b"".join(chunks)


@pytest.mark.parametrize(
    "payload",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        struct.pack("!I", 50 * 1024 * 1024),
        struct.pack("!I", 3) + b"\xc1\xc1\xc1",
        encode(Cmd.HELLO, "worker", "intruder", "wrong secret", 1),
        encode(Cmd.SEND_TO_ALL, "no hello first", None, None),
    ],
    ids=["http", "oversized", "malformed", "wrong-secret", "no-hello"],
)
async def test_garbage_on_internal_port_closes_only_that_link(
    cluster: AppSpec, clients: list[RC], payload: bytes
) -> None:
    answer = await asyncio.to_thread(_internal_exchange, cluster.start_port, payload)
    packets = Decoder().feed(answer.removesuffix(b"<reset>"))
    assert all(p[0] is Cmd.ERROR for p in packets)
    for c in clients[:2]:
        assert await c.call("echo", "ok") == ["ok"]


def _register_exchange(port: int, payload: bytes) -> bytes:
    return _internal_exchange(port, payload)


@pytest.mark.parametrize(
    "line",
    [
        b"\x00\x01\x02garbage\n",
        b'{"event":"worker_connect","secret_key":"nope"}\n',
        b'{"event":"launch"}\n',
        b"x" * 200000 + b"\n",
    ],
    ids=["garbage", "wrong-secret", "unknown-event", "oversized"],
)
async def test_garbage_on_register_port_is_rejected(
    cluster: AppSpec, clients: list[RC], line: bytes
) -> None:
    answer = await asyncio.to_thread(_register_exchange, cluster.register_port, line)
    assert b'"error"' in answer or answer.endswith(b"<reset>")
    assert await clients[0].call("echo", "ok") == ["ok"]


async def test_register_accepts_the_right_secret(cluster: AppSpec) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", cluster.register_port)
    writer.write(json.dumps({"event": "worker_connect", "secret_key": SECRET}).encode() + b"\n")
    line = await asyncio.wait_for(reader.readline(), 5)
    document = json.loads(line)
    assert document["event"] == "broadcast_addresses"
    assert sorted(document["addresses"]) == [
        f"127.0.0.1:{cluster.start_port}",
        f"127.0.0.1:{cluster.start_port + 1}",
    ]
    writer.close()


async def test_heartbeat_closes_silent_clients(tmp_path: Path) -> None:
    spec = make_app(
        tmp_path,
        "rc",
        gateways=1,
        workers=1,
        gateway_options='ping_interval=0.3, ping_not_response_limit=2, ping_data=\'{"type":"ping"}\'',
    )
    proc = ForegroundCluster(spec).start()
    try:
        await wait_ready(spec)
        monitor = await RC.open(spec.ws_url)
        await monitor.call("bind_uid", monitor.client_id, "monitor")
        silent = await RC.open(spec.ws_url)
        opened_at = asyncio.get_running_loop().time()
        # The monitor stays active by answering; the silent client says nothing.
        closed = None
        for _ in range(40):
            try:
                message = await monitor.expect(0.25)
            except TimeoutError:
                await monitor.ws.send('{"op":"echo"}')
                continue
            data = json.loads(message)
            if data.get("type") == "ping":
                await monitor.ws.send('{"type":"pong"}')
            elif data.get("event") == "close":
                closed = data
                break
        assert closed is not None and closed["client_id"] == silent.client_id
        silent_for = asyncio.get_running_loop().time() - opened_at
        # limit 2 x interval 0.3 s: never before 0.6 s of silence, and well within 5 s
        assert 0.5 <= silent_for < 5.0, silent_for
        await asyncio.wait_for(silent.ws.wait_closed(), 5)
        assert silent.inbox.qsize() >= 1  # it did receive pings before being dropped
        assert await monitor.call("echo", "alive") == ["alive"]
        await monitor.close()
    finally:
        assert proc.interrupt() == 0, proc.output()
