"""Routing of uid and group sends: a gateway reports which uids and groups have
members on it (``Cmd.ROUTES``), and workers and push clients send ``SEND_TO_UID``,
``SEND_TO_GROUP`` and ``UNGROUP`` only to gateways that have members."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from pygatewayworker.gateway import linkproto
from pygatewayworker.gateway.directory import Directory, Entry
from pygatewayworker.gateway.protocol import (
    ROUTES_CHANGES,
    ROUTES_STATE,
    ROUTES_STATE_END,
    Cmd,
    Decoder,
    encode,
)
from pygatewayworker.gateway.server import GatewayServer
from pygatewayworker.gatewayclient import AsyncGatewayClient
from pygatewayworker.gatewayclient.link import GatewayLink
from tests.fakegateway import UNIT, FakeGateway, wait_until
from tests.gatewayharness import SECRET, FakeLink, open_client, recv, running, ws


def test_directory_reports_keys_that_appear_and_vanish() -> None:
    calls: list[int] = []
    directory: Directory[Entry] = Directory(lambda: calls.append(1))
    for conn_id in (1, 2, 3):
        directory.add(Entry(conn_id))
    assert calls == [] and directory.take_route_changes() == ([], [], [], [])

    directory.bind_uid(1, "ann")
    directory.bind_uid(2, "ann")  # not new: no change
    directory.join_group(1, "room")
    directory.join_group(2, "room")
    directory.join_group(3, "gone")
    directory.leave_group(3, "gone")  # appeared and vanished in the same turn
    assert calls == [1]  # once per batch of changes
    assert directory.take_route_changes() == (["ann"], [], ["room"], ["gone"])

    directory.bind_uid(1, "bob")  # ann keeps conn 2; bob is new
    directory.remove(2)  # ann's last connection; room keeps conn 1
    directory.join_group(3, "lobby")
    assert calls == [1, 1]
    uids_added, uids_removed, groups_added, groups_removed = directory.take_route_changes()
    assert (uids_added, sorted(uids_removed), groups_added, groups_removed) == (
        ["bob"],
        ["ann"],
        ["lobby"],
        [],
    )
    directory.ungroup("room")
    directory.unbind_uid(1, "bob")
    assert directory.take_route_changes() == ([], ["bob"], [], ["room"])
    assert directory.route_keys() == ([], ["lobby"])


def _decode(packets: list[bytes]) -> list[list[Any]]:
    decoder = Decoder()
    return [p for data in packets for p in decoder.feed(data)]


def test_route_packets_split_large_states_and_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(linkproto, "ROUTES_CHUNK", 3)
    uids = [f"u{i}" for i in range(5)]
    groups = ["g1", "g2"]
    state = _decode(linkproto.route_packets(True, uids, [], groups, []))
    assert [p[1] for p in state] == [ROUTES_STATE, ROUTES_STATE, ROUTES_STATE_END]
    assert [k for p in state for k in p[2]] == uids
    assert [k for p in state for k in p[4]] == groups
    assert all(len(p[2]) + len(p[3]) + len(p[4]) + len(p[5]) <= 3 for p in state)
    empty = _decode(linkproto.route_packets(True, [], [], [], []))
    assert empty == [[Cmd.ROUTES, ROUTES_STATE_END, [], [], [], []]]
    assert linkproto.route_packets(False, [], [], [], []) == []
    changes = _decode(linkproto.route_packets(False, ["a"], ["b", "c", "d"], [], ["g"]))
    assert [p[1] for p in changes] == [ROUTES_CHANGES, ROUTES_CHANGES]
    assert [k for p in changes for k in p[3]] == ["b", "c", "d"]


def test_route_packets_stay_small_whatever_the_key_lengths() -> None:
    groups = [chr(65 + i) * 100_000 for i in range(11)]
    packets = linkproto.route_packets(True, [], [], groups, [])
    assert all(len(p) < linkproto.ROUTES_CHUNK_BYTES + 4096 for p in packets)
    decoded = _decode(packets)
    assert [k for p in decoded for k in p[4]] == groups
    assert decoded[-1][1] == ROUTES_STATE_END


def test_uid_and_group_names_have_a_length_limit() -> None:
    from pygatewayworker.gateway.protocol import MAX_KEY_LENGTH
    from pygatewayworker.gatewayclient.api import check_key

    assert check_key("x" * MAX_KEY_LENGTH, "group") == "x" * MAX_KEY_LENGTH
    with pytest.raises(ValueError, match=f"at most {MAX_KEY_LENGTH}"):
        check_key("x" * (MAX_KEY_LENGTH + 1), "group")
    # an int uid counts by its digits, as the str the gateway stores
    assert check_key(10 ** (MAX_KEY_LENGTH - 1), "uid") == "1" + "0" * (MAX_KEY_LENGTH - 1)
    with pytest.raises(ValueError, match=f"uid is 4000 characters long; at most {MAX_KEY_LENGTH}"):
        check_key(10**3999, "uid")
    directory: Directory[Entry] = Directory()
    directory.add(Entry(1))
    with pytest.raises(ValueError, match="uid is 1025 characters long"):
        directory.bind_uid(1, "u" * (MAX_KEY_LENGTH + 1))
    with pytest.raises(ValueError, match="group is 1025 characters long"):
        directory.join_group(1, "g" * (MAX_KEY_LENGTH + 1))


async def test_gateway_reports_its_state_then_changes() -> None:
    async with running() as server:
        worker = await FakeLink.linked(server)
        assert await worker.wait_routes(1) == [[Cmd.ROUTES, ROUTES_STATE_END, [], [], [], []]]
        client, conn_id = await open_client(server, worker)
        worker.send(Cmd.BIND_UID, conn_id, "ann")
        worker.send(Cmd.JOIN_GROUP, conn_id, "room")
        await worker.wait_routes(2)
        assert worker.routes[1] == [Cmd.ROUTES, ROUTES_CHANGES, ["ann"], [], ["room"], []]

        late = await FakeLink.linked(server, role="client", name="push")
        await late.wait_routes(1)
        assert late.routes == [[Cmd.ROUTES, ROUTES_STATE_END, ["ann"], [], ["room"], []]]

        await client.close()
        await worker.expect(Cmd.EV_CLOSE)
        await late.wait_routes(2)
        await worker.wait_routes(3)
        assert late.routes[1] == [Cmd.ROUTES, ROUTES_CHANGES, [], ["ann"], [], ["room"]]
        assert worker.routes[2] == late.routes[1]
        await worker.close()
        await late.close()


async def test_link_keeps_routes_and_refuses_malformed_ones() -> None:
    gateway = await FakeGateway().start()
    try:
        link = GatewayLink(gateway.address)
        await link.connect()
        assert link.uids is None and link.groups is None  # unknown: send everything
        gateway.routes(ROUTES_STATE, (["a"], []), (["g"], []))
        gateway.routes(ROUTES_STATE_END, (["b"], []), ([], []))
        await wait_until(lambda: link.uids is not None)
        assert link.uids == {"a", "b"} and link.groups == {"g"}
        gateway.routes(ROUTES_CHANGES, (["c"], ["a"]), (["h"], ["g"]))
        await wait_until(lambda: link.uids == {"b", "c"})
        assert link.groups == {"h"}
        link.note_uid("d")
        link.note_group("k")
        assert "d" in link.uids and "k" in link.groups
        gateway.routes(ROUTES_CHANGES, ([7], []))  # type: ignore[list-item]
        await asyncio.wait_for(link.wait_closed(), UNIT)
        assert "ROUTES" in link.close_reason or not link.is_open
    finally:
        await gateway.stop()


async def test_own_joins_survive_removals_the_gateway_reported_before_handling_them() -> None:
    """The last member of "room" left (the gateway reports -room) while our JOIN was
    on its way: our own join stays routed until the gateway answered a PING queued
    behind it; the state received after our bind keeps our key too."""
    gateway = await FakeGateway().start()
    try:
        link = GatewayLink(gateway.address)
        await link.connect()
        link.note_uid("carl")  # before the state arrives
        gateway.routes(ROUTES_STATE_END, (["ann"], []), (["room"], []))
        await wait_until(lambda: link.groups is not None)
        assert link.uids == {"ann", "carl"}

        gateway.answer_pings = False
        pings = len(gateway.packets(Cmd.PING))
        link.note_group("room")
        link.note_group("lobby")  # one PING for both
        await wait_until(lambda: len(gateway.packets(Cmd.PING)) == pings + 1)
        gateway.routes(ROUTES_CHANGES, ([], ["carl"]), ([], ["room", "lobby"]))
        await asyncio.sleep(0.1)
        assert link.groups == {"room", "lobby"} and "carl" not in link.uids  # carl's pong came
        for peer in gateway.links:
            peer.write(encode(Cmd.PONG))  # the gateway handled our joins
        await asyncio.sleep(0.05)
        gateway.routes(ROUTES_CHANGES, ([], []), ([], ["lobby"]))
        await wait_until(lambda: link.groups == {"room"})
        link.close()
    finally:
        await gateway.stop()


async def test_push_client_sends_uid_and_group_messages_only_where_members_are() -> None:
    gw1 = await FakeGateway(secret="s").start()
    gw2 = await FakeGateway(secret="s").start()
    gw3 = await FakeGateway(secret="s").start()  # never reports: gets everything
    cid2 = gw2.add_client(5)
    try:
        async with AsyncGatewayClient(
            gateways=[gw1.address, gw2.address, gw3.address], secret="s", timeout=1.0
        ) as client:
            await client.send_to_all("warm-up")  # every link is open
            await wait_until(lambda: all(gw.packets(Cmd.SEND_TO_ALL) for gw in (gw1, gw2, gw3)))
            gw1.routes(ROUTES_STATE_END, (["ann"], []), (["room"], []))
            gw2.routes(ROUTES_STATE_END, ([], []), ([], []))
            await asyncio.sleep(0.1)
            await client.send_to_uid("ann", "to ann")
            await client.send_to_uid(["bob", "ann"], "to ann or bob")
            await client.send_to_group("room", "to room")
            await client.send_to_group(["x", "room"], "to room", exclude=[cid2])
            await client.ungroup("room")
            await client.send_to_uid("nobody", "to nobody")
            # our own bind/join route at once, before gw2 confirms
            await client.bind_uid(cid2, "carl")
            await client.send_to_uid("carl", "to carl")
            await client.join_group(cid2, "lobby")
            await client.send_to_group("lobby", "to lobby")
            await client.send_to_all("marker")
            await wait_until(
                lambda: all(len(gw.packets(Cmd.SEND_TO_ALL)) == 2 for gw in (gw1, gw2, gw3))
            )

        wanted = (Cmd.SEND_TO_UID, Cmd.SEND_TO_GROUP, Cmd.UNGROUP)

        def routed(gw: FakeGateway) -> list[tuple[Cmd, Any]]:
            return [(p[0], p[1]) for p in gw.packets(*wanted)]

        assert routed(gw1) == [
            (Cmd.SEND_TO_UID, ["ann"]),
            (Cmd.SEND_TO_UID, ["bob", "ann"]),
            (Cmd.SEND_TO_GROUP, ["room"]),
            (Cmd.SEND_TO_GROUP, ["x", "room"]),
            (Cmd.UNGROUP, "room"),
        ]
        # ungroup goes everywhere (a join not yet reported must not survive it)
        assert routed(gw2) == [
            (Cmd.UNGROUP, "room"),
            (Cmd.SEND_TO_UID, ["carl"]),
            (Cmd.SEND_TO_GROUP, ["lobby"]),
        ]
        # gw3 never said what it holds: it gets every uid/group packet
        assert [p[1] for p in routed(gw3)] == [
            ["ann"],
            ["bob", "ann"],
            ["room"],
            ["x", "room"],
            "room",
            ["nobody"],
            ["carl"],
            ["lobby"],
        ]
    finally:
        for gw in (gw1, gw2, gw3):
            await gw.stop()


async def _count(server: GatewayServer, cmd: Cmd) -> Callable[[], int]:
    """Count ``cmd`` packets the (in-process) gateway handles."""
    seen = [0]
    handler = server.core.handlers[cmd]

    def counting(link: Any, packet: list[Any]) -> None:
        seen[0] += 1
        handler(link, packet)

    server.core.handlers[cmd] = counting
    return lambda: seen[0]


async def test_real_gateways_route_group_and_uid_sends_across_processes() -> None:
    """Two real gateways; a raw worker joins a client of gateway A to a group: the
    push client (another link) learns it from A's ROUTES and sends only to A."""
    async with running() as gw_a, running() as gw_b:
        worker_a = await FakeLink.linked(gw_a)
        client, conn_id = await open_client(gw_a, worker_a)
        b_groups = await _count(gw_b, Cmd.SEND_TO_GROUP)
        a_groups = await _count(gw_a, Cmd.SEND_TO_GROUP)
        b_uids = await _count(gw_b, Cmd.SEND_TO_UID)
        async with AsyncGatewayClient(
            gateways=[gw_a.internal_address, gw_b.internal_address], secret=SECRET, timeout=2.0
        ) as push:
            await push.send_to_all("hello")
            assert await recv(client) == "hello"
            worker_a.send(Cmd.JOIN_GROUP, conn_id, "room")
            worker_a.send(Cmd.BIND_UID, conn_id, "ann")
            link_a = push._pool.links[gw_a.internal_address]
            await wait_until(lambda: link_a.groups == {"room"} and link_a.uids == {"ann"})
            await push.send_to_group("room", "to room")
            await push.send_to_uid("ann", "to ann")
            assert await recv(client) == "to room"
            assert await recv(client) == "to ann"
            assert (a_groups(), b_groups(), b_uids()) == (1, 0, 0)
        # a second client on B joins: both get it
        async with AsyncGatewayClient(
            gateways=[gw_a.internal_address, gw_b.internal_address], secret=SECRET, timeout=2.0
        ) as push:
            worker_b = await FakeLink.linked(gw_b)
            other = await ws(gw_b)
            other_id = (await worker_b.expect(Cmd.EV_CONNECT))[1]
            worker_b.send(Cmd.JOIN_GROUP, other_id, "room")
            assert await push.get_all_client_count() == 2  # links both gateways
            link_b = push._pool.links[gw_b.internal_address]
            await wait_until(lambda: link_b.groups == {"room"})
            await push.send_to_group("room", "both")
            assert await recv(client) == "both"
            assert await recv(other) == "both"
            assert (a_groups(), b_groups()) == (2, 1)
            await other.close()
            await worker_b.close()
        await client.close()
        await worker_a.close()
