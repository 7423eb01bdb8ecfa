"""The Pusher HTTP API process: HTTP/1.1 (h11) on asyncio streams in front of
:class:`~.httpapi.HTTPAPI`.

How this works
--------------
One coroutine per connection feeds the bytes it reads to an ``h11.Connection`` and
acts on its events: a request's head is checked for size (``max_body``, 413) before
its body is read; once the whole body is in, :meth:`HTTPAPI.handle` answers it, and
the connection waits for its next request (keep-alive) for at most
``idle_timeout``. A request h11 cannot parse gets 400 and the connection is closed.
The apps (ids, keys, secrets) come from the ``apps`` attribute of the Events class
the declaration names, imported in this process only.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import socket
from typing import Any

import h11

from pygatewayworker.gatewayclient.client import AsyncGatewayClient
from pygatewayworker.pusher.config import PusherAPI, PusherApp, check_apps
from pygatewayworker.pusher.httpapi import HTTPAPI, TEXT
from pygatewayworker.register.config import parse_address
from pygatewayworker.runtime.service import run_service
from pygatewayworker.runtime.sockets import bind_listener

__all__ = ["PusherAPIServer", "load_apps", "serve"]

log = logging.getLogger("pusher.api")

MAX_HEAD = 16 * 1024
READ_SIZE = 65536


def load_apps(import_string: str) -> tuple[PusherApp, ...]:
    """The ``apps`` of the Events class named by ``"module:Name"``."""
    module_name, _, attr = import_string.partition(":")
    target = getattr(importlib.import_module(module_name), attr)
    return check_apps(getattr(target, "apps", None), import_string)


class PusherAPIServer:
    """The service of one Pusher HTTP API process (tests: ``listen`` port 0)."""

    def __init__(
        self,
        config: PusherAPI,
        sock: socket.socket | None = None,
        client: Any = None,
        apps: tuple[PusherApp, ...] | None = None,
    ) -> None:
        self.config = config
        self._sock = sock
        self._own_client = client is None
        self.client = client or AsyncGatewayClient(
            register=list(config.registers),
            secret=config.secret,
            timeout=config.timeout,
            name=f"{config.app or 'app'}.{config.name}",
        )
        self._apps = apps
        self.api: HTTPAPI | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.requests = 0
        self.errors = 0

    async def start(self) -> None:
        """Load the apps, listen, and start discovering gateways in the background."""
        apps = self._apps if self._apps is not None else load_apps(self.config.events)
        self.api = HTTPAPI(apps, self.client, self.config.timestamp_window)
        sock = self._sock or self._bind()
        self._server = await asyncio.start_server(self._serve, sock=sock)
        asyncio.get_running_loop().create_task(self._connect())
        log.info("Pusher HTTP API listening on http://%s:%s", *self.address)

    def _bind(self) -> socket.socket:
        host, port = parse_address(self.config.listen)
        what = f"app {self.config.app or '?'} Pusher API {self.config.name!r}"
        return bind_listener(host, port, what, reuse_port=self.config.count > 1)

    async def _connect(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.connect()

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``."""
        assert self._server is not None and self._server.sockets
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def stop(self, graceful: bool) -> None:
        """Stop listening, close the connections and the push client."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._own_client:
            await self.client.close()

    def stats(self) -> dict[str, Any]:
        """Counters for ``status``."""
        return {
            "connections": len(self._writers),
            "messages_in": self.requests,
            "send_failures": self.errors,
            "gateways": len(getattr(self.client, "gateways", [])),
        }

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        try:
            await self._serve_requests(conn, reader, writer)
        except (ConnectionError, TimeoutError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _serve_requests(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        request: h11.Request | None = None
        body = bytearray()
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                self._respond(conn, writer, 400, TEXT, f"Bad request: {exc}\n".encode(), close=True)
                return
            if event is h11.NEED_DATA:
                async with asyncio.timeout(self.config.idle_timeout):
                    data = await reader.read(READ_SIZE)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                request, body = event, bytearray()
                length = dict(event.headers).get(b"content-length", b"0")
                if length.isdigit() and int(length) > self.config.max_body:
                    text = f"Request body over {self.config.max_body} bytes\n".encode()
                    self._respond(conn, writer, 413, TEXT, text, close=True)
                    return
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > self.config.max_body:
                    text = f"Request body over {self.config.max_body} bytes\n".encode()
                    self._respond(conn, writer, 413, TEXT, text, close=True)
                    return
            elif isinstance(event, h11.EndOfMessage) and request is not None:
                await self._answer(conn, writer, request, bytes(body))
                await writer.drain()
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
                request = None
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return

    async def _answer(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, request: h11.Request, body: bytes
    ) -> None:
        assert self.api is not None
        self.requests += 1
        method = request.method.decode("ascii", "replace")
        target = request.target.decode("utf-8", "replace")
        try:
            status, content_type, answer = await self.api.handle(method, target, body)
        except Exception:
            log.exception("Pusher API %s %s failed", method, target.partition("?")[0])
            status, content_type, answer = 500, TEXT, b"Internal error\n"
        if status != 200:
            self.errors += 1
            log.info(
                "Pusher API %s %s: %s %s",
                method,
                target.partition("?")[0],
                status,
                answer[:200].decode(errors="replace").strip(),
            )
        self._respond(conn, writer, status, content_type, answer)

    def _respond(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        status: int,
        content_type: str,
        body: bytes,
        close: bool = False,
    ) -> None:
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        if close:
            headers.append(("Connection", "close"))
        try:
            writer.write(conn.send(h11.Response(status_code=status, headers=headers)))
            writer.write(conn.send(h11.Data(data=body)))
            writer.write(conn.send(h11.EndOfMessage()))
        except h11.LocalProtocolError:
            writer.close()


def serve(spec: Any) -> int:
    """Child entry point (``cluster``): run one Pusher HTTP API process."""
    return int(run_service(spec, PusherAPIServer(spec.config, spec.sockets.get("listen"))))
