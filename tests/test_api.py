"""GatewayAPI and GatewayLink against two fake gateways: what goes where, merged
queries, timeouts, bad arguments; plus the pure merge functions."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from pygatewayworker.gateway.client_id import InvalidClientId, encode_client_id
from pygatewayworker.gateway.protocol import Cmd, encode, pack_session, unpack_session
from pygatewayworker.gatewayclient import merge
from pygatewayworker.gatewayclient.api import GatewayAPI
from pygatewayworker.gatewayclient.errors import (
    GatewayUnavailable,
    LinkClosed,
    LinkError,
    QueryTimeout,
    RemoteError,
)
from pygatewayworker.gatewayclient.link import FLUSH_BYTES, GatewayLink
from tests.fakegateway import UNIT, FakeGateway, wait_until
from tests.ports import refused_port


class Pair:
    """Two fake gateways, one link to each, and the API over them."""

    def __init__(self, gw1: FakeGateway, gw2: FakeGateway, api: GatewayAPI) -> None:
        self.gw1, self.gw2, self.api = gw1, gw2, api
        self.links: dict[str, GatewayLink] = {}

    async def barrier(self) -> None:
        """Return once both gateways processed everything sent so far (the link is
        one ordered stream, so a query's reply comes after every earlier packet)."""
        for link in self.links.values():
            await link.request(Cmd.Q_STATS, timeout=UNIT)


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    gw1 = await FakeGateway(secret="s").start()
    gw2 = await FakeGateway(secret="s").start()
    links: dict[str, GatewayLink] = {}
    for gw in (gw1, gw2):
        link = GatewayLink(gw.address, role="client", name="test", secret="s")
        await link.connect()
        links[link.gateway_address] = link
    api = GatewayAPI(links, query_timeout=0.5)
    result = Pair(gw1, gw2, api)
    result.links = links
    try:
        yield result
    finally:
        for link in links.values():
            link.close()
        await gw1.stop()
        await gw2.stop()


# ---- link ----------------------------------------------------------------------------


async def test_link_welcome_info() -> None:
    gw = await FakeGateway(secret="k", public_port=7272).start()
    link = GatewayLink(gw.address, role="worker", name="w.0", secret="k")
    try:
        info = await link.connect()
        assert info["port"] == gw.port and info["lan_ip"] == "127.0.0.1"
        assert link.public_port == 7272 and link.gateway_address == gw.address
        assert link.client_id(5) == encode_client_id("127.0.0.1", gw.port, 5)
        hello = gw.packets(Cmd.HELLO)[0]
        assert hello[1:4] == ["worker", "w.0", "k"]
    finally:
        link.close()
        await gw.stop()


async def test_link_wrong_secret_is_a_clear_error() -> None:
    gw = await FakeGateway(secret="right").start()
    try:
        with pytest.raises(LinkError, match="refused the link: wrong secret key"):
            await GatewayLink(gw.address, secret="wrong").connect()
    finally:
        await gw.stop()


async def test_link_refused_is_a_clear_error() -> None:
    port = refused_port()
    with pytest.raises(LinkError, match=f"cannot link to gateway 127.0.0.1:{port}"):
        await GatewayLink(f"127.0.0.1:{port}").connect()


async def test_link_handshake_timeout() -> None:
    held: list[asyncio.StreamWriter] = []  # Python 3.13 closes a writer nobody holds
    server = await asyncio.start_server(lambda r, w: held.append(w), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]  # it accepts and never answers
    try:
        with pytest.raises(LinkError, match="did not complete the link handshake"):
            await GatewayLink(f"127.0.0.1:{port}", connect_timeout=0.2).connect()
    finally:
        server.close()


async def test_a_link_open_when_its_connect_is_cancelled_stays_open() -> None:
    """A worker that stops right after linking cancels its link keepers
    (``LinkPool.stop_relinking``); a keeper can be cancelled between the gateway's
    WELCOME and its own wake-up in ``connect()``. The open link is kept, so the
    worker's WORKER_LEAVE still reaches the gateway (it was aborted as a failed
    handshake, which showed on Python 3.12)."""
    gw = await FakeGateway().start()
    connecting: dict[str, asyncio.Task[Any]] = {}
    link = GatewayLink(gw.address, role="worker", on_open=lambda _: connecting["task"].cancel())
    connecting["task"] = asyncio.ensure_future(link.connect())
    try:
        with pytest.raises(asyncio.CancelledError):
            await connecting["task"]
        assert link.is_open
        link.send(encode(Cmd.WORKER_LEAVE))
        await wait_until(lambda: bool(gw.packets(Cmd.WORKER_LEAVE)))
    finally:
        link.close()
        await gw.stop()


async def test_link_garbage_closes_and_fails_pending(caplog: pytest.LogCaptureFixture) -> None:
    gw = await FakeGateway().start()
    gw.answer_queries = False
    link = GatewayLink(gw.address)
    await link.connect()
    try:
        pending = link.request_future(Cmd.Q_STATS, timeout=UNIT)
        await wait_until(lambda: bool(gw.packets(Cmd.Q_STATS)))
        with caplog.at_level(logging.ERROR, logger="gatewayclient"):
            gw.links[0].write(b"\x00\x00\x00\x03abc")  # a body that is not msgpack array
            with pytest.raises(LinkClosed, match="protocol error"):
                await pending
        assert not link.is_open
        assert "sent garbage" in caplog.text
        with pytest.raises(LinkClosed):
            link.send(b"x")
    finally:
        await gw.stop()


async def test_link_keepalive_pings_and_drops_silent_gateway() -> None:
    gw = await FakeGateway().start()
    link = GatewayLink(gw.address, keepalive_interval=0.05, link_timeout=5.0)
    await link.connect()
    try:
        await wait_until(lambda: len(gw.packets(Cmd.PING)) >= 2)
        assert link.is_open  # the fake answers PONG
    finally:
        link.close()
        await gw.stop()
    # A "gateway" that accepts, welcomes, then never says anything again.
    silent = await FakeGateway().start()
    silent_link = GatewayLink(silent.address, keepalive_interval=10.0, link_timeout=0.3)
    await silent_link.connect()
    silent.links[0].writer.transport.pause_reading()  # type: ignore[attr-defined]
    try:
        await asyncio.wait_for(silent_link.wait_closed(), UNIT)
        assert "silent" in silent_link.close_reason
    finally:
        await silent.stop()


async def test_link_coalesces_and_flushes_large_batches(pair: Pair) -> None:
    link = pair.links[pair.gw1.address]
    packet = encode(Cmd.SEND_TO_UID, ["u"], "x" * 100)
    for _ in range(2000):  # ~250 KB without yielding to the loop
        link.send(packet)
        assert link._out_bytes < FLUSH_BYTES  # big batches are handed over at once
    await pair.barrier()
    assert len(pair.gw1.packets(Cmd.SEND_TO_UID)) == 2000


# ---- T-class -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "reason", "error"),
    [
        (1001, "", ValueError),
        (2999, "", ValueError),
        (5000, "", ValueError),
        (4000.0, "", TypeError),
        (4000, "é" * 62, ValueError),
        (4000, b"x", TypeError),
    ],
)
async def test_close_client_refuses_a_bad_code_or_reason_before_sending(
    pair: Pair, code: Any, reason: Any, error: type[Exception]
) -> None:
    with pytest.raises(error, match="close (code|reason)"):
        pair.api.close_client(pair.gw2.client_id(7), None, code, reason)
    pair.api.close_client(pair.gw2.client_id(7), None, 3000, "é" * 61)  # 122 bytes: fine
    await pair.barrier()
    assert pair.gw2.packets()[:-1] == [[Cmd.CLOSE_CLIENT, 7, None, 3000, "é" * 61]]


async def test_t_class_calls_go_only_to_the_owning_gateway(pair: Pair) -> None:
    api, gw1, gw2 = pair.api, pair.gw1, pair.gw2
    cid = gw2.client_id(7)
    api.send_to_client(cid, "hi")
    api.send_to_client(cid, b"\x00bin")
    api.close_client(cid, "bye")
    api.close_client(cid)
    api.close_client(cid, None, 4001, "unknown app")
    api.destroy_client(cid)
    api.bind_uid(cid, 42)
    api.unbind_uid(cid, "42")
    api.join_group(cid, "room")
    api.leave_group(cid, 0)
    api.set_session(cid, {"a": 1})
    api.update_session(cid, {"b": {"c": 2}})
    await pair.barrier()
    assert gw1.packets() == [[Cmd.Q_STATS, 1]]
    assert gw2.packets()[:-1] == [
        [Cmd.SEND_TO_CLIENT, 7, "hi"],
        [Cmd.SEND_TO_CLIENT, 7, b"\x00bin"],
        [Cmd.CLOSE_CLIENT, 7, "bye"],
        [Cmd.CLOSE_CLIENT, 7, None],  # 1000, no reason: the short form
        [Cmd.CLOSE_CLIENT, 7, None, 4001, "unknown app"],
        [Cmd.DESTROY_CLIENT, 7],
        [Cmd.BIND_UID, 7, "42"],
        [Cmd.UNBIND_UID, 7, "42"],
        [Cmd.JOIN_GROUP, 7, "room"],
        [Cmd.LEAVE_GROUP, 7, "0"],
        [Cmd.SET_SESSION, 7, pack_session({"a": 1})],
        [Cmd.UPDATE_SESSION, 7, {"b": {"c": 2}}],
    ]
    assert api.sent == 12


async def test_t_class_to_an_unlinked_gateway_raises(pair: Pair) -> None:
    cid = encode_client_id("10.9.9.9", 2300, 1)
    with pytest.raises(GatewayUnavailable, match="10.9.9.9:2300"):
        pair.api.send_to_client(cid, "x")
    with pytest.raises(GatewayUnavailable):
        await pair.api.is_online(cid)


async def test_bad_arguments_raise_and_send_nothing(pair: Pair) -> None:
    api = pair.api
    good = pair.gw1.client_id(1)
    for bad_id in ("", "zz", "0" * 20, good.upper(), 12, None, good + "0"):
        with pytest.raises(InvalidClientId):
            api.send_to_client(bad_id, "x")  # type: ignore[arg-type]
    with pytest.raises(InvalidClientId):
        api.send_to_all("x", [good, "nope"])
    for bad_key in (None, "", True, 1.5, b"x", [None], {"a": 1}, ["ok", ""]):
        with pytest.raises(ValueError, match="uid must be a non-empty str or an int"):
            api.send_to_uid(bad_key, "x")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="group"):
            api.send_to_group(bad_key, "x")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        api.bind_uid(good, "")
    with pytest.raises(ValueError):
        api.join_group(good, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await api.is_uid_online("")
    for bad_message in ({"a": 1}, 12, None, ["x"]):
        with pytest.raises(TypeError, match="str .text frame. or bytes"):
            api.send_to_all(bad_message)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            api.send_to_client(good, bad_message)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        api.set_session(good, [1])  # type: ignore[arg-type]
    await pair.barrier()
    assert pair.gw1.packets() == [[Cmd.Q_STATS, 1]]
    assert pair.gw2.packets() == [[Cmd.Q_STATS, 1]]


# ---- B-class -------------------------------------------------------------------------


async def test_broadcasts_reach_every_gateway(pair: Pair) -> None:
    api = pair.api
    api.send_to_all("all")
    api.send_to_uid([1, "u2", 1], "to uids")
    api.send_to_uid("u3", b"bin")
    api.send_to_uid((f"g{i}" for i in range(2)), "generator")
    api.send_to_group(["g1", 2], "to groups")
    api.ungroup("g1")
    api.send_to_uid([], "nobody")
    await pair.barrier()
    expected = [
        [Cmd.SEND_TO_ALL, "all", None, None],
        [Cmd.SEND_TO_UID, ["1", "u2"], "to uids"],
        [Cmd.SEND_TO_UID, ["u3"], b"bin"],
        [Cmd.SEND_TO_UID, ["g0", "g1"], "generator"],
        [Cmd.SEND_TO_GROUP, ["g1", "2"], "to groups", None],
        [Cmd.UNGROUP, "g1"],
    ]
    assert pair.gw1.packets()[:-1] == expected
    assert pair.gw2.packets()[:-1] == expected


async def test_listed_send_to_all_is_split_per_gateway(pair: Pair) -> None:
    api, gw1, gw2 = pair.api, pair.gw1, pair.gw2
    api.send_to_all("only 1", [gw1.client_id(1), gw1.client_id(2)])
    api.send_to_all("mixed", [gw1.client_id(3), gw2.client_id(4)], exclude=[gw1.client_id(3)])
    api.send_to_all("nobody", [])
    api.send_to_all("gone gateway", [encode_client_id("10.1.1.1", 99, 1)])
    api.send_to_all("all but", exclude=gw2.client_id(9))
    api.send_to_group("g", "group but", exclude=[gw1.client_id(5), gw1.client_id(6)])
    await pair.barrier()
    assert gw1.packets()[:-1] == [
        [Cmd.SEND_TO_ALL, "only 1", [1, 2], None],
        [Cmd.SEND_TO_ALL, "all but", None, None],
        [Cmd.SEND_TO_GROUP, ["g"], "group but", [5, 6]],
    ]
    assert gw2.packets()[:-1] == [
        [Cmd.SEND_TO_ALL, "mixed", [4], None],
        [Cmd.SEND_TO_ALL, "all but", None, [9]],
        [Cmd.SEND_TO_GROUP, ["g"], "group but", None],
    ]


# ---- queries -------------------------------------------------------------------------


def populate(pair: Pair) -> dict[str, str]:
    gw1, gw2 = pair.gw1, pair.gw2
    return {
        "a": gw1.add_client(1, uid="alice", groups=("room", "x"), session={"n": 1}),
        "b": gw1.add_client(2, uid="bob", groups=("room",)),
        "c": gw2.add_client(3, uid="alice", groups=("room",), session={"n": 3}),
        "d": gw2.add_client(4),
    }


async def test_queries_merge_across_gateways(pair: Pair) -> None:
    api = pair.api
    ids = populate(pair)
    assert await api.is_online(ids["a"]) is True
    assert await api.is_online(pair.gw1.client_id(99)) is False
    assert await api.get_session(ids["c"]) == {"n": 3}
    assert await api.get_session(ids["b"]) == {}
    assert await api.get_session(pair.gw2.client_id(99)) is None
    assert await api.get_uid_by_client_id(ids["b"]) == "bob"
    assert await api.get_uid_by_client_id(ids["d"]) is None
    assert await api.is_uid_online("alice") is True
    assert await api.is_uid_online("carol") is False
    assert sorted(await api.get_client_id_by_uid("alice")) == sorted([ids["a"], ids["c"]])
    assert await api.get_client_count_by_group() == 4
    assert await api.get_client_count_by_group("room") == 3
    assert await api.get_client_count_by_group("none") == 0
    assert await api.get_client_sessions_by_group("room") == {
        ids["a"]: {"n": 1},
        ids["b"]: {},
        ids["c"]: {"n": 3},
    }
    assert sorted(await api.get_client_id_list_by_group("room")) == sorted(
        [ids["a"], ids["b"], ids["c"]]
    )
    assert sorted(await api.get_uid_list_by_group("room")) == ["alice", "bob"]
    assert await api.get_uid_count_by_group("room") == 2
    assert await api.get_all_client_count() == 4
    assert set(await api.get_all_client_sessions()) == set(ids.values())
    assert sorted(await api.get_all_client_id_list()) == sorted(ids.values())
    assert sorted(await api.get_all_uid_list()) == ["alice", "bob"]
    assert await api.get_all_uid_count() == 2
    assert sorted(await api.get_all_group_id_list()) == ["room", "x"]
    assert await api.get_all_group_count() == 2
    group_uids = await api.get_all_group_uid_list()
    assert sorted(group_uids["room"]) == ["alice", "bob"] and group_uids["x"] == ["alice"]
    group_ids = await api.get_all_group_client_id_list()
    assert group_ids["x"] == [ids["a"]] and len(group_ids["room"]) == 3
    assert await api.is_uids_online(["alice", "bob", "carol", 7]) == {
        "alice": True,
        "bob": True,
        "carol": False,
        "7": False,
    }
    by_uid = await api.batch_get_client_id_by_uid(["bob", "carol"])
    assert by_uid == {"bob": [ids["b"]], "carol": []}
    assert await api.batch_get_client_count_by_group(["room", "x", "y"]) == {
        "room": 3,
        "x": 1,
        "y": 0,
    }
    connections = await api.get_connections()
    assert {row["client_id"]: row["gateway"] for row in connections} == {
        ids["a"]: pair.gw1.address,
        ids["b"]: pair.gw1.address,
        ids["c"]: pair.gw2.address,
        ids["d"]: pair.gw2.address,
    }
    stats = await api.get_gateway_stats()
    assert stats[pair.gw1.address]["connections"] == 2


async def test_silent_gateway_gives_query_timeout_with_partial(pair: Pair) -> None:
    ids = populate(pair)
    pair.gw2.answer_queries = False
    with pytest.raises(QueryTimeout) as info:
        await pair.api.get_client_count_by_group("room")
    assert info.value.missing == (pair.gw2.address,)
    assert info.value.partial == 2
    assert pair.gw2.address in str(info.value)
    with pytest.raises(QueryTimeout) as info2:
        await pair.api.get_client_id_by_uid("alice")
    assert info2.value.partial == [ids["a"]]
    with pytest.raises(QueryTimeout) as info3:  # T-class: the owner is silent
        await pair.api.get_session(ids["c"])
    assert info3.value.missing == (pair.gw2.address,)
    assert await pair.api.get_session(ids["a"]) == {"n": 1}


async def test_lost_link_counts_as_missing(pair: Pair) -> None:
    populate(pair)
    pair.gw2.answer_queries = False
    query = asyncio.ensure_future(pair.api.get_all_client_count())
    await wait_until(lambda: bool(pair.gw2.packets(Cmd.Q_GROUPS)))
    pair.links[pair.gw2.address].abort("test")
    with pytest.raises(QueryTimeout) as info:
        await query
    assert info.value.missing == (pair.gw2.address,) and info.value.partial == 2


async def test_error_reply_raises_remote_error(pair: Pair) -> None:
    link = pair.links[pair.gw1.address]
    pair.gw1.answer_queries = False
    future = link.request_future(Cmd.Q_STATS, timeout=UNIT)
    await wait_until(lambda: bool(pair.gw1.packets(Cmd.Q_STATS)))
    req = pair.gw1.packets(Cmd.Q_STATS)[-1][1]
    pair.gw1.links[0].write(encode(Cmd.ERROR, req, "unknown query"))
    with pytest.raises(RemoteError, match="unknown query"):
        await future
    assert link.is_open


# ---- pure merges ---------------------------------------------------------------------


class Origin:
    def __init__(self, prefix: str, address: str) -> None:
        self.prefix, self.gateway_address = prefix, address

    def client_id(self, conn_id: int) -> str:
        return f"{self.prefix}:{conn_id}"


def test_merge_functions() -> None:
    a, b = Origin("A", "1.1.1.1:1"), Origin("B", "2.2.2.2:2")
    uid_answers: list[tuple[Any, Any]] = [(a, {"u": [1, 2]}), (b, {"u": [3], "v": [4]})]
    assert merge.uids_online(uid_answers, ["u", "w"]) == {"u": True, "w": False}
    assert merge.client_ids_by_uid(uid_answers, ["u"]) == {"u": ["A:1", "A:2", "B:3"]}
    counts: list[tuple[Any, Any]] = [(a, {"g": 2, "h": 1}), (b, {"g": 3})]
    assert merge.group_counts(counts) == {"g": 5, "h": 1}
    assert merge.group_counts(counts, ["h", "z"]) == {"h": 1, "z": 0}
    sessions: list[tuple[Any, Any]] = [(a, {"g": {1: pack_session({"x": 1}), 2: None}})]
    assert merge.group_sessions(sessions) == {"g": {"A:1": {"x": 1}, "A:2": {}}}
    uids: list[tuple[Any, Any]] = [(a, {"g": ["u", "v"]}), (b, {"g": ["v", "w"]})]
    assert merge.group_uids(uids) == {"g": ["u", "v", "w"]}
    assert merge.all_uids([(a, ["u", "v"]), (b, ["v"])]) == ["u", "v"]
    assert merge.tagged([(a, {"n": 1})]) == {"1.1.1.1:1": {"n": 1}}
    assert merge.tagged_rows([(b, [{"c": 1}])]) == [{"c": 1, "gateway": "2.2.2.2:2"}]
    assert unpack_session(pack_session({"k": [1]})) == {"k": [1]}


def test_routes_are_validated_and_their_cache_is_bounded() -> None:
    from pygatewayworker.gateway.client_id import InvalidClientId, encode_client_id
    from pygatewayworker.gatewayclient.api import ROUTE_CACHE_SIZE, _route_of, route

    good = encode_client_id("10.0.0.1", 2300, 77)
    assert route(good) == ("10.0.0.1:2300", 77) == route(good)  # decoded, then known
    for bad in (good.upper(), good[:12] + "00000000", good[:12] + "0000_001", good + "0"):
        with pytest.raises(InvalidClientId):
            route(bad)
    assert _route_of.cache_info().maxsize == ROUTE_CACHE_SIZE
