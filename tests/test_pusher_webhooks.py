"""The webhook sender (:mod:`pygatewayworker.pusher.webhooks`) against local HTTP
endpoints: batches are signed and delivered, and a webhook whose URL cannot work
drops its batches (counted, logged once) without ending its task."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from pygatewayworker.pusher import PusherApp, Webhook
from pygatewayworker.pusher.protocol import sign
from pygatewayworker.pusher.webhooks import WebhookSender

UNIT = 5.0


class Receiver:
    """A tiny HTTP endpoint on 127.0.0.1 that answers 200 and keeps each body."""

    def __init__(self) -> None:
        self.bodies: asyncio.Queue[tuple[dict[str, str], bytes]] = asyncio.Queue()
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Receiver:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/hook"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")[1:]
        headers = {
            k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)
        }
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        await self.bodies.put((headers, body))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()


async def test_a_bad_url_drops_its_batches_and_the_task_lives_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # a host label over 63 characters: accepted by the declaration, refused by the
    # IDNA codec when the connection is opened (UnicodeError, not an OSError)
    bad = Webhook("http://" + "a" * 70 + ".example/hook")
    async with Receiver() as receiver:
        good = Webhook(receiver.url)
        app = PusherApp(id="1", key="k", secret="s3cret-s3cret", webhooks=(bad, good))
        sender = WebhookSender(batch_delay=0.01, retry_base=0.01)
        try:
            with caplog.at_level(logging.WARNING, logger="pusher.webhooks"):
                for n in range(3):
                    sender.emit(app, "channel_occupied", channel=f"c{n}")
                    headers, body = await asyncio.wait_for(receiver.bodies.get(), UNIT)
                    assert json.loads(body)["events"] == [
                        {"name": "channel_occupied", "channel": f"c{n}"}
                    ]
                    assert headers["x-pusher-signature"] == sign(app.secret, body)
                    async with asyncio.timeout(UNIT):
                        while sender.failed < n + 1 or sender.sent < n + 1:
                            await asyncio.sleep(0.01)
            queue = sender._queues[(app.id, bad.url)]
            assert queue.task is not None and not queue.task.done()
            assert (sender.sent, sender.failed) == (3, 3)
            lines = [r for r in caplog.records if bad.url in r.getMessage()]
            assert len(lines) == 1, [r.getMessage() for r in lines]  # rate-limited
            # UnicodeError on 3.11 and 3.12, its subclass UnicodeEncodeError on 3.13
            assert "Unicode" in lines[0].getMessage() and "label" in lines[0].getMessage()
            assert "not retried" in lines[0].getMessage()
        finally:
            sender.close()
