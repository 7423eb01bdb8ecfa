"""Run the real cluster for a benchmark: a temporary copy of the bench app with free
ports, started and stopped with ``start.py`` the way a user does."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

__all__ = ["ClusterConfig", "BenchCluster", "ROOT"]

ROOT = Path(__file__).resolve().parent.parent
APP = Path(__file__).resolve().parent / "apps" / "benchapp"
APPS: dict[str, Path] = {
    "benchapp": APP,
    "chat": ROOT / "apps" / "chat",
    "pusherapp": APP.parent / "pusherapp",
}
"""The apps a benchmark cluster can run: the bench app, the shipped chat app (its
``Events`` as users get it; the start files are the bench's own), and the Pusher
protocol app (M9, run by ``bench.pusherbench.PusherBenchCluster``)."""


TOKEN_KEY = "bench-connect-token-key-not-a-secret-0123456789"
"""``Gateway(token_key=...)`` of the ``"tokens"`` clusters (the generators sign with it)."""
ORIGIN = "http://bench.example"
"""The ``Origin`` the generators send to the ``"limits"`` clusters, which allow it."""
SECURITY: dict[str, str] = {
    "": "",
    "tokens": f"token_key={TOKEN_KEY!r}",
    "limits": (
        "message_rate=100_000, message_burst=100_000, "
        "byte_rate=100_000_000, byte_burst=4_194_304, "
        "max_connections_per_ip=20_000, handshake_rate=100_000, handshake_burst=100_000, "
        f"allowed_origins=[{ORIGIN!r}]"
    ),
}
"""Extra ``Gateway(...)`` arguments of each :attr:`ClusterConfig.security`: connect
tokens verified at every handshake (``token_required``, the default), or every
limit configured so high that it never triggers (the measurement checks it did not),
with the origin check on."""


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """What the cluster of one measurement looks like."""

    gateways: int = 2
    workers: int = 1
    ping_interval: float = 10.0
    ping_limit: int = 2
    callbacks: str = "inline"
    """``BusinessWorker(callbacks=...)``: the bench app's plain callbacks never
    block, so every metric runs them inline except M6's thread-mode series."""
    app: str = "benchapp"
    """A key of :data:`APPS`: whose ``Events`` the workers run."""
    metrics: bool = False
    """Start with ``--metrics-listen`` and scrape ``/metrics`` every
    :data:`SCRAPE_INTERVAL` seconds while the cluster runs (``--metrics``)."""
    security: str = ""
    """A key of :data:`SECURITY`: ``"tokens"`` or ``"limits"`` (``""``: neither)."""
    send_buffer_limit: int | None = None
    """``Gateway(send_buffer_limit=...)``; ``None``: the gateway's default (1 MiB).
    A burst that puts more than that on each member while the generators fall
    behind gets the members closed as slow consumers (1008)."""

    def describe(self) -> dict[str, Any]:
        options = SECURITY[self.security].replace(repr(TOKEN_KEY), "<48 bytes>")
        return {
            "security": options or "none",
            "gateways": self.gateways,
            "workers": self.workers,
            "ping_interval": self.ping_interval,
            "ping_not_response_limit": self.ping_limit,
            "callbacks": self.callbacks,
            "app": self.app,
            "metrics": self.metrics,
            "send_buffer_limit": self.send_buffer_limit,
        }


def _free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def free_port_block(count: int) -> int:
    """A base port such that ``base .. base+count-1`` are free right now."""
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(500):
        base = rng.randrange(20000, 32000 - count)
        if all(_free(base + i) for i in range(count)):
            return base
    raise RuntimeError("no block of free ports found")


SCRAPE_INTERVAL = 1.0
"""Seconds between two scrapes with ``--metrics`` (Prometheus' default is 15 s: this
is a deliberately heavy reader)."""


class Scraper:
    """A thread that GETs ``url`` every :data:`SCRAPE_INTERVAL` seconds, like Prometheus."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.scrapes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scraper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(SCRAPE_INTERVAL):
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(self.url, timeout=5) as answer:
                    answer.read()
                self.scrapes += 1


class BenchCluster:
    """One running cluster (``start.py start -d``) of the bench app (a subclass may
    change the heartbeat, :attr:`ping_data`, and add start files)."""

    ping_data = '{"type":"ping"}'
    """The gateways' heartbeat message."""

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.root = Path(tempfile.mkdtemp(prefix="gw-bench-"))
        self.apps_dir = self.root / "apps"
        self.run_dir = self.root / "run"
        base = free_port_block(config.gateways + 2)
        self.register_port = base
        self.public_port = base + 1
        self.start_port = base + 2
        self.master_pid = 0
        self._scraper: Scraper | None = None

    def _write_app(self) -> None:
        cfg = self.config
        self.apps_dir.mkdir(parents=True)
        (self.apps_dir / "__init__.py").write_text("")
        dest = self.apps_dir / cfg.app
        shutil.copytree(
            APPS[cfg.app], dest, ignore=shutil.ignore_patterns("__pycache__", "web", "start_*.py")
        )
        reg = f"127.0.0.1:{self.register_port}"
        limit = f", send_buffer_limit={cfg.send_buffer_limit}" if cfg.send_buffer_limit else ""
        (dest / "start_register.py").write_text(
            f"from pygatewayworker import Register\nregister = Register(listen={reg!r})\n"
        )
        (dest / "start_gateway.py").write_text(
            "from pygatewayworker import Gateway\n"
            f"gateway = Gateway(listen='127.0.0.1:{self.public_port}', count={cfg.gateways}, "
            f"lan_ip='127.0.0.1', start_port={self.start_port}, register={reg!r}, "
            f"ping_interval={cfg.ping_interval}, ping_not_response_limit={cfg.ping_limit}, "
            f"ping_data={self.ping_data!r}{limit}, {SECURITY[cfg.security]})\n"
        )
        (dest / "start_businessworker.py").write_text(
            "from pygatewayworker import BusinessWorker\n"
            f"worker = BusinessWorker(events='apps.{cfg.app}.Events:Events', "
            f"count={cfg.workers}, register={reg!r}, callbacks={cfg.callbacks!r})\n"
        )

    def _cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                str(ROOT / "start.py"),
                *args,
                "--apps-dir",
                str(self.apps_dir),
                "--run-dir",
                str(self.run_dir),
            ],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def start(self) -> None:
        """Start the cluster in the background; return when it serves."""
        self._write_app()
        metrics = ("--metrics-listen", "127.0.0.1:0") if self.config.metrics else ()
        result = self._cli("start", "-d", *metrics)
        if result.returncode != 0:
            raise RuntimeError(f"cluster did not start: {result.stderr or result.stdout}")
        status = self.status()
        self.master_pid = int(status["master"]["pid"])
        self.wait_workers_linked()
        if self.config.metrics:
            state = json.loads((self.run_dir / "state.json").read_text())
            listen = next(
                p["addresses"]["listen"] for p in state["processes"] if p["role"] == "metrics"
            )
            self._scraper = Scraper(f"http://{listen}/metrics")
            self._scraper.start()

    def status(self) -> dict[str, Any]:
        """``start.py status --json``."""
        result = self._cli("status", "--json", timeout=30)
        if result.returncode != 0:
            raise RuntimeError(f"status failed: {result.stderr or result.stdout}")
        return dict(json.loads(result.stdout))

    def process_names(self) -> dict[int, str]:
        """Pid -> name (``start.py status``) of the master and every child."""
        status = self.status()
        names = {int(status["master"]["pid"]): "master"}
        names.update({int(p["pid"]): str(p["name"]) for p in status["processes"] if p.get("pid")})
        return names

    def pids(self, role: str) -> list[int]:
        """Pids of the processes of ``role`` (``gateway``, ``businessworker``...)."""
        rows = self.status()["processes"]
        return [int(r["pid"]) for r in rows if r.get("role") == role and r.get("pid")]

    def wait_workers_linked(self, timeout: float = 30.0) -> None:
        """Wait until every gateway reports every worker linked (stats files)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            linked = [data.get("workers", 0) for data in self.stats_of("gateway")]
            if len(linked) >= self.config.gateways and min(linked) >= self.config.workers:
                return
            time.sleep(0.2)
        raise RuntimeError("the workers did not link to every gateway in time")

    def stats_of(self, role: str) -> list[dict[str, Any]]:
        """The stats files of the processes of ``role`` (each rewritten every second)."""
        stats_dir = self.run_dir / "stats"
        found = []
        for path in stats_dir.glob("*.json") if stats_dir.is_dir() else []:
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if data.get("role") == role:
                found.append(data)
        return found

    def limits_hit(self) -> dict[str, int]:
        """How often the gateways' limits and checks acted, summed: clients closed
        for a rate limit and handshakes refused (a ``"limits"`` or ``"tokens"``
        cluster must show none; the stats files are at most a second old)."""
        gateways = self.stats_of("gateway")
        return {
            "rate_limit_closes": sum(
                g.get("closed_by_reason", {}).get("rate_limit", 0) for g in gateways
            ),
            "handshakes_refused": sum(
                sum(g.get("handshakes_refused", {}).values()) for g in gateways
            ),
        }

    def log_offset(self) -> int:
        """The size of the cluster's log file now (see :meth:`log_since`)."""
        try:
            return (self.run_dir / "gatewayworker.log").stat().st_size
        except OSError:
            return 0

    def log_since(self, offset: int, limit: int = 20) -> list[str]:
        """The last ``limit`` lines the cluster logged after :meth:`log_offset` gave
        ``offset``."""
        try:
            with open(self.run_dir / "gatewayworker.log", "rb") as file:
                file.seek(offset)
                text = file.read().decode(errors="replace")
        except OSError as exc:
            return [f"(no log: {exc})"]
        return text.splitlines()[-limit:]

    def processes(self) -> list[psutil.Process]:
        """The master and every child."""
        try:
            master = psutil.Process(self.master_pid)
            return [master, *master.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def rss(self) -> int:
        """RSS summed over every cluster process (bytes)."""
        total = 0
        for proc in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += proc.memory_info().rss
        return total

    def cpu_seconds(self) -> float:
        """User + system CPU of every cluster process so far."""
        total = 0.0
        for proc in self.processes():
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return total

    def stop(self) -> None:
        """Stop the cluster and remove the temporary app."""
        if self._scraper is not None:
            self._scraper.stop()
            self._scraper = None
        try:
            self._cli("stop", timeout=60)
        finally:
            for proc in self.processes():
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.kill()
            shutil.rmtree(self.root, ignore_errors=True)
