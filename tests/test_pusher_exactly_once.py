"""Presence and channel webhooks exactly once across gateways (the decider), against
a real cluster of 2 gateways and 2 workers: two connections of one user on different
gateways subscribe at the same instant and leave at the same instant, round after
round, and a third connection counts the announcements; the same for the
``channel_occupied`` / ``channel_vacated`` webhooks; then gateways are killed under
a user's connections."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from typing import Any

from pygatewayworker.gatewayclient.decider import decider_of
from pygatewayworker.pusher.protocol import group_of
from tests.pusher_cluster import (
    APP_ID,
    PusherClient,
    PusherCluster,
    gateway_of,
    recv_event,
)
from tests.test_pusher_e2e import WebhookReceiver, cluster, hooks

__all__ = ["cluster", "hooks"]  # the e2e module's fixtures: a cluster of this module's own

ROUNDS = 30
SETTLE = 2.0
"""Seconds given to a duplicate announcement to show up before counting (webhooks
are batched for 50 ms; frames take a round trip)."""


def _gateways(cluster: PusherCluster) -> dict[str, tuple[str, int]]:
    """``{internal port as 4 hex digits (as in a socket_id): (address, pid)}``."""
    state = json.loads((cluster.spec.run_dir / "state.json").read_text())
    out = {}
    for proc in state["processes"]:
        if proc["role"] == "gateway":
            address = proc["addresses"]["internal"]
            out[f"{int(address.rpartition(':')[2]):04x}"] = (address, proc["pid"])
    return out


async def _on(cluster: PusherCluster, gateway: str) -> PusherClient:
    """A client whose connection landed on ``gateway``."""
    for _ in range(60):
        client = await PusherClient.open(cluster.ws_url())
        if gateway_of(client.socket_id) == gateway:
            return client
        await client.close()
    raise AssertionError(f"no connection landed on gateway {gateway}")


def _channel_decided_by(cluster: PusherCluster, gateway: str, prefix: str) -> str:
    """A channel name whose decider is ``gateway``."""
    addresses = [address for address, _ in _gateways(cluster).values()]
    wanted = _gateways(cluster)[gateway][0]
    for i in range(1000):
        channel = f"{prefix}-{i}"
        if decider_of(group_of(APP_ID, channel), addresses) == wanted:
            return channel
    raise AssertionError("no channel name maps to that gateway")


class Counter:
    """Reads every frame of a watcher connection in the background."""

    def __init__(self, client: PusherClient) -> None:
        self.client = client
        self.frames: list[dict[str, Any]] = []
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        while True:
            try:
                self.frames.append(await recv_event(self.client.ws, 3600))
            except Exception:
                return

    def of(self, event: str, user: str) -> int:
        return sum(
            1
            for f in self.frames
            if f.get("event") == f"pusher_internal:{event}" and f["data"].get("user_id") == user
        )

    async def wait(self, event: str, user: str, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.of(event, user) < count:
            assert time.monotonic() < deadline, f"{count} x {event} of {user}: {self.frames}"
            await asyncio.sleep(0.01)

    async def barrier(self, client: PusherClient, channel: str) -> None:
        """Until ``client``'s subscribe has run to its end on its worker (a client's
        events run in order there): its next client event reached us."""
        name = f"client-probe-{len(self.frames)}"
        await client.send(name, {}, channel)
        deadline = time.monotonic() + 10
        while not any(f.get("event") == name for f in self.frames):
            assert time.monotonic() < deadline, f"no {name}: {self.frames}"
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        self.task.cancel()
        await self.client.close()


async def _subscribe(client: PusherClient, channel: str, user: str | None = None) -> None:
    """Subscribe and read up to its ``subscription_succeeded`` (frames of other
    connections of the same user, a member_added of itself, may come first)."""
    await client.send_subscribe(channel, None if user is None else {"user_id": user})
    while True:
        doc = await recv_event(client.ws)
        assert doc["event"] != "pusher:subscription_error", doc
        if doc["event"] == "pusher_internal:subscription_succeeded" and doc["channel"] == channel:
            return


def _webhooks(hooks: WebhookReceiver, name: str, **match: str) -> int:
    return sum(
        1
        for e in hooks.events()
        if e.get("name") == name and all(e.get(k) == v for k, v in match.items())
    )


async def _hook_count(hooks: WebhookReceiver, name: str, count: int, **match: str) -> None:
    deadline = time.monotonic() + 10
    while _webhooks(hooks, name, **match) < count:
        assert time.monotonic() < deadline, f"{count} x {name} {match}: {hooks.events()}"
        await asyncio.sleep(0.02)


async def test_two_connections_of_a_user_at_the_same_instant_are_announced_once(
    cluster: PusherCluster, hooks: WebhookReceiver
) -> None:
    """Each round: a1 and a2 (user "ann", one per gateway) subscribe to the presence
    channel and to a public channel at the same instant, then leave both at the same
    instant. The watcher sees exactly one member_added and one member_removed per
    round; the webhooks say channel_occupied and channel_vacated of the public channel
    exactly once per round, and member_added / member_removed of ann once."""
    gateways = sorted(_gateways(cluster))
    a1, a2 = await _on(cluster, gateways[0]), await _on(cluster, gateways[1])
    watcher = await PusherClient.open(cluster.ws_url())
    room, public = "presence-race", "public-race"
    assert (await watcher.subscribe(room, channel_data={"user_id": "w"}))["event"].endswith(
        "subscription_succeeded"
    )
    counter = Counter(watcher)
    try:
        for round_ in range(1, ROUNDS + 1):
            await asyncio.gather(_subscribe(a1, room, "ann"), _subscribe(a2, room, "ann"))
            await asyncio.gather(_subscribe(a1, public), _subscribe(a2, public))
            await counter.wait("member_added", "ann", round_)
            await _hook_count(hooks, "channel_occupied", round_, channel=public)
            await asyncio.gather(
                *(
                    c.send("pusher:unsubscribe", {"channel": ch})
                    for ch in (room, public)
                    for c in (a1, a2)
                )
            )
            await counter.wait("member_removed", "ann", round_)
            await _hook_count(hooks, "channel_vacated", round_, channel=public)
        await asyncio.sleep(SETTLE)
        assert (counter.of("member_added", "ann"), counter.of("member_removed", "ann")) == (
            ROUNDS,
            ROUNDS,
        )
        kinds = [f["event"].rpartition(":")[2] for f in counter.frames if "member" in f["event"]]
        assert kinds == ["member_added", "member_removed"] * ROUNDS
        assert _webhooks(hooks, "channel_occupied", channel=public) == ROUNDS
        assert _webhooks(hooks, "channel_vacated", channel=public) == ROUNDS
        assert _webhooks(hooks, "member_added", channel=room, user_id="ann") == ROUNDS
        assert _webhooks(hooks, "member_removed", channel=room, user_id="ann") == ROUNDS
    finally:
        await counter.close()
        await a1.close()
        await a2.close()


async def _closed_on_worker(cluster: PusherCluster, socket_ids: set[str], channel: str) -> None:
    """Until the workers ran the leave side (``on_unsubscribe(sub, "close")``) of
    every one of ``socket_ids`` in ``channel``: announcements come before the hook."""
    deadline = time.monotonic() + 30
    while True:
        done = {
            h["socket_id"]
            for h in cluster.hooks()
            if h["hook"] == "unsubscribe" and h["reason"] == "close" and h["channel"] == channel
        }
        if socket_ids <= done:
            return
        assert time.monotonic() < deadline, f"no close of {socket_ids - done} in {channel}"
        await asyncio.sleep(0.1)


async def _wait_respawned(cluster: PusherCluster, gateway: str, old_pid: int) -> None:
    deadline = time.monotonic() + 30
    while _gateways(cluster)[gateway][1] == old_pid:
        assert time.monotonic() < deadline, "the killed gateway was not respawned"
        await asyncio.sleep(0.2)
    client = await _on(cluster, gateway)  # it serves again
    await client.close()


async def test_a_gateway_killed_under_a_user_announces_its_departure_once(
    cluster: PusherCluster,
) -> None:
    """ann has a connection on each gateway; killing one of them is no departure.
    bob has two connections, both on the gateway killed next: one member_removed.
    The channel's decider is the killed gateway, so both times it comes back empty
    and the key is rebuilt from the live connections. The kills wait until every
    join is decided (a join in flight when its decider dies is the documented
    exception)."""
    doomed, survivor = sorted(_gateways(cluster))
    room = _channel_decided_by(cluster, doomed, "presence-kill")
    watcher = await _on(cluster, survivor)
    await watcher.subscribe(room, channel_data={"user_id": "w"})
    counter = Counter(watcher)
    ann_doomed, ann_safe = await _on(cluster, doomed), await _on(cluster, survivor)
    try:
        for client in (ann_doomed, ann_safe):
            await _subscribe(client, room, "ann")
            await counter.barrier(client, room)  # its join decided: not in flight
        assert counter.of("member_added", "ann") == 1

        pid = _gateways(cluster)[doomed][1]
        os.kill(pid, signal.SIGKILL)
        await _closed_on_worker(cluster, {ann_doomed.socket_id}, room)
        await asyncio.sleep(SETTLE)
        assert counter.of("member_removed", "ann") == 0  # ann is still on the survivor
        await _wait_respawned(cluster, doomed, pid)

        bobs = [await _on(cluster, doomed), await _on(cluster, doomed)]
        for client in bobs:
            await _subscribe(client, room, "bob")
            await counter.barrier(client, room)
        assert counter.of("member_added", "bob") == 1
        pid = _gateways(cluster)[doomed][1]
        os.kill(pid, signal.SIGKILL)
        await _closed_on_worker(cluster, {b.socket_id for b in bobs}, room)
        await counter.wait("member_removed", "bob", 1)
        await asyncio.sleep(SETTLE)
        assert counter.of("member_removed", "bob") == 1
        assert counter.of("member_added", "bob") == 1
        assert (
            counter.of("member_removed", "ann") == 0 and counter.of("member_added", "ann") == 1
        ), [(f["event"], f["data"]) for f in counter.frames]
        users = await asyncio.to_thread(cluster.sdk().users_info, room)
        assert sorted(u["id"] for u in users["users"]) == ["ann", "w"]
        await _wait_respawned(cluster, doomed, pid)
    finally:
        await counter.close()
        await ann_safe.close()
