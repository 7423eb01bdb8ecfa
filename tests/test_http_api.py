"""The HTTP push API: the pure HTTP layer (h11) and verb table, then every verb against
a real cluster (2 gateways x 2 workers, started with ``start.py`` with a ``PushAPI``
declared in a start file), the auth and error statuses, 503/504 and malformed or slow
requests in-process."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from pygatewayworker.gatewayclient import AsyncGatewayClient, GatewayClient
from pygatewayworker.pushapi import PushAPI
from pygatewayworker.pushapi.http import HttpConnection, HttpError, PeerClosed, Request
from pygatewayworker.pushapi.server import SWEEP_INTERVAL, PushAPIServer
from pygatewayworker.pushapi.verbs import VERBS, BadRequest, parse_call
from pygatewayworker.register.config import ConfigError
from tests.cluster import AppSpec, ForegroundCluster, make_app, wait_ready
from tests.fakegateway import UNIT, FakeGateway, wait_until
from tests.ports import refused_port, reserve_ports
from tests.rc import RC
from tests.slowhttp import dribble

SECRET = "cluster-secret"
TOKEN = "push-token"

# ---- pure layer ----------------------------------------------------------------------


def head(data: bytes) -> Request:
    """The request head of ``data`` (raises what the connection raises)."""
    http = HttpConnection()
    http.receive_data(data)
    request = http.next_request()
    assert request is not None, "incomplete head"
    return request


def test_head_reads_request_line_and_headers() -> None:
    request = head(
        b"POST /send_to_uid?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n"
        b"Expect: 100-continue\r\nConnection: close\r\nX-A: 1\r\nX-a: 2\r\n\r\n"
    )
    assert (request.method, request.path, request.version) == ("POST", "/send_to_uid", "HTTP/1.1")
    assert request.content_length == 12 and request.expects_continue
    assert request.headers["x-a"] == "1, 2"
    assert head(b"POST / HTTP/1.0\r\n\r\n").content_length == 0


def _served(data: bytes) -> tuple[HttpConnection, bytes]:
    """Answer the one request in ``data`` with 200 ``{}``; return the bytes sent."""
    http = HttpConnection()
    http.receive_data(data)
    request = http.next_request()
    assert request is not None and http.next_body() == b""
    return http, http.respond_json(200, {})


def test_keep_alive_follows_the_request() -> None:
    http, out = _served(b"POST / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and not http.must_close
    assert b"Content-Length: 3\r\n" in out and out.endswith(b"\r\n\r\n{}\n")
    http, out = _served(b"POST / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert http.must_close and b"Connection: close" in out
    http, out = _served(b"POST / HTTP/1.0\r\n\r\n")
    assert http.must_close


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"garbage\r\n\r\n", 400),
        (b"\x00\x01garbage\r\n\r\n", 400),
        (b"POST / HTTP/2.0\r\n\r\n", 505),
        (b"POST nothing HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nno colon\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nAuthorization: a\r\nAuthorization: b\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -4\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 requires Host
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"POST /" + b"a" * 20000, 431),  # no end of line yet: refused without waiting
        (b"POST / HTTP/1.1\r\nHost: a\r\n" + b"X-Pad: " + b"p" * 17000 + b"\r\n\r\n", 431),
    ],
)
def test_malformed_heads_are_refused_with_their_status(data: bytes, status: int) -> None:
    http = HttpConnection()
    http.receive_data(data)
    with pytest.raises(HttpError) as info:
        http.next_request()
    assert info.value.status == status
    answer = http.refuse(info.value)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer
    assert b"Connection: close\r\n" in answer and http.must_close
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["ok"] is False


def test_pipelined_requests_are_answered_in_order_then_garbage_refused() -> None:
    one = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
    http = HttpConnection()
    http.receive_data(one * 3 + b"garbage\r\n\r\n")
    answers = []
    for _ in range(3):
        request = http.next_request()
        assert request is not None and request.path == "/a"
        assert http.next_body() == b"{}"
        answers.append(http.respond_json(200, {"n": len(answers)}))
        assert not http.must_close
    assert [a.rpartition(b"\r\n\r\n")[2] for a in answers] == [
        b'{"n": 0}\n',
        b'{"n": 1}\n',
        b'{"n": 2}\n',
    ]
    with pytest.raises(HttpError) as info:
        http.next_request()
    assert info.value.status == 400


def test_body_arrives_in_pieces_and_continue_is_sent_once_accepted() -> None:
    http = HttpConnection()
    http.receive_data(
        b"POST /v HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
    )
    request = http.next_request()
    assert request is not None and request.expects_continue
    assert http.next_body() is None and http.partial
    assert http.accept(request) == b"HTTP/1.1 100 Continue\r\n\r\n"
    http.receive_data(b"ab")
    assert http.next_body() is None
    http.receive_data(b"cde")
    assert http.next_body() == b"abcde" and not http.partial


def test_peer_closing_between_or_within_requests() -> None:
    http = HttpConnection()
    assert http.next_request() is None and not http.partial
    http.receive_data(b"")
    with pytest.raises(PeerClosed) as info:
        http.next_request()
    assert not info.value.partial
    http = HttpConnection()
    http.receive_data(b"POST / HT")
    assert http.next_request() is None and http.partial
    http.receive_data(b"")
    with pytest.raises(PeerClosed) as info:
        http.next_request()
    assert info.value.partial
    http = HttpConnection()
    http.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nab")
    assert http.next_request() is not None and http.next_body() is None
    http.receive_data(b"")
    with pytest.raises(PeerClosed) as info:
        http.next_body()
    assert info.value.partial


def test_a_timed_out_partial_request_gets_408() -> None:
    http = HttpConnection()
    http.receive_data(b"POST /x HTTP/1.1\r\nHo")
    assert http.next_request() is None and http.partial
    answer = http.refuse(HttpError(408, "request not complete within 1 s"))
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")


def test_nothing_more_is_said_once_a_response_is_under_way() -> None:
    http, _ = _served(b"POST / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert http.refuse(HttpError(400, "late")) == b""


def test_parse_call_converts_each_kind() -> None:
    assert parse_call("send_to_uid", b'{"uid": ["1", 2], "message": "hi"}') == [["1", 2], "hi"]
    assert parse_call("send_to_client", b'{"client_id": "c", "message_base64": "AAE="}') == [
        "c",
        b"\x00\x01",
    ]
    assert parse_call("send_to_all", b'{"message": "m"}') == ["m", None, None]
    assert parse_call("close_client", b'{"client_id": "c"}') == ["c", None, 1000, ""]
    assert parse_call("close_client", b'{"client_id": "c", "code": 4200, "reason": "r"}') == [
        "c",
        None,
        4200,
        "r",
    ]
    for bad in (b'"code": 1001', b'"code": "4000"', b'"code": true', b'"reason": 5'):
        with pytest.raises(BadRequest, match="close_client: '(code|reason)'"):
            parse_call("close_client", b'{"client_id": "c", ' + bad + b"}")
    assert parse_call("get_client_count_by_group", b"") == [""]
    assert parse_call("get_all_client_count", b"{}") == []
    assert parse_call("update_session", b'{"client_id": "c", "session": {"a": 1}}') == [
        "c",
        {"a": 1},
    ]


@pytest.mark.parametrize(
    ("verb", "body", "words"),
    [
        ("nope", b"{}", "unknown verb 'nope'"),
        ("send_to_uid", b"{not json", "not valid JSON"),
        ("send_to_uid", b"[1]", "must be a JSON object"),
        ("send_to_uid", b'{"message": "x"}', "missing field 'uid'"),
        ("send_to_uid", b'{"uid": "1"}', "missing field 'message'"),
        ("send_to_uid", b'{"uid": true, "message": "x"}', "'uid' must be a string or an integer"),
        ("send_to_uid", b'{"uid": "1", "message": {"a": 1}}', "'message' must be a string"),
        ("send_to_uid", b'{"uid": "1", "message_base64": "%%%"}', "not valid base64"),
        ("send_to_uid", b'{"uid": "1", "message": "a", "message_base64": ""}', "not both"),
        ("send_to_uid", b'{"uid": "1", "message": "a", "extra": 1}', "unknown field(s) extra"),
        ("set_session", b'{"client_id": "c", "session": [1]}', "'session' must be a JSON object"),
        ("send_to_all", b'{"message": "a", "client_ids": "c"}', "must be a list of client_ids"),
        ("is_uids_online", b'{"uids": "1"}', "'uids' must be a list"),
        ("set_session", b'{"session":' + b'{"a":' * 5000 + b"1" + b"}" * 5001, "levels deep"),
        ("set_session", b'{"session":' + b"[" * 100 + b"]" * 100 + b"}", "levels deep"),
    ],
)
def test_parse_call_names_the_problem(verb: str, body: bytes, words: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_call(verb, body)
    assert words in str(info.value)


# Public calls of the push clients that are deliberately not HTTP verbs.
NOT_VERBS = {
    # they manage the push client itself, not the cluster
    "connect",
    "close",
    "flush",
    "gateways",
    # operator queries, not part of the Gateway API: `start.py connections` / `status`
    "get_connections",
    "get_gateway_stats",
}


@pytest.mark.parametrize("client_class", [AsyncGatewayClient, GatewayClient])
def test_verbs_match_the_push_client(client_class: type) -> None:
    for verb in VERBS:
        assert callable(getattr(client_class, verb)), verb
    public = {name for name in dir(client_class) if not name.startswith("_")}
    assert not NOT_VERBS & set(VERBS)
    missing = sorted(public - NOT_VERBS - set(VERBS))
    assert not missing, f"public calls of {client_class.__name__} with no HTTP verb: {missing}"


@pytest.mark.parametrize(
    "listen", ["127.0.0.1:7373", "localhost:7373", "[::1]:7373", "0.0.0.0:7373"]
)
def test_declaration_requires_a_token_on_every_address(listen: str) -> None:
    with pytest.raises(ConfigError, match="has no token: set token="):
        PushAPI(listen=listen)
    with pytest.raises(ConfigError, match="has no token"):
        PushAPI(listen=listen, token="   ")
    assert PushAPI(listen=listen, token="t").token == "t"


@pytest.mark.parametrize("token", ["two words", "tab\there", "caf\u00e9"])
def test_declaration_refuses_a_token_no_header_can_carry(token: str) -> None:
    with pytest.raises(ConfigError, match="printable ASCII without spaces"):
        PushAPI(token=token)


# ---- HTTP helpers -----------------------------------------------------------------------


def _request(
    port: int,
    path: str,
    body: bytes | str | None,
    token: str | None = TOKEN,
    method: str = "POST",
    content_type: str | None = "application/json",
    origin: str | None = None,
) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    headers = {}
    if content_type is not None:
        headers["Content-Type"] = content_type
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if origin is not None:
        headers["Origin"] = origin
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


async def post(port: int, verb: str, token: str | None = TOKEN, **fields: Any) -> Any:
    """POST /<verb>; return the result, failing on any non-200."""
    status, document = await asyncio.to_thread(
        _request, port, f"/{verb}", json.dumps(fields), token
    )
    assert status == 200, (verb, status, document)
    assert document["ok"] is True
    return document["result"]


async def status_of(port: int, path: str, body: bytes | str | None, **kw: Any) -> tuple[int, Any]:
    return await asyncio.to_thread(_request, port, path, body, **kw)


# ---- against a real cluster ----------------------------------------------------------------


def wait_listening(port: int, timeout: float = 30.0) -> None:
    """Wait until something accepts connections on ``127.0.0.1:port``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AppSpec, int]]:
    root: Path = tmp_path_factory.mktemp("pushapi")
    spec = make_app(
        root, "rc", gateways=2, workers=2, secret=SECRET, gateway_options="ping_interval=0"
    )
    api_port = reserve_ports(1)
    (spec.apps_dir / "rc" / "start_pushapi.py").write_text(
        "from pygatewayworker import PushAPI\n"
        f"push_api = PushAPI(listen='127.0.0.1:{api_port}', "
        f"register='127.0.0.1:{spec.register_port}', secret={SECRET!r}, token={TOKEN!r}, "
        "max_body=65536)\n"
    )
    proc = ForegroundCluster(spec).start()
    try:
        asyncio.run(wait_ready(spec, init=True))
        wait_listening(api_port)
        yield spec, api_port
    finally:
        code = proc.interrupt()
        assert code == 0, proc.output()


@pytest.fixture
async def two(cluster: tuple[AppSpec, int]) -> AsyncIterator[list[RC]]:
    """Two clients on different gateways."""
    spec, _ = cluster
    opened: list[RC] = []
    try:
        for _ in range(30):
            opened.append(await RC.open(spec.ws_url))
            if len({c.gateway_port for c in opened}) == 2:
                break
        first = opened[0]
        other = next(c for c in opened if c.gateway_port != first.gateway_port)
        yield [first, other]
    finally:
        for client in opened:
            await client.close()


async def test_sends_reach_clients_on_both_gateways(
    cluster: tuple[AppSpec, int], two: list[RC]
) -> None:
    _, port = cluster
    a, b = two
    await post(port, "send_to_client", client_id=a.client_id, message="one")
    assert await a.expect() == "one"
    await post(port, "send_to_client", client_id=b.client_id, message_base64="AAEC")
    assert await b.expect() == b"\x00\x01\x02"
    await post(port, "bind_uid", client_id=a.client_id, uid="42")
    await post(port, "bind_uid", client_id=b.client_id, uid=42)
    await post(port, "send_to_uid", uid="42", message="paid")
    assert (await a.expect(), await b.expect()) == ("paid", "paid")
    await post(port, "join_group", client_id=a.client_id, group="room")
    await post(port, "join_group", client_id=b.client_id, group="room")
    await post(port, "send_to_group", group="room", message="hi all", exclude=[b.client_id])
    assert await a.expect() == "hi all"
    await b.nothing()
    await post(port, "send_to_all", message="only b", client_ids=[b.client_id])
    assert await b.expect() == "only b"
    await a.nothing()
    await post(port, "leave_group", client_id=b.client_id, group="room")
    assert await post(port, "get_client_id_list_by_group", group="room") == [a.client_id]
    await post(port, "unbind_uid", client_id=a.client_id, uid="42")
    assert await post(port, "get_client_id_by_uid", uid="42") == [b.client_id]
    await post(port, "ungroup", group="room")
    assert await post(port, "get_client_count_by_group", group="room") == 0


async def test_send_to_all_everyone_and_exclude(
    cluster: tuple[AppSpec, int], two: list[RC]
) -> None:
    _, port = cluster
    a, b = two  # on different gateways
    await post(port, "send_to_all", message="to everyone")
    assert (await a.expect(), await b.expect()) == ("to everyone", "to everyone")
    await post(port, "send_to_all", message_base64="AP8=")
    assert (await a.expect(), await b.expect()) == (b"\x00\xff", b"\x00\xff")
    await post(port, "send_to_all", message="not a", exclude=[a.client_id])
    assert await b.expect() == "not a"
    await post(port, "send_to_all", message="not b", exclude=b.client_id)  # one id
    assert await a.expect() == "not b"
    await post(
        port,
        "send_to_all",
        message="listed minus a",
        client_ids=[a.client_id, b.client_id],
        exclude=[a.client_id],
    )
    assert await b.expect() == "listed minus a"
    await a.nothing()
    await b.nothing(0)


async def test_queries_and_sessions(cluster: tuple[AppSpec, int], two: list[RC]) -> None:
    _, port = cluster
    a, b = two
    await post(port, "set_session", client_id=a.client_id, session={"name": "ann"})
    await post(port, "update_session", client_id=a.client_id, session={"age": 3})
    assert await post(port, "get_session", client_id=a.client_id) == {"name": "ann", "age": 3}
    assert await post(port, "is_online", client_id=a.client_id) is True
    await post(port, "bind_uid", client_id=a.client_id, uid="u1")
    await post(port, "bind_uid", client_id=b.client_id, uid="u2")
    await post(port, "join_group", client_id=a.client_id, group="g")
    await post(port, "join_group", client_id=b.client_id, group="g")
    assert await post(port, "get_uid_by_client_id", client_id=b.client_id) == "u2"
    assert await post(port, "is_uid_online", uid="u1") is True
    assert await post(port, "is_uids_online", uids=["u1", "zz"]) == {"u1": True, "zz": False}
    assert await post(port, "batch_get_client_id_by_uid", uids=["u2"]) == {"u2": [b.client_id]}
    assert await post(port, "batch_get_client_count_by_group", groups=["g", "h"]) == {
        "g": 2,
        "h": 0,
    }
    sessions = await post(port, "get_client_sessions_by_group", group="g")
    assert sessions[a.client_id]["name"] == "ann" and b.client_id in sessions
    assert sorted(await post(port, "get_uid_list_by_group", group="g")) == ["u1", "u2"]
    assert await post(port, "get_uid_count_by_group", group="g") == 2
    assert await post(port, "get_client_count_by_group") >= 2
    assert await post(port, "get_all_client_count") >= 2
    assert {a.client_id, b.client_id} <= set(await post(port, "get_all_client_id_list"))
    assert {a.client_id, b.client_id} <= set(await post(port, "get_all_client_sessions"))
    assert {"u1", "u2"} <= set(await post(port, "get_all_uid_list"))
    assert await post(port, "get_all_uid_count") >= 2
    assert "g" in await post(port, "get_all_group_id_list")
    assert await post(port, "get_all_group_count") >= 1
    assert sorted((await post(port, "get_all_group_uid_list"))["g"]) == ["u1", "u2"]
    assert len((await post(port, "get_all_group_client_id_list"))["g"]) == 2
    await post(port, "ungroup", group="g")


async def test_close_and_destroy(cluster: tuple[AppSpec, int], two: list[RC]) -> None:
    _, port = cluster
    a, b = two
    await post(port, "close_client", client_id=a.client_id, message="bye", code=4100, reason="r")
    assert await a.expect() == "bye"
    await asyncio.wait_for(a.ws.wait_closed(), 5)
    assert (a.ws.close_code, a.ws.close_reason) == (4100, "r")
    await post(port, "destroy_client", client_id=b.client_id)
    for client in two:
        await asyncio.wait_for(client.ws.wait_closed(), 5)
    assert await post(port, "is_online", client_id=a.client_id) is False
    assert await post(port, "get_session", client_id=a.client_id) is None


async def test_auth_and_bad_requests(cluster: tuple[AppSpec, int]) -> None:
    _, port = cluster
    body = json.dumps({"uid": "1", "message": "x"})
    status, doc = await status_of(port, "/send_to_uid", body, token=None)
    assert status == 401 and "Bearer" in doc["error"]
    status, doc = await status_of(port, "/send_to_uid", body, token="wrong")
    assert status == 403 and doc == {"ok": False, "error": "wrong token"}
    status, doc = await status_of(port, "/send_to_uid", "{oops")
    assert status == 400 and "not valid JSON" in doc["error"]
    status, doc = await status_of(port, "/no_such_verb", "{}")
    assert status == 400 and "unknown verb" in doc["error"]
    status, doc = await status_of(port, "/send_to_client", '{"client_id":"zz","message":"x"}')
    assert status == 400 and "zz" in doc["error"]
    status, doc = await status_of(port, "/send_to_uid", '{"uid":"","message":"x"}')
    assert status == 400
    status, doc = await status_of(port, "/send_to_uid", "x" * 70000)
    assert status == 413 and "65536" in doc["error"]
    status, doc = await status_of(port, "/send_to_uid", None, method="GET")
    assert status == 405
    # Only application/json bodies (a parameter is fine); the token is checked first.
    status, doc = await status_of(port, "/send_to_uid", body, content_type="text/plain")
    assert status == 415 and doc["error"] == (
        "Content-Type must be application/json, got 'text/plain'"
    )
    status, doc = await status_of(port, "/send_to_uid", body, content_type=None)
    assert status == 415 and "got no Content-Type header" in doc["error"]
    status, doc = await status_of(
        port, "/send_to_uid", body, token=None, content_type="application/x-www-form-urlencoded"
    )
    assert status == 401
    status, doc = await status_of(
        port, "/get_all_uid_count", "{}", content_type="Application/JSON; charset=utf-8"
    )
    assert status == 200 and doc["ok"] is True
    # Anything a web page sends carries an Origin header: refused even with the token.
    for origin in ("http://127.0.0.1:8000", "null"):
        status, doc = await status_of(port, "/send_to_uid", body, origin=origin)
        assert status == 403 and "requests from web pages are refused" in doc["error"]
        assert repr(origin) in doc["error"]


async def test_values_the_cluster_cannot_carry_are_refused_cleanly(
    cluster: tuple[AppSpec, int], two: list[RC]
) -> None:
    spec, port = cluster
    a = two[0]
    # An integer msgpack cannot carry: the caller's fault (400), not a 500 + traceback.
    body = json.dumps({"client_id": a.client_id, "session": {"n": 10**30}})
    status, doc = await status_of(port, "/set_session", body)
    assert status == 400 and "out of range" in doc["error"]
    # A session (set by Events or a push client) whose keys JSON cannot carry: a clear
    # 500 answer on the same connection, not a dropped connection.
    async with AsyncGatewayClient(
        register=f"127.0.0.1:{spec.register_port}", secret=SECRET
    ) as client:
        await client.set_session(a.client_id, {b"raw": 1})
        assert await client.get_session(a.client_id) == {b"raw": 1}
    status, doc = await status_of(port, "/get_session", json.dumps({"client_id": a.client_id}))
    assert status == 500 and "cannot be encoded as JSON" in doc["error"]
    assert await post(port, "is_online", client_id=a.client_id) is True


def _raw_exchange(port: int, payload: bytes, expect_responses: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        data = b""
        while data.count(b"HTTP/1.1 ") < expect_responses:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


async def test_keep_alive_pipelining_and_expect_continue(cluster: tuple[AppSpec, int]) -> None:
    _, port = cluster
    body = b'{"group": "nobody-here"}'
    one = (
        f"POST /get_client_count_by_group HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
        f"\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    data = await asyncio.to_thread(_raw_exchange, port, one * 3, 3)
    assert data.count(b"HTTP/1.1 200 OK") == 3, data
    assert data.count(b'{"ok": true, "result": 0}') == 3
    head = (
        f"POST /get_all_uid_count HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
    ).encode()

    def continue_then_body() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(head)
            first = sock.recv(1024)
            sock.sendall(b"{}")
            return first + sock.recv(4096)

    data = await asyncio.to_thread(continue_then_body)
    assert data.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK"), data


async def test_garbage_gets_an_error_and_the_server_keeps_serving(
    cluster: tuple[AppSpec, int],
) -> None:
    _, port = cluster
    data = await asyncio.to_thread(_raw_exchange, port, b"\x00\x01garbage\r\n\r\n", 1)
    assert data.startswith(b"HTTP/1.1 400 "), data
    data = await asyncio.to_thread(_raw_exchange, port, b"POST /" + b"a" * 20000, 1)
    assert data.startswith(b"HTTP/1.1 431 "), data
    assert await post(port, "get_all_group_count") >= 0


# ---- in-process: unreachable register, silent gateway ------------------------------------


async def test_no_register_gives_503() -> None:
    config = PushAPI(
        listen="127.0.0.1:0", register=f"127.0.0.1:{refused_port()}", timeout=0.5, token=TOKEN
    )
    server = PushAPIServer(config)
    await server.start()
    try:
        port = server.address[1]
        status, doc = await status_of(port, "/send_to_uid", '{"uid":"1","message":"x"}')
        assert status == 503 and "register" in doc["error"]
    finally:
        await server.stop(graceful=False)


async def test_silent_gateway_gives_504_naming_it() -> None:
    gateway = await FakeGateway().start()
    gateway.answer_queries = False
    client = AsyncGatewayClient(gateways=[gateway.address], timeout=0.5)
    server = PushAPIServer(PushAPI(listen="127.0.0.1:0", token=TOKEN), client=client)
    await server.start()
    try:
        port = server.address[1]
        status, doc = await status_of(port, "/get_all_client_count", "{}")
        assert status == 504 and doc["missing"] == [gateway.address]
        assert server.stats()["send_failures"] == 1
    finally:
        await server.stop(graceful=False)
        await client.close()
        await gateway.stop()


@pytest.fixture
async def local_api() -> AsyncIterator[PushAPIServer]:
    """An in-process push API (``idle_timeout`` 1 s) over one fake gateway."""
    gateway = await FakeGateway().start()
    client = AsyncGatewayClient(gateways=[gateway.address], timeout=UNIT)
    config = PushAPI(listen="127.0.0.1:0", token=TOKEN, idle_timeout=1.0)
    server = PushAPIServer(config, client=client)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(graceful=False)
        await client.close()
        await gateway.stop()


async def assert_still_serving(server: PushAPIServer) -> None:
    status, doc = await status_of(server.address[1], "/get_all_client_count", "{}")
    assert (status, doc) == (200, {"ok": True, "result": 0})


async def exchange(server: PushAPIServer, payload: bytes) -> bytes:
    """Send ``payload`` on a new connection; return all the server sends until it
    closes its side."""
    reader, writer = await asyncio.open_connection(*server.address)
    try:
        writer.write(payload)
        return await asyncio.wait_for(reader.read(), 2 * UNIT)
    finally:
        writer.close()


def pushapi_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "pushapi"]


def valid(verb: str = "get_all_client_count") -> bytes:
    return (
        f"POST /{verb} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    ).encode()


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        (b"\x00\x01\x02garbage\r\n\r\n", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)), 400),  # TLS hello
        (b"POST /" + b"a" * 20000, 431),
        (b"POST / HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: p\r\n" * 2000 + b"\r\n", 431),
        (b"POST /get_all_client_count HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 400),  # no Host
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501),
        (b"GET / HTTP/2.0\r\n\r\n", 505),
    ],
    ids=["garbage", "tls", "endless-line", "oversized-head", "no-host", "chunked", "http2"],
)
async def test_malformed_requests_get_a_status_one_log_line_and_serving_goes_on(
    local_api: PushAPIServer, caplog: pytest.LogCaptureFixture, payload: bytes, status: int
) -> None:
    caplog.set_level(logging.INFO, logger="pushapi")
    answer = await exchange(local_api, payload)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer
    assert b"\r\nConnection: close\r\n" in answer
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["ok"] is False
    lines = pushapi_lines(caplog)
    assert len(lines) == 1 and "refused a request from ('127.0.0.1'" in lines[0], lines
    assert f" {status} " in lines[0]
    await assert_still_serving(local_api)


async def test_pipelined_requests_are_answered_in_order_until_garbage(
    local_api: PushAPIServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pushapi")
    answer = await exchange(local_api, valid() * 3 + b"garbage\r\n\r\n")
    responses = answer.split(b"HTTP/1.1 ")[1:]
    assert [r[:3] for r in responses] == [b"200", b"200", b"200", b"400"], answer
    assert len(pushapi_lines(caplog)) == 1
    await assert_still_serving(local_api)


@pytest.mark.parametrize("where", ["head", "body"])
async def test_a_request_sent_too_slowly_gets_408_within_the_idle_timeout(
    local_api: PushAPIServer, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    """Slowloris: bytes keep coming, a byte at a time, but the request never completes
    within ``idle_timeout``: answered 408 and closed, bounded by the timeout plus the
    one-second sweep, however long the peer keeps trickling."""
    caplog.set_level(logging.INFO, logger="pushapi")
    head = b""
    if where == "body":  # a complete head, then a body that trickles
        head = valid().replace(b"Content-Length: 2", b"Content-Length: 400")[:-2]
        slow = b"x" * 400
    else:
        slow = valid() * 10
    answer, elapsed = await dribble(local_api.address, slow, 2 * UNIT, head)
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer
    assert elapsed < local_api.config.idle_timeout + 2 * SWEEP_INTERVAL + UNIT / 2
    lines = pushapi_lines(caplog)
    assert len(lines) == 1 and "no complete request within 1 s" in lines[0], lines
    await assert_still_serving(local_api)


async def test_idle_connections_are_swept(
    local_api: PushAPIServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pushapi")
    reader, writer = await asyncio.open_connection(*local_api.address)
    try:
        writer.write(b"POST /x HTTP/1.1\r\n")  # never finished
        answer = await asyncio.wait_for(reader.read(), 2 * UNIT)
        assert answer.startswith(b"HTTP/1.1 408 "), answer
    finally:
        writer.close()
    # an idle keep-alive connection (nothing sent since its last answer): closed quietly
    caplog.clear()
    reader, writer = await asyncio.open_connection(*local_api.address)
    try:
        writer.write(valid())
        answer = await asyncio.wait_for(reader.readuntil(b"}\n"), UNIT)
        assert answer.startswith(b"HTTP/1.1 200 OK")
        assert await asyncio.wait_for(reader.read(), 2 * UNIT) == b""
    finally:
        writer.close()
    assert pushapi_lines(caplog) == []
    await wait_until(lambda: local_api.stats()["connections"] == 0)


async def test_a_peer_closing_mid_request_is_one_log_line(
    local_api: PushAPIServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pushapi")
    reader, writer = await asyncio.open_connection(*local_api.address)
    writer.write(valid()[:-5])
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), UNIT) == b""
    writer.close()
    lines = pushapi_lines(caplog)
    assert len(lines) == 1 and "in the middle of a request" in lines[0], lines
    await assert_still_serving(local_api)


async def test_a_web_page_cannot_push_and_the_refusal_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What a page in a browser on this machine can send without a CORS preflight: a
    text/plain POST with an Origin header (and no token). Refused before any call."""
    client = AsyncGatewayClient(gateways=["127.0.0.1:9"])
    server = PushAPIServer(PushAPI(listen="127.0.0.1:0", token=TOKEN), client=client)
    await server.start()
    try:
        port = server.address[1]
        page_post = {"content_type": "text/plain;charset=UTF-8", "origin": "http://evil.test"}
        caplog.set_level(logging.INFO, logger="pushapi")
        status, doc = await status_of(
            port, "/send_to_all", '{"message":"x"}', token=None, **page_post
        )
        assert status == 403 and "'http://evil.test'" in doc["error"]
        refusals = [r for r in caplog.records if "refused a request" in r.getMessage()]
        assert refusals and refusals[-1].levelno == logging.WARNING
        assert "403" in refusals[-1].getMessage() and "evil.test" in refusals[-1].getMessage()
        status, doc = await status_of(
            port, "/send_to_all", '{"message":"x"}', content_type="text/plain"
        )
        assert status == 415
        assert "415 Content-Type must be application/json" in caplog.text
        assert server.stats()["messages_in"] == 0  # no call was attempted
    finally:
        await server.stop(graceful=False)
        await client.close()


def test_base64_messages_round_trip_in_the_verb_table() -> None:
    raw = bytes(range(256))
    body = json.dumps({"uid": "u", "message_base64": base64.b64encode(raw).decode()})
    assert parse_call("send_to_uid", body.encode()) == ["u", raw]
