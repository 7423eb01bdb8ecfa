"""The PHP side of ``python -m bench php-compare`` (:mod:`bench.phpcompare`): the
user's own GatewayWorker chat app, run with ``php START start -d`` and ``php START
stop``. Nothing of PHP is shipped here; workerman is recognised by the title it
gives its master (``WorkerMan: master process  start_file=<START>``), whose children
are the cluster.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil

from bench.cluster import BenchCluster, ClusterConfig

__all__ = ["PORT_ENV", "PhpChatCluster", "event_loop_of", "php_info"]

PORT_ENV = ("BENCH_PHP_REGISTER_PORT", "BENCH_PHP_WS_PORT", "BENCH_PHP_START_PORT")
"""The environment variables that carry the PHP cluster's ports (register, websocket,
the gateways' first ``startPort``)."""
EVENT_EXTENSIONS = {"event": "Event (ext-event)", "libevent": "Libevent", "ev": "Ev", "uv": "Uv"}
"""PHP extensions workerman may pick its event loop from, in its order of preference."""


def _master_of(start_file: Path) -> psutil.Process | None:
    """The running workerman master of ``start_file`` (by its process title)."""
    title = f"master process  start_file={start_file}"
    for proc in psutil.process_iter(["cmdline"]):
        words = " ".join(proc.info["cmdline"] or []).strip()
        if words.endswith(title):
            return proc
    return None


def event_loop_of(modules: str) -> str:
    """The event loop workerman will use, guessed from the output of ``php -m``: the
    first of :data:`EVENT_EXTENSIONS` listed; else ``Select``."""
    listed = {line.strip().lower() for line in modules.splitlines()}
    loop = next((name for ext, name in EVENT_EXTENSIONS.items() if ext in listed), None)
    if loop is not None:
        return f"{loop} (`php -m` lists it)"
    names = ", ".join(EVENT_EXTENSIONS)
    return f"Select (stream_select, at most 1,024 fds per process: `php -m` lists none of {names})"


def php_info(php: str) -> dict[str, str]:
    """The PHP version and the event loop workerman will use (:func:`event_loop_of`)."""
    version = subprocess.run(
        [php, "-r", "echo PHP_VERSION;"], capture_output=True, text=True, timeout=30
    ).stdout.strip()
    modules = subprocess.run([php, "-m"], capture_output=True, text=True, timeout=30).stdout
    return {"version": version, "event_loop": event_loop_of(modules)}


class PhpChatCluster(BenchCluster):
    """The user's GatewayWorker chat app, started with ``php START start -d`` on the
    ports of :data:`PORT_ENV` (or at ``ws_port``). Only what the measurements use
    works here: start, stop, the processes, their names and CPU time."""

    def __init__(self, php: str, start_file: Path, ws_port: int | None = None) -> None:
        super().__init__(ClusterConfig(gateways=2, workers=2, ping_interval=55.0, ping_limit=0))
        self.php = php
        self.start_file = start_file.resolve()
        if ws_port is not None:
            self.public_port = ws_port
        ports = (self.register_port, self.public_port, self.start_port)
        self.env = {
            **os.environ,
            **{name: str(port) for name, port in zip(PORT_ENV, ports, strict=True)},
        }
        self._started: list[psutil.Process] = []

    def _php(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.php, str(self.start_file), *args],
            cwd=self.start_file.parent,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )

    def start(self) -> None:
        """``php START start -d``; return once the master and its children run."""
        running = _master_of(self.start_file)
        if running is not None:
            raise RuntimeError(
                f"{self.start_file} already runs (master pid {running.pid}); "
                f"stop it with: php {self.start_file} stop"
            )
        result = self._php("start", "-d")
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip()[-1000:]
            raise RuntimeError(f"php {self.start_file} start -d exited {result.returncode}: {tail}")
        deadline = time.monotonic() + 20
        while (master := _master_of(self.start_file)) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no workerman master of {self.start_file} after 20 s")
            time.sleep(0.1)
        self.master_pid = master.pid
        time.sleep(0.5)  # the master forks its workers after it set its title
        self._started = self.processes()

    def process_names(self) -> dict[int, str]:
        """Pid -> the workerman title less its prefix (``master``, ``ChatGateway``...)."""
        names = {}
        for proc in self.processes():
            with contextlib.suppress(psutil.Error):
                words = " ".join(proc.cmdline()).split()
                is_master = "master" in words[:3]
                names[proc.pid] = "master" if is_master else " ".join(words[3:4]) or "?"
        return names

    def status(self) -> dict[str, Any]:
        raise NotImplementedError("a PHP cluster has no start.py status")

    def stop(self) -> None:
        """``php START stop``; kill what it left of the processes started."""
        try:
            self._php("stop")
        finally:
            for proc in self._started:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            shutil.rmtree(self.root, ignore_errors=True)
