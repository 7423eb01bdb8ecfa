"""The Pusher HTTP API process in-process (port 0, a fake push client): it has the
push API's HTTP limits (431 for an oversized head, 408 for a request that never
completes, keep-alive, reason phrases) and its background tasks are referenced,
logged when they fail, and cancelled at stop."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import pytest

from pygatewayworker.pushapi.httpservice import SWEEP_INTERVAL
from pygatewayworker.pusher import PusherAPI, PusherApp
from pygatewayworker.pusher.httpauth import string_to_sign
from pygatewayworker.pusher.protocol import sign
from pygatewayworker.pusher.server import PusherAPIServer
from tests.slowhttp import dribble

UNIT = 5.0
APP = PusherApp(id="1", key="the-key", secret="the-secret-123")


class FakeClient:
    """The push client calls the routes used here make."""

    def __init__(self, fail_connect: bool = False) -> None:
        self.gateways: list[str] = []
        self.fail_connect = fail_connect
        self.sent: list[tuple[str, str]] = []

    async def connect(self) -> None:
        if self.fail_connect:
            raise RuntimeError("discovery blew up")

    async def close(self) -> None:
        pass

    async def get_all_group_id_list(self) -> list[str]:
        return ["pusher:1:news"]

    async def send_to_group(self, group: str, message: str, exclude: Any = None) -> None:
        self.sent.append((group, message))


@pytest.fixture
async def server() -> AsyncIterator[PusherAPIServer]:
    config = PusherAPI(events="x:Events", listen="127.0.0.1:0", idle_timeout=1.0, max_body=1000)
    running = PusherAPIServer(config, client=FakeClient(), apps=(APP,))
    await running.start()
    try:
        yield running
    finally:
        await running.stop(graceful=False)


def signed(method: str, path: str, body: bytes = b"") -> bytes:
    """A complete request signed as the ``pusher`` SDK signs it (keep-alive)."""
    params = [("auth_key", APP.key), ("auth_timestamp", str(int(time.time())))]
    params.append(("auth_version", "1.0"))
    if body:
        params.append(("body_md5", hashlib.md5(body).hexdigest()))
    params.append(("auth_signature", sign(APP.secret, string_to_sign(method, path, params))))
    head = f"{method} {path}?{urlencode(params)} HTTP/1.1\r\nHost: x\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """``(head, body)`` of one response (Content-Length framed)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), UNIT)
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head, await asyncio.wait_for(reader.readexactly(length), UNIT)


async def still_serving(server: PusherAPIServer) -> None:
    reader, writer = await asyncio.open_connection(*server.address)
    try:
        for _ in range(2):  # two requests on one connection: keep-alive
            writer.write(signed("GET", "/apps/1/channels"))
            head, body = await read_response(reader)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
            assert body == b'{"channels":{"news":{}}}'
    finally:
        writer.close()


async def test_an_oversized_head_in_one_read_gets_431(server: PusherAPIServer) -> None:
    reader, writer = await asyncio.open_connection(*server.address)
    try:
        padding = b"X-Pad: " + b"p" * 1000 + b"\r\n"
        writer.write(b"GET /apps/1/channels HTTP/1.1\r\nHost: x\r\n" + padding * 60 + b"\r\n")
        answer = await asyncio.wait_for(reader.read(), UNIT)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), answer[:200]
    assert b"Content-Type: text/plain" in answer and b"Connection: close" in answer
    await still_serving(server)


async def test_a_body_over_max_body_gets_413_before_it_is_read(server: PusherAPIServer) -> None:
    reader, writer = await asyncio.open_connection(*server.address)
    try:
        writer.write(b"POST /apps/1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), UNIT)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 413 Content Too Large\r\n"), answer[:200]
    await still_serving(server)


async def test_a_request_sent_a_byte_at_a_time_gets_408(
    server: PusherAPIServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pusher.api")
    request = signed("POST", "/apps/1/events", b'{"name":"e","channel":"news","data":"{}"}')
    answer, elapsed = await dribble(server.address, request * 20, 2 * UNIT)
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer[:200]
    assert elapsed < server.config.idle_timeout + 2 * SWEEP_INTERVAL + UNIT / 2
    assert "no complete request within 1 s" in caplog.text
    await still_serving(server)


async def test_errors_have_a_reason_phrase_and_pushers_plain_text(
    server: PusherAPIServer,
) -> None:
    reader, writer = await asyncio.open_connection(*server.address)
    try:
        writer.write(b"GET /apps/1/channels HTTP/1.1\r\nHost: x\r\n\r\n")
        head, body = await read_response(reader)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 401 Unauthorized\r\n"), head
    assert body == b"Unknown auth_key\n"
    assert server.stats()["requests_by"] == {"channels": {"401": 1}}  # by route


async def test_background_tasks_are_logged_when_they_fail_and_cancelled_at_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = PusherAPI(events="x:Events", listen="127.0.0.1:0")
    server = PusherAPIServer(config, client=FakeClient(fail_connect=True), apps=(APP,))
    await server.start()
    try:
        async with asyncio.timeout(UNIT):
            while "gateway discovery failed" not in caplog.text:
                await asyncio.sleep(0.01)
        assert "discovery blew up" in caplog.text
        tasks = set(server._tasks)
        assert tasks and all(not t.done() for t in tasks)  # the sweep runs on
    finally:
        await server.stop(graceful=False)
    assert all(t.cancelled() for t in tasks) and not server._tasks
