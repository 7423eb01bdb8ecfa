"""The Pusher protocol against a real cluster (2 gateways, 2 workers, the HTTP API
role): protocol errors answered as the protocol says, hooks, webhooks, the ``pusher``
Python server SDK, and channels seen from the native Gateway API."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from pygatewayworker import AsyncGatewayClient
from pygatewayworker.pusher.protocol import message
from tests.pusher_cluster import (
    APP2_ID,
    APP_ID,
    KEY2,
    SECRET,
    SECRET2,
    PusherClient,
    PusherCluster,
    expect_silence,
    gateway_of,
    recv_event,
    recv_until,
    running_pusher,
)


class WebhookReceiver:
    """A local HTTP endpoint that records every webhook POST."""

    def __init__(self) -> None:
        self.posts: list[tuple[dict[str, str], bytes]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                owner.posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for _, body in list(self.posts):
            out.extend(json.loads(body)["events"])
        return out

    async def wait_for(self, predicate: Any, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events():
                if predicate(event):
                    return event
            await asyncio.sleep(0.1)
        raise AssertionError(f"no such webhook; got {self.events()}")


@pytest.fixture(scope="module")
def hooks() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.server.shutdown()


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, hooks: WebhookReceiver
) -> Iterator[PusherCluster]:
    with running_pusher(tmp_path_factory.mktemp("pusher"), webhook=hooks.url) as running:
        yield running


# ---- handshake --------------------------------------------------------------------------


async def _handshake_error(url: str) -> tuple[dict[str, Any], int | None]:
    async with connect(url, open_timeout=5) as ws:
        first = await recv_event(ws)
        await asyncio.wait_for(ws.wait_closed(), 5)
        return first, ws.close_code


@pytest.mark.parametrize(
    ("key", "query", "code"),
    [
        ("no-such-key", "protocol=7", 4001),
        ("key-one", "protocol=99", 4007),
        ("key-one", "client=js", 4008),
        ("key-one", "protocol=seven", 4006),
    ],
)
async def test_handshake_errors_are_answered_with_the_protocol_codes(
    cluster: PusherCluster, key: str, query: str, code: int
) -> None:
    first, close_code = await _handshake_error(cluster.ws_url(key, query))
    assert first["event"] == "pusher:error"
    assert first["data"]["code"] == code
    assert close_code == code  # the close carries the error's code, as Pusher's does


async def test_allowed_origins(cluster: PusherCluster) -> None:
    url = cluster.ws_url(KEY2)
    async with connect(url, origin="https://evil.example", open_timeout=5) as ws:  # type: ignore[arg-type]
        first = await recv_event(ws)
        assert (first["event"], first["data"]["code"]) == ("pusher:error", 4009)
    async with connect(url, origin="https://allowed.example", open_timeout=5) as ws:  # type: ignore[arg-type]
        assert (await recv_event(ws))["event"] == "pusher:connection_established"


async def test_connection_established_and_ping(cluster: PusherCluster) -> None:
    async with connect(cluster.ws_url(), open_timeout=5) as ws:
        first = await recv_event(ws)
        assert first["event"] == "pusher:connection_established"
        assert first["data"]["activity_timeout"] == 30
        assert first["data"]["socket_id"].count(".") == 1
        await ws.send('{"event":"pusher:ping","data":{}}')
        assert (await recv_event(ws))["event"] == "pusher:pong"


# ---- protocol errors keep the state consistent ---------------------------------------------


async def test_protocol_errors_leave_the_connection_usable(cluster: PusherCluster) -> None:
    a = await PusherClient.open(cluster.ws_url())
    b = await PusherClient.open(cluster.ws_url())
    try:
        # malformed JSON, a non-object, an unknown event
        for raw in ("{not json", "[1,2]", '{"event":"pusher:nonsense","data":{}}'):
            await a.ws.send(raw)
            answer = await recv_event(a.ws)
            assert answer["event"] == "pusher:error", raw
        # a private channel without auth, with a bad signature, with another app's key
        no_auth = await a.subscribe("private-orders", secret=None)
        assert no_auth["event"] == "pusher:subscription_error"
        assert no_auth["data"]["status"] == 401 and "Auth info required" in no_auth["data"]["error"]
        bad = await a.subscribe("private-orders", secret="wrong-secret")
        assert bad["event"] == "pusher:subscription_error" and "signature" in bad["data"]["error"]
        other_key = await a.subscribe("private-orders", secret=SECRET2, key=KEY2)
        assert other_key["event"] == "pusher:subscription_error"
        presence_without_data = await a.subscribe("presence-room", channel_data=None)
        assert presence_without_data["event"] == "pusher:subscription_error"
        bad_name = await a.subscribe("bad channel!")
        assert bad_name["event"] == "pusher:subscription_error"
        # none of that subscribed anything: a's client events are refused
        await a.send("client-x", {"n": 1}, "private-orders")
        refused = await recv_until(a.ws, "pusher:error")
        assert refused["data"]["code"] == 4301 and "not subscribed" in refused["data"]["message"]
        # client events on a public channel are refused, and not relayed
        assert (await a.subscribe("public-news"))[
            "event"
        ] == "pusher_internal:subscription_succeeded"
        assert (await b.subscribe("public-news"))[
            "event"
        ] == "pusher_internal:subscription_succeeded"
        await a.send("client-x", {"n": 1}, "public-news")
        public = await recv_until(a.ws, "pusher:error")
        assert "only supported on private and presence" in public["data"]["message"]
        # an oversized client event (the app allows 2048 bytes) is refused
        assert (await a.subscribe("private-orders"))["event"].endswith("subscription_succeeded")
        assert (await b.subscribe("private-orders"))["event"].endswith("subscription_succeeded")
        await a.send("client-big", "x" * 4000, "private-orders")
        big = await recv_until(a.ws, "pusher:error")
        assert big["data"]["code"] == 4301 and "over 2048" in big["data"]["message"]
        await expect_silence(b.ws)
        # and a good one still goes through, to b only
        await a.send("client-ok", {"n": 2}, "private-orders")
        got = await recv_event(b.ws)
        assert (got["event"], got["data"]) == ("client-ok", {"n": 2})
        await expect_silence(a.ws)
    finally:
        await a.close()
        await b.close()


async def test_client_event_rate_limit(cluster: PusherCluster) -> None:
    a = await PusherClient.open(cluster.ws_url(KEY2), origin="https://allowed.example")
    try:
        assert (await a.subscribe("private-r", secret=SECRET2, key=KEY2))["event"].endswith(
            "subscription_succeeded"
        )
        for _ in range(5):  # app 2 allows 2 per second
            await a.send("client-x", {}, "private-r")
        limited = await recv_until(a.ws, "pusher:error")
        assert limited["data"]["code"] == 4301 and "rate limit" in limited["data"]["message"]
    finally:
        await a.close()


# ---- hooks -----------------------------------------------------------------------------


async def test_hooks_refuse_drop_and_rewrite(cluster: PusherCluster) -> None:
    a = await PusherClient.open(cluster.ws_url())
    b = await PusherClient.open(cluster.ws_url())
    try:
        refused = await a.subscribe("private-forbidden")
        assert refused["event"] == "pusher:subscription_error"
        assert refused["data"]["status"] == 403
        for client in (a, b):
            assert (await client.subscribe("private-hooks"))["event"].endswith("succeeded")
        await a.send("client-drop", {"x": 1}, "private-hooks")
        await a.send("client-rewrite", {"x": 1}, "private-hooks")
        got = await recv_event(b.ws)
        assert got["event"] == "client-rewrite" and got["data"] == {"rewritten": True, "by": "hook"}
        await a.send("pusher:unsubscribe", {"channel": "private-hooks"})
        await a.send("client-x", {}, "private-hooks")  # after unsubscribing: refused
        assert (await recv_until(a.ws, "pusher:error"))["data"]["code"] == 4301
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            seen = [
                (h["hook"], h.get("reason"))
                for h in cluster.hooks()
                if h["channel"] == "private-hooks" and h["socket_id"] == a.socket_id
            ]
            if ("unsubscribe", "unsubscribe") in seen:
                break
            await asyncio.sleep(0.1)
        assert seen == [("subscribe", None), ("unsubscribe", "unsubscribe")]
    finally:
        await a.close()
        await b.close()


# ---- presence and webhooks -------------------------------------------------------------


async def test_presence_members_and_webhooks(
    cluster: PusherCluster, hooks: WebhookReceiver
) -> None:
    watcher = await PusherClient.open(cluster.ws_url())
    a1 = await PusherClient.open(cluster.ws_url())
    a2 = await PusherClient.open(cluster.ws_url())
    try:
        first = await watcher.subscribe("presence-lobby", channel_data={"user_id": "w"})
        assert first["data"]["presence"] == {"ids": ["w"], "hash": {"w": None}, "count": 1}
        await hooks.wait_for(
            lambda e: e == {"name": "channel_occupied", "channel": "presence-lobby"}
        )
        info = {"name": "Ann"}
        joined = await a1.subscribe(
            "presence-lobby", channel_data={"user_id": "ann", "user_info": info}
        )
        assert joined["data"]["presence"]["count"] == 2
        added = await recv_until(watcher.ws, "pusher_internal:member_added")
        assert added["data"] == {"user_id": "ann", "user_info": info}
        # the same user on a second connection: one member, no second member_added
        again = await a2.subscribe(
            "presence-lobby", channel_data={"user_id": "ann", "user_info": info}
        )
        assert again["data"]["presence"]["count"] == 2
        await expect_silence(watcher.ws)
        await a1.close()
        await expect_silence(watcher.ws)  # ann still has a2
        await a2.close()
        removed = await recv_until(watcher.ws, "pusher_internal:member_removed")
        assert removed["data"] == {"user_id": "ann"}
        await expect_silence(watcher.ws)
        added_hook = await hooks.wait_for(lambda e: e.get("name") == "member_added")
        assert added_hook == {"name": "member_added", "channel": "presence-lobby", "user_id": "w"}
        await hooks.wait_for(lambda e: e.get("name") == "member_removed" and e["user_id"] == "ann")
        # webhooks are signed with the app secret
        headers, body = hooks.posts[0]
        assert headers["x-pusher-key"] == "key-one"
        expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert headers["x-pusher-signature"] == expected
    finally:
        await watcher.close()
    await hooks.wait_for(lambda e: e == {"name": "channel_vacated", "channel": "presence-lobby"})
    names = [e["name"] for e in hooks.events() if e.get("user_id") == "ann"]
    assert names.count("member_added") == 1 and names.count("member_removed") == 1


async def _one_per_gateway(cluster: PusherCluster) -> tuple[PusherClient, PusherClient]:
    """Two clients whose connections are on different gateways."""
    first = await PusherClient.open(cluster.ws_url())
    for _ in range(40):
        other = await PusherClient.open(cluster.ws_url())
        if gateway_of(other.socket_id) != gateway_of(first.socket_id):
            return first, other
        await other.close()
    await first.close()
    raise AssertionError("no two connections landed on different gateways")


async def test_first_subscribers_at_once_on_two_gateways_send_channel_occupied(
    cluster: PusherCluster, hooks: WebhookReceiver
) -> None:
    """Each of two first subscribers may count the other in the channel: one of them
    must still send channel_occupied, and channel_vacated comes only after it."""
    a, b = await _one_per_gateway(cluster)
    try:
        for round_ in range(4):
            channel = f"public-race-{round_}"
            answers = await asyncio.gather(a.subscribe(channel), b.subscribe(channel))
            assert [x["event"] for x in answers] == ["pusher_internal:subscription_succeeded"] * 2
            await hooks.wait_for(
                lambda e, c=channel: e == {"name": "channel_occupied", "channel": c}
            )
            await asyncio.gather(
                a.send("pusher:unsubscribe", {"channel": channel}),
                b.send("pusher:unsubscribe", {"channel": channel}),
            )
            await hooks.wait_for(
                lambda e, c=channel: e == {"name": "channel_vacated", "channel": c}
            )
            names = [e["name"] for e in hooks.events() if e.get("channel") == channel]
            assert names[0] == "channel_occupied", names
            assert set(names) == {"channel_occupied", "channel_vacated"}, names
    finally:
        await a.close()
        await b.close()


async def test_client_event_webhook(cluster: PusherCluster, hooks: WebhookReceiver) -> None:
    a = await PusherClient.open(cluster.ws_url())
    try:
        await a.subscribe("presence-chat", channel_data={"user_id": "zed"})
        await a.send("client-typing", {"on": True}, "presence-chat")
        event = await hooks.wait_for(lambda e: e.get("event") == "client-typing")
        assert event["event"] == "client-typing" and event["user_id"] == "zed"
        assert event["socket_id"] == a.socket_id and json.loads(event["data"]) == {"on": True}
    finally:
        await a.close()


# ---- the pusher Python server SDK -------------------------------------------------------


async def test_server_sdk_triggers_and_queries(cluster: PusherCluster) -> None:
    sdk = cluster.sdk()
    a = await PusherClient.open(cluster.ws_url())
    b = await PusherClient.open(cluster.ws_url())
    try:
        for client in (a, b):
            await client.subscribe("public-feed")
        await a.subscribe("presence-sdk", channel_data={"user_id": "u-a"})
        await b.subscribe("presence-sdk", channel_data={"user_id": "u-b"})
        await recv_until(a.ws, "pusher_internal:member_added")

        await asyncio.to_thread(sdk.trigger, ["public-feed"], "news", {"n": 1})
        for client in (a, b):
            got = await recv_until(client.ws, "news")
            assert got["data"] == {"n": 1} and got["channel"] == "public-feed"
        # socket_id excludes the sender
        await asyncio.to_thread(sdk.trigger, "public-feed", "news", {"n": 2}, a.socket_id)
        assert (await recv_until(b.ws, "news"))["data"] == {"n": 2}
        await expect_silence(a.ws)
        await asyncio.to_thread(
            sdk.trigger_batch,
            [
                {"channel": "public-feed", "name": "b1", "data": "one"},
                {"channel": "presence-sdk", "name": "b2", "data": {"two": 2}},
            ],
        )
        assert (await recv_until(a.ws, "b1"))["data"] == "one"
        assert (await recv_until(a.ws, "b2"))["data"] == {"two": 2}

        channels = await asyncio.to_thread(sdk.channels_info)
        assert {"public-feed", "presence-sdk"} <= set(channels["channels"])
        presence = await asyncio.to_thread(sdk.channels_info, "presence-", ["user_count"])
        assert presence["channels"]["presence-sdk"] == {"user_count": 2}
        one = await asyncio.to_thread(sdk.channel_info, "public-feed", ["subscription_count"])
        assert one == {"occupied": True, "subscription_count": 2}
        empty = await asyncio.to_thread(sdk.channel_info, "public-nobody")
        assert empty == {"occupied": False}
        users = await asyncio.to_thread(sdk.users_info, "presence-sdk")
        assert sorted(u["id"] for u in users["users"]) == ["u-a", "u-b"]

        import pusher.errors

        with pytest.raises(pusher.errors.PusherBadAuth):
            await asyncio.to_thread(cluster.sdk(secret="not-the-secret").trigger, "x", "e", {})
        with pytest.raises(pusher.errors.PusherBadRequest):
            await asyncio.to_thread(sdk.users_info, "public-feed")
        with pytest.raises(pusher.errors.PusherBadStatus, match="413"):
            await asyncio.to_thread(sdk.trigger, "public-feed", "big", "x" * 20000)
        app2 = cluster.sdk(secret=SECRET2, app_id=APP2_ID, key=KEY2)
        assert (await asyncio.to_thread(app2.channels_info))["channels"] == {}

        # terminate_connections closes every connection of the user
        await asyncio.to_thread(sdk.terminate_user_connections, "u-b")
        bye = await recv_until(b.ws, "pusher:error")
        assert bye["data"]["code"] == 4009
        await asyncio.wait_for(b.ws.wait_closed(), 5)
        assert b.ws.close_code == 4009
        assert (await recv_until(a.ws, "pusher_internal:member_removed"))["data"][
            "user_id"
        ] == "u-b"
    finally:
        await a.close()
        await b.close()


async def test_expired_timestamp_and_bad_body(cluster: PusherCluster) -> None:
    import urllib.error
    import urllib.request

    from pygatewayworker.pusher.httpauth import string_to_sign
    from pygatewayworker.pusher.protocol import sign

    body = b'{"name":"e","channel":"c","data":"{}"}'
    params = [
        ("auth_key", "key-one"),
        ("auth_timestamp", str(int(time.time()) - 3600)),
        ("auth_version", "1.0"),
        ("body_md5", hashlib.md5(body).hexdigest()),
    ]
    path = f"/apps/{APP_ID}/events"
    signature = sign(SECRET, string_to_sign("POST", path, params))
    query = "&".join(f"{k}={v}" for k, v in params) + f"&auth_signature={signature}"
    url = f"http://127.0.0.1:{cluster.api_port}{path}?{query}"
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as info:
        await asyncio.to_thread(urllib.request.urlopen, request, None, 5)
    assert info.value.code == 401 and b"Timestamp expired" in info.value.read()


# ---- channels are groups of the native API ---------------------------------------------


async def test_native_api_sees_and_reaches_pusher_channels(cluster: PusherCluster) -> None:
    a = await PusherClient.open(cluster.ws_url())
    try:
        await a.subscribe("public-mixed")
        async with AsyncGatewayClient(register=f"127.0.0.1:{cluster.spec.register_port}") as push:
            group = f"pusher:{APP_ID}:public-mixed"
            assert await push.get_client_count_by_group(group) == 1
            await push.send_to_group(group, message("native", {"from": "python"}, "public-mixed"))
            got = await recv_until(a.ws, "native")
            assert got["data"] == {"from": "python"}
    finally:
        await a.close()


def test_repo_fixture_exists() -> None:
    assert (Path(__file__).parent / "fixtures" / "apps" / "pusherapp" / "Events.py").is_file()
