"""The gateway's asyncio shells (``gateway.connection``, ``gateway.links``) on fake
transports: no sockets, no event loop. They only move bytes between the transport,
the sans-I/O protocol objects and the core, and end connections when told to."""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable
from typing import Any

import pytest

from pygatewayworker.gateway.config import BACKLOG_MARK, Gateway
from pygatewayworker.gateway.connection import ClientConnection, ClientPort
from pygatewayworker.gateway.core import GatewayCore
from pygatewayworker.gateway.frames import OP_PING, OP_TEXT, close_frame, pong_frame
from pygatewayworker.gateway.links import InternalLink
from pygatewayworker.gateway.protocol import Cmd, Decoder, encode
from pygatewayworker.gateway.records import Link
from pygatewayworker.gateway.websocket import State
from tests.wsclient import client_frame, request, upgrade_lines

SECRET = "s"


class Transport:
    """Records what the shell does to its transport."""

    def __init__(self, peer: tuple[str, int] = ("192.0.2.1", 4000)) -> None:
        self.data = b""
        self.eof = self.closed = self.aborted = False
        self.buffered = 0
        self.peer = peer

    def write(self, data: bytes) -> None:
        assert not self.closed and not self.eof, "write after close"
        self.data += data

    def take(self) -> bytes:
        data, self.data = self.data, b""
        return data

    def write_eof(self) -> None:
        self.eof = True

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def get_extra_info(self, name: str) -> Any:
        return self.peer if name == "peername" else None

    def set_write_buffer_limits(self, high: int, low: int | None = None) -> None:
        self.high = high


class LinkWriter:
    """A worker's link, as the core sees it: records the packets."""

    def __init__(self) -> None:
        self.decoder = Decoder()
        self.packets: list[list[Any]] = []

    def send(self, packet: bytes) -> None:
        self.packets.extend(self.decoder.feed(packet))

    def close(self) -> None: ...
    def reject(self) -> None: ...
    def abort(self) -> None: ...
    def peer_acked(self, within: float) -> bool:
        return False


class Loop:
    """``call_soon`` that runs when told to."""

    def __init__(self) -> None:
        self.soon: list[Callable[[], None]] = []

    def call_soon(self, fn: Callable[[], None]) -> None:
        self.soon.append(fn)

    def run(self) -> None:
        while self.soon:
            self.soon.pop(0)()


class Gateway1:
    """A core, its client port, and one linked worker (a fake link writer)."""

    def __init__(self, **options: Any) -> None:
        config = Gateway(listen="127.0.0.1:0", secret=SECRET, **options)
        self.core = GatewayCore(config)
        self.port = ClientPort(self.core.clients)
        self.core.send_buffers = self.port.send_buffers  # as GatewayServer does
        self.worker_writer = LinkWriter()
        self.worker = Link(self.worker_writer)
        self.core.link_opened(self.worker)
        self.core.link_received(self.worker, [[Cmd.HELLO, "worker", "w", SECRET, 1]])

    def connect(self) -> tuple[ClientConnection, Transport]:
        conn = ClientConnection(self.port)
        transport = Transport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        return conn, transport

    def upgraded(self) -> tuple[ClientConnection, Transport]:
        conn, transport = self.connect()
        conn.data_received(request(upgrade_lines()))
        assert transport.take().startswith(b"HTTP/1.1 101 ")
        return conn, transport

    def events(self) -> list[tuple[Cmd, Any]]:
        """The client events the worker got since the last call."""
        packets, self.worker_writer.packets = self.worker_writer.packets, []
        return [(p[0], p[5]) for p in packets if p[0] >= Cmd.EV_CONNECT]


# ---- client connections ----------------------------------------------------------------


def test_handshake_enters_the_client_and_binds_its_writer_to_the_transport() -> None:
    g = Gateway1()
    conn, transport = g.connect()
    assert conn in g.port.handshaking and transport.high == BACKLOG_MARK
    conn.data_received(request(upgrade_lines()) + client_frame(OP_TEXT, b"eager"))
    assert transport.take().startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert conn not in g.port.handshaking
    client = conn.client
    assert g.core.directory.get(client.conn_id) is client and client.writer is conn
    assert conn.write == transport.write  # frames go straight to the transport
    assert (client.remote_ip, client.remote_port) == ("192.0.2.1", 4000)
    assert [e[0] for e in g.events()] == [Cmd.EV_CONNECT, Cmd.EV_WS_CONNECT, Cmd.EV_MESSAGE]
    assert client.bytes_in > 0 and g.core.counters.bytes_in == client.bytes_in


def test_plain_http_is_answered_and_closed_without_an_entry() -> None:
    g = Gateway1()
    conn, transport = g.connect()
    conn.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.take().startswith(b"HTTP/1.1 404 ")
    assert transport.closed and conn in g.port.closing
    assert len(g.core.directory) == 0 and g.events() == []


def test_a_bad_head_is_answered_logged_and_closed(caplog: pytest.LogCaptureFixture) -> None:
    g = Gateway1()
    conn, transport = g.connect()
    with caplog.at_level(logging.INFO, logger="gateway"):
        conn.data_received(b"nonsense\r\n\r\n")
    assert transport.take().startswith(b"HTTP/1.1 400 ")
    assert transport.closed and "rejected request from 192.0.2.1: 400" in caplog.text
    conn.data_received(b"more")  # discarded
    assert transport.take() == b""


def test_a_protocol_error_sends_its_close_code_and_half_closes() -> None:
    g = Gateway1()
    conn, transport = g.upgraded()
    conn.data_received(client_frame(OP_TEXT, b"ok") + client_frame(OP_TEXT, b"x", mask=False))
    assert transport.take() == close_frame(1002, "client frames must be masked")
    assert transport.eof and not transport.closed  # the peer may still be sending
    assert conn in g.port.closing
    conn.data_received(client_frame(OP_TEXT, b"discarded"))
    assert [e for e in g.events() if e[0] == Cmd.EV_MESSAGE] == [(Cmd.EV_MESSAGE, "ok")]


def test_pings_are_answered_and_the_peers_close_is_echoed_then_tcp_closed() -> None:
    g = Gateway1(ping_interval=10, ping_not_response_limit=1)
    conn, transport = g.upgraded()
    conn.client.silent = 0
    conn.data_received(client_frame(OP_PING, b"hb"))
    assert transport.take() == pong_frame(b"hb") and conn.client.silent == -1  # activity
    conn.data_received(client_frame(0x8, struct.pack("!H", 1001)))
    assert transport.take() == close_frame(1001) and transport.closed and not transport.eof
    conn.connection_lost(None)
    assert g.events()[-1] == (Cmd.EV_CLOSE, None) and len(g.core.directory) == 0
    assert conn not in g.port.closing
    # no cycle between the connection and its record: both go by reference counting
    assert conn.client.writer is not conn


def test_our_close_waits_for_the_client_within_close_timeout() -> None:
    g = Gateway1()
    conn, transport = g.upgraded()
    conn.close(1000)  # what the core calls (CLOSE_CLIENT)
    assert transport.take() == close_frame(1000) and conn.ws.state is State.CLOSING
    g.port.sweep(g.port.closing[conn] - 0.1)
    assert not transport.closed and not transport.aborted
    conn.data_received(client_frame(0x8, struct.pack("!H", 1000)))
    assert transport.take() == b"" and transport.closed  # answered: TCP closed


@pytest.mark.parametrize(("buffered", "aborted"), [(0, False), (100, True)])
def test_a_close_that_does_not_finish_is_closed_or_dropped(buffered: int, aborted: bool) -> None:
    g = Gateway1()
    conn, transport = g.upgraded()
    conn.close(1001, "going away")
    transport.buffered = buffered
    g.port.sweep(g.port.closing[conn] + 0.1)
    assert transport.aborted is aborted and transport.closed is not aborted
    assert conn not in g.port.closing


def test_a_silent_new_connection_is_dropped_after_handshake_timeout() -> None:
    g = Gateway1()
    conn, transport = g.connect()
    g.port.sweep(g.port.handshaking[conn] + 0.1)
    assert transport.aborted and conn not in g.port.handshaking


def test_half_a_request_head_gets_408_after_handshake_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    g = Gateway1()
    conn, transport = g.connect()
    conn.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and then nothing
    assert transport.take() == b""
    now = time.monotonic()
    g.port.handshaking[conn] = now - 0.1  # its deadline passed (not a jump in time:
    with caplog.at_level(logging.INFO):  # the close that follows gets its own)
        g.port.sweep(now)
    answer = transport.take()
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert answer.endswith(b"request head not complete within 10 s\n")
    assert transport.closed and not transport.aborted and conn not in g.port.handshaking
    assert g.core.stats()["handshake_failures"] == {"408": 1}
    assert [r.getMessage() for r in caplog.records if "408" in r.getMessage()] == [
        "rejected request from 192.0.2.1: 408 request head not complete within 10 s"
    ]


def test_a_slow_client_is_closed_with_1008_over_the_byte_limit_at_once() -> None:
    g = Gateway1()
    conn, transport = g.upgraded()
    transport.buffered = g.core.config.send_buffer_limit + 1
    conn.pause_writing()
    assert transport.take() == close_frame(1008, "slow consumer")
    assert g.core.stats()["send_failures"] == 1 and conn not in g.port.backlogged
    assert conn.client.close_reason == "send_buffer_limit"


def test_a_backlog_not_drained_within_send_timeout_is_closed_with_1008() -> None:
    g = Gateway1()
    conn, transport = g.upgraded()
    transport.buffered = BACKLOG_MARK
    conn.pause_writing()  # over the backlog mark: timed from now
    since = g.port.backlogged[conn]
    g.port.sweep(since + g.core.config.send_timeout - 0.1)
    assert transport.take() == b"" and conn in g.port.backlogged
    conn.resume_writing()  # drained: the clock starts again next time
    assert conn not in g.port.backlogged
    conn.pause_writing()
    g.port.sweep(g.port.backlogged[conn] + g.core.config.send_timeout + 0.1)
    assert transport.take() == close_frame(1008, "slow consumer")
    assert g.core.stats()["send_failures"] == 1 and conn not in g.port.backlogged
    assert conn.client.close_reason == "send_timeout"


def test_the_shell_reports_why_clients_close_and_their_send_buffers() -> None:
    """metrics: the core counts what the shell reports (docs/observability.md)."""
    g = Gateway1(max_message_size=16)
    refused, _ = g.connect()
    refused.data_received(b"nonsense\r\n\r\n")
    peer, big, bad, slow, ours, lost = (g.upgraded() for _ in range(6))
    for (_, transport), size in zip((peer, big, slow), (0, 700, 300), strict=True):
        transport.buffered = size
    assert g.core.stats()["send_buffer_bytes"] == 1000
    assert g.core.stats()["send_buffer_max_bytes"] == 700
    peer[0].data_received(client_frame(0x8, struct.pack("!H", 1000)))
    big[0].data_received(client_frame(OP_TEXT, b"x" * 17))
    bad[0].data_received(client_frame(OP_TEXT, b"x", mask=False))
    slow[1].buffered = g.core.config.send_buffer_limit + 1
    slow[0].pause_writing()
    ours[0].close(1000)  # called directly, with no reason set by the core first
    ours[0].data_received(client_frame(0x8, struct.pack("!H", 1000)))
    for conn, _ in (peer, big, bad, slow, ours, lost):
        conn.connection_lost(None)
    stats = g.core.stats()
    assert stats["handshake_failures"] == {"400": 1} and stats["connections_opened"] == 6
    assert {k: v for k, v in stats["closed_by_reason"].items() if v} == {
        "client_close": 2,
        "size_limit": 1,
        "protocol_error": 1,
        "send_buffer_limit": 1,
        "client_gone": 1,
    }
    assert stats["send_buffer_bytes"] == stats["send_buffer_max_bytes"] == 0  # all gone


def test_no_connection_is_accepted_while_stopping() -> None:
    g = Gateway1()
    g.port.accepting = False
    conn, transport = g.connect()
    assert transport.aborted and conn not in g.port.handshaking


# ---- internal links --------------------------------------------------------------------


def test_a_link_queues_and_writes_once_per_loop_turn() -> None:
    core = GatewayCore(Gateway(listen="127.0.0.1:0", secret=SECRET))
    loop = Loop()
    shell = InternalLink(core, loop)  # type: ignore[arg-type]
    transport = Transport(("10.0.0.2", 5000))
    shell.connection_made(transport)  # type: ignore[arg-type]
    assert shell.link in core.links and shell.link.peer == "10.0.0.2:5000"
    shell.data_received(encode(Cmd.HELLO, "worker", "w", SECRET, 7) + encode(Cmd.PING))
    assert transport.data == b""  # queued, not written yet
    loop.run()
    packets = Decoder().feed(transport.take())
    assert [p[0] for p in packets] == [Cmd.WELCOME, Cmd.ROUTES, Cmd.PONG]
    assert shell.link.proto.last_send >= shell.link.opened


def test_a_link_that_sends_garbage_gets_error_then_a_half_close() -> None:
    core = GatewayCore(Gateway(listen="127.0.0.1:0", secret=SECRET))
    shell = InternalLink(core, Loop())  # type: ignore[arg-type]
    transport = Transport()
    shell.connection_made(transport)  # type: ignore[arg-type]
    shell.data_received(b"\x00\x00\x00\x05hello")
    (error,) = Decoder().feed(transport.take())
    assert error[0] == Cmd.ERROR and transport.eof and shell.link.rejected
    shell.data_received(encode(Cmd.PING))  # discarded until the peer closes
    shell.send(encode(Cmd.PONG))
    assert transport.take() == b""
    shell.connection_lost(None)
    assert shell.link not in core.links
