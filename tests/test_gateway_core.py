"""The gateway core with no sockets: client events and internal packets go in, and
the tests read what was written to which writer (``gateway.core``, ``gateway.clients``,
``gateway.workers``, ``gateway.commands``)."""

from __future__ import annotations

import logging
import os
from typing import Any

import msgpack
import pytest

from pygatewayworker.gateway.client_id import decode_client_id
from pygatewayworker.gateway.config import Gateway
from pygatewayworker.gateway.core import GatewayCore
from pygatewayworker.gateway.frames import binary_frame, text_frame
from pygatewayworker.gateway.http11 import parse_request_head
from pygatewayworker.gateway.protocol import (
    MAX_CLIENT_MESSAGE,
    MAX_CONNECTION_ROWS,
    MAX_SESSION,
    ROUTES_CHANGES,
    ROUTES_STATE_END,
    Cmd,
    Decoder,
    encode,
    pack_session,
    unpack_session,
)
from pygatewayworker.gateway.records import Client, Link
from pygatewayworker.gateway.websocket import ServerConnection, State

SECRET = "s3cret"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ClientWriter:
    """Records what the core writes to one client."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed: list[tuple[int, str]] = []
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self, code: int, reason: str = "") -> None:
        self.closed.append((code, reason))

    def abort(self) -> None:
        self.aborted = True

    def take(self) -> list[bytes]:
        written, self.written = self.written, []
        return written


class LinkWriter:
    """Records the packets the core sends on one link."""

    def __init__(self) -> None:
        self.decoder = Decoder()
        self.packets: list[list[Any]] = []
        self.closed = self.rejected = self.aborted = False
        self.host_up = True  # peer_acked: its kernel acknowledges our data
        self.paused = False

    def send(self, packet: bytes) -> None:
        self.packets.extend(self.decoder.feed(packet))

    def close(self) -> None:
        self.closed = True

    def reject(self) -> None:
        self.rejected = True

    def abort(self) -> None:
        self.aborted = True

    def peer_acked(self, within: float) -> bool:
        return self.host_up

    def pause_reading(self) -> None:
        assert not self.paused
        self.paused = True

    def resume_reading(self) -> None:
        assert self.paused
        self.paused = False

    def take(self, *skip: Cmd) -> list[list[Any]]:
        """Every packet since the last call, except those of the ``skip`` kinds."""
        packets, self.packets = self.packets, []
        return [p for p in packets if p[0] not in skip]


class Harness:
    """A core with a fake clock; links and clients made by hand."""

    def __init__(self, **options: Any) -> None:
        config = {"listen": "127.0.0.1:7272", "lan_ip": "10.0.0.1", "secret": SECRET}
        config.update(options)
        self.clock = Clock()
        self.deferred: list[Any] = []
        self.core = GatewayCore(Gateway(**config), clock=self.clock, defer=self.deferred.append)
        self.core.public_port, self.core.internal_port = 7272, 2300

    def run_deferred(self) -> None:
        while self.deferred:
            self.deferred.pop(0)()

    def link(self, role: str = "worker", name: str = "w", hello: bool = True) -> Link:
        link = Link(LinkWriter(), "10.0.0.9:5000", self.clock())
        self.core.link_opened(link)
        if hello:
            self.feed(link, [Cmd.HELLO, role, name, SECRET, 42])
            sent = writer(link).packets
            assert sent[0][0] == Cmd.WELCOME and sent[1][0] == Cmd.ROUTES
            del sent[:2]  # what follows (events that waited for a worker) stays
        return link

    def feed(self, link: Link, *packets: list[Any]) -> None:
        """Packets from ``link``, as one read (so that they may be coalesced)."""
        decoder = Decoder()
        wire = b"".join(encode(p[0], *p[1:]) for p in packets)
        self.core.link_received(link, decoder.feed(wire))

    def client(self, path: str = "/", port: int = 40000) -> Client:
        ws = ServerConnection(1 << 20)
        ws.state = State.OPEN
        client = Client(ws, ClientWriter(), "192.0.2.7", port, self.clock())
        head = f"GET {path} HTTP/1.1\r\nUpgrade: websocket\r\nCookie: a=1".encode()
        self.core.clients.opened(client, parse_request_head(head))
        return client


def writer(item: Client | Link) -> Any:
    return item.writer


def events(link: Link, conn_id: int | None = None) -> list[tuple[Cmd, Any]]:
    """``(cmd, payload)`` of the client events sent on ``link`` since the last call."""
    out = []
    for packet in writer(link).take(Cmd.ROUTES, Cmd.PING):
        assert packet[0] in (Cmd.EV_CONNECT, Cmd.EV_WS_CONNECT, Cmd.EV_MESSAGE, Cmd.EV_CLOSE)
        if conn_id is None or packet[1] == conn_id:
            out.append((packet[0], packet[5]))
    return out


# ---- links ---------------------------------------------------------------------------


def test_hello_is_answered_with_welcome_and_the_routes_state() -> None:
    h = Harness()
    link = h.link(hello=False)
    h.feed(link, [Cmd.HELLO, "worker", "w1", SECRET, 42])
    welcome, routes = writer(link).take()
    assert welcome[0] == Cmd.WELCOME
    assert welcome[1] == {
        "lan_ip": "10.0.0.1",
        "port": 2300,
        "public_host": "127.0.0.1",
        "public_port": 7272,
        "name": "gateway",
        "index": 0,
        "pid": os.getpid(),
    }
    assert routes == [Cmd.ROUTES, ROUTES_STATE_END, [], [], [], []]
    assert link.role == "worker" and h.core.workers.linked == [link]


@pytest.mark.parametrize(
    ("packet", "words"),
    [
        ([Cmd.HELLO, "worker", "w", "wrong", 1], "secret"),
        ([Cmd.HELLO, "admin", "w", SECRET, 1], "malformed"),
        ([Cmd.HELLO, "worker", "w", SECRET], "HELLO"),
        ([Cmd.SEND_TO_ALL, "x", None, None], "HELLO"),
    ],
)
def test_a_bad_hello_gets_error_and_a_rejection(packet: list[Any], words: str) -> None:
    h = Harness()
    link = h.link(hello=False)
    h.feed(link, packet, [Cmd.PING])  # nothing after the mistake is handled
    (error,) = writer(link).take()
    assert error[0] == Cmd.ERROR and error[1] == 0 and words in error[2]
    assert writer(link).rejected and link.rejected and link.leaving and not link.role


def test_malformed_commands_reject_only_their_link() -> None:
    h = Harness()
    good, bad = h.link(name="good"), h.link(role="client", name="bad")
    client = h.client()
    h.feed(bad, [Cmd.SEND_TO_CLIENT, "7", "x"])
    (error,) = writer(bad).take()
    assert error[0] == Cmd.ERROR and "conn_id" in error[2] and writer(bad).rejected
    h.feed(good, [Cmd.SEND_TO_CLIENT, client.conn_id, "fine"])
    assert writer(client).take() == [text_frame("fine")]


def test_queries_are_answered_with_their_request_id() -> None:
    h = Harness()
    push = h.link(role="client")
    a, b = h.client(), h.client()
    h.feed(push, [Cmd.BIND_UID, a.conn_id, "ann"], [Cmd.JOIN_GROUP, b.conn_id, "g"])
    h.feed(push, [Cmd.Q_UIDS, 5, ["ann", "zed"]], [Cmd.Q_GROUPS, 6, ["g"], "count"])
    assert writer(push).take(Cmd.ROUTES) == [
        [Cmd.REPLY, 5, {"ann": [a.conn_id]}],
        [Cmd.REPLY, 6, {"g": 1}],
    ]
    h.feed(push, [Cmd.Q_CONNECTIONS, 7])
    ((_, req, rows),) = writer(push).take()
    assert req == 7 and [decode_client_id(r["client_id"]).conn_id for r in rows] == [
        a.conn_id,
        b.conn_id,
    ]
    assert decode_client_id(rows[0]["client_id"]).gateway == "10.0.0.1:2300"
    assert rows[0]["uid"] == "ann" and rows[1]["groups"] == ["g"]
    h.feed(push, [Cmd.Q_STATS, 8])
    ((_, _, stats),) = writer(push).take()
    assert stats["connections"] == 2 and stats["clients"] == 1 and stats["workers"] == 0
    h.feed(push, [Cmd.Q_GROUPS, 9, ["g"], "everything"])
    (error,) = writer(push).take()
    assert error[:2] == [Cmd.ERROR, 9] and writer(push).rejected


def test_connections_are_listed_page_by_page_in_conn_id_order() -> None:
    """``[Q_CONNECTIONS, req, after, limit]``: pages in conn_id order with the cursor
    of the next; a client gone between pages is left out, one that came is in the
    next listing; nobody twice. Bad cursors or limits reject the link."""
    h = Harness()
    push = h.link(role="client")
    clients = [h.client(port=41000 + i) for i in range(25)]
    h.core.clients.closed(clients[12])  # gone before the listing

    def page(req: int, after: int, limit: int) -> tuple[list[int], int | None]:
        h.feed(push, [Cmd.Q_CONNECTIONS, req, after, limit])
        ((cmd, got_req, (rows, cursor)),) = writer(push).take()
        assert cmd == Cmd.REPLY and got_req == req
        return [decode_client_id(r["client_id"]).conn_id for r in rows], cursor

    ids = [c.conn_id for c in clients]
    first, cursor = page(1, 0, 10)
    assert first == ids[:10] and cursor == ids[9]
    h.core.clients.closed(clients[15])  # gone while listing
    late = h.client(port=42000)  # came while listing
    second, cursor = page(2, cursor, 10)
    # the page's 10 conn_ids come from the listing's snapshot: one is gone since
    assert second == ids[10:12] + ids[13:15] + ids[16:21] and cursor == ids[20]
    third, cursor = page(3, cursor, 10)
    assert third == ids[21:] and cursor is None
    assert len(set(first + second + third)) == len(first + second + third)
    again, cursor = page(6, 0, 100)  # a new listing
    assert again[-1] == late.conn_id and len(again) == 24 and cursor is None
    h.feed(push, [Cmd.Q_CONNECTIONS, 4, 0, MAX_CONNECTION_ROWS + 1])
    (error,) = writer(push).take()
    assert error[:2] == [Cmd.ERROR, 4] and "limit" in error[2] and writer(push).rejected
    other = h.link(role="client")
    h.feed(other, [Cmd.Q_CONNECTIONS, 5, -1, 10])
    (error,) = writer(other).take()
    assert error[:2] == [Cmd.ERROR, 5] and "after" in error[2] and writer(other).rejected


def test_data_too_large_for_a_packet_is_refused_and_the_link_kept() -> None:
    h = Harness()
    push = h.link(role="client")
    clients = [h.client(port=40000 + i) for i in range(3)]
    h.feed(push, [Cmd.SET_SESSION, clients[0].conn_id, msgpack.packb({"x": "y" * MAX_SESSION})])
    (error,) = writer(push).take()
    assert error[:2] == [Cmd.ERROR, 0] and "SET_SESSION ignored" in error[2]
    assert clients[0].session is None and not writer(push).rejected
    almost = pack_session({"x": "y" * (MAX_SESSION - 100)})
    for client in clients:  # each fits; the three in one answer do not
        h.feed(push, [Cmd.SET_SESSION, client.conn_id, almost])
    h.feed(push, [Cmd.UPDATE_SESSION, clients[0].conn_id, {"more": "z" * 200}])
    h.feed(push, [Cmd.Q_GROUPS, 5, None, "sessions"])
    errors = writer(push).take(Cmd.ROUTES)
    assert [e[:2] for e in errors] == [[Cmd.ERROR, 0], [Cmd.ERROR, 5]]
    assert "UPDATE_SESSION ignored" in errors[0][2] and "too large" in errors[1][2]
    assert clients[0].session == almost and not writer(push).rejected


def test_a_message_that_would_not_fit_one_packet_closes_its_client_1009_not_the_link() -> None:
    """The guard on the message path: valid use cannot get there (max_message_size is
    at most MAX_CLIENT_MESSAGE, a session at most MAX_SESSION), so the session is
    forced past the limit here; the client gets 1009, the worker keeps its link."""
    h = Harness()
    worker = h.link()
    big, other = h.client(), h.client(port=40001)
    writer(worker).take()
    big.session = b"s" * (MAX_SESSION + 128 * 1024)
    h.core.clients.message(big, "x" * MAX_CLIENT_MESSAGE)
    assert writer(big).closed == [(1009, "message too big")] and big.close_reason == "size_limit"
    h.core.clients.message(other, "fine")
    (event,) = writer(worker).take(Cmd.ROUTES, Cmd.PING)
    assert event[:2] == [Cmd.EV_MESSAGE, other.conn_id] and event[5] == "fine"
    assert not writer(worker).rejected


def test_link_upkeep_hello_deadline_keepalive_and_timeouts() -> None:
    h = Harness(keepalive_interval=1.0, link_timeout=3.0)
    mute = h.link(hello=False)
    worker = h.link()
    h.clock.now += 1.0
    h.core.tick(h.clock())
    assert writer(worker).take() == [[Cmd.PING]]  # idle for a keep-alive interval
    assert writer(mute).take() == []
    worker.proto.last_send = worker.proto.last_recv = h.clock()  # the shell notes the I/O
    h.clock.now += h.core.hello_timeout
    h.core.tick(h.clock())
    (error,) = writer(mute).take()
    assert error[0] == Cmd.ERROR and "no HELLO within" in error[2] and writer(mute).rejected
    h.clock.now += h.core.hello_timeout + 0.1
    h.core.tick(h.clock())
    assert writer(mute).aborted  # it never closed its side
    assert writer(worker).aborted  # silent for more than link_timeout


def test_a_silent_worker_whose_host_is_silent_too_is_dropped_at_once() -> None:
    h = Harness(keepalive_interval=1.0, link_timeout=3.0)
    worker = h.link()
    writer(worker).host_up = False  # no TCP acknowledgement either: the host vanished
    h.clock.now += 3.5
    h.core.tick(h.clock())
    assert writer(worker).aborted and not worker.stalled


def test_the_gateways_own_stall_is_not_its_links_silence() -> None:
    """A tick that runs ``late`` (this loop stalled: a stopped process, a paused VM)
    credits each link's silence with it: what the workers sent meanwhile is still
    unread in the sockets. A link silent on its own is still found out."""
    h = Harness(keepalive_interval=1.0, link_timeout=3.0)
    worker = h.link()
    worker.proto.last_send = worker.proto.last_recv = h.clock()
    h.clock.now += 100.0  # the gateway was stopped for 100 s
    h.core.tick(h.clock(), late=99.5)
    assert not writer(worker).aborted and not worker.stalled
    h.clock.now += 3.5  # then it heard nothing for more than link_timeout
    h.core.tick(h.clock())
    assert worker.stalled or writer(worker).aborted


def test_a_silent_worker_is_held_then_resumed_then_dropped_with_its_losses_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = Harness(keepalive_interval=1.0, link_timeout=3.0)
    worker = h.link()
    client = h.client()
    h.core.clients.message(client, "a")
    assert [e[0] for e in events(worker)] == [Cmd.EV_CONNECT, Cmd.EV_WS_CONNECT, Cmd.EV_MESSAGE]
    h.clock.now += 3.5
    h.core.tick(h.clock())  # stalled: the link stays, its client's events are held
    assert not writer(worker).aborted and "holding the events of its 1 clients" in caplog.text
    h.core.clients.message(client, "b")
    h.core.clients.message(client, "c")
    assert events(worker) == []
    h.feed(worker, [Cmd.PONG])  # it speaks again: the held events go to it, in order
    assert events(worker, client.conn_id) == [(Cmd.EV_MESSAGE, "b"), (Cmd.EV_MESSAGE, "c")]
    h.core.clients.message(client, "d")
    assert events(worker) == [(Cmd.EV_MESSAGE, "d")]

    worker.proto.last_recv = h.clock()
    h.clock.now += 3.5
    h.core.tick(h.clock())
    h.core.clients.message(client, "e")  # held
    h.clock.now += 3.0
    h.core.tick(h.clock())  # silent for two link_timeouts: dropped
    assert writer(worker).aborted
    assert "3 client events sent to it since it last spoke may be lost" in caplog.text
    assert h.core.stats()["events_lost"] == 3  # "b", "c", "d"; "e" was held, not lost
    other = h.link(name="other")
    h.core.link_closed(worker)
    assert events(other, client.conn_id) == [(Cmd.EV_MESSAGE, "e")]


def test_a_worker_link_that_ends_with_events_unanswered_counts_them_as_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = Harness()
    worker = h.link()
    client = h.client()
    events(worker)
    h.feed(worker, [Cmd.PONG])  # it spoke: nothing unanswered
    h.core.clients.message(client, "a")
    h.core.clients.message(client, "b")
    h.core.link_closed(worker)  # it died, or dropped the link itself, without a word
    assert h.core.stats()["events_lost"] == 2
    assert "2 client events sent to it since it last spoke may be lost" in caplog.text

    quiet = h.link(name="quiet")
    h.feed(quiet, [Cmd.PONG])
    h.core.link_closed(quiet)  # nothing sent to it since it spoke: nothing lost
    assert h.core.stats()["events_lost"] == 2


def test_links_closed_while_the_gateway_stops_count_nothing_as_lost() -> None:
    h = Harness()
    worker = h.link()
    client = h.client()
    h.core.clients.message(client, "a")
    h.core.accepting = False  # stopping: we close the links ourselves
    h.core.link_closed(worker)
    assert h.core.stats()["events_lost"] == 0


def test_clients_declared_closed_by_a_worker_are_closed_without_a_second_close() -> None:
    h = Harness()
    worker = h.link()
    a, b = h.client(port=40001), h.client(port=40002)
    events(worker)
    h.feed(worker, [Cmd.DECLARED_CLOSED, [a.conn_id, 999]])
    assert writer(a).closed == [(1001, "gateway was unreachable; reconnect")]
    h.core.clients.closed(a)  # the shell reports the end of the connection
    h.core.clients.closed(b)
    assert events(worker) == [(Cmd.EV_CLOSE, None)]  # b's only
    assert len(h.core.directory) == 0 and worker.clients == 0
    by_reason = h.core.stats()["closed_by_reason"]  # each counted once, a by its reason
    assert by_reason["gateway_lost"] == 1 and by_reason["client_gone"] == 1


def test_a_link_that_is_stopping_is_dropped_at_once() -> None:
    h = Harness()
    h.core.accepting = False
    link = h.link(hello=False)
    assert writer(link).aborted and link not in h.core.links


# ---- client events and worker choice -----------------------------------------------


def test_client_events_go_to_the_least_loaded_worker_and_stay_there() -> None:
    h = Harness()
    w1, w2 = h.link(name="w1"), h.link(name="w2")
    clients = [h.client(path=f"/c{i}", port=40000 + i) for i in range(4)]
    assert [c.worker for c in clients] == [w1, w2, w1, w2]
    assert (w1.clients, w2.clients) == (2, 2)
    first = clients[0]
    connect, ws_connect = writer(w1).take()[:2]
    assert connect == [Cmd.EV_CONNECT, first.conn_id, None, "192.0.2.7", 40000, None]
    assert ws_connect[:5] == [Cmd.EV_WS_CONNECT, first.conn_id, None, "192.0.2.7", 40000]
    assert ws_connect[5] == {
        "path": "/c0",
        "query": "",
        "headers": {"upgrade": "websocket", "cookie": "a=1"},
        "cookies": {"a": "1"},
        "remote_ip": "192.0.2.7",
        "remote_port": 40000,
    }
    h.core.clients.message(first, "héllo")
    h.core.clients.message(first, b"\x00")
    assert writer(w1).take() == [
        [Cmd.EV_MESSAGE, first.conn_id, None, "192.0.2.7", 40000, "héllo"],
        [Cmd.EV_MESSAGE, first.conn_id, None, "192.0.2.7", 40000, b"\x00"],
    ]
    assert h.core.counters.messages_in == 2
    h.core.clients.closed(first)
    assert events(w1) == [(Cmd.EV_CLOSE, None)]
    assert first.conn_id not in h.core.directory and w1.clients == 1


def test_conn_ids_count_up_and_each_client_gets_its_own() -> None:
    h = Harness()
    h.link()
    a, b = h.client(), h.client()
    assert b.conn_id == a.conn_id + 1 and h.core.directory.get(a.conn_id) is a


def test_events_wait_for_a_worker_then_expire() -> None:
    h = Harness(pending_event_seconds=10)
    client = h.client()
    h.core.clients.message(client, "first")
    assert len(h.core.workers.pending) == 3
    worker = h.link()
    assert [e[0] for e in events(worker)] == [
        Cmd.EV_CONNECT,
        Cmd.EV_WS_CONNECT,
        Cmd.EV_MESSAGE,
    ]
    assert h.core.stats()["pending_events"] == 0
    # the worker goes; events wait again, and expire
    h.core.link_closed(worker)
    h.core.clients.message(client, "lost")
    assert len(h.core.workers.pending) == 1
    h.clock.now += 11
    h.core.tick(h.clock())
    assert len(h.core.workers.pending) == 0
    late = h.link(name="late")
    h.core.clients.message(client, "kept")
    assert events(late) == [(Cmd.EV_MESSAGE, "kept")]


def test_the_session_travels_with_every_event_and_the_last_one_with_close() -> None:
    h = Harness()
    worker = h.link()
    client = h.client()
    h.feed(worker, [Cmd.SET_SESSION, client.conn_id, pack_session({"name": "ann"})])
    h.feed(worker, [Cmd.UPDATE_SESSION, client.conn_id, {"room": {"id": 7}}])
    h.core.clients.closed(client)
    close = [p for p in writer(worker).take() if p[0] == Cmd.EV_CLOSE][0]
    assert unpack_session(close[2]) == {"name": "ann", "room": {"id": 7}}


# ---- a worker's leave: hold and release --------------------------------------------


def _leaving(h: Harness) -> tuple[Link, Link, Client]:
    w1 = h.link(name="w1")
    client = h.client()
    w2 = h.link(name="w2")
    h.feed(w1, [Cmd.WORKER_LEAVE])
    assert writer(w1).take(Cmd.EV_CONNECT, Cmd.EV_WS_CONNECT) == [[Cmd.LEAVE_ACK]]
    return w1, w2, client


def test_events_of_a_leaving_workers_client_are_held_until_it_releases_it() -> None:
    h = Harness()
    w1, w2, client = _leaving(h)
    h.core.clients.message(client, "after")
    h.core.clients.message(client, "after 2")
    assert events(w1) == [] and events(w2) == [] and w1.held_events == 2
    # the leaving worker writes the session back, then releases the client
    h.feed(w1, [Cmd.SET_SESSION, client.conn_id, pack_session({"n": 1})])
    h.feed(w1, [Cmd.RELEASE, [client.conn_id], False])
    moved = writer(w2).take()
    assert [(p[0], p[5]) for p in moved] == [(Cmd.EV_MESSAGE, "after"), (Cmd.EV_MESSAGE, "after 2")]
    assert unpack_session(moved[0][2]) == {"n": 1}
    assert w1.held_events == 0 and client.worker is w2
    h.core.clients.message(client, "live")
    assert events(w2) == [(Cmd.EV_MESSAGE, "live")]


def test_release_others_frees_every_client_but_the_busy_ones() -> None:
    h = Harness()
    w1 = h.link(name="w1")
    busy, idle = h.client(), h.client()
    w2 = h.link(name="w2")
    assert busy.worker is w1 and idle.worker is w1  # w2 linked after them
    h.feed(w1, [Cmd.WORKER_LEAVE])
    h.feed(w1, [Cmd.RELEASE, [busy.conn_id], True])
    h.core.clients.message(idle, "free")
    h.core.clients.message(busy, "held")
    assert w1.held_events == 1 and idle.worker is w2 and busy.worker is w1
    assert events(w2) == [(Cmd.EV_MESSAGE, "free")]
    h.core.link_closed(w1)  # the link ends: everything held goes on
    assert busy.worker is w2
    assert events(w2) == [(Cmd.EV_MESSAGE, "held")]


def test_a_held_close_is_released_too() -> None:
    h = Harness()
    w1, w2, client = _leaving(h)
    h.core.clients.message(client, "last words")
    h.core.clients.closed(client)
    assert w1.held_events == 2 and client.conn_id not in h.core.directory
    h.feed(w1, [Cmd.RELEASE, [client.conn_id], False])  # found among the held
    assert events(w2) == [(Cmd.EV_MESSAGE, "last words"), (Cmd.EV_CLOSE, None)]


def test_too_many_held_events_release_everything(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(pending_event_limit=3)
    w1, w2, client = _leaving(h)
    for i in range(4):
        h.core.clients.message(client, f"m{i}")
    assert events(w2) == [(Cmd.EV_MESSAGE, f"m{i}") for i in range(4)]
    assert w1.held is None and "releasing them all" in caplog.text


def test_release_is_refused_from_a_worker_that_is_not_leaving() -> None:
    h = Harness()
    worker = h.link()
    client = h.client()
    writer(worker).take()
    h.feed(worker, [Cmd.RELEASE, [client.conn_id], False])
    (error,) = writer(worker).take()
    assert error[0] == Cmd.ERROR and "leaving worker" in error[2]
    push = h.link(role="client")
    h.feed(push, [Cmd.WORKER_LEAVE])
    assert writer(push).take()[0][0] == Cmd.ERROR


def test_stopping_hands_on_held_events() -> None:
    h = Harness()
    w1, w2, client = _leaving(h)
    h.core.clients.message(client, "held")
    h.core.release_held()
    assert events(w2) == [(Cmd.EV_MESSAGE, "held")]


# ---- sends ---------------------------------------------------------------------------


def test_sends_reach_exactly_their_recipients_as_frames_encoded_once() -> None:
    h = Harness()
    worker = h.link()
    a, b, c = h.client(), h.client(), h.client()
    for client in (a, b):
        h.feed(worker, [Cmd.JOIN_GROUP, client.conn_id, "room"])
    h.feed(worker, [Cmd.JOIN_GROUP, c.conn_id, "other"], [Cmd.BIND_UID, b.conn_id, "bob"])
    h.feed(worker, [Cmd.SEND_TO_GROUP, ["room", "other"], "to groups", [b.conn_id]])
    assert (writer(a).take(), writer(b).take(), writer(c).take()) == (
        [text_frame("to groups")],
        [],
        [text_frame("to groups")],
    )
    h.feed(worker, [Cmd.SEND_TO_UID, ["bob", "nobody"], b"to uid"])
    assert writer(b).take() == [binary_frame(b"to uid")] and writer(a).take() == []
    h.feed(worker, [Cmd.SEND_TO_ALL, "some", [a.conn_id, c.conn_id], [c.conn_id]])
    assert writer(a).take() == [text_frame("some")] and writer(c).take() == []
    h.feed(worker, [Cmd.SEND_TO_ALL, "none", [], None])
    h.feed(worker, [Cmd.SEND_TO_CLIENT, 999, "nobody"])
    assert not any(writer(x).written for x in (a, b, c))
    stats = h.core.stats()
    assert stats["messages_out"] == 4 and stats["bytes_out"] == sum(
        len(f) for f in (text_frame("to groups"),) * 2
    ) + len(binary_frame(b"to uid")) + len(text_frame("some"))


def test_one_frame_object_is_written_to_every_recipient() -> None:
    h = Harness()
    worker = h.link()
    members = [h.client() for _ in range(3)]
    h.feed(worker, *[[Cmd.JOIN_GROUP, m.conn_id, "g"] for m in members])
    h.feed(worker, [Cmd.SEND_TO_GROUP, ["g"], "x" * 200, None])
    written = [writer(m).take()[0] for m in members]
    assert written[0] is written[1] is written[2]  # encoded once


def test_consecutive_broadcasts_in_one_read_are_one_write_per_recipient() -> None:
    h = Harness()
    worker = h.link()
    a, b = h.client(), h.client()
    h.feed(worker, [Cmd.JOIN_GROUP, a.conn_id, "g"], [Cmd.JOIN_GROUP, b.conn_id, "g"])
    h.feed(worker, *[[Cmd.SEND_TO_GROUP, ["g"], f"m{i}", None] for i in range(3)])
    expected = b"".join(text_frame(f"m{i}") for i in range(3))
    assert writer(a).take() == [expected] and writer(b).take() == [expected]
    assert h.core.counters.messages_out == 6


def test_clients_that_are_not_open_get_no_frames() -> None:
    h = Harness(ping_interval=1, ping_data="ping")
    worker = h.link()
    open_, closing = h.client(), h.client()
    closing.ws.state = State.CLOSING
    h.feed(worker, [Cmd.SEND_TO_ALL, "x", None, None], [Cmd.SEND_TO_CLIENT, closing.conn_id, "y"])
    assert writer(open_).take() == [text_frame("x")] and writer(closing).take() == []
    open_.silent = closing.silent = 0
    h.core.clients.heartbeat()
    assert writer(open_).take() == [text_frame("ping")] and writer(closing).take() == []


def test_close_client_sends_the_last_message_then_closes_and_destroy_aborts() -> None:
    h = Harness()
    worker = h.link()
    a, b = h.client(), h.client()
    h.feed(worker, [Cmd.CLOSE_CLIENT, a.conn_id, "bye"], [Cmd.DESTROY_CLIENT, b.conn_id])
    assert writer(a).take() == [text_frame("bye")] and writer(a).closed == [(1000, "")]
    assert writer(b).aborted and not writer(b).closed


def test_close_client_with_a_code_and_reason_and_a_bad_code_rejects_the_link() -> None:
    h = Harness()
    worker = h.link()
    a, b = h.client(), h.client()
    h.feed(worker, [Cmd.CLOSE_CLIENT, a.conn_id, None, 4001, "unknown app"])
    assert writer(a).closed == [(4001, "unknown app")]
    h.feed(worker, [Cmd.CLOSE_CLIENT, b.conn_id, None, 1006, ""])
    error = writer(worker).take()[-1]
    assert error[0] == Cmd.ERROR and "close code 1006 is not 1000 or 3000-4999" in error[2]
    assert writer(worker).rejected and not writer(b).closed


def test_routes_changes_go_to_every_accepted_link_once_per_batch() -> None:
    h = Harness()
    worker = h.link()
    push = h.link(role="client", name="push")
    client = h.client()
    h.feed(worker, [Cmd.BIND_UID, client.conn_id, "ann"], [Cmd.JOIN_GROUP, client.conn_id, "room"])
    assert len(h.deferred) == 1  # one batch of changes
    h.run_deferred()
    change = [Cmd.ROUTES, ROUTES_CHANGES, ["ann"], [], ["room"], []]
    assert [p for p in writer(push).take() if p[0] == Cmd.ROUTES] == [change]
    assert [p for p in writer(worker).take() if p[0] == Cmd.ROUTES] == [change]
    late = h.link(hello=False)
    h.feed(late, [Cmd.HELLO, "client", "late", SECRET, 1])
    assert writer(late).take()[1] == [Cmd.ROUTES, ROUTES_STATE_END, ["ann"], [], ["room"], []]
    h.core.clients.closed(client)
    h.run_deferred()
    assert [p for p in writer(push).take() if p[0] == Cmd.ROUTES] == [
        [Cmd.ROUTES, ROUTES_CHANGES, [], ["ann"], [], ["room"]]
    ]


# ---- heartbeat and slow clients --------------------------------------------------------


def test_heartbeat_pings_a_silent_client_then_drops_it(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(ping_interval=10, ping_not_response_limit=2, ping_data='{"type":"ping"}')
    h.link()
    silent, chatty = h.client(), h.client()
    ping = text_frame('{"type":"ping"}')
    h.core.clients.heartbeat()  # both were active before this interval
    assert writer(silent).take() == [] and writer(chatty).take() == []
    for _ in range(2):
        h.core.clients.message(chatty, "hi")
        h.core.clients.heartbeat()
        assert writer(silent).take() == [ping] and writer(chatty).take() == []
    with caplog.at_level(logging.INFO, logger="gateway"):
        h.core.clients.heartbeat()
    assert writer(silent).aborted and not writer(chatty).aborted
    assert "silent for more than 2 ping intervals" in caplog.text


@pytest.mark.parametrize("counted", [True, False])
def test_pings_and_pongs_count_as_activity_per_config(counted: bool) -> None:
    h = Harness(ping_interval=10, ping_not_response_limit=1, pong_is_activity=counted)
    client = h.client()
    for _ in range(3):
        h.core.clients.control(client)  # a ping or pong frame each interval
        h.core.clients.heartbeat()
    assert writer(client).aborted is not counted


def test_a_slow_client_is_closed_with_1008_and_counted() -> None:
    h = Harness()
    client = h.client()
    h.core.clients.slow(client)
    assert writer(client).closed == [(1008, "slow consumer")]
    assert h.core.stats()["send_failures"] == 1
    client.ws.state = State.CLOSING
    h.core.clients.slow(client)  # already closing: nothing more
    assert h.core.stats()["send_failures"] == 1


def test_graceful_stop_closes_every_client_with_1001() -> None:
    h = Harness()
    clients = [h.client() for _ in range(3)]
    h.core.clients.close_all(1001, "going away")
    assert all(writer(c).closed == [(1001, "going away")] for c in clients)


# ---- metrics counters (docs/observability.md) -----------------------------------------


def test_each_close_is_counted_once_by_its_first_reason() -> None:
    h = Harness(ping_interval=10, ping_not_response_limit=1)
    worker = h.link()
    clients = h.core.clients
    peer, gone, silent, slow, stuck, big, bad, app, destroyed = (h.client() for _ in range(9))
    clients.peer_closed(peer)
    clients.failed(big, 1009, "message too big")
    clients.failed(bad, 1002, "bad opcode")
    clients.slow(slow)
    clients.peer_closed(slow)  # the answer to our close frame: the first reason stays
    clients.slow(stuck, "70000 bytes not drained for 10.1 s", "send_timeout")
    h.feed(worker, [Cmd.CLOSE_CLIENT, app.conn_id, None], [Cmd.DESTROY_CLIENT, destroyed.conn_id])
    for client in (peer, gone, big, bad, slow, stuck, app, destroyed):
        client.silent = -5  # not part of the heartbeat below
    for _ in range(3):
        h.core.clients.heartbeat()
    assert writer(silent).aborted
    assert writer(stuck).closed == [(1008, "slow consumer")]
    for client in (peer, gone, silent, slow, stuck, big, bad, app, destroyed):
        clients.closed(client)
    clients.closed(peer)  # a second report of the same client counts nothing
    assert h.core.stats()["send_failures"] == 2
    assert h.core.stats()["closed_by_reason"] == {
        "client_close": 1,
        "client_gone": 1,
        "heartbeat_timeout": 1,
        "send_buffer_limit": 1,
        "send_timeout": 1,
        "size_limit": 1,
        "rate_limit": 0,  # decided by the shell: tests/test_connection_security.py
        "protocol_error": 1,
        "app_close": 2,
        "shutdown": 0,
        "gateway_lost": 0,
    }
    assert h.core.stats()["connections_opened"] == 9 and len(h.core.directory) == 0


def test_a_stopping_gateway_counts_its_clients_as_shutdown() -> None:
    h = Harness()
    graceful, dropped, closed_before = h.client(), h.client(), h.client()
    h.core.clients.peer_closed(closed_before)
    h.core.clients.close_all(1001, "going away")
    h.core.clients.drop_all()
    assert writer(graceful).closed and writer(dropped).aborted
    for client in (graceful, dropped, closed_before):
        h.core.clients.closed(client)
    by_reason = h.core.stats()["closed_by_reason"]
    assert by_reason["shutdown"] == 2 and by_reason["client_close"] == 1


def test_refused_handshakes_are_counted_by_status(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness()
    refused = Client(ServerConnection(1 << 20), ClientWriter(), "192.0.2.8", 1)
    with caplog.at_level(logging.INFO, logger="gateway"):
        h.core.clients.refused(refused, 400, "missing 'Upgrade: websocket'")
        h.core.clients.refused(refused, 400, "malformed request line")
        h.core.clients.refused(refused, 426, "unsupported WebSocket version")
    stats = h.core.stats()
    assert stats["handshake_failures"] == {"400": 2, "426": 1}
    assert stats["connections_opened"] == 0
    assert "rejected request from 192.0.2.8: 426 unsupported" in caplog.text


def test_broadcast_deliveries_count_one_per_recipient_and_message() -> None:
    h = Harness()
    worker = h.link()
    a, b, c = h.client(), h.client(), h.client()
    h.feed(
        worker, *[[Cmd.JOIN_GROUP, x.conn_id, "g"] for x in (a, b)], [Cmd.BIND_UID, c.conn_id, "7"]
    )
    h.feed(worker, *[[Cmd.SEND_TO_GROUP, ["g"], f"m{i}", None] for i in range(3)])  # coalesced
    h.feed(worker, [Cmd.SEND_TO_ALL, "all", None, None], [Cmd.SEND_TO_UID, ["7"], "c"])
    assert h.core.counters.broadcast_deliveries == 2 * 3 + 3 + 1
    # not broadcasts: a send to one client, and close_client's last message
    h.feed(worker, [Cmd.SEND_TO_CLIENT, a.conn_id, "one"], [Cmd.CLOSE_CLIENT, b.conn_id, "bye"])
    stats = h.core.stats()
    assert stats["broadcast_deliveries"] == 10 and stats["messages_out"] == 12
    assert stats["send_buffer_bytes"] == stats["send_buffer_max_bytes"] == 0  # no shell


def test_worker_link_log_lines_name_the_worker(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness()
    with caplog.at_level(logging.INFO, logger="gateway"):
        worker = h.link(name="w7")
        push = h.link(role="client", name="push")
        h.core.link_closed(worker)
        h.core.link_closed(push)
    lines = [(r.getMessage().split(" (")[0], getattr(r, "worker", None)) for r in caplog.records]
    assert lines == [
        ("<link worker 'w7' from 10.0.0.9:5000> linked", "w7"),
        ("<link client 'push' from 10.0.0.9:5000> linked", None),
        ("<link worker 'w7' from 10.0.0.9:5000> is gone", "w7"),
        ("<link client 'push' from 10.0.0.9:5000> is gone", None),
    ]
