"""The pure layer of the Pusher app: protocol frames, socket_id mapping, channel
auth, presence from sessions, request signing, rate limits, app declarations, and
the HTTP API routes over a fake push client (no sockets)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pygatewayworker import ConfigError
from pygatewayworker.pusher import PusherApp, Webhook
from pygatewayworker.pusher import protocol as p
from pygatewayworker.pusher.httpapi import HTTPAPI
from pygatewayworker.pusher.httpauth import ApiError, check_signed, string_to_sign
from pygatewayworker.pusher.presence import (
    PusherState,
    announces_join,
    members,
    presence_payload,
    still_present,
)
from pygatewayworker.pusher.ratelimit import RateLimiter

APP = PusherApp(id="7", key="k", secret="s3cret-s3cret")


@given(st.integers(0, 2**48 - 1), st.integers(1, 2**32 - 1))
def test_socket_id_maps_back_to_the_client_id(high: int, low: int) -> None:
    client_id = f"{high:012x}{low:08x}"
    socket_id = p.socket_id_of(client_id)
    assert socket_id.count(".") == 1 and socket_id.replace(".", "").isdigit()
    assert p.client_id_of(socket_id) == client_id


@pytest.mark.parametrize("bad", ["", "1", "1.0", "a.b", f"{2**48}.1", "1.1.1", None, 12])
def test_bad_socket_ids(bad: Any) -> None:
    with pytest.raises(p.ProtocolError):
        p.client_id_of(bad)


def test_parse_client_messages() -> None:
    msg = p.parse_client_message('{"event":"pusher:subscribe","data":{"channel":"a"}}')
    assert (msg.event, msg.data) == ("pusher:subscribe", {"channel": "a"})
    encoded = p.parse_client_message(
        '{"event":"pusher:subscribe","data":"{\\"channel\\":\\"a\\"}"}'
    )
    assert encoded.data == {"channel": "a"}
    client = p.parse_client_message('{"event":"client-x","channel":"private-a","data":[1]}')
    assert (client.channel, client.data) == ("private-a", [1])
    for raw in ("{", "[]", '{"data":1}', '{"event":"pusher:x","data":"nope"}', b"\xff"):
        with pytest.raises(p.ProtocolError):
            p.parse_client_message(raw)


def test_frames_carry_data_as_a_json_string() -> None:
    frame = json.loads(p.message("pusher:pong", {}))
    assert frame == {"event": "pusher:pong", "data": "{}"}
    err = json.loads(p.error("nope", 4001))
    assert json.loads(err["data"]) == {"code": 4001, "message": "nope"}
    sub = json.loads(p.subscription_error("private-a", "bad", 401))
    assert sub["channel"] == "private-a" and json.loads(sub["data"])["status"] == 401


def test_channel_kinds_and_names() -> None:
    assert [p.kind_of(c) for c in ("a", "private-a", "private-encrypted-a", "presence-a")] == [
        "public",
        "private",
        "encrypted",
        "presence",
    ]
    assert p.check_channel("private-order.42") == "private-order.42"
    for bad in ("", "a b", "x" * 201, "#server-to-user-1", None):
        with pytest.raises(p.ProtocolError):
            p.check_channel(bad)
    assert p.channel_of_group("7", p.group_of("7", "news")) == "news"
    assert p.channel_of_group("8", p.group_of("7", "news")) is None


def test_channel_auth() -> None:
    data = '{"user_id":"1"}'
    good = "k:" + p.channel_signature(APP.secret, "1.2", "presence-a", data)
    p.check_channel_auth("k", APP.secret, "1.2", "presence-a", good, data)
    for auth, socket_id in ((good, "1.3"), ("x:" + good[2:], "1.2"), ("", "1.2"), (None, "1.2")):
        with pytest.raises(p.ProtocolError):
            p.check_channel_auth("k", APP.secret, socket_id, "presence-a", auth, data)
    assert p.parse_channel_data('{"user_id": 5, "user_info": {"n": 1}}', 100) == ("5", {"n": 1})
    for bad in (
        None,
        "{",
        "[]",
        "{}",
        '{"user_id": ""}',
        '{"user_id":"1","user_info":"' + "x" * 200 + '"}',
    ):
        with pytest.raises(p.ProtocolError):
            p.parse_channel_data(bad, 100)


def test_client_event_checks() -> None:
    subscribed = {"private-a": None, "public": None}
    ok = p.ClientMessage("client-x", "private-a", {"a": 1})
    assert p.check_client_event(ok, subscribed, 100) == "private-a"
    for msg in (
        p.ClientMessage("client-x", "private-b", {}),  # not subscribed
        p.ClientMessage("client-x", "public", {}),  # public channel
        p.ClientMessage("client-x", "private-a", "x" * 200),  # too big
    ):
        with pytest.raises(p.ProtocolError) as info:
            p.check_client_event(msg, subscribed, 100)
        assert info.value.code == 4301


def _session(channel: str, user: str | None, joined: bool = True) -> dict[str, Any]:
    session: dict[str, Any] = {}
    state = PusherState.new(session, "7")
    state.add(channel, user, {"name": user} if user else None)
    if joined:
        state.mark_joined(channel)
    return session


def test_presence_from_sessions() -> None:
    sessions = {
        "a1": _session("presence-r", "ann"),
        "a2": _session("presence-r", "ann", joined=False),
        "b1": _session("presence-r", "bob"),
        "x": {"other": "app"},
    }
    assert members(sessions, "presence-r") == {"ann": {"name": "ann"}, "bob": {"name": "bob"}}
    assert presence_payload(members(sessions, "presence-r"))["presence"]["count"] == 2
    assert not announces_join(sessions, "a2", "presence-r", "ann")  # a1 is joined
    assert announces_join({"a2": sessions["a2"]}, "a2", "presence-r", "ann")
    assert announces_join({"a1": sessions["a1"], "a2": sessions["a2"]}, "a1", "presence-r", "ann")
    assert still_present(sessions, "a1", "presence-r", "ann")
    assert not still_present(sessions, "b1", "presence-r", "bob")


def test_rate_limiter() -> None:
    limiter = RateLimiter()
    assert all(limiter.allow("c", 3, 100.0) for _ in range(3))
    assert not limiter.allow("c", 3, 100.0)
    assert limiter.allow("c", 3, 100.4)  # 1.2 tokens back
    assert not limiter.allow("c", 0, 200.0)
    limiter.forget("c")
    assert len(limiter) == 0


def test_app_declarations() -> None:
    app = PusherApp(id=12, key="k", secret="12345678", allowed_origins="https://*.shop.io")
    assert app.id == "12"
    assert app.origin_allowed("https://a.shop.io") and not app.origin_allowed("https://shop.evil")
    assert not app.origin_allowed(None) and PusherApp("1", "k", "12345678").origin_allowed(None)
    for bad in (
        {"id": "a b"},
        {"secret": "short"},
        {"client_event_rate": -1},
        {"max_event_size": 0},
        {"webhooks": ["http://x"]},
    ):
        with pytest.raises(ConfigError):
            PusherApp(**{"id": "1", "key": "k", "secret": "12345678", **bad})
    for url in ("ftp://x", "http://", "http://x:99999/", "http://[::1/"):
        with pytest.raises(ConfigError):
            Webhook(url)
    with pytest.raises(ConfigError):
        Webhook("http://x", events=["nope"])


def _signed(method: str, path: str, body: bytes, secret: str = APP.secret, **extra: str) -> str:
    import hashlib

    params = [("auth_key", "k"), ("auth_timestamp", str(int(time.time()))), ("auth_version", "1.0")]
    if body:
        params.append(("body_md5", hashlib.md5(body).hexdigest()))
    params += list(extra.items())
    params.append(("auth_signature", p.sign(secret, string_to_sign(method, path, params))))
    return path + "?" + "&".join(f"{k}={v}" for k, v in params)


def test_request_signing_matches_the_pusher_sdk() -> None:
    import pusher.http

    client = type("C", (), {"key": "k", "secret": APP.secret})()
    request = pusher.http.Request(client, "POST", "/apps/7/events", {"name": "e"})
    params = list(request.query_params.items())
    check_signed(APP, "POST", "/apps/7/events", params, request.body, time.time(), 600)
    with pytest.raises(ApiError, match="body_md5 does not match"):
        check_signed(APP, "POST", "/apps/7/events", params, request.body + b" ", time.time(), 600)
    with pytest.raises(ApiError, match="Invalid signature"):
        check_signed(APP, "POST", "/apps/7/other", params, request.body, time.time(), 600)
    with pytest.raises(ApiError, match="Timestamp expired"):
        check_signed(APP, "POST", "/apps/7/events", params, request.body, time.time() + 3600, 600)


class FakeClient:
    """Records sends; answers group queries from a fixed table."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, Any]] = []

    async def send_to_group(self, group: str, message: str, exclude: Any = None) -> None:
        self.sent.append((group, message, exclude))

    async def get_client_count_by_group(self, group: str) -> int:
        return 2 if group.endswith("news") else 0

    async def get_all_group_id_list(self) -> list[str]:
        return ["pusher:7:news", "pusher:7:presence-r", "pusher:8:other", "native"]


async def test_http_api_routes_over_a_fake_client() -> None:
    fake = FakeClient()
    api = HTTPAPI([APP], fake)
    body = json.dumps(
        {"name": "e", "channels": ["news"], "data": "{}", "socket_id": "1.2"}
    ).encode()
    status, _, answer = await api.handle("POST", _signed("POST", "/apps/7/events", body), body)
    assert (status, json.loads(answer)) == (200, {})
    group, frame, exclude = fake.sent[0]
    assert group == "pusher:7:news" and exclude == [p.client_id_of("1.2")]
    assert json.loads(frame) == {"event": "e", "channel": "news", "data": "{}"}

    status, _, answer = await api.handle("GET", _signed("GET", "/apps/7/channels", b""), b"")
    assert json.loads(answer) == {"channels": {"news": {}, "presence-r": {}}}
    target = _signed("GET", "/apps/7/channels/news", b"", info="subscription_count")
    status, _, answer = await api.handle("GET", target, b"")
    assert json.loads(answer) == {"occupied": True, "subscription_count": 2}

    bad = _signed("POST", "/apps/7/events", body, secret="wrong-secret")
    assert (await api.handle("POST", bad, body))[0] == 401
    assert (await api.handle("POST", _signed("POST", "/apps/9/events", body), body))[0] == 404
    junk = b"{not json"
    assert (await api.handle("POST", _signed("POST", "/apps/7/events", junk), junk))[0] == 400
    big = json.dumps({"name": "e", "channel": "news", "data": "x" * 20000}).encode()
    assert (await api.handle("POST", _signed("POST", "/apps/7/events", big), big))[0] == 413
    users = _signed("GET", "/apps/7/channels/news/users", b"")
    assert (await api.handle("GET", users, b""))[0] == 400  # not a presence channel
