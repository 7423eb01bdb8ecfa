"""Helpers for end-to-end tests: build a temporary copy of an app with free ports
and run the real ``start.py`` against it, the way a user does."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection, connect

from tests.ports import port_is_free, reserve_ports

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "apps"
PYTHON = sys.executable


@dataclass
class AppSpec:
    """Where a temporary app listens."""

    root: Path
    name: str
    register_port: int
    public_port: int
    start_port: int
    gateways: int
    workers: int
    secret: str = ""
    run_dir: Path = field(default_factory=Path)

    @property
    def apps_dir(self) -> Path:
        return self.root / "apps"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.public_port}/"

    def all_ports(self) -> list[int]:
        return [self.register_port, self.public_port] + [
            self.start_port + i for i in range(self.gateways)
        ]


def make_app(
    tmp_path: Path,
    source: str = "rc",
    *,
    gateways: int = 2,
    workers: int = 2,
    secret: str = "",
    gateway_options: str = "",
    worker_options: str = "",
) -> AppSpec:
    """Copy ``source`` (a fixture app, or ``chat`` from apps/) to ``tmp_path/apps``
    and write its start files with free ports."""
    src = ROOT / "apps" / source if source == "chat" else FIXTURES / source
    apps = tmp_path / "apps"
    apps.mkdir(parents=True, exist_ok=True)
    (apps / "__init__.py").write_text("")
    dest = apps / source
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("start_*.py", "__pycache__"))
    block = reserve_ports(gateways + 2)
    spec = AppSpec(
        root=tmp_path,
        name=source,
        register_port=block,
        public_port=block + 1,
        start_port=block + 2,
        gateways=gateways,
        workers=workers,
        secret=secret,
        run_dir=tmp_path / "run",
    )
    static = f"static_dir={str(dest / 'web')!r}," if (dest / "web").is_dir() else ""
    (dest / "start_register.py").write_text(
        "from pygatewayworker import Register\n"
        f"register = Register(listen='127.0.0.1:{spec.register_port}', secret={secret!r})\n"
    )
    (dest / "start_gateway.py").write_text(
        "from pygatewayworker import Gateway\n"
        f"gateway = Gateway(listen='127.0.0.1:{spec.public_port}', count={gateways}, "
        f"lan_ip='127.0.0.1', start_port={spec.start_port}, "
        f"register='127.0.0.1:{spec.register_port}', secret={secret!r}, {static} "
        f"{gateway_options})\n"
    )
    (dest / "start_businessworker.py").write_text(
        "from pygatewayworker import BusinessWorker\n"
        f"worker = BusinessWorker(events='apps.{source}.Events:Events', count={workers}, "
        f"register='127.0.0.1:{spec.register_port}', secret={secret!r}, {worker_options})\n"
    )
    return spec


def cli(
    spec: AppSpec, *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``start.py <args>`` against the temporary app and wait for it (``env``
    adds to the environment)."""
    return subprocess.run(
        [
            PYTHON,
            str(ROOT / "start.py"),
            *args,
            "--apps-dir",
            str(spec.apps_dir),
            "--run-dir",
            str(spec.run_dir),
        ],
        cwd=spec.root,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )


class ForegroundCluster:
    """``python start.py start`` in the foreground, as a subprocess."""

    def __init__(self, spec: AppSpec) -> None:
        self.spec = spec
        self.log_path = spec.root / "foreground.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ForegroundCluster:
        log = open(self.log_path, "wb")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [
                PYTHON,
                str(ROOT / "start.py"),
                "start",
                "--apps-dir",
                str(self.spec.apps_dir),
                "--run-dir",
                str(self.spec.run_dir),
            ],
            cwd=self.spec.root,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        return self

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def interrupt(self, timeout: float = 30) -> int:
        """SIGINT (Ctrl-C) the master and wait for it."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


async def wait_ready(
    spec: AppSpec, timeout: float = 30.0, init: bool = True, query: str = ""
) -> None:
    """Wait until a client can connect and (with ``init``) gets the app's ``init``
    message, i.e. a worker is linked to the gateway that accepted it. Tries several
    connections so that every gateway process is seen serving; ``query`` (``"?..."``)
    is added to their URL (a connect token, say)."""
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            async with connect(spec.ws_url + query, open_timeout=2) as ws:
                if not init:
                    return
                message = json.loads(await asyncio.wait_for(ws.recv(), 2))
                if message.get("type") == "init":
                    seen.add(message["client_id"][8:12])
                    if len(seen) >= spec.gateways:
                        return
                    continue
        except (TimeoutError, OSError, websockets.exceptions.WebSocketException) as exc:
            last_error = exc
        await asyncio.sleep(0.2)
    raise TimeoutError(f"cluster not ready after {timeout}s (last error: {last_error!r})")


async def recv_json(ws: ClientConnection, timeout: float = 5.0, skip_ping: bool = True) -> Any:
    """Receive the next JSON message (skipping heartbeat pings)."""
    while True:
        raw = await asyncio.wait_for(ws.recv(), timeout)
        message = json.loads(raw)
        if skip_ping and isinstance(message, dict) and message.get("type") == "ping":
            continue
        return message


async def recv_until(ws: ClientConnection, predicate: Any, timeout: float = 5.0) -> Any:
    """Receive messages until one satisfies ``predicate``; return it."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("expected message did not arrive")
        message = await recv_json(ws, left)
        if predicate(message):
            return message


def wait_ports_free(ports: list[int], timeout: float = 15.0) -> list[int]:
    """Wait until every port is free; return those still busy."""
    deadline = time.monotonic() + timeout
    busy = ports
    while time.monotonic() < deadline:
        busy = [p for p in ports if not port_is_free(p)]
        if not busy:
            return []
        time.sleep(0.2)
    return busy
