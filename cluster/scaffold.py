"""``gatewayworker new APP``: write a working app to start from.

The app is a folder ``<apps_dir>/<APP>/`` with an ``Events.py`` (sends an ``init``
message with the client_id on connect, echoes every message) and the three start
files of the original's layout, every setting spelled out with a comment. Its
business worker names Events with a relative import string (``".Events:Events"``),
so the app keeps working wherever the apps folder is. Pure apart from
:func:`create_app`, which writes the files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from pygatewayworker.register.config import parse_address

__all__ = ["AppTemplate", "create_app", "render_app"]

EVENTS = '''"""Events of the {app} app: every client event of the gateways reaches these
callbacks in a business worker. Callbacks may be plain functions or coroutines."""

import json

from pygatewayworker import api, context


class Events:
    @staticmethod
    def on_worker_start(worker):
        """The worker process is linked to every gateway."""

    @staticmethod
    def on_connect(client_id):
        # Tell the page its client_id: it posts it to your web backend, which binds
        # the logged-in user (api.bind_uid) or joins groups, and later pushes to it.
        api.send_to_current_client(json.dumps({{"type": "init", "client_id": client_id}}))

    @staticmethod
    def on_websocket_connect(client_id, request):
        """Handshake done: request.path, request.query (dict), request.headers,
        request.cookies, request.remote_ip. Check a token here and
        api.close_current_client() to refuse the connection."""

    @staticmethod
    def on_message(client_id, message):
        # message is str for text frames, bytes for binary ones; echo it back.
        context.session["messages"] = context.session.get("messages", 0) + 1
        api.send_to_current_client(message)

    @staticmethod
    def on_close(client_id):
        """The connection is gone; context.session holds its last value."""
'''

START_REGISTER = '''"""Register of the {app} app: discovery only, never on the message path."""

from pygatewayworker import Register

register = Register(
    listen="127.0.0.1:{register_port}",  # where gateways, workers and push clients meet
    name="{cls}Register",
    # secret="",                        # shared by every role; set it beyond loopback
)
'''

START_GATEWAY = '''"""Gateways of the {app} app: they hold the client WebSockets."""

from pygatewayworker import Gateway

gateway = Gateway(
    listen="{listen}",       # the public WebSocket port (all processes share it)
    name="{cls}Gateway",
    count={gateways},                 # processes; about one per 10k connections
    lan_ip="127.0.0.1",      # this host's address as other hosts reach it (never 0.0.0.0)
    start_port={start_port},         # internal ports: start_port .. start_port+count-1
    register="127.0.0.1:{register_port}",
    ping_interval=10,        # seconds of client silence before the server pings
    ping_not_response_limit=2,  # pings without an answer before closing (0: never)
    ping_data='{{"type":"ping"}}',
    # secret="",             # the same on every role
    # max_message_size=1 << 20,
    # static_dir="web",      # answer plain HTTP GETs on the same port with these files
)
'''

START_WORKER = '''"""Business workers of the {app} app: they run Events (imported only inside the
worker processes, so `gatewayworker reload` loads new code)."""

from pygatewayworker import BusinessWorker

worker = BusinessWorker(
    events=".Events:Events",  # Events.py beside this file
    name="{cls}BusinessWorker",
    count=2,                  # processes; 1-4 per CPU core
    register="127.0.0.1:{register_port}",
    # secret="",
    # drain_timeout=30,       # seconds a reloaded worker may finish running events
    # callbacks="thread",     # plain callbacks in threads (blocking code is safe);
    #                         #   "inline": on the event loop, for code that never blocks
    # threads=8,              # callback threads per process
    # slow_callback=1.0,      # seconds before a running callback is logged as slow
)
'''


GATEWAYS = 2
"""Gateway processes of a new app (internal ports start_port .. start_port+1)."""


@dataclass(slots=True, frozen=True)
class AppTemplate:
    """The settings written into a new app's start files."""

    app: str
    listen: str = "0.0.0.0:7272"
    register_port: int = 1238
    start_port: int = 2300

    def __post_init__(self) -> None:
        if not self.app.isidentifier() or self.app.startswith("_"):
            raise ValueError(
                f"app name {self.app!r} must be a Python identifier (letters, digits, _) "
                "not starting with _"
            )
        # Checked here so that `new` refuses what `start` would refuse later.
        parse_address(self.listen, "--listen")
        for option, port, last in (
            ("--register-port", self.register_port, 65535),
            ("--start-port", self.start_port, 65535 - (GATEWAYS - 1)),
        ):
            if not 1 <= port <= last:
                raise ValueError(f"{option} must be 1..{last}, got {port}")


def render_app(template: AppTemplate) -> dict[str, str]:
    """``{file name: text}`` of a new app."""
    values = {
        "app": template.app,
        "cls": "".join(part.capitalize() for part in template.app.split("_")) or "App",
        "listen": template.listen,
        "register_port": template.register_port,
        "start_port": template.start_port,
        "gateways": GATEWAYS,
    }
    return {
        "Events.py": EVENTS.format(**values),
        "start_register.py": START_REGISTER.format(**values),
        "start_gateway.py": START_GATEWAY.format(**values),
        "start_businessworker.py": START_WORKER.format(**values),
    }


def create_app(apps_dir: str, template: AppTemplate) -> str:
    """Write the app under ``apps_dir`` (created if missing); return its folder.

    Raises :class:`FileExistsError` if the folder exists already."""
    folder = os.path.join(os.path.abspath(apps_dir), template.app)
    if os.path.exists(folder):
        raise FileExistsError(f"{folder} exists already; choose another name or remove it")
    os.makedirs(folder)
    for name, text in render_app(template).items():
        with open(os.path.join(folder, name), "w", encoding="utf-8") as fh:
            fh.write(text)
    return folder
