"""Unchanged pusher-js 8 clients (under Node) against a real cluster with 2 gateways:
public, private (auth endpoint of a tiny backend), presence across gateways with a
gateway killed, client events, unsubscribe, reconnect; the server side triggers with
the ``pusher`` Python SDK."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tests.pusher_cluster import KEY, SECRET, PusherCluster, gateway_of, running_pusher
from tests.pusher_js import AuthBackend, NodeHost, require_node


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PusherCluster]:
    require_node()
    with running_pusher(tmp_path_factory.mktemp("pusherjs")) as running:
        yield running


@pytest.fixture(scope="module")
def backend() -> Iterator[AuthBackend]:
    auth = AuthBackend(KEY, SECRET)
    yield auth
    auth.close()


@pytest.fixture
async def host() -> AsyncIterator[NodeHost]:
    node = await NodeHost.start()
    try:
        yield node
    finally:
        await node.close()


async def _trigger(cluster: PusherCluster, *args: Any) -> None:
    await asyncio.to_thread(cluster.sdk().trigger, *args)


async def test_public_private_client_events_and_unsubscribe(
    cluster: PusherCluster, backend: AuthBackend, host: NodeHost
) -> None:
    port = cluster.ws_port
    await host.connect("a", KEY, port, backend.url, "alice")
    b_socket = await host.connect("b", KEY, port, backend.url, "bob")
    for client in ("a", "b"):
        assert (await host.subscribe(client, "news"))["type"] == "subscribed"
        assert (await host.subscribe(client, "private-orders"))["type"] == "subscribed"
    denied = await host.subscribe("a", "private-denied")
    assert denied["type"] == "subscription_error" and denied["error"]["status"] == 403

    await _trigger(cluster, ["news", "private-orders"], "updated", {"id": 7})
    for client in ("a", "b"):
        for channel in ("news", "private-orders"):
            await host.wait(
                lambda d, c=client, ch=channel: (
                    d.get("id") == c
                    and d.get("type") == "event"
                    and d["channel"] == ch
                    and d["data"] == {"id": 7}
                )
            )
    # the sender's socket_id excludes it
    await _trigger(cluster, "news", "only-a", {"n": 1}, b_socket)
    await host.wait(lambda d: d.get("id") == "a" and d.get("event") == "only-a")

    # client events: relayed to the others, not echoed; refused on a public channel
    await host.send(
        "trigger", id="a", channel="private-orders", event="client-typing", data={"on": 1}
    )
    await host.wait(lambda d: d.get("id") == "b" and d.get("event") == "client-typing")
    await host.send("trigger", id="a", channel="news", event="client-nope", data={})
    refused = await host.wait(lambda d: d.get("id") == "a" and d.get("type") == "error")
    assert refused["data"]["code"] == 4301
    # a's events run in order on one worker, whose frames reach a's gateway in order:
    # an echo of client-typing would have come before the refusal of client-nope
    assert not received(host, "a", "client-typing")

    # unsubscribe: no more events on that channel. No sleep: ordered barriers.
    await host.send("unsubscribe", id="b", channel="news")
    # b's events also run in order, and its unsubscribe waits for b's gateway to
    # apply the leave: when a has b's next client event, b has left news
    await host.send("trigger", id="b", channel="private-orders", event="client-left", data={})
    await host.wait(lambda d: d.get("id") == "a" and d.get("event") == "client-left")
    # the HTTP API sends these in order on its link to b's gateway: had "after" (news)
    # reached b, it would have come before the probe on a channel b is still in
    await _trigger(cluster, "news", "after", {})
    await _trigger(cluster, "private-orders", "probe", {})
    await host.wait(lambda d: d.get("id") == "b" and d.get("event") == "probe")
    await host.wait(lambda d: d.get("id") == "a" and d.get("event") == "after")
    assert not received(host, "b", "after")
    assert not received(host, "b", "only-a")  # excluded by socket_id, sent before too
    assert not received(host, "b", "client-nope")  # refused: never relayed


def _states_after_disconnect(host: NodeHost, client: str, since: int = 0) -> list[str]:
    """The states ``client`` went through after its first "disconnected" since ``since``."""
    states = [d["current"] for d in host.seen[since:] if d.get("id") == client and "current" in d]
    return states[states.index("disconnected") + 1 :]


async def test_close_codes_decide_whether_pusher_js_reconnects(
    cluster: PusherCluster, backend: AuthBackend, host: NodeHost
) -> None:
    """An unknown key (4001) and terminate_connections (4009) close with their codes:
    pusher-js gives up ("refused": disconnected, no new attempt), where a close with
    1000 made it reconnect. pusher-js moves to "connecting" at once when it means to
    retry (its retryIn), so the order of its states is the proof, without a wait."""
    await host.send("connect", id="k", key="no-such-key", port=cluster.ws_port)
    await host.wait(lambda d: d.get("id") == "k" and d.get("current") == "disconnected")
    # a barrier: the host has run every callback of "k" before this one connects
    await host.connect("probe", KEY, cluster.ws_port, backend.url, "pia")
    assert _states_after_disconnect(host, "k") == []  # no "connecting": it gave up

    await host.connect("t", KEY, cluster.ws_port, backend.url, "tess")
    assert (await host.subscribe("t", "presence-terminate"))["type"] == "subscribed"
    mark = len(host.seen)
    await asyncio.to_thread(cluster.sdk().terminate_user_connections, "tess")
    await host.wait(lambda d: d.get("id") == "t" and d.get("current") == "disconnected")
    error = await host.wait(lambda d: d.get("id") == "t" and d.get("type") == "error", since=mark)
    assert error["data"]["code"] == 4009
    await host.connect("probe2", KEY, cluster.ws_port, backend.url, "pia")  # a barrier
    assert _states_after_disconnect(host, "t", mark) == []


def received(host: NodeHost, client: str, event: str) -> list[dict[str, Any]]:
    """Every frame named ``event`` that reached ``client``'s connection, also on a
    channel pusher-js no longer has (its global binding sees every frame)."""
    return host.of(client, "event", event=event) + host.of(client, "global", event=event)


async def test_reconnect_resubscribes(
    cluster: PusherCluster, backend: AuthBackend, host: NodeHost
) -> None:
    first = await host.connect("r", KEY, cluster.ws_port, backend.url, "rita")
    assert (await host.subscribe("r", "private-again"))["type"] == "subscribed"
    await host.send("disconnect", id="r")
    await host.wait(lambda d: d.get("id") == "r" and d.get("current") == "disconnected")
    mark = len(host.seen)
    await host.send("reconnect", id="r")
    again = await host.wait(
        lambda d: d.get("id") == "r" and d.get("current") == "connected", since=mark
    )
    assert again["socket_id"] != first
    # pusher-js subscribes its channels again by itself
    await host.wait(lambda d: d.get("id") == "r" and d.get("type") == "subscribed", since=mark)
    await _trigger(cluster, "private-again", "back", {"ok": True})
    await host.wait(lambda d: d.get("id") == "r" and d.get("event") == "back")


def _gateway_pids(cluster: PusherCluster) -> dict[str, int]:
    """``{internal port as 4 hex digits: pid}`` of the gateway processes."""
    state = json.loads((cluster.spec.run_dir / "state.json").read_text())
    out = {}
    for proc in state["processes"]:
        if proc["role"] == "gateway":
            port = int(proc["addresses"]["internal"].rpartition(":")[2])
            out[f"{port:04x}"] = proc["pid"]
    return out


async def _connect_on(
    host: NodeHost, client: str, gateway: str, cluster: PusherCluster, auth: str, user: str
) -> str:
    """Connect ``client`` until it lands on ``gateway`` (the kernel spreads
    connections over the gateway processes sharing the port)."""
    for attempt in range(40):
        name = f"{client}~{attempt}"
        socket_id = await host.connect(name, KEY, cluster.ws_port, auth, user)
        if gateway_of(socket_id) == gateway:
            return name
        await host.send("disconnect", id=name)
    raise AssertionError(f"no connection landed on gateway {gateway}")


async def test_presence_across_gateways_with_a_gateway_killed(
    cluster: PusherCluster, backend: AuthBackend, host: NodeHost
) -> None:
    pids = _gateway_pids(cluster)
    doomed, survivor = sorted(pids)
    a1 = await _connect_on(host, "a1", doomed, cluster, backend.url, "ann")
    b1 = await _connect_on(host, "b1", doomed, cluster, backend.url, "bob")
    a2 = await _connect_on(host, "a2", survivor, cluster, backend.url, "ann")
    room = "presence-room"

    first = await host.subscribe(a1, room)
    assert (first["count"], first["ids"], first["me"]) == (1, ["ann"], "ann")
    second = await host.subscribe(b1, room)
    assert second["count"] == 2
    await host.wait(lambda d: d.get("id") == a1 and d.get("type") == "member_added")
    third = await host.subscribe(a2, room)  # ann again, on the other gateway
    assert (third["count"], third["ids"]) == (2, ["ann", "bob"])
    # a member_added for a2 would reach b1 before a2's next client event (a2's worker
    # sends both, in order, on its link to b1's gateway)
    await host.send("trigger", id=a2, channel=room, event="client-probe", data={})
    await host.wait(lambda d: d.get("id") == b1 and d.get("event") == "client-probe")
    assert not host.of(b1, "member_added", user_id="ann")  # one member, announced once

    os.kill(pids[doomed], signal.SIGKILL)
    for gone in (a1, b1):  # pusher-js would reconnect them to the other gateway
        await host.send("disconnect", id=gone)
    removed = await host.wait(
        lambda d: d.get("id") == a2 and d.get("type") == "member_removed", timeout=20
    )
    assert (removed["user_id"], removed["count"]) == ("bob", 1)
    await asyncio.sleep(3)  # the other worker's sweep, if any, would have run by now
    assert len(host.of(a2, "member_removed")) == 1  # bob once, ann never (a2 is still in)
    assert not host.of(a2, "member_added")

    # the server side agrees: one user left in the channel
    users = await asyncio.to_thread(cluster.sdk().users_info, room)
    assert users == {"users": [{"id": "ann"}]}
