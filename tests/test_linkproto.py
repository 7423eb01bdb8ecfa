"""The link protocol objects with no sockets: bytes from one end are decoded and fed
to the other, the clock is a number (``gateway.linkproto``)."""

from __future__ import annotations

from typing import Any

import pytest

from pygatewayworker.gateway import linkproto
from pygatewayworker.gateway.client_id import encode_client_id
from pygatewayworker.gateway.linkproto import (
    PING,
    PONG,
    Answer,
    Failed,
    Hello,
    KeepAlive,
    LeaveAcked,
    LinkClient,
    LinkRefused,
    LinkServer,
    Notice,
    Refused,
    Replied,
    RoutesUpdated,
    Upkeep,
    Welcomed,
    route_packets,
)
from pygatewayworker.gateway.protocol import (
    ROUTES_CHANGES,
    ROUTES_STATE,
    ROUTES_STATE_END,
    Cmd,
    Decoder,
    ProtocolError,
    encode,
)

SECRET = "s3cret"
INFO = {"lan_ip": "10.0.0.1", "port": 2300, "public_port": 7272, "name": "gw", "pid": 9}


def packets(*wire: bytes) -> list[list[Any]]:
    """Decode bytes as the other end would."""
    return Decoder().feed(b"".join(wire))


def one(wire: bytes) -> list[Any]:
    (packet,) = packets(wire)
    return packet


def server(now: float = 0.0) -> LinkServer:
    return LinkServer(SECRET, 1.0, 3.0, now, hello_timeout=5.0)


def linked(secret: str = SECRET, role: str = "worker") -> tuple[LinkServer, LinkClient, Any]:
    """A server and a client after the handshake, and the server's Hello."""
    srv, cli = server(), LinkClient(role, "w1", secret, 42, 1.0, 3.0)
    hello = srv.receive_hello(one(cli.hello(0.0)))
    event = cli.receive(one(srv.welcome(INFO)))
    assert isinstance(event, Welcomed)
    return srv, cli, hello


# ---- handshake ---------------------------------------------------------------------


def test_handshake_accepts_the_secret_and_opens_both_ends() -> None:
    srv, cli, hello = linked()
    assert hello == Hello("worker", "w1", 42)
    assert cli.is_open and cli.info == INFO and cli.gateway_address == "10.0.0.1:2300"
    assert cli.client_id_prefix == encode_client_id("10.0.0.1", 2300, 1)[:12]
    assert srv.upkeep(0.5) is Upkeep.NOTHING


def test_a_worker_announces_its_app_hooks_in_a_sixth_field() -> None:
    """Only a worker with hooks sends the sixth field (older gateways refuse it)."""
    cli = LinkClient("worker", "w1", SECRET, 42, hooks=("authenticate",))
    packet = one(cli.hello(0.0))
    assert packet == [Cmd.HELLO, "worker", "w1", SECRET, 42, {"hooks": ["authenticate"]}]
    assert server().receive_hello(packet) == Hello("worker", "w1", 42, frozenset({"authenticate"}))


def test_hello_is_the_documented_packet() -> None:
    cli = LinkClient("client", "push", SECRET, 7)
    assert one(cli.hello(0.0)) == [Cmd.HELLO, "client", "push", SECRET, 7]
    with pytest.raises(RuntimeError):
        cli.hello(0.0)  # our misuse, not the peer's
    with pytest.raises(ValueError, match="role"):
        LinkClient("admin", "x", SECRET, 1)


@pytest.mark.parametrize(
    ("packet", "words"),
    [
        ([Cmd.HELLO, "worker", "w", "wrong", 1], "wrong secret"),
        ([Cmd.HELLO, "worker", "w", SECRET + "x", 1], "wrong secret"),
        ([Cmd.HELLO, "worker", "w", b"s3cret", 1], "wrong secret"),
        ([Cmd.HELLO, "admin", "w", SECRET, 1], "malformed"),
        ([Cmd.HELLO, "worker", 5, SECRET, 1], "malformed"),
        ([Cmd.HELLO, "worker", "w", SECRET, "1"], "malformed"),
        ([Cmd.HELLO, "worker", "w", SECRET], "HELLO"),
        ([Cmd.HELLO, "worker", "w", SECRET, 1, {"hooks": "authenticate"}], "features"),
        ([Cmd.HELLO, "worker", "w", SECRET, 1, [1]], "features"),
        ([Cmd.HELLO, "worker", "w", SECRET, 1, {}, None], "HELLO"),
        ([Cmd.SEND_TO_ALL, "x", None, None], "HELLO"),
        ([Cmd.PING], "HELLO"),
    ],
)
def test_a_bad_hello_is_refused_and_the_client_reads_why(packet: list[Any], words: str) -> None:
    srv = server()
    with pytest.raises(LinkRefused, match=words) as refused:
        srv.receive_hello(one(encode(packet[0], *packet[1:])))
    error = srv.refuse(0, str(refused.value), now=1.0)
    assert one(error) == [Cmd.ERROR, 0, str(refused.value)]
    cli = LinkClient("worker", "w", "whatever", 1)
    cli.hello(0.0)
    event = cli.receive(one(error))
    assert event == Refused(str(refused.value)) and not cli.is_open


def test_garbage_from_either_side_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        Decoder().feed(b"\x00\x00\x00\x03\xc1\xc1\xc1")  # not msgpack
    with pytest.raises(ProtocolError):
        Decoder(max_packet=100).feed(b"\x7f\xff\xff\xff")  # a huge length
    cli = LinkClient("worker", "w", SECRET, 1)
    cli.hello(0.0)
    for bad in (
        [Cmd.WELCOME, {"lan_ip": "10.0.0.1"}],  # no port
        [Cmd.WELCOME, {"lan_ip": "nonsense", "port": 1}],
        [Cmd.WELCOME],
        [Cmd.REPLY, 1, None],  # before WELCOME
        [Cmd.ROUTES, ROUTES_STATE_END, [], [], [], []],
        [Cmd.LEAVE_ACK],
        [Cmd.SEND_TO_ALL, "x", None, None],  # no business on this side
    ):
        with pytest.raises(ProtocolError):
            cli.receive(bad)
    _, cli, _ = linked()
    for bad in (
        [Cmd.WELCOME, INFO],  # twice
        [Cmd.ERROR, 0],
        [Cmd.REPLY, 1],
        [Cmd.ROUTES, ROUTES_CHANGES, [], [], [], []],  # changes before the state
        [Cmd.ROUTES, 9, [], [], [], []],
        [Cmd.ROUTES, ROUTES_STATE_END, [1], [], [], []],
        [Cmd.EV_MESSAGE, 1, None, "", 0, "x"],  # events are the endpoint's
    ):
        with pytest.raises(ProtocolError):
            cli.receive(bad)


def test_ping_pong_and_leave_ack() -> None:
    _, cli, _ = linked()
    assert cli.receive(one(PING)) == Answer(PONG)
    assert cli.receive(one(PONG)) is None
    assert cli.receive([Cmd.LEAVE_ACK]) == LeaveAcked()
    assert one(cli.ping()) == [Cmd.PING]


# ---- keep-alive with a fake clock ----------------------------------------------------


def test_keepalive_pings_an_idle_link_and_drops_a_silent_one() -> None:
    ka = KeepAlive(keepalive_interval=1.0, link_timeout=3.0, now=0.0)
    assert ka.period == 0.25
    assert ka.keepalive(0.5) is Upkeep.NOTHING
    assert ka.keepalive(1.0) is Upkeep.PING  # nothing written for an interval
    assert ka.last_send == ka.last_ping == 1.0
    assert ka.keepalive(1.5) is Upkeep.NOTHING  # the ping counts as written
    ka.last_recv = 1.6  # the peer's PONG
    assert ka.keepalive(2.0) is Upkeep.PING
    assert ka.keepalive(4.6) is Upkeep.PING  # 3.0 s of silence is not yet too long
    assert ka.keepalive(4.7) is Upkeep.SILENT
    assert ka.silence(4.7) == pytest.approx(3.1)


def test_a_busy_writer_still_probes_a_quiet_peer_once_per_interval() -> None:
    ka = KeepAlive(1.0, 3.0, now=0.0)
    pings = []
    for tick in range(1, 12):
        now = tick * 0.25
        ka.last_send = now  # we write all the time; the peer says nothing
        if ka.keepalive(now) is Upkeep.PING:
            pings.append(now)
    assert pings == [1.0, 2.0]  # then silent for more than 3 s
    assert ka.keepalive(3.25) is Upkeep.SILENT


def test_server_upkeep_hello_deadline_refusal_linger_and_keepalive() -> None:
    mute = server(now=10.0)
    assert mute.upkeep(15.0) is Upkeep.NOTHING
    assert mute.upkeep(15.1) is Upkeep.HELLO_LATE
    mute.refuse(0, "no HELLO", now=15.1)
    assert mute.upkeep(20.0) is Upkeep.NOTHING  # the peer may still close
    assert mute.upkeep(20.2) is Upkeep.LINGERED
    srv, _, _ = linked()
    assert srv.upkeep(1.0) is Upkeep.PING
    srv.last_recv = 1.5
    assert srv.upkeep(1.6) is Upkeep.NOTHING
    assert srv.upkeep(4.6) is Upkeep.SILENT


# ---- requests and replies -------------------------------------------------------------


def test_replies_match_their_requests_in_any_order() -> None:
    srv, cli, _ = linked()
    sent = {}
    for token in ("a", "b", "c"):
        req, wire = cli.request(Cmd.Q_UIDS, (["u"],), deadline=10.0, token=token)
        packet = one(wire)
        assert packet == [Cmd.Q_UIDS, req, ["u"]] and srv.request_id(packet) == req
        sent[token] = req
    assert sorted(sent.values()) == [1, 2, 3]
    for token in ("c", "a"):
        event = cli.receive(one(srv.reply(sent[token], token.upper())))
        assert event == Replied(sent[token], token, token.upper())
    assert cli.receive(one(srv.reply(sent["a"], "again"))) is None  # already answered
    error = srv.refuse(sent["b"], "bad Q_UIDS packet", now=0.0)
    assert cli.receive(one(error)) == Failed(sent["b"], "b", "bad Q_UIDS packet")
    assert cli.pending == {}
    assert cli.receive([Cmd.ERROR, 0, "you sent garbage"]) == Notice("you sent garbage")
    assert cli.receive([Cmd.ERROR, 99, "late"]) == Notice("late")


def test_requests_time_out_by_deadline_and_fail_on_close() -> None:
    _, cli, _ = linked()
    early, _ = cli.request(Cmd.Q_STATS, (), deadline=5.0, token="early")
    late, _ = cli.request(Cmd.Q_STATS, (), deadline=9.0, token="late")
    gone, _ = cli.request(Cmd.Q_STATS, (), deadline=5.0, token="gone")
    cli.forget(gone)
    assert cli.expire(4.9) == []
    assert cli.expire(5.0) == [(early, "early", Cmd.Q_STATS)]
    assert cli.receive([Cmd.REPLY, early, 1]) is None  # a reply after its timeout
    assert cli.close() == ["late"] and not cli.is_open
    assert cli.expire(100.0) == []
    with pytest.raises(RuntimeError):
        cli.request(Cmd.Q_STATS, (), deadline=1.0)
    assert late


def test_request_ids_wrap_around_and_never_use_zero() -> None:
    _, cli, _ = linked()
    cli.next_req = linkproto.MAX_REQ
    assert cli.request(Cmd.Q_STATS, (), 1.0)[0] == linkproto.MAX_REQ
    assert cli.request(Cmd.Q_STATS, (), 1.0)[0] == 1


def test_request_id_must_be_an_int() -> None:
    with pytest.raises(ValueError, match="request id"):
        LinkServer.request_id([Cmd.Q_STATS, "1"])
    with pytest.raises(ValueError, match="request id"):
        LinkServer.request_id([Cmd.Q_STATS])


# ---- routes --------------------------------------------------------------------------------


def test_routes_state_in_parts_then_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(linkproto, "ROUTES_CHUNK", 2)
    _, cli, _ = linked()
    assert cli.uids is None and cli.groups is None  # unknown: send everywhere
    state = packets(*route_packets(True, ["a", "b", "c"], [], ["g"], []))
    assert [p[1] for p in state] == [ROUTES_STATE, ROUTES_STATE_END]
    assert cli.receive(state[0]) == RoutesUpdated()
    assert cli.uids is None  # not complete yet
    cli.receive(state[1])
    assert cli.uids == {"a", "b", "c"} and cli.groups == {"g"}
    for packet in packets(*route_packets(False, ["d"], ["a"], [], ["g"])):
        cli.receive(packet)
    assert cli.uids == {"b", "c", "d"} and cli.groups == set()


def test_our_own_binds_are_pinned_until_the_gateway_answers_a_later_ping() -> None:
    _, cli, _ = linked()
    cli.receive(one(route_packets(True, [], [], [], [])[0]))
    cli.note_uid("ann")
    cli.note_group("room")
    assert cli.pin_pending and cli.uids == {"ann"} and cli.groups == {"room"}
    assert one(cli.ping()) == [Cmd.PING] and not cli.pin_pending
    # the gateway reports a removal it made before handling our BIND_UID
    cli.receive(one(route_packets(False, [], ["ann"], [], ["room"])[0]))
    assert cli.uids == {"ann"} and cli.groups == {"room"}
    cli.receive(one(PONG))  # our commands are handled: pins end
    cli.receive(one(route_packets(False, [], ["ann"], [], [])[0]))
    assert cli.uids == set() and cli.groups == {"room"}


def test_a_state_that_predates_our_bind_keeps_it() -> None:
    _, cli, _ = linked()
    cli.note_uid("ann")  # before any state: remembered as a pin
    assert cli.uids is None
    cli.receive(one(route_packets(True, ["bob"], [], [], [])[0]))
    assert cli.uids == {"ann", "bob"}


def test_mark_counts_the_pong_that_follows_everything_queued() -> None:
    _, cli, _ = linked()
    one(cli.ping())  # a keep-alive ping already on its way
    number = cli.mark()
    assert number == 2 and cli.pin_pending and cli.pongs_seen == 0
    one(cli.ping())  # written behind the queue at the next flush
    cli.receive(one(PONG))
    assert cli.pongs_seen == 1 < number  # the first ping's answer: not yet
    cli.receive(one(PONG))
    assert cli.pongs_seen >= number
