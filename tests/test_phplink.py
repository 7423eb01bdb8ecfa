"""gateway/phplink.py: PHP GatewayClient links on a GatewayServer's internal port, in
the test's event loop, next to msgpack links (fake workers from
tests.gatewayharness) and real WebSocket clients."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
import uvloop

from pygatewayworker.gateway import phplink
from pygatewayworker.gateway.gatewayprotocol import ReplyDecoder
from pygatewayworker.gateway.phpserialize import loads
from pygatewayworker.gateway.protocol import Cmd, pack_session, unpack_session
from pygatewayworker.gateway.server import GatewayServer
from tests import phpclient as php
from tests.gatewayharness import (
    SECRET,
    FakeLink,
    close_code,
    open_client,
    recv,
    running,
    wait_until,
)
from tests.phpclient import ext_json, packet

AUTH = packet(php.GATEWAY_CLIENT_CONNECT, body=ext_json({"secret_key": SECRET}))


class PhpLinkClient:
    """A raw connection speaking GatewayProtocol."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.replies = ReplyDecoder()
        self.pending: list[bytes] = []

    @classmethod
    async def open(cls, server: GatewayServer, first: bytes = AUTH) -> PhpLinkClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.internal_port)
        link = cls(reader, writer)
        if first:
            writer.write(first)
        return link

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def reply(self) -> bytes:
        """The next reply payload."""
        async with asyncio.timeout(5):
            while not self.pending:
                data = await self.reader.read(65536)
                if not data:
                    raise EOFError("link closed")
                self.pending += self.replies.feed(data)
        return self.pending.pop(0)

    async def ask(self, data: bytes) -> object:
        self.send(data)
        return loads(await self.reply(), text=True)

    async def closed(self) -> bytes:
        """Everything the gateway wrote until it closed the link."""
        async with asyncio.timeout(5):
            seen = b""
            while data := await self.reader.read(65536):
                seen += data
        return seen

    def close(self) -> None:
        self.writer.close()


def lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


async def test_php_and_msgpack_links_share_the_internal_port() -> None:
    async with running() as server:
        worker = await FakeLink.linked(server)
        client, conn_id = await open_client(server, worker)
        pusher = await FakeLink.linked(server, role="client", name="push")
        link = await PhpLinkClient.open(server)
        # one persistent PHP link, many calls, as php-fpm's persistent connections do
        link.send(packet(php.JOIN_GROUP, conn_id, "room"))
        link.send(packet(php.BIND_UID, conn_id, "alice"))
        group = ext_json({"group": ["room"], "exclude": None})
        link.send(packet(php.SEND_TO_GROUP, 0, group, "from php"))
        assert await recv(client) == "from php"
        pusher.send(Cmd.SEND_TO_UID, ["alice"], "from msgpack")
        assert await recv(client) == "from msgpack"
        assert await link.ask(packet(php.IS_ONLINE, conn_id)) == 1
        assert await link.ask(packet(php.GET_CLIENT_ID_BY_UID, 0, "alice")) == [conn_id]
        # a raw send: a whole WebSocket frame written as it is
        link.send(packet(php.SEND_TO_ONE, conn_id, b"", b"\x81\x03raw", flag=php.RAW))
        assert await recv(client) == "raw"
        # the worker still gets the client's events; the msgpack link still queries
        await client.send("hello")
        assert (await worker.expect(Cmd.EV_MESSAGE))[5] == "hello"
        pusher.send(Cmd.Q_UIDS, 1, ["alice"])
        assert (await pusher.expect(Cmd.REPLY))[2] == {"alice": [conn_id]}
        assert server.stats()["clients"] == 1  # PHP links are not push-client links
        link.close()
        await client.close()
        await pusher.close()
        await worker.close()


async def test_connections_per_call_wait_in_the_backlog_not_in_syn_retries() -> None:
    """GatewayClient's default is a new connection per call: with many php-fpm workers
    a gateway busy for a moment has hundreds of them waiting to be accepted. They must
    wait in the listen queue (the public port's), not be dropped by the kernel and
    retried by TCP one second later (asyncio's default backlog is 100)."""
    async with running() as server:
        worker = await FakeLink.linked(server)
        client, conn_id = await open_client(server, worker)
        calls = 300
        socks: list[socket.socket] = []
        try:
            # the loop (and so the gateway) is blocked here: nothing is accepted
            for i in range(calls):
                sock = socket.socket()
                socks.append(sock)
                sock.settimeout(0.5)  # a dropped SYN is only retried after 1 s
                try:
                    sock.connect(("127.0.0.1", server.internal_port))
                except TimeoutError:
                    pytest.fail(f"connection {i} was dropped by the full listen queue")
                sock.sendall(AUTH + packet(php.SEND_TO_ONE, conn_id, b"", f"call {i}"))
        finally:
            for sock in socks:
                sock.close()
        received = {await recv(client) for _ in range(calls)}
        assert received == {f"call {i}" for i in range(calls)}
        await client.close()
        await worker.close()


async def test_a_burst_keeps_its_order_and_merges_broadcasts() -> None:
    async with running() as server:
        worker = await FakeLink.linked(server)
        a, id_a = await open_client(server, worker)
        b, id_b = await open_client(server, worker)
        link = await PhpLinkClient.open(server)
        group = ext_json({"group": ["g"], "exclude": None})
        burst = packet(php.JOIN_GROUP, id_a, "g")
        burst += b"".join(packet(php.SEND_TO_GROUP, 0, group, f"m{i}") for i in range(3))
        burst += packet(php.JOIN_GROUP, id_b, "g")
        burst += packet(php.SEND_TO_GROUP, 0, group, "m3")
        burst += packet(php.GET_CLIENT_COUNT_BY_GROUP, 0, "g")
        burst += packet(php.SEND_TO_GROUP, 0, group, b"\x81\x02m4", flag=php.RAW)
        link.send(burst)
        assert loads(await link.reply()) == 2
        assert [await recv(a) for _ in range(5)] == ["m0", "m1", "m2", "m3", "m4"]
        assert [await recv(b) for _ in range(2)] == ["m3", "m4"]
        link.close()
        await a.close()
        await b.close()
        await worker.close()


async def test_sessions_cross_between_php_and_msgpack() -> None:
    async with running() as server:
        worker = await FakeLink.linked(server)
        client, conn_id = await open_client(server, worker)
        link = await PhpLinkClient.open(server)
        link.send(packet(php.SET_SESSION, conn_id, b'a:1:{s:4:"user";a:1:{s:2:"id";i:7;}}'))
        link.send(
            packet(php.UPDATE_SESSION, conn_id, b'a:1:{s:4:"user";a:1:{s:4:"name";s:1:"a";}}')
        )
        worker.send(Cmd.Q_CLIENT_INFO, 1, conn_id)
        info = (await worker.expect(Cmd.REPLY))[2]
        assert unpack_session(info["session"]) == {"user": {"id": 7, "name": "a"}}
        worker.send(Cmd.SET_SESSION, conn_id, pack_session({"from": "python", "n": [1, 2]}))
        await asyncio.sleep(0.05)
        session = await link.ask(packet(php.GET_SESSION_BY_CLIENT_ID, conn_id))
        assert session == {"from": "python", "n": [1, 2]}
        link.close()
        await client.close()
        await worker.close()


async def test_secret_right_wrong_and_missing(caplog: pytest.LogCaptureFixture) -> None:
    async with running() as server:
        worker = await FakeLink.linked(server)
        client, conn_id = await open_client(server, worker)
        right = await PhpLinkClient.open(server)
        assert await right.ask(packet(php.IS_ONLINE, conn_id)) == 1

        wrong_auth = packet(php.GATEWAY_CLIENT_CONNECT, body=ext_json({"secret_key": "nope"}))
        for first in (wrong_auth, b""):
            bad = await PhpLinkClient.open(server, first)
            bad.send(packet(php.SEND_TO_ONE, conn_id, b"", "must not arrive"))
            bad.send(packet(php.IS_ONLINE, conn_id))
            seen = await bad.closed()  # the query got an error reply, then the link closed
            assert seen[4:5] == b"#" and len(seen) == 4 + struct.unpack(">I", seen[:4])[0]
        assert len(lines(caplog, "wrong secret key")) == 1
        assert len(lines(caplog, "without GATEWAY_CLIENT_CONNECT")) == 1
        right.send(packet(php.SEND_TO_ONE, conn_id, b"", "only this"))
        assert await recv(client) == "only this"
        right.close()
        await client.close()
        await worker.close()


async def test_no_secret_needs_no_auth_packet() -> None:
    async with running(secret="") as server:
        link = await PhpLinkClient.open(server, b"")
        assert await link.ask(packet(php.GET_CLIENT_COUNT_BY_GROUP)) == 0
        link.close()


@pytest.mark.parametrize(
    ("data", "logged"),
    [
        (struct.pack(">IBIHIHIBHI", 40, 22, 0, 0, 0, 0, 0, 1, 0, 99) + bytes(12), "runs past"),
        (struct.pack(">IBIHIHIBHI", 0x7FFFFFFF, 22, 0, 0, 0, 0, 0, 1, 0, 0), "exceeds the limit"),
        (AUTH + struct.pack(">I", 5) + bytes(30), "below the 28-byte header"),
    ],
    ids=["garbage", "oversized", "bad-length"],
)
async def test_bad_packets_close_only_that_link(
    data: bytes, logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with running() as server:
        worker = await FakeLink.linked(server)
        client, conn_id = await open_client(server, worker)
        good = await PhpLinkClient.open(server)
        bad = await PhpLinkClient.open(server, data)
        assert await bad.closed() == b""
        assert len(lines(caplog, logged)) == 1
        assert len(lines(caplog, "PHP GatewayClient link")) == 1  # that line only
        assert await good.ask(packet(php.IS_ONLINE, conn_id)) == 1
        await client.send("still here")
        assert (await worker.expect(Cmd.EV_MESSAGE))[5] == "still here"
        good.close()
        await client.close()
        await worker.close()


async def test_truncated_packets_are_logged(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(phplink, "STALL_TIMEOUT", 0.2)
    async with running() as server:
        half = packet(php.SEND_TO_ALL, 0, b"", "x" * 100)[:60]
        gone = await PhpLinkClient.open(server, AUTH + half)
        await asyncio.sleep(0.05)
        gone.close()
        await wait_until(lambda: lines(caplog, "closed in the middle of a packet"))
        stalled = await PhpLinkClient.open(server, AUTH + half)
        await stalled.closed()
        assert len(lines(caplog, "stopped in the middle of a packet (60 of 128 bytes)")) == 1
        assert len(lines(caplog, "closed in the middle of a packet (60 of 128 bytes)")) == 1
        assert len(lines(caplog, "PHP GatewayClient link")) == 2  # one line per link


async def test_unsupported_and_failing_commands(caplog: pytest.LogCaptureFixture) -> None:
    async with running() as server:
        worker = await FakeLink.linked(server)
        client, conn_id = await open_client(server, worker)
        link = await PhpLinkClient.open(server)
        link.send(packet(php.BIND_UID, conn_id, ""))  # refused by the directory: logged
        select = ext_json({"fields": ["password"], "where": []})
        link.send(packet(php.SELECT, 0, select))
        payload = await link.reply()
        assert payload.startswith(b"#gateway error: CMD_SELECT: fields must be among")
        assert lines(caplog, "CMD_BIND_UID failed: uid must not be empty")
        assert await link.ask(packet(php.IS_ONLINE, conn_id)) == 1  # still open
        link.send(packet(php.WORKER_CONNECT, 0, b"", ext_json({"secret_key": SECRET})))
        seen = await link.closed()
        assert b"CMD_WORKER_CONNECT: a PHP BusinessWorker cannot link" in seen
        assert len(lines(caplog, "CMD_WORKER_CONNECT")) == 1
        await client.close()
        await worker.close()


async def test_a_session_too_large_to_store_is_refused_with_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``SET_SESSION`` of a session over the size every event could carry: one
    warning, nothing stored; the link stays and answers its next query."""
    async with running() as server:
        worker = await FakeLink.linked(server)
        client, conn_id = await open_client(server, worker)
        link = await PhpLinkClient.open(server)
        big = "x" * 4_200_000
        link.send(
            packet(php.SET_SESSION, conn_id, f'a:1:{{s:1:"k";s:{len(big)}:"{big}";}}'.encode())
        )
        assert await link.ask(packet(php.IS_ONLINE, conn_id)) == 1  # the same link
        failed = lines(caplog, "CMD_SET_SESSION failed: session of")
        assert len(failed) == 1 and "not stored" in failed[0]
        assert not [r for r in caplog.records if r.exc_info]  # no traceback
        assert await link.ask(packet(php.GET_SESSION_BY_CLIENT_ID, conn_id)) in (None, "", [])
        link.close()
        await client.close()
        await worker.close()


async def test_stop_closes_php_links() -> None:
    async with running() as server:
        link = await PhpLinkClient.open(server)
        assert await link.ask(packet(php.GET_CLIENT_COUNT_BY_GROUP)) == 0
        await server.stop()
        assert await link.closed() == b""


async def test_close_and_destroy_from_php() -> None:
    async with running() as server:
        worker = await FakeLink.linked(server)
        a, id_a = await open_client(server, worker)
        b, id_b = await open_client(server, worker)
        link = await PhpLinkClient.open(server)
        link.send(packet(php.KICK, id_a, b"", "bye"))
        assert await recv(a) == "bye"
        assert await close_code(a) == 1000
        link.send(packet(php.DESTROY, id_b))
        assert await close_code(b) == 1006
        link.close()
        await worker.close()


def test_links_are_told_apart_on_uvloop() -> None:
    """The sniffer hands the transport over with ``set_protocol``: the children run
    on uvloop when it is installed, so check it there too."""

    async def scenario() -> None:
        async with running() as server:
            worker = await FakeLink.linked(server)
            client, conn_id = await open_client(server, worker)
            link = await PhpLinkClient.open(server)
            assert await link.ask(packet(php.IS_ONLINE, conn_id)) == 1
            link.send(packet(php.SEND_TO_ONE, conn_id, b"", "uv"))
            assert await recv(client) == "uv"
            link.close()
            await client.close()
            await worker.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())
