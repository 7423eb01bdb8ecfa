"""GatewayServer in the test's event loop: fake workers speak gateway/protocol.py over
raw streams, clients are the ``websockets`` client library."""

from __future__ import annotations

import asyncio
import functools
import socket
import struct
from pathlib import Path
from typing import Any

import pytest
import uvloop

from pygatewayworker.gateway.client_id import decode_client_id
from pygatewayworker.gateway.links import InternalLink
from pygatewayworker.gateway.protocol import (
    NO_WS_CONNECT,
    Cmd,
    encode,
    pack_session,
    unpack_session,
)
from pygatewayworker.gateway.server import GatewayServer
from tests.gatewayharness import (
    SECRET,
    TIMEOUT,
    FakeLink,
    close_code,
    make_config,
    open_client,
    recv,
    refused_port,
    running,
    wait_until,
    ws,
)
from tests.wsclient import KEY, client_frame, request, upgrade_lines

# ---- events ---------------------------------------------------------------------------


async def test_events_have_the_documented_shapes() -> None:
    async with running() as server:
        worker = await FakeLink.linked(server)
        client = await ws(
            server, "/chat?room=7&x=%20", additional_headers={"Cookie": "token=abc; lang=fr"}
        )
        local_port = client.local_address[1]
        ev = await worker.expect(Cmd.EV_CONNECT)
        cid = ev[1]
        assert type(cid) is int and 1 <= cid < 2**31 + 1
        assert ev[1:] == [cid, None, "127.0.0.1", local_port, None]
        ev = await worker.expect(Cmd.EV_WS_CONNECT)
        assert ev[1:5] == [cid, None, "127.0.0.1", local_port]
        info = ev[5]
        assert info["path"] == "/chat" and info["query"] == "room=7&x=%20"
        assert info["headers"]["upgrade"] == "websocket"
        assert info["cookies"] == {"token": "abc", "lang": "fr"}
        assert info["remote_ip"] == "127.0.0.1" and info["remote_port"] == local_port

        await client.send("héllo")
        await client.send(b"\x00\x01")
        text = await worker.expect(Cmd.EV_MESSAGE)
        binary = await worker.expect(Cmd.EV_MESSAGE)
        assert text[1] == cid and text[5] == "héllo" and type(text[5]) is str
        assert binary[5] == b"\x00\x01" and type(binary[5]) is bytes

        worker.send(Cmd.SET_SESSION, cid, pack_session({"name": "ann"}))
        worker.send(Cmd.UPDATE_SESSION, cid, {"room": {"id": 7}})
        await asyncio.sleep(0.05)
        await client.close()
        closed = await worker.expect(Cmd.EV_CLOSE)
        assert closed[1] == cid and closed[5] is None
        assert unpack_session(closed[2]) == {"name": "ann", "room": {"id": 7}}
        await wait_until(lambda: len(server.directory) == 0)
        stats = server.stats()
        assert stats["messages_in"] == 2 and stats["workers"] == 1
        await worker.close()


async def test_no_ws_connect_for_a_worker_that_said_it_has_no_such_callback() -> None:
    """A worker whose HELLO announced NO_WS_CONNECT gets EV_CONNECT, the messages
    and EV_CLOSE of its clients, but no EV_WS_CONNECT."""
    async with running() as server:
        worker = await FakeLink.linked(server, hooks=(NO_WS_CONNECT,))
        client = await ws(server, "/chat")
        cid = (await worker.expect(Cmd.EV_CONNECT))[1]
        await client.send("first")
        assert (await worker.recv())[:2] == [Cmd.EV_MESSAGE, cid]  # nothing in between
        await client.close()
        assert (await worker.recv())[:2] == [Cmd.EV_CLOSE, cid]
        await worker.close()


async def test_commands_deliver_and_preserve_text_and_binary() -> None:
    async with running() as server:
        worker = await FakeLink.linked(server)
        a, id_a = await open_client(server, worker)
        b, id_b = await open_client(server, worker)
        c, id_c = await open_client(server, worker)

        worker.send(Cmd.SEND_TO_CLIENT, id_a, "text")
        worker.send(Cmd.SEND_TO_CLIENT, id_a, b"bin")
        worker.send(Cmd.SEND_TO_CLIENT, 999, "nobody")  # gone: ignored
        assert await recv(a) == "text"
        assert await recv(a) == b"bin"

        for conn_id in (id_a, id_b):
            worker.send(Cmd.JOIN_GROUP, conn_id, "room")
        worker.send(Cmd.JOIN_GROUP, id_c, "other")
        worker.send(Cmd.SEND_TO_GROUP, ["room", "other"], "to groups", [id_b])
        assert await recv(a) == "to groups"
        assert await recv(c) == "to groups"

        worker.send(Cmd.BIND_UID, id_b, "bob")
        worker.send(Cmd.SEND_TO_UID, ["bob", "nobody"], b"to uid")
        assert await recv(b) == b"to uid"

        worker.send(Cmd.SEND_TO_ALL, "everyone", None, None)
        worker.send(Cmd.SEND_TO_ALL, "some", [id_a, id_c], [id_c])
        worker.send(Cmd.SEND_TO_ALL, "none", [], None)
        for client in (a, b, c):
            assert await recv(client) == "everyone"
        assert await recv(a) == "some"

        worker.send(Cmd.UNGROUP, "other")
        worker.send(Cmd.SEND_TO_GROUP, ["other"], "dissolved", None)
        worker.send(Cmd.SEND_TO_CLIENT, id_c, "last")
        assert await recv(c) == "last"
        assert server.stats()["messages_out"] >= 10
        for client in (a, b, c):
            await client.close()
        await worker.close()


async def test_a_large_read_is_handled_in_turns_with_the_link_paused() -> None:
    """Thousands of packets in one write: the gateway pauses reading the link while
    they wait for later loop turns (back-pressure), and handles every one in order;
    a query sent last is answered after all of them."""
    paused: list[int] = []
    pause = InternalLink.pause_reading

    def recorded(self: InternalLink) -> None:
        paused.append(1)
        pause(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(InternalLink, "pause_reading", recorded)
        await _large_read(paused)


async def _large_read(paused: list[int]) -> None:
    async with running() as server:
        worker = await FakeLink.linked(server)
        a, id_a = await open_client(server, worker)
        b, id_b = await open_client(server, worker)
        for conn_id in (id_a, id_b):
            worker.send(Cmd.JOIN_GROUP, conn_id, "room")
        push = await FakeLink.linked(server, "client", "push")
        count = 3000
        push.writer.write(
            b"".join(
                encode(Cmd.SEND_TO_CLIENT, id_a, f"a{i}")
                if i % 3
                else encode(Cmd.SEND_TO_GROUP, ["room"], f"g{i}", None)
                for i in range(count)
            )
        )
        stats = await push.query(Cmd.Q_STATS)
        assert stats["messages_out"] >= count
        assert paused, "the link's reading was never paused"
        for i in range(count):
            assert await recv(a) == (f"a{i}" if i % 3 else f"g{i}")
        for i in range(0, count, 3):
            assert await recv(b) == f"g{i}"
        assert not server.core.pacer.jobs and not server.core.pacer.waiting
        for client in (a, b):
            await client.close()
        await worker.close()
        await push.close()


async def test_queries_answer_every_shape() -> None:
    async with running() as server:
        worker = await FakeLink.linked(server)
        push = await FakeLink.linked(server, role="client", name="web")
        a, id_a = await open_client(server, worker)
        b, id_b = await open_client(server, worker)
        push.send(Cmd.BIND_UID, id_a, "ann")
        push.send(Cmd.JOIN_GROUP, id_a, "g")
        push.send(Cmd.JOIN_GROUP, id_b, "g")
        push.send(Cmd.SET_SESSION, id_b, pack_session({"k": 1}))

        info = await push.query(Cmd.Q_CLIENT_INFO, id_a)
        assert info == {"uid": "ann", "session": None, "groups": ["g"]}
        assert await push.query(Cmd.Q_CLIENT_INFO, 12345) is None
        assert await push.query(Cmd.Q_UIDS, ["ann", "zed"]) == {"ann": [id_a]}
        assert await push.query(Cmd.Q_GROUPS, ["g", "none"], "count") == {"g": 2, "none": 0}
        assert await push.query(Cmd.Q_GROUPS, None, "ids") == {"": [id_a, id_b]}
        sessions = await push.query(Cmd.Q_GROUPS, ["g"], "sessions")
        assert sessions == {"g": {id_a: None, id_b: pack_session({"k": 1})}}
        assert await push.query(Cmd.Q_GROUPS, ["g"], "uids") == {"g": ["ann"]}
        assert await push.query(Cmd.Q_ALL_GROUPS, "count") == {"g": 2}
        assert await push.query(Cmd.Q_ALL_UIDS) == ["ann"]

        rows = await push.query(Cmd.Q_CONNECTIONS)
        assert [decode_client_id(r["client_id"]).conn_id for r in rows] == [id_a, id_b]
        assert decode_client_id(rows[0]["client_id"]).gateway == server.internal_address
        assert rows[0]["uid"] == "ann" and rows[0]["groups"] == ["g"]
        assert rows[0]["remote"].startswith("127.0.0.1:") and rows[0]["bytes_in"] > 0
        stats = await push.query(Cmd.Q_STATS)
        assert stats["connections"] == 2 and stats["workers"] == 1 and stats["clients"] == 1
        for key in ("messages_in", "messages_out", "bytes_in", "bytes_out", "send_failures"):
            assert key in stats
        assert "pending_events" in stats and stats["uptime"] >= 0

        # A push client receives no client events, but the worker keeps getting them.
        await a.send("x")
        assert (await worker.expect(Cmd.EV_MESSAGE))[5] == "x"
        push.send(Cmd.PING)
        assert (await push.recv())[0] == Cmd.PONG
        for client in (a, b):
            await client.close()
        await worker.close()
        await push.close()


async def test_the_connections_command_reads_a_gateway_page_by_page(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``start.py connections`` (``cluster.query.connection_rows``) over a real link:
    pages of 3 over one connection, every client once, in conn_id order; a wrong
    secret and a gateway that is not there are reported as errors."""
    from pygatewayworker.cluster import query

    monkeypatch.setattr(query, "CONNECTION_PAGE", 3)
    async with running() as server:
        worker = await FakeLink.linked(server)
        opened = [await open_client(server, worker) for _ in range(8)]
        targets = [
            query.GatewayTarget("gw", server.internal_address, SECRET),
            query.GatewayTarget("wrong", server.internal_address, "not the secret"),
            query.GatewayTarget("gone", f"127.0.0.1:{refused_port()}", SECRET),
        ]
        answers, errors = await query.connection_rows(targets, timeout=5)
        assert [decode_client_id(r["client_id"]).conn_id for r in answers["gw"]] == [
            conn_id for _, conn_id in opened
        ]
        assert set(answers) == {"gw"} and len(errors) == 2
        assert "wrong" in errors[0] and "secret" in errors[0] and "gone" in errors[1]
        assert server.stats()["connections"] == 8  # nothing dropped by the listing

        # A gateway of an older version knows only the one-list form: the reader
        # falls back to it (on a new link, as the gateway closes the first).
        core = server.core
        core.queries[Cmd.Q_CONNECTIONS] = lambda: core.clients.rows("127.0.0.1", core.internal_port)
        answers, errors = await query.connection_rows(targets[:1], timeout=5)
        assert errors == [] and len(answers["gw"]) == 8
        for client, _ in opened:
            await client.close()
        await worker.close()


async def test_close_client_sends_last_message_then_1000_and_destroy_aborts() -> None:
    async with running() as server:
        worker = await FakeLink.linked(server)
        a, id_a = await open_client(server, worker)
        b, id_b = await open_client(server, worker)
        worker.send(Cmd.CLOSE_CLIENT, id_a, "bye")
        assert await recv(a) == "bye"
        assert await close_code(a) == 1000
        assert (await worker.expect(Cmd.EV_CLOSE))[1] == id_a
        worker.send(Cmd.DESTROY_CLIENT, id_b)
        assert await close_code(b) == 1006
        assert (await worker.expect(Cmd.EV_CLOSE))[1] == id_b
        await worker.close()


# ---- bad input on the internal port -----------------------------------------------------


async def test_bad_links_are_closed_and_others_keep_working() -> None:
    async with running() as server:
        worker = await FakeLink.linked(server)
        client, conn_id = await open_client(server, worker)

        wrong = await FakeLink.open(server)
        wrong.send(Cmd.HELLO, "worker", "evil", "not the secret", 1)
        seen = await wrong.closed()
        assert seen[0][0] == Cmd.ERROR and "secret" in seen[0][2]

        # The ERROR survives even when the peer keeps sending after its mistake.
        flood = await FakeLink.open(server)
        flood.writer.write(encode(Cmd.HELLO, "worker", "x", "wrong", 1) + b"x" * 2_000_000)
        assert (await flood.closed())[0][0] == Cmd.ERROR

        garbage = await FakeLink.open(server)
        garbage.writer.write(b"\x00\x00\x00\x05hello")
        assert (await garbage.closed())[0][0] == Cmd.ERROR

        huge = await FakeLink.open(server)
        huge.writer.write(struct.pack("!I", 0xFFFFFFF0))
        assert (await huge.closed())[0][0] == Cmd.ERROR

        not_hello = await FakeLink.open(server)
        not_hello.send(Cmd.SEND_TO_ALL, "x", None, None)
        assert (await not_hello.closed())[0][0] == Cmd.ERROR

        rogue = await FakeLink.linked(server, role="client")
        rogue.send(Cmd.SEND_TO_CLIENT, "not an id", 5)
        assert (await rogue.closed())[0][0] == Cmd.ERROR

        unknown = await FakeLink.linked(server, role="client")
        unknown.send(Cmd.REPLY, 1, None)
        assert (await unknown.closed())[0][0] == Cmd.ERROR

        bad_query = await FakeLink.linked(server, role="client")
        bad_query.send(Cmd.Q_GROUPS, 7, ["g"], "everything")
        error = (await bad_query.closed())[0]
        assert error[0] == Cmd.ERROR and error[1] == 7

        # The good worker and the client never noticed.
        await client.send("still here")
        assert (await worker.expect(Cmd.EV_MESSAGE))[5] == "still here"
        worker.send(Cmd.SEND_TO_CLIENT, conn_id, "yes")
        assert await recv(client) == "yes"
        for link in (wrong, flood, garbage, huge, not_hello, rogue, unknown, bad_query):
            await link.close()
        await client.close()
        await worker.close()


async def test_silent_link_is_dropped_and_idle_link_gets_pings() -> None:
    async with running(keepalive_interval=0.1, link_timeout=0.6) as server:
        server.core.hello_timeout = 0.2
        mute = await FakeLink.open(server)
        seen = await mute.closed()
        assert seen and seen[0][0] == Cmd.ERROR and "HELLO" in seen[0][2]

        worker = await FakeLink.linked(server)
        assert (await worker.recv())[0] == Cmd.PING  # idle link pinged
        await worker.closed(timeout=3)  # we never answer: dropped after link_timeout
        await wait_until(lambda: server.stats()["workers"] == 0)


# ---- client-side limits and heartbeat ---------------------------------------------------


async def test_oversized_message_gets_1009_and_protocol_error_1002() -> None:
    async with running(max_message_size=1000) as server:
        worker = await FakeLink.linked(server)
        client, _ = await open_client(server, worker)
        await client.send("x" * 1001)
        assert await close_code(client) == 1009
        await worker.expect(Cmd.EV_CLOSE)

        reader, writer = await asyncio.open_connection("127.0.0.1", server.public_port)
        writer.write(request(upgrade_lines()))
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101")
        writer.write(client_frame(1, b"unmasked", mask=False))
        frame = await asyncio.wait_for(reader.read(4), TIMEOUT)
        assert frame[0] == 0x88 and struct.unpack("!H", frame[2:4])[0] == 1002
        assert await asyncio.wait_for(reader.read(), TIMEOUT) is not None
        writer.close()
        await worker.expect(Cmd.EV_CONNECT)
        await worker.expect(Cmd.EV_WS_CONNECT)
        await worker.expect(Cmd.EV_CLOSE)
        await worker.close()


async def test_heartbeat_pings_then_closes_a_silent_client() -> None:
    async with running(
        ping_interval=0.2, ping_not_response_limit=1, ping_data='{"type":"ping"}'
    ) as server:
        worker = await FakeLink.linked(server)
        silent, silent_id = await open_client(server, worker)
        chatty, _ = await open_client(server, worker)
        assert await recv(silent) == '{"type":"ping"}'

        async def keep_talking() -> None:
            for _ in range(10):
                await chatty.send('{"type":"pong"}')
                await asyncio.sleep(0.1)

        talker = asyncio.create_task(keep_talking())
        assert await close_code(silent) == 1006  # aborted
        await worker.skip_until(Cmd.EV_CLOSE, silent_id)
        await talker
        # The chatty client is still there.
        await chatty.send("alive")
        assert server.directory.get(silent_id) is None
        assert len(server.directory) == 1
        await chatty.close()
        await worker.close()


async def test_ws_pings_are_answered_and_count_as_activity() -> None:
    async with running(ping_interval=0.2, ping_not_response_limit=1) as server:
        worker = await FakeLink.linked(server)
        client, _ = await open_client(server, worker)
        for _ in range(8):
            pong = await client.ping(b"hb")
            await asyncio.wait_for(pong, TIMEOUT)
            await asyncio.sleep(0.1)
        assert len(server.directory) == 1  # pings kept it alive for 4 intervals
        await client.close()
        await worker.close()


async def test_client_sockets_get_the_small_send_buffer() -> None:
    """``send_socket_buffer`` is set once on the listening socket; every accepted
    client socket inherits it (Linux reports twice the size asked for)."""
    async with running(send_socket_buffer=16384) as server:
        worker = await FakeLink.linked(server)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.public_port)
        writer.write(request(upgrade_lines()))
        await reader.readuntil(b"\r\n\r\n")
        conn_id = (await worker.expect(Cmd.EV_CONNECT))[1]
        conn = server.directory.get(conn_id).writer
        sock = conn.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) in (16384, 2 * 16384)
        writer.close()
        await worker.close()


async def slow_reader(server: Any, worker: FakeLink) -> tuple[int, Any, asyncio.StreamWriter]:
    """A client that reads little (small receive buffer, and its gateway-side socket
    gets a small send buffer, so the kernel does not absorb what is written): its
    conn_id, the gateway's connection, our writer."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.public_port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(request(upgrade_lines()))
    await reader.readuntil(b"\r\n\r\n")
    conn_id = (await worker.expect(Cmd.EV_CONNECT))[1]
    conn = server.directory.get(conn_id).writer
    conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return conn_id, conn, writer


async def test_slow_consumer_is_closed_and_counted() -> None:
    async with running(send_buffer_limit=64 * 1024) as server:
        server.client_port.close_timeout = 0.5
        worker = await FakeLink.linked(server)
        conn_id, _, writer = await slow_reader(server, worker)
        for _ in range(20):  # the client never reads
            worker.send(Cmd.SEND_TO_CLIENT, conn_id, b"z" * 500_000)
        await wait_until(lambda: server.stats()["send_failures"] == 1)
        stats = server.stats()  # metrics: what waits in its transport (still closing)
        assert stats["send_buffer_max_bytes"] > 64 * 1024
        assert stats["send_buffer_bytes"] == stats["send_buffer_max_bytes"]
        await worker.skip_until(
            Cmd.EV_CLOSE, conn_id, timeout=server.client_port.close_timeout + TIMEOUT
        )
        assert server.stats()["closed_by_reason"]["send_buffer_limit"] == 1
        writer.close()
        await worker.close()


# ---- worker routing ---------------------------------------------------------------------


async def test_events_are_held_until_a_worker_links() -> None:
    async with running() as server:
        client = await ws(server, "/held")
        await client.send("first")
        await client.send(b"second")
        await wait_until(lambda: server.stats()["pending_events"] == 4)
        worker = await FakeLink.linked(server)
        kinds = [(await worker.recv()) for _ in range(4)]
        assert [k[0] for k in kinds] == [
            Cmd.EV_CONNECT,
            Cmd.EV_WS_CONNECT,
            Cmd.EV_MESSAGE,
            Cmd.EV_MESSAGE,
        ]
        assert kinds[1][5]["path"] == "/held"
        assert [kinds[2][5], kinds[3][5]] == ["first", b"second"]
        assert server.stats()["pending_events"] == 0
        await client.send("live")
        assert (await worker.expect(Cmd.EV_MESSAGE))[5] == "live"
        await client.close()
        await worker.close()


async def test_held_events_expire() -> None:
    async with running(pending_event_seconds=0.1, keepalive_interval=0.1) as server:
        client = await ws(server)
        await client.send("lost")
        await wait_until(lambda: server.stats()["pending_events"] == 3)
        await wait_until(lambda: server.stats()["pending_events"] == 0)
        worker = await FakeLink.linked(server)
        await client.send("kept")
        # The client was connected before: its new events go to the new worker.
        assert (await worker.expect(Cmd.EV_MESSAGE))[5] == "kept"
        await client.close()
        await worker.close()


async def test_leaving_worker_link_end_releases_held_events() -> None:
    """A leaving worker that never releases (or dies) frees its clients' held events
    when its link ends; a RELEASE from a worker that is not leaving is refused."""
    async with running() as server:
        w1 = await FakeLink.linked(server, name="w1")
        client, conn_id = await open_client(server, w1)
        rogue = await FakeLink.linked(server, name="rogue")
        rogue.send(Cmd.RELEASE, [conn_id], False)
        seen = await rogue.closed()
        assert seen and seen[0][0] == Cmd.ERROR and "leaving worker" in seen[0][2]
        w2 = await FakeLink.linked(server, name="w2")
        w1.send(Cmd.WORKER_LEAVE)
        await w1.expect(Cmd.LEAVE_ACK)
        await client.send("held")
        await client.close()
        leaving = next(link for link in server.core.links if link.name == "w1")
        await wait_until(lambda: leaving.held_events == 2)  # the message and EV_CLOSE
        await w1.close()
        assert (await w2.expect(Cmd.EV_MESSAGE))[5] == "held"
        assert (await w2.expect(Cmd.EV_CLOSE))[1] == conn_id
        await w2.close()
        await rogue.close()


async def test_gateway_stop_hands_on_events_held_for_a_leaving_worker() -> None:
    server = GatewayServer(make_config())
    await server.start()
    w1 = await FakeLink.linked(server, name="w1")
    client, conn_id = await open_client(server, w1)
    w2 = await FakeLink.linked(server, name="w2")
    w1.send(Cmd.WORKER_LEAVE)
    await w1.expect(Cmd.LEAVE_ACK)
    await client.send("held")
    leaving = next(link for link in server.core.links if link.name == "w1")
    await wait_until(lambda: leaving.held_events == 1)
    await server.stop(graceful=False)
    seen = await w2.closed()
    assert [p[0] for p in seen if p[1] == conn_id] == [Cmd.EV_MESSAGE, Cmd.EV_CLOSE]
    await w1.close()
    await w2.close()


async def test_worker_leave_reroutes_and_acks() -> None:
    async with running() as server:
        w1 = await FakeLink.linked(server, name="w1")
        w2 = await FakeLink.linked(server, name="w2")
        a = await ws(server)
        b = await ws(server)
        # Least connections: one client each.
        first = await w1.expect(Cmd.EV_CONNECT)
        second = await w2.expect(Cmd.EV_CONNECT)
        low = min(first[1], second[1])  # ids count up from a random start
        assert {first[1], second[1]} == {low, low + 1}
        await w1.expect(Cmd.EV_WS_CONNECT)
        await w2.expect(Cmd.EV_WS_CONNECT)
        client_of_w1 = a if first[1] == low else b

        await client_of_w1.send("before")
        assert (await w1.expect(Cmd.EV_MESSAGE))[5] == "before"
        w1.send(Cmd.WORKER_LEAVE)
        await w1.expect(Cmd.LEAVE_ACK)
        # w1 is still busy with "before": the client's next events are held ...
        w1.send(Cmd.RELEASE, [first[1]], True)
        await client_of_w1.send("after")
        await client_of_w1.send("after 2")
        leaving = next(link for link in server.core.links if link.name == "w1")
        await wait_until(lambda: leaving.held_events == 2)
        # ... until w1 is done with that client (it writes the session back first):
        # then they go to w2, in order, with that session
        w1.send(Cmd.SET_SESSION, first[1], pack_session({"n": 1}))
        w1.send(Cmd.RELEASE, [first[1]], False)
        moved = await w2.expect(Cmd.EV_MESSAGE)
        assert moved[1] == first[1] and moved[5] == "after"
        assert unpack_session(moved[2]) == {"n": 1}
        assert (await w2.expect(Cmd.EV_MESSAGE))[5] == "after 2"
        assert leaving.held_events == 0

        # A new client goes to w2 too; when w2 drops, events are held again.
        await w2.close()
        await wait_until(lambda: server.stats()["workers"] == 1)  # w1 still linked
        await client_of_w1.send("held")
        await wait_until(lambda: server.stats()["pending_events"] == 1)
        w3 = await FakeLink.linked(server, name="w3")
        assert (await w3.expect(Cmd.EV_MESSAGE))[5] == "held"
        for client in (a, b):
            await client.close()
        await w1.close()
        await w3.close()


# ---- plain HTTP and the handshake -------------------------------------------------------


async def http(server: GatewayServer, raw: bytes) -> tuple[bytes, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.public_port)
    writer.write(raw)
    data = await asyncio.wait_for(reader.read(), TIMEOUT)  # until the server closes
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


async def test_static_files_and_http_errors(tmp_path: Path) -> None:
    web = tmp_path / "web"
    web.mkdir()
    (web / "index.html").write_text("<script>new WebSocket(url)</script>")
    (web / "app.js").write_text("1;")
    (tmp_path / "secret.txt").write_text("no")
    (web / "link").symlink_to(tmp_path / "secret.txt")
    async with running(static_dir=str(web)) as server:
        worker = await FakeLink.linked(server)
        head, body = await http(server, b"GET /?room_id=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"text/html" in head
        assert b"new WebSocket" in body
        head, body = await http(server, b"GET /app.js HTTP/1.1\r\n\r\n")
        assert b"text/javascript" in head and body == b"1;"
        head, body = await http(server, b"HEAD /app.js HTTP/1.1\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and body == b""
        for path in (b"/../secret.txt", b"/%2e%2e/secret.txt", b"/link", b"/missing"):
            head, _ = await http(server, b"GET " + path + b" HTTP/1.1\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 404"), path
        head, _ = await http(server, b"POST / HTTP/1.1\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 405")
        head, _ = await http(server, b"nonsense\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400")
        head, _ = await http(server, request(upgrade_lines(**{"Sec-WebSocket-Version": "7"})))
        assert head.startswith(b"HTTP/1.1 426") and b"Sec-WebSocket-Version: 13" in head
        head, _ = await http(server, b"GET / HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 431")
        # None of these became clients.
        assert len(server.directory) == 0
        assert server.stats()["pending_events"] == 0
        with pytest.raises((TimeoutError, asyncio.TimeoutError)):
            await worker.expect(Cmd.EV_CONNECT, timeout=0.2)
        await worker.close()


async def test_no_static_dir_gives_404_and_frames_after_the_head_are_read() -> None:
    async with running() as server:
        head, _ = await http(server, b"GET / HTTP/1.1\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 404")
        worker = await FakeLink.linked(server)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.public_port)
        # A client that pipelines a frame right behind its handshake.
        writer.write(request(upgrade_lines()) + client_frame(1, b"eager"))
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101") and KEY not in head.decode()
        await worker.expect(Cmd.EV_CONNECT)
        await worker.expect(Cmd.EV_WS_CONNECT)
        assert (await worker.expect(Cmd.EV_MESSAGE))[5] == "eager"
        writer.close()
        await worker.expect(Cmd.EV_CLOSE)
        await worker.close()


# ---- stopping ---------------------------------------------------------------------------


@pytest.mark.parametrize(("graceful", "code"), [(True, 1001), (False, 1006)])
async def test_stop_closes_clients_and_reports_closes(graceful: bool, code: int) -> None:
    server = GatewayServer(make_config())
    await server.start()
    worker = await FakeLink.linked(server)
    client, conn_id = await open_client(server, worker)
    stopping = asyncio.create_task(server.stop(graceful=graceful))
    assert await close_code(client) == code  # 1001 "going away", or dropped at once
    seen = await worker.closed()
    assert [p[1] for p in seen if p[0] == Cmd.EV_CLOSE] == [conn_id]
    await asyncio.wait_for(stopping, TIMEOUT)
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", server.public_port)
    await worker.close()


# ---- the same scenarios on uvloop (what gateway processes run on) ---------------------

UVLOOP_SCENARIOS = [
    test_events_have_the_documented_shapes,
    test_commands_deliver_and_preserve_text_and_binary,
    test_queries_answer_every_shape,
    test_close_client_sends_last_message_then_1000_and_destroy_aborts,
    test_bad_links_are_closed_and_others_keep_working,
    test_oversized_message_gets_1009_and_protocol_error_1002,
    test_heartbeat_pings_then_closes_a_silent_client,
    test_slow_consumer_is_closed_and_counted,
    test_events_are_held_until_a_worker_links,
    test_worker_leave_reroutes_and_acks,
    test_a_large_read_is_handled_in_turns_with_the_link_paused,
    test_no_static_dir_gives_404_and_frames_after_the_head_are_read,
    functools.partial(test_stop_closes_clients_and_reports_closes, True, 1001),
]


def _name(scenario: Any) -> str:
    return getattr(scenario, "func", scenario).__name__[5:]


@pytest.mark.parametrize("scenario", UVLOOP_SCENARIOS, ids=_name)
def test_on_uvloop(scenario) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(scenario(), 30))


async def test_send_buffers_of_many_clients_are_surveyed_a_chunk_per_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Over ``SURVEY_CHUNK`` clients (2 here, 5 clients) the stats give the last
    finished survey, which reads a chunk per loop turn: the first call starts one and
    gives zeros; once it finishes the figures are those of the transports."""
    from pygatewayworker.gateway import connection

    monkeypatch.setattr(connection, "SURVEY_CHUNK", 2)
    async with running() as server:
        worker = await FakeLink.linked(server)
        conns, writers = [], []
        for _ in range(5):
            conn_id, conn, writer = await slow_reader(server, worker)
            await worker.expect(Cmd.EV_WS_CONNECT)
            conns.append((conn_id, conn))
            writers.append(writer)
        for n, (conn_id, _) in enumerate(conns[:2]):  # two clients that never read
            worker.send(Cmd.SEND_TO_CLIENT, conn_id, b"z" * (100_000 * (n + 1)))

        def queued() -> list[int]:
            return [conn.transport.get_write_buffer_size() for _, conn in conns]

        await wait_until(lambda: sum(queued()) > 0)
        await asyncio.sleep(0.2)  # what the kernel takes is taken
        sizes = queued()
        assert max(sizes) > 10_000
        first = server.stats()
        assert first["send_buffer_bytes"] == first["send_buffer_max_bytes"] == 0
        assert server.client_port._survey is not None  # not done in that call
        await wait_until(lambda: server.stats()["send_buffer_bytes"] > 0)
        stats = server.stats()
        assert stats["send_buffer_bytes"] == sum(sizes) == sum(queued())
        assert stats["send_buffer_max_bytes"] == max(sizes)
        for writer in writers:
            writer.close()
        await worker.close()
