"""``Channels`` (the Pusher app's subscribe / unsubscribe glue) over an in-memory
stand-in for the cluster, with the interleavings that matter forced: a query is
answered from the state at the moment it is asked, and its answer comes back only
after the other subscriber has had its turn (two gateways, each answering before the
other's command arrived). No sockets, no processes."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest

from pygatewayworker.businessworker.handle import reset_api, use_api
from pygatewayworker.gateway.decider import DecisionTable
from pygatewayworker.gatewayclient.errors import GatewayUnavailable
from pygatewayworker.pusher import PusherApp, Refuse, Subscription, Webhook
from pygatewayworker.pusher import protocol as p
from pygatewayworker.pusher.channels import Channels
from pygatewayworker.pusher.decide import Decide
from pygatewayworker.pusher.presence import PusherState


async def _later(value: Any) -> Any:
    """``value``, after the other tasks had their turn (a reply in flight)."""
    for _ in range(3):
        await asyncio.sleep(0)
    return value


class TableDecider:
    """A decider gateway: the real table, each answer after the others' turn;
    ``reachable`` false: not linked. ``forget()``: the gateway restarted empty."""

    def __init__(self) -> None:
        self.table = DecisionTable()
        self.reachable = True

    def _check(self) -> None:
        if not self.reachable:
            raise GatewayUnavailable("the decider is not linked")

    async def join(self, key: str, member: str, conn: str) -> tuple[bool, bool] | None:
        self._check()
        answer: tuple[bool, bool] | None = await _later(self.table.join(1, key, member, conn))
        return answer

    async def leave(self, key: str, member: str, conn: str) -> tuple[bool, bool] | None:
        self._check()
        answer: tuple[bool, bool] | None = await _later(self.table.leave(1, key, member, conn))
        return answer

    async def seed(self, key: str, members: dict[str, list[str]]) -> bool:
        self._check()
        return bool(await _later(self.table.seed(1, key, members, 0.0)))

    def forget(self) -> None:
        self.table = DecisionTable()


class FakeCluster:
    """What ``Channels`` calls on ``api``: commands apply at once; queries read the
    state when called and answer after yielding to the other tasks."""

    def __init__(self) -> None:
        self.sessions: dict[str, dict[str, Any]] = {}
        self.groups: dict[str, set[str]] = {}
        self.uids: dict[str, str] = {}
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.decider = TableDecider()

    def channels(self, hooks: Any, webhooks: Any) -> Channels:
        """A ``Channels`` whose decider is :attr:`decider` (no pause between tries)."""
        return Channels(hooks, webhooks, Decide(self.decider, attempts=3, pause=0))

    def connect(self, client_id: str, app: PusherApp) -> dict[str, Any]:
        session: dict[str, Any] = {}
        PusherState.new(session, app.id)
        self.sessions[client_id] = copy.deepcopy(session)
        return session

    def close(self, client_id: str) -> None:
        """The gateway drops the connection: gone from every group at once."""
        self.sessions.pop(client_id, None)
        for members in self.groups.values():
            members.discard(client_id)

    # ---- commands ------------------------------------------------------------------
    def set_session(self, client_id: str, session: dict[str, Any]) -> None:
        if client_id in self.sessions:
            self.sessions[client_id] = copy.deepcopy(session)

    def join_group(self, client_id: str, group: str) -> None:
        if client_id in self.sessions:
            self.groups.setdefault(group, set()).add(client_id)

    def leave_group(self, client_id: str, group: str) -> None:
        self.groups.get(group, set()).discard(client_id)

    def bind_uid(self, client_id: str, uid: str) -> None:
        self.uids[client_id] = uid

    def unbind_uid(self, client_id: str, uid: str) -> None:
        if self.uids.get(client_id) == uid:
            del self.uids[client_id]

    def send_to_client(self, client_id: str, message: str) -> None:
        frame = json.loads(message)
        frame["data"] = json.loads(frame["data"])
        self.sent.append((client_id, frame))

    def send_to_group(self, group: str, message: str, exclude: Any = None) -> None:
        for client_id in sorted(self.groups.get(group, set()) - set(exclude or ())):
            self.send_to_client(client_id, message)

    # ---- queries: read now, answer after the others had their turn --------------------
    _later = staticmethod(_later)

    async def is_online(self, client_id: str) -> bool:
        return bool(await self._later(client_id in self.sessions))

    async def get_client_count_by_group(self, group: str) -> int:
        return int(await self._later(len(self.groups.get(group, ()))))

    async def get_client_sessions_by_group(self, group: str) -> dict[str, Any]:
        members = self.groups.get(group, set())
        snapshot = {c: copy.deepcopy(self.sessions[c]) for c in members if c in self.sessions}
        result: dict[str, Any] = await self._later(snapshot)
        return result

    def events(self, client_id: str, channel: str) -> list[str]:
        return [m["event"] for c, m in self.sent if c == client_id and m.get("channel") == channel]


class Webhooks:
    """Records what would be sent (the sender's ``wants``/``emit`` interface)."""

    def __init__(self) -> None:
        self.emitted: list[dict[str, Any]] = []

    def wants(self, app: PusherApp, name: str) -> bool:
        return any(name in hook.events for hook in app.webhooks)

    def emit(self, app: PusherApp, name: str, **fields: Any) -> None:
        self.emitted.append({"name": name, **fields})

    def names(self, channel: str) -> list[str]:
        return [e["name"] for e in self.emitted if e.get("channel") == channel]


class OrderLocks:
    """Hooks in the manner of examples/order_lock: ``on_subscribe`` takes a lock,
    ``on_unsubscribe`` gives it back, whatever the reason."""

    def __init__(self) -> None:
        self.held: dict[str, str] = {}
        self.reasons: list[str] = []

    async def on_subscribe(self, sub: Subscription) -> None:
        await asyncio.sleep(0)
        if sub.client_id in self.held:
            raise Refuse("already locked")
        self.held[sub.client_id] = sub.channel

    def on_unsubscribe(self, sub: Subscription, reason: str) -> None:
        self.reasons.append(reason)
        self.held.pop(sub.client_id, None)

    def on_client_event(self, sub: Subscription, event: Any) -> None:
        return None


APP = PusherApp(
    id="9",
    key="key",
    secret="secret-secret",
    max_presence_members=1,
    webhooks=(Webhook("http://127.0.0.1:9/hook"),),
)


@pytest.fixture
def cluster() -> Iterator[FakeCluster]:
    fake = FakeCluster()
    token = use_api(fake)  # type: ignore[arg-type]
    try:
        yield fake
    finally:
        reset_api(token)


def _subscribe_data(client_id: str, channel: str, user: str | None = None) -> dict[str, Any]:
    socket_id = p.socket_id_of(client_id)
    data: dict[str, Any] = {"channel": channel}
    channel_data = None if user is None else f'{{"user_id":"{user}"}}'
    if channel.startswith(("private-", "presence-")):
        signature = p.channel_signature(APP.secret, socket_id, channel, channel_data)
        data["auth"] = f"{APP.key}:{signature}"
    if channel_data is not None:
        data["channel_data"] = channel_data
    return data


CLIENTS = ("00000001000100000001", "00000001000200000001")  # on two gateways


@pytest.mark.parametrize("decider", ["reachable", "restarting", "unreachable"])
@pytest.mark.parametrize("channel", ["public-room", "private-room", "presence-room"])
async def test_two_first_subscribers_at_once_send_channel_occupied(
    cluster: FakeCluster, channel: str, decider: str
) -> None:
    """Two connections (of one user, on presence) subscribe at once, then leave at
    once, three times. With the decider (also one that restarts empty before every
    step, so each step rebuilds the key): exactly one occupied, one vacated, one
    member_added and one member_removed per round. Without it (the read rule):
    never lost, never out of order."""
    hooks, webhooks = OrderLocks(), Webhooks()
    channels = cluster.channels(hooks, webhooks)
    cluster.decider.reachable = decider != "unreachable"
    sessions = {c: cluster.connect(c, APP) for c in CLIENTS}
    users = {CLIENTS[0]: "ann", CLIENTS[1]: "ann"} if channel.startswith("presence-") else {}
    for _ in range(3):  # occupied, vacated, occupied again...
        if decider == "restarting":
            cluster.decider.forget()
        await asyncio.gather(
            *(
                channels.subscribe(APP, c, sessions[c], _subscribe_data(c, channel, users.get(c)))
                for c in CLIENTS
            )
        )
        for c in CLIENTS:
            assert "pusher_internal:subscription_succeeded" in cluster.events(c, channel)
        assert webhooks.names(channel)[-1] == "channel_occupied"
        if decider == "restarting":
            cluster.decider.forget()
        await asyncio.gather(*(channels.unsubscribe(APP, c, sessions[c], channel) for c in CLIENTS))
        assert webhooks.names(channel)[-1] == "channel_vacated"
    names = [n for n in webhooks.names(channel) if n != "client_event"]
    letters = {"channel_occupied": "o", "channel_vacated": "v"}
    letters |= {"member_added": "a", "member_removed": "r"}
    seen = "".join(letters[n] for n in names)
    # webhooks and member frames go together: one letter per announcement
    if decider != "unreachable":  # exactly once, in order
        assert seen == ("aorv" if users else "ov") * 3, names
    else:  # the read rule: possibly twice, never lost
        rounds = seen.split("v")
        assert len([r for r in rounds if r]) >= 3 and all(c in "aor" for r in rounds for c in r)
        assert all(seen.count(c) >= 3 for c in ("aorv" if users else "ov")), names
    assert hooks.held == {}


async def test_subscribers_one_after_the_other_send_channel_occupied_once(
    cluster: FakeCluster,
) -> None:
    webhooks = Webhooks()
    channels = cluster.channels(OrderLocks(), webhooks)
    sessions = {c: cluster.connect(c, APP) for c in CLIENTS}
    for c in CLIENTS:
        await channels.subscribe(APP, c, sessions[c], _subscribe_data(c, "public-x"))
    assert webhooks.names("public-x") == ["channel_occupied"]
    await channels.unsubscribe(APP, CLIENTS[0], sessions[CLIENTS[0]], "public-x")
    assert webhooks.names("public-x") == ["channel_occupied"]
    cluster.close(CLIENTS[1])
    await channels.close(APP, CLIENTS[1], sessions[CLIENTS[1]])
    assert webhooks.names("public-x") == ["channel_occupied", "channel_vacated"]


async def test_a_full_presence_channel_refuses_before_the_hook(cluster: FakeCluster) -> None:
    hooks = OrderLocks()
    channels = cluster.channels(hooks, Webhooks())
    first, second = CLIENTS
    sessions = {c: cluster.connect(c, APP) for c in CLIENTS}
    await channels.subscribe(APP, first, sessions[first], _subscribe_data(first, "presence-1", "a"))
    await channels.subscribe(
        APP, second, sessions[second], _subscribe_data(second, "presence-1", "b")
    )
    refused = [m for c, m in cluster.sent if c == second][-1]
    assert refused["event"] == "pusher:subscription_error"
    assert refused["data"]["type"] == "LimitReached"
    assert hooks.held == {first: "presence-1"}  # the hook never ran for the refused one
    assert PusherState(sessions[second]["pusher"]).user_id is None
    assert second not in cluster.uids


async def test_a_refusal_after_the_hook_gives_back_what_it_took(cluster: FakeCluster) -> None:
    """Two users take the last place at once: both pass the first check and their
    hook, then each sees the other. Every refused one gets on_unsubscribe(sub,
    "refused"), so no lock stays taken for a subscription that does not exist."""
    hooks = OrderLocks()
    channels = cluster.channels(hooks, Webhooks())
    sessions = {c: cluster.connect(c, APP) for c in CLIENTS}
    users = dict(zip(CLIENTS, ("a", "b"), strict=True))
    await asyncio.gather(
        *(
            channels.subscribe(APP, c, sessions[c], _subscribe_data(c, "presence-2", users[c]))
            for c in CLIENTS
        )
    )
    inside = [c for c in CLIENTS if "presence-2" in PusherState(sessions[c]["pusher"]).channels]
    refused = [c for c in CLIENTS if c not in inside]
    assert refused, "the fake must force the race"
    assert hooks.reasons == ["refused"] * len(refused)
    assert set(hooks.held) == set(inside)
    assert cluster.groups.get(p.group_of(APP.id, "presence-2"), set()) == set(inside)
    for c in refused:
        assert cluster.events(c, "presence-2")[-1] == "pusher:subscription_error"
        assert c not in cluster.uids
