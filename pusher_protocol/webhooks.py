"""Webhooks: Pusher's channel and member events POSTed to your URLs, off the event path.

How this works
--------------
The business worker calls :meth:`WebhookSender.emit` (a plain, non-blocking call)
where an event happens: it appends ``{"name": ..., ...}`` to the queue of every
webhook of the app that wants that event, and returns. One task per webhook (started
on first use, in the worker's event loop) waits up to ``batch_delay`` for more
events, then POSTs them together as Pusher does::

    POST <url>
    Content-Type: application/json
    X-Pusher-Key: <app key>
    X-Pusher-Signature: <hex HMAC-SHA256 of the body with the app secret>

    {"time_ms": 1700000000000, "events": [{"name": "channel_occupied", "channel": "x"}]}

Any 2xx answer is success. Anything else (an error status, a refused connection, a
timeout) is retried with the same body after 1, 2, 4... seconds (``max_attempts``
in all), then dropped with a log line. An error that no retry can cure (a URL that
cannot be encoded or resolved as given: ``ValueError``, ``UnicodeError``...) drops
the batch at once. Either way the batch counts as failed and the webhook's task
keeps serving the next one; failures are logged at most once per
``LOG_INTERVAL`` per webhook, with the count of those not logged. A queue is
bounded (``max_queue``): when a receiver is down long enough to fill it, the oldest
events are dropped and counted. Deliveries never wait for any of this.

Verify a webhook in your endpoint: recompute ``hmac_sha256(secret, raw_body)`` and
compare it with ``X-Pusher-Signature``; ``X-Pusher-Key`` names the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections import deque
from typing import Any
from urllib.parse import urlsplit

import h11

from pygatewayworker.pusher.config import PusherApp, Webhook
from pygatewayworker.pusher.protocol import sign

__all__ = ["WebhookSender", "webhook_body", "webhook_headers", "post"]

log = logging.getLogger("pusher.webhooks")

BATCH_DELAY = 0.05
MAX_BATCH = 100
MAX_QUEUE = 10_000
MAX_ATTEMPTS = 6
POST_TIMEOUT = 10.0
LOG_INTERVAL = 60.0
"""Seconds between two log lines about the failures of one webhook."""
RETRIABLE = (OSError, TimeoutError, h11.ProtocolError, ssl.SSLError)
"""What a later attempt may cure (``ssl.SSLError`` and ``ConnectionError`` are
``OSError`` too; listed for the reader)."""


def webhook_body(events: list[dict[str, Any]], now: float | None = None) -> bytes:
    """The body of one webhook request."""
    time_ms = int((time.time() if now is None else now) * 1000)
    return json.dumps({"time_ms": time_ms, "events": events}, separators=(",", ":")).encode()


def webhook_headers(app: PusherApp, hook: Webhook, body: bytes) -> list[tuple[str, str]]:
    """The headers of one webhook request, signature included."""
    return [
        ("Content-Type", "application/json"),
        ("X-Pusher-Key", app.key),
        ("X-Pusher-Signature", sign(app.secret, body)),
        *hook.headers,
    ]


async def post(url: str, body: bytes, headers: list[tuple[str, str]], timeout: float) -> int:
    """POST ``body`` to ``url`` (HTTP/1.1, one connection); return the status."""
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    async with asyncio.timeout(timeout):
        context = ssl.create_default_context() if secure else None
        reader, writer = await asyncio.open_connection(host, port, ssl=context)
        try:
            conn = h11.Connection(h11.CLIENT)
            head = [("Host", parts.netloc), ("Content-Length", str(len(body)))]
            head += [("Connection", "close"), *headers]
            writer.write(conn.send(h11.Request(method="POST", target=target, headers=head)))
            writer.write(conn.send(h11.Data(data=body)))
            writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(65536))
                    continue
                if isinstance(event, h11.Response):
                    return int(event.status_code)
                if isinstance(event, h11.ConnectionClosed):
                    raise ConnectionError("closed before an answer")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class _Queue:
    """The pending events of one webhook of one app, and the task that sends them."""

    __slots__ = ("app", "hook", "events", "wakeup", "task", "dropped", "unlogged", "logged_at")

    def __init__(self, app: PusherApp, hook: Webhook) -> None:
        self.app = app
        self.hook = hook
        self.events: deque[dict[str, Any]] = deque()
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.unlogged = 0
        """Failed batches not logged yet (see :meth:`WebhookSender._failed`)."""
        self.logged_at: float | None = None


class WebhookSender:
    """Batches, signs and sends the webhooks of a worker process."""

    def __init__(
        self,
        batch_delay: float = BATCH_DELAY,
        max_attempts: int = MAX_ATTEMPTS,
        max_queue: int = MAX_QUEUE,
        retry_base: float = 1.0,
    ) -> None:
        self.batch_delay = batch_delay
        self.max_attempts = max_attempts
        self.max_queue = max_queue
        self.retry_base = retry_base
        self._queues: dict[tuple[str, str], _Queue] = {}
        self.sent = 0
        self.failed = 0

    def wants(self, app: PusherApp, name: str) -> bool:
        """Whether any webhook of ``app`` wants ``name`` (skip the work otherwise)."""
        return any(name in hook.events for hook in app.webhooks)

    def emit(self, app: PusherApp, name: str, **fields: Any) -> None:
        """Queue the event ``name`` for every webhook of ``app`` that wants it."""
        for hook in app.webhooks_for(name):
            queue = self._queue(app, hook)
            if len(queue.events) >= self.max_queue:
                queue.events.popleft()
                queue.dropped += 1
                if queue.dropped in (1, 100) or queue.dropped % 10_000 == 0:
                    log.warning(
                        "webhook %s of app %s: queue full, %d event(s) dropped so far",
                        hook.url,
                        app.id,
                        queue.dropped,
                    )
            queue.events.append({"name": name, **fields})
            queue.wakeup.set()

    def _queue(self, app: PusherApp, hook: Webhook) -> _Queue:
        queue = self._queues.get((app.id, hook.url))
        if queue is None:
            queue = self._queues[(app.id, hook.url)] = _Queue(app, hook)
        if queue.task is None or queue.task.done():
            queue.task = asyncio.get_running_loop().create_task(self._run(queue))
        return queue

    async def _run(self, queue: _Queue) -> None:
        while True:
            await queue.wakeup.wait()
            await asyncio.sleep(self.batch_delay)
            while queue.events:
                batch = [queue.events.popleft() for _ in range(min(MAX_BATCH, len(queue.events)))]
                try:
                    await self._deliver(queue, batch)
                except Exception as exc:  # a bug of ours must not end the webhook's task
                    self._failed(queue, len(batch), f"{type(exc).__name__}: {exc}", exc)
            queue.wakeup.clear()

    async def _deliver(self, queue: _Queue, batch: list[dict[str, Any]]) -> None:
        body = webhook_body(batch)
        headers = webhook_headers(queue.app, queue.hook, body)
        why = ""
        for attempt in range(self.max_attempts):
            if attempt:
                await asyncio.sleep(self.retry_base * 2 ** (attempt - 1))
            try:
                status = await post(queue.hook.url, body, headers, POST_TIMEOUT)
            except RETRIABLE as exc:
                why = f"{type(exc).__name__}: {exc}"
                continue
            except Exception as exc:  # e.g. UnicodeError, ValueError: the URL as given
                self._failed(queue, len(batch), f"{type(exc).__name__}: {exc} (not retried)")
                return
            if 200 <= status < 300:
                self.sent += 1
                return
            why = f"HTTP {status}"
        self._failed(queue, len(batch), f"{why} after {self.max_attempts} attempts")

    def _failed(
        self, queue: _Queue, events: int, why: str, exc: BaseException | None = None
    ) -> None:
        """Count a dropped batch; log it unless this webhook logged less than
        ``LOG_INTERVAL`` ago (then the next line says how many went unlogged)."""
        self.failed += 1
        queue.unlogged += 1
        now = time.monotonic()
        if queue.logged_at is not None and now - queue.logged_at < LOG_INTERVAL:
            return
        queue.logged_at = now
        count, queue.unlogged = queue.unlogged, 0
        log.warning(
            "webhook %s of app %s: %d event(s) dropped: %s%s",
            queue.hook.url,
            queue.app.id,
            events,
            why,
            "" if count == 1 else f" ({count - 1} earlier failed batch(es) not logged)",
            exc_info=exc,
        )

    async def flush(self, timeout: float) -> None:
        """Give queued events up to ``timeout`` seconds to go (worker stop)."""
        pending = [q for q in self._queues.values() if q.events]
        if pending:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    while any(q.events for q in pending):
                        await asyncio.sleep(0.05)

    def close(self) -> None:
        """Cancel the sending tasks."""
        for queue in self._queues.values():
            if queue.task is not None:
                queue.task.cancel()
