"""Driving unchanged pusher-js clients from the tests: ``tests/js/host.js`` under
Node (commands on stdin, what the clients see on stdout), and the tiny auth backend
(a channel authorization endpoint signing with the app secret, like Laravel's
``/broadcasting/auth``).

Node and the npm packages come from ``scripts/test.sh`` (``apt-get install nodejs
npm``, ``npm ci`` in tests/js). Without them the tests are skipped with the reason,
except under CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import shutil
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from pygatewayworker.pusher.protocol import channel_signature

JS_DIR = Path(__file__).resolve().parent / "js"


def require_node() -> str:
    """The node binary, or skip (fail under CI) naming what is missing."""
    node = shutil.which("node")
    reason = None
    if node is None:
        reason = "node is not installed (apt-get install nodejs npm, or run scripts/test.sh)"
    elif not (JS_DIR / "node_modules" / "pusher-js").is_dir():
        reason = "tests/js/node_modules is missing (npm ci --prefix tests/js, or scripts/test.sh)"
    if reason is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"pusher-js tests cannot run under CI: {reason}")
        pytest.skip(reason)
    assert node is not None
    return node


class AuthBackend:
    """``POST /auth`` (form: socket_id, channel_name, user): signs private channels,
    and presence channels as ``user`` with info ``{"name": user}``; refuses channels
    containing ``denied`` with 403. ``files`` (``{path: (content type, body)}``) are
    served to GETs (the browser test's page)."""

    def __init__(
        self, key: str, secret: str, files: dict[str, tuple[str, bytes]] | None = None
    ) -> None:
        self.requests = 0
        owner = self
        static = files or {}

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                content_type, body = static.get(self.path.partition("?")[0], ("", b""))
                self.send_response(200 if content_type else 404)
                self.send_header("Content-Type", content_type or "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                owner.requests += 1
                length = int(self.headers.get("Content-Length", 0))
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                channel, socket_id = form.get("channel_name", ""), form.get("socket_id", "")
                if "denied" in channel:
                    self._answer(403, {"error": "forbidden"})
                    return
                answer: dict[str, Any] = {}
                data = None
                if channel.startswith("presence-"):
                    user = form.get("user", "")
                    data = json.dumps({"user_id": user, "user_info": {"name": user}})
                    answer["channel_data"] = data
                answer["auth"] = f"{key}:{channel_signature(secret, socket_id, channel, data)}"
                self._answer(200, answer)

            def _answer(self, status: int, doc: dict[str, Any]) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Access-Control-Allow-Origin", "*")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/auth"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


class NodeHost:
    """One ``node host.js`` process holding any number of pusher-js clients."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.seen: list[dict[str, Any]] = []
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def start(cls) -> NodeHost:
        proc = await asyncio.create_subprocess_exec(
            require_node(),
            "host.js",
            cwd=JS_DIR,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        host = cls(proc)
        await host.wait(lambda d: d.get("type") == "ready", 20)
        return host

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            try:
                self.seen.append(json.loads(line))
            except ValueError:
                self.seen.append({"type": "stderr", "line": line.decode(errors="replace")})

    async def send(self, op: str, **fields: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"op": op, **fields}) + "\n").encode())
        await self.proc.stdin.drain()

    async def wait(self, predicate: Any, timeout: float = 10.0, since: int = 0) -> dict[str, Any]:
        """The first line seen (from line ``since`` on, so far or later) that
        satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        while True:
            for doc in self.seen[since:]:
                if predicate(doc):
                    return doc
            if time.monotonic() > deadline:
                raise AssertionError(f"not seen within {timeout} s; seen: {self.seen[-30:]}")
            await asyncio.sleep(0.05)

    def of(self, client: str, kind: str, **match: Any) -> list[dict[str, Any]]:
        """Every line of ``client`` of type ``kind`` whose fields match."""
        return [
            d
            for d in self.seen
            if d.get("id") == client
            and d.get("type") == kind
            and all(d.get(k) == v for k, v in match.items())
        ]

    async def connect(
        self, client: str, key: str, port: int, auth: str = "", user: str = ""
    ) -> str:
        """Connect a pusher-js client; its socket_id."""
        await self.send("connect", id=client, key=key, port=port, auth=auth, user=user)
        state = await self.wait(
            lambda d: (
                d.get("id") == client and d.get("type") == "state" and d["current"] == "connected"
            )
        )
        return str(state["socket_id"])

    async def subscribe(self, client: str, channel: str, timeout: float = 10.0) -> dict[str, Any]:
        """Subscribe; the ``subscribed`` or ``subscription_error`` line."""
        start = len(self.seen)
        await self.send("subscribe", id=client, channel=channel)
        return await self.wait(
            lambda d: (
                d.get("id") == client
                and d.get("channel") == channel
                and d.get("type") in ("subscribed", "subscription_error")
            ),
            timeout,
            start,
        )

    async def close(self) -> None:
        if self.proc.returncode is None:
            await self.send("exit")
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self._reader.cancel()
