"""The Pusher HTTP API process: :class:`~.httpapi.HTTPAPI` served over HTTP/1.1.

How this works
--------------
The HTTP side is the push API's: :class:`~pygatewayworker.pushapi.httpservice.
HttpService` (h11 through :class:`~pygatewayworker.pushapi.http.HttpConnection`, one
coroutine per connection, keep-alive) with the same limits: a head over 16 KiB gets
431, a body over ``max_body`` 413 before it is read, a request not complete within
``idle_timeout`` 408 (one sweep per second), malformed input its status; each is one
log line and the process serves on. Refusals are plain text, as Pusher's errors are.
Once a request is complete, :meth:`HTTPAPI.handle` answers it (signature, route,
the calls on the push client); this module only moves bytes. The apps (ids, keys,
secrets) come from the ``apps`` attribute of the Events class the declaration
names, imported in this process only.
"""

from __future__ import annotations

import importlib
import logging
import socket
from typing import Any

from pygatewayworker.pushapi.http import HttpConnection, HttpError, Request
from pygatewayworker.pushapi.httpservice import HttpService
from pygatewayworker.pusher.config import PusherAPI, PusherApp, check_apps
from pygatewayworker.pusher.httpapi import HTTPAPI, TEXT, route_of
from pygatewayworker.runtime.service import run_service

__all__ = ["PusherAPIServer", "load_apps", "serve"]

log = logging.getLogger("pusher.api")


def load_apps(import_string: str) -> tuple[PusherApp, ...]:
    """The ``apps`` of the Events class named by ``"module:Name"``."""
    module_name, _, attr = import_string.partition(":")
    target = getattr(importlib.import_module(module_name), attr)
    return check_apps(getattr(target, "apps", None), import_string)


class PusherAPIServer(HttpService):
    """The service of one Pusher HTTP API process (tests: ``listen`` port 0, and
    ``apps`` to skip importing the Events class)."""

    label = "Pusher API"
    log = log
    plain_errors = True

    def __init__(
        self,
        config: PusherAPI,
        sock: socket.socket | None = None,
        client: Any = None,
        apps: tuple[PusherApp, ...] | None = None,
    ) -> None:
        super().__init__(config, sock, client)
        self.config: PusherAPI = config
        self._apps = apps
        self.api: HTTPAPI | None = None

    async def start(self) -> None:
        """Load the apps, then listen (see :meth:`HttpService.start`)."""
        apps = self._apps if self._apps is not None else load_apps(self.config.events)
        self.api = HTTPAPI(apps, self.client, self.config.timestamp_window)
        await super().start()

    def admit(self, request: Request) -> None:
        """Refuse a body over ``max_body`` before reading it (the routes check the
        rest: method, signature, JSON)."""
        if request.content_length > self.config.max_body:
            raise HttpError(413, f"Request body over {self.config.max_body} bytes")

    def request_label(self, path: str) -> str:
        """metrics: the route's name (``trigger``, ``channels``...), else ``"other"``."""
        return route_of(path) or "other"

    async def answer(
        self, http: HttpConnection, request: Request, body: bytes
    ) -> tuple[int, bytes]:
        """What :class:`HTTPAPI` answers (500 and a log line if it fails)."""
        assert self.api is not None
        path = request.path
        try:
            status, content_type, answer = await self.api.handle(
                request.method, request.target, body
            )
        except Exception:
            log.exception("Pusher API %s %s failed", request.method, path)
            status, content_type, answer = 500, TEXT, b"Internal error\n"
        if status != 200:
            self.errors += 1
            shown = answer[:200].decode(errors="replace").strip()
            log.info("Pusher API %s %s: %s %s", request.method, path, status, shown)
        return status, http.respond(status, answer, content_type=content_type)


def serve(spec: Any) -> int:
    """Child entry point (``cluster``): run one Pusher HTTP API process."""
    return int(run_service(spec, PusherAPIServer(spec.config, spec.sockets.get("listen"))))
