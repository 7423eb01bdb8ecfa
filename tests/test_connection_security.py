"""Connection security, over real sockets: connect tokens, origins, limits, size limits
that never cost a link, and TLS (issue 14). The pure parts (token and origin rules,
the token bucket) first."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import trustme
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from pygatewayworker.gateway.admission import TokenBucket
from pygatewayworker.gateway.config import Gateway
from pygatewayworker.gateway.origins import OriginPolicy
from pygatewayworker.gateway.protocol import (
    MAX_CLIENT_MESSAGE,
    MAX_SESSION,
    Cmd,
    pack_session,
    unpack_session,
)
from pygatewayworker.gateway.server import GatewayServer
from pygatewayworker.gateway.tokens import TokenError, create_token, verify_token
from pygatewayworker.gatewayclient import AsyncGatewayClient, GatewayClient
from pygatewayworker.pushapi import PushAPI
from pygatewayworker.pushapi.server import PushAPIServer
from pygatewayworker.register.config import ConfigError
from tests.chromium import TIMEOUT_MS, browser  # noqa: F401  (a fixture)
from tests.gatewayharness import (
    SECRET,
    TIMEOUT,
    FakeLink,
    close_code,
    make_config,
    recv,
    running,
    wait_until,
    ws,
)

KEY = "k" * 16 + "0123456789abcdef-connect-tokens"
OTHER_KEY = "x" * 40


# ---- pure rules -------------------------------------------------------------------------


def test_a_token_round_trips_with_its_claims() -> None:
    token = create_token(KEY, 42, ["room1", 7], {"name": "ann"}, expires_in=60)
    grant = verify_token(KEY.encode(), token)
    assert (grant.uid, grant.groups, grant.session) == ("42", ["room1", "7"], {"name": "ann"})
    claims = jwt.decode(token, KEY, algorithms=["HS256"])
    assert claims["sub"] == "42" and claims["exp"] - claims["iat"] == 60


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda: "", "malformed"),
        (lambda: "not.a.jwt", "invalid token"),
        (lambda: create_token(KEY, "u", expires_in=60, now=time.time() - 3600), "expired"),
        (lambda: create_token(OTHER_KEY, "u"), "signature"),
        (lambda: _forged(create_token(KEY, "u")), "signature"),
        (
            lambda: jwt.encode({"sub": "u", "iat": 1, "exp": 2**40}, None, algorithm="none"),
            "invalid token",
        ),
        (lambda: jwt.encode({"sub": "u", "exp": 2**40}, KEY, algorithm="HS256"), "iat"),
        (lambda: jwt.encode({"sub": "", "iat": 1, "exp": 2**40}, KEY, algorithm="HS256"), "sub"),
    ],
    ids=["empty", "garbage", "expired", "wrong-key", "forged", "alg-none", "no-iat", "empty-sub"],
)
def test_bad_tokens_are_refused(make: Any, reason: str) -> None:
    with pytest.raises(TokenError, match=reason):
        verify_token(KEY.encode(), make())


def _forged(token: str) -> str:
    """The same signature over a payload that names another uid."""
    head, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "admin"
    raw = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{raw}.{signature}"


def test_short_keys_and_bad_origins_are_refused_by_the_config() -> None:
    with pytest.raises(ConfigError, match="at least 32"):
        Gateway(token_key="short")
    with pytest.raises(ConfigError, match="not an origin"):
        Gateway(allowed_origins=["https://a.example.com/path"])
    with pytest.raises(ConfigError, match="certfile and keyfile"):
        Gateway(certfile="cert.pem")
    with pytest.raises(ValueError, match="at least 32"):
        AsyncGatewayClient(gateways=["127.0.0.1:1"], token_key="short")


def test_origin_patterns() -> None:
    policy = OriginPolicy(["https://chat.example.com", "https://*.example.org", "localhost:*"])
    assert policy.allows(None)  # not a browser: the token decides
    assert policy.allows("https://chat.example.com")
    assert policy.allows("https://chat.example.com:443")
    assert not policy.allows("http://chat.example.com")
    assert not policy.allows("https://chat.example.com:8443")
    assert policy.allows("https://a.b.example.org") and not policy.allows("https://example.org")
    assert not policy.allows("https://evilexample.org")
    assert policy.allows("http://localhost:5173") and policy.allows("https://localhost")
    assert not policy.allows("null") and not policy.allows("http://evil.example")
    assert OriginPolicy(["*"]).allows("http://evil.example")


def test_token_bucket() -> None:
    bucket = TokenBucket(rate=10, burst=5, now=0.0)
    assert all(bucket.take(1, 0.0) for _ in range(5))
    assert not bucket.take(1, 0.0)
    assert bucket.take(1, 0.1) and not bucket.take(1, 0.1)
    assert bucket.take(5, 10.0) and not bucket.take(6, 100.0)


def test_max_message_size_never_exceeds_what_a_link_carries() -> None:
    for too_big in (16 * 1024 * 1024, MAX_CLIENT_MESSAGE + 1):
        with pytest.raises(ConfigError, match="internal link"):
            Gateway(max_message_size=too_big)
    assert Gateway(max_message_size=MAX_CLIENT_MESSAGE).max_message_size == MAX_CLIENT_MESSAGE


# ---- tokens over real sockets ---------------------------------------------------------------


async def _connected(worker: FakeLink) -> list[Any]:
    """The next ``EV_CONNECT``, skipping the other events."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            packet = await worker.recv(timeout=None)
            if packet[0] == Cmd.EV_CONNECT:
                return packet


async def _status(server: GatewayServer, path: str, **kwargs: Any) -> tuple[int, bytes]:
    """Connect and expect a refusal: its HTTP status and body."""
    with pytest.raises(InvalidStatus) as info:
        await ws(server, path, **kwargs)
    response = info.value.response
    return response.status_code, response.body or b""


async def _no_connection_reached(server: GatewayServer, worker: FakeLink) -> None:
    """Nothing refused reached a worker: the next EV_CONNECT is a control client's."""
    good = await ws(server, f"/?token={create_token(KEY, 'control')}")
    packet = await _connected(worker)
    assert len(server.directory) == 1
    assert server.directory.get(packet[1]).uid == "control"  # type: ignore[union-attr]
    await good.close()


async def test_bad_tokens_get_401_before_101_and_reach_no_worker() -> None:
    async with running(token_key=KEY) as server:
        worker = await FakeLink.linked(server)
        cases = {
            "missing": "/",
            "malformed": "/?token=abc",
            "expired": f"/?token={create_token(KEY, 'u', expires_in=1, now=time.time() - 60)}",
            "forged": f"/?token={_forged(create_token(KEY, 'u'))}",
            "wrong key": f"/?token={create_token(OTHER_KEY, 'u')}",
        }
        for name, path in cases.items():
            status, body = await _status(server, path)
            assert status == 401, name
            assert body.strip(), name  # the reason, for whoever debugs the page
        assert b"expired" in (await _status(server, cases["expired"]))[1]
        await _no_connection_reached(server, worker)
        assert server.stats()["refused_token"] == len(cases) + 1


async def test_a_token_binds_uid_groups_and_session_before_the_first_message() -> None:
    async with running(token_key=KEY) as server:
        worker = await FakeLink.linked(server)
        pusher = AsyncGatewayClient(
            gateways=[server.internal_address], secret=SECRET, token_key=KEY
        )
        await pusher.connect()
        try:
            # the push client has the gateway's route state before the client connects
            await pusher.send_to_uid("nobody", "warm-up")
            token = pusher.create_token("ann", groups=["room"], session={"name": "Ann"})
            client = await ws(server, f"/?token={token}")
            # issued the moment the handshake is done: the uid and group are known
            await pusher.send_to_uid("ann", "to ann")
            await pusher.send_to_group("room", "to room")
            assert await recv(client) == "to ann"
            assert await recv(client) == "to room"
            connected = await _connected(worker)
            assert unpack_session(connected[2]) == {"name": "Ann"}
            client_ids = await pusher.get_client_id_by_uid("ann")
            assert len(client_ids) == 1
            assert await pusher.get_session(client_ids[0]) == {"name": "Ann"}
            await client.close()
        finally:
            await pusher.close()


async def test_bearer_header_and_optional_tokens() -> None:
    async with running(token_key=KEY, token_required=False) as server:
        worker = await FakeLink.linked(server)
        anonymous = await ws(server, "/")
        first = await _connected(worker)
        assert server.directory.get(first[1]).uid is None  # type: ignore[union-attr]
        bearer = await ws(
            server, "/", additional_headers={"Authorization": f"Bearer {create_token(KEY, 'b')}"}
        )
        second = await _connected(worker)
        assert server.directory.get(second[1]).uid == "b"  # type: ignore[union-attr]
        assert (await _status(server, "/?token=bad"))[0] == 401  # optional, not ignored
        await anonymous.close()
        await bearer.close()


def test_the_sync_client_creates_tokens() -> None:
    client = GatewayClient(gateways=["127.0.0.1:1"], token_key=KEY)
    assert verify_token(KEY.encode(), client.create_token("u", expires_in=5)).uid == "u"
    with pytest.raises(ValueError, match="token_key"):
        GatewayClient(gateways=["127.0.0.1:1"]).create_token("u")
    client.close()


async def test_the_push_api_creates_tokens() -> None:
    config = PushAPI(listen="127.0.0.1:0", token="push", token_key=KEY, register="127.0.0.1:1")
    server = PushAPIServer(config)
    await server.start()
    try:
        host, port = server.address
        body = json.dumps({"uid": "u7", "groups": ["g"], "expires_in": 30}).encode()
        request = urllib.request.Request(
            f"http://{host}:{port}/create_token",
            data=body,
            headers={"Authorization": "Bearer push", "Content-Type": "application/json"},
        )
        reply = await asyncio.to_thread(urllib.request.urlopen, request, timeout=TIMEOUT)
        token = json.loads(reply.read())["result"]
        grant = verify_token(KEY.encode(), token)
        assert (grant.uid, grant.groups) == ("u7", ["g"])
    finally:
        await server.stop(graceful=False)


# ---- origins ------------------------------------------------------------------------------


async def test_origins_outside_the_list_get_403() -> None:
    origins = ["https://chat.example.com", "https://*.example.org"]
    async with running(allowed_origins=origins) as server:
        worker = await FakeLink.linked(server)
        for origin in ("http://evil.example", "https://example.org", "null"):
            status, _ = await _status(server, "/", origin=origin)
            assert status == 403, origin
        for origin in ("https://chat.example.com", "https://a.example.org"):
            client = await ws(server, "/", origin=origin)
            await _connected(worker)
            await client.close()
        assert server.stats()["refused_origin"] == 3


# ---- limits -------------------------------------------------------------------------------


async def test_a_flooding_client_is_closed_with_1008_and_others_keep_working() -> None:
    async with running(message_rate=20, message_burst=20) as server:
        worker = await FakeLink.linked(server)
        flooder = await ws(server)
        flood_id = (await _connected(worker))[1]
        calm = await ws(server)
        calm_id = (await worker.skip_until(Cmd.EV_CONNECT, flood_id + 1))[1]
        for i in range(200):
            await flooder.send(f"m{i}")
        assert await close_code(flooder) == 1008
        assert "message rate" in (flooder.close_reason or "")
        for i in range(5):  # within its rate: delivered, and the worker answers it
            await calm.send(f"c{i}")
            packet = await worker.skip_until(Cmd.EV_MESSAGE, calm_id)
            assert packet[5] == f"c{i}"
            worker.send(Cmd.SEND_TO_CLIENT, calm_id, f"r{i}")
            assert await recv(calm) == f"r{i}"
            await asyncio.sleep(0.06)
        assert server.stats()["closed_message_rate"] == 1
        await calm.close()


async def test_a_client_over_its_byte_rate_is_closed_with_1008() -> None:
    async with running(byte_rate=64 * 1024, max_message_size=64 * 1024) as server:
        await FakeLink.linked(server)
        client = await ws(server, max_size=None)
        for _ in range(8):
            await client.send(b"x" * 60_000)
        assert await close_code(client) == 1008
        assert server.stats()["closed_byte_rate"] == 1
        # the close is counted once, by its first reason (not the client's close frame)
        await wait_until(lambda: server.stats()["closed_by_reason"]["rate_limit"] == 1)
        assert server.stats()["closed_by_reason"]["client_close"] == 0


async def test_connections_per_ip_are_limited_with_429() -> None:
    async with running(max_connections_per_ip=2) as server:
        await FakeLink.linked(server)
        first, second = await ws(server), await ws(server)
        assert (await _status(server, "/"))[0] == 429
        await first.close()
        await wait_until(lambda: len(server.directory) == 1)
        third = await ws(server)  # a place was freed
        assert server.stats()["refused_ip_limit"] == 1
        assert server.stats()["handshakes_refused"]["ip_limit"] == 1
        assert server.stats()["handshake_failures"] == {"429": 1}
        await second.close()
        await third.close()


async def test_a_connect_storm_meets_the_handshake_rate_with_503() -> None:
    async with running(handshake_rate=5, handshake_burst=5) as server:
        await FakeLink.linked(server)

        async def attempt() -> Any:
            try:
                return await ws(server)
            except InvalidStatus as exc:
                return exc.response.status_code

        results = await asyncio.gather(*(attempt() for _ in range(30)))
        refused = [r for r in results if r == 503]
        opened = [r for r in results if not isinstance(r, int)]
        assert len(refused) + len(opened) == 30
        assert 5 <= len(opened) <= 10 and len(refused) >= 20
        assert server.stats()["refused_handshake_rate"] == len(refused)
        for client in opened:
            await client.close()


async def test_refusals_are_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    async with running(token_key=KEY) as server:
        for _ in range(20):
            await _status(server, "/")
        admission = server.core.clients.admission
        admission.report(time.monotonic() + 60)
        admission.report(time.monotonic() + 61)  # within the interval: silent
        lines = [r for r in caplog.records if "refused token" in r.getMessage()]
        assert len(lines) == 1 and "refused token 20" in lines[0].getMessage()


# ---- sizes ------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [None, MAX_CLIENT_MESSAGE], ids=["default", "raised"])
async def test_a_16_mib_message_ends_in_1009_and_costs_no_link(limit: int | None) -> None:
    options = {} if limit is None else {"max_message_size": limit}
    async with running(**options) as server:
        worker = await FakeLink.linked(server)
        big = await ws(server, max_size=None)
        other = await ws(server)
        await _connected(worker)
        other_id = (await _connected(worker))[1]
        with pytest.raises(Exception):  # noqa: B017  the gateway closes while we send
            await big.send(b"x" * (16 * 1024 * 1024))
            await big.recv()
        assert big.close_code == 1009
        await other.send("still here")
        assert (await worker.skip_until(Cmd.EV_MESSAGE, other_id))[5] == "still here"


async def test_the_largest_message_with_the_largest_session_fits_one_packet() -> None:
    """``max_message_size`` at its cap (``MAX_CLIENT_MESSAGE``) and a session just
    under ``MAX_SESSION``: the message reaches the worker whole, nobody is closed."""
    async with running(max_message_size=MAX_CLIENT_MESSAGE) as server:
        worker = await FakeLink.linked(server)
        client = await ws(server, max_size=None)
        conn_id = (await _connected(worker))[1]
        pusher = await FakeLink.linked(server, role="client", name="p")
        session = pack_session({"blob": "s" * (MAX_SESSION - 64)})
        pusher.send(Cmd.SET_SESSION, conn_id, session)
        await pusher.query(Cmd.Q_STATS)  # the session is set
        await client.send(b"x" * MAX_CLIENT_MESSAGE)
        event = await worker.skip_until(Cmd.EV_MESSAGE, conn_id, timeout=30)
        assert len(event[5]) == MAX_CLIENT_MESSAGE and event[2] == session
        await client.send("fine")
        assert (await worker.skip_until(Cmd.EV_MESSAGE, conn_id))[5] == "fine"


# ---- TLS --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, Path, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    folder = tmp_path_factory.mktemp("tls")
    certfile, keyfile = folder / "cert.pem", folder / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(certfile), append=True)
    cert.private_key_pem.write_to_path(str(keyfile))
    return ca, certfile, keyfile


STATIC = Path(__file__).resolve().parent.parent / "apps" / "chat" / "web"


async def _tls_server(tls_files: Any, **options: Any) -> AsyncIterator[GatewayServer]:
    _, certfile, keyfile = tls_files
    server = GatewayServer(
        make_config(certfile=str(certfile), keyfile=str(keyfile), static_dir=str(STATIC), **options)
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop(graceful=False)


async def test_wss_and_the_static_page_over_https(tls_files: Any) -> None:
    ca = tls_files[0]
    context = ssl.create_default_context()
    ca.configure_trust(context)
    async for server in _tls_server(tls_files, token_key=KEY):
        worker = await FakeLink.linked(server)
        url = f"wss://127.0.0.1:{server.public_port}/?token={create_token(KEY, 'tls')}"
        async with connect(url, ssl=context, ping_interval=None) as client:
            conn_id = (await _connected(worker))[1]
            worker.send(Cmd.SEND_TO_CLIENT, conn_id, "secure hello")
            assert await recv(client) == "secure hello"
        reply = await asyncio.to_thread(
            urllib.request.urlopen,
            f"https://127.0.0.1:{server.public_port}/",
            context=context,
            timeout=TIMEOUT,
        )
        page = reply.read()
        assert b"<html" in page.lower()
        with pytest.raises(ssl.SSLError):  # plain TLS without the CA: not trusted
            await connect(url, ssl=ssl.create_default_context(), ping_interval=None)


async def test_chromium_runs_the_chat_page_over_https_and_wss(
    tls_files: Any,
    browser: Any,  # noqa: F811
) -> None:
    """The chat page over https opens its WebSocket over wss (same origin, allowed)."""
    async for server in _tls_server(tls_files):
        port = server.public_port
        server.core.clients.admission.origins = OriginPolicy([f"https://127.0.0.1:{port}"])
        worker = await FakeLink.linked(server)
        context = await browser.new_context(ignore_https_errors=True)
        page = await context.new_page()
        response = await page.goto(f"https://127.0.0.1:{port}/?name=alice", timeout=TIMEOUT_MS)
        assert response is not None and response.ok
        conn_id = (await _connected(worker))[1]
        login = await worker.skip_until(Cmd.EV_MESSAGE, conn_id)
        assert json.loads(login[5])["type"] == "login"
        worker.send(Cmd.SEND_TO_CLIENT, conn_id, json.dumps({"type": "error", "message": "wss ok"}))
        await page.locator("#log", has_text="wss ok").wait_for(timeout=TIMEOUT_MS)
        await context.close()
