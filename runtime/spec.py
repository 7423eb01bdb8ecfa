"""What the master hands to a child process, and what a child reports back.

A child is started with ``os.fork()`` by the master. It receives a :class:`ChildSpec`
(already in memory, inherited through the fork) and calls the ``serve(spec)``
function of its role's runtime module:

- ``register.server.serve(spec)``
- ``gateway.server.serve(spec)``
- ``businessworker.worker.serve(spec)``
- ``pushapi.server.serve(spec)``

``serve`` builds its own event loop (uvloop when importable, see
:func:`runtime.service.run_service`), reports readiness through
``spec.notify_ready()`` once it listens / is linked, and returns an exit code from
:class:`ExitCode`. This module lives below both sides (``runtime``): the roles read
it, the supervisor (``cluster``) fills it in.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

__all__ = ["ChildSpec", "ExitCode", "REPLACEMENT_ENV"]

REPLACEMENT_ENV = "GW_RELOAD_REPLACEMENT"
"""Set to ``"1"`` in the environment of a business worker forked by a reload (and
only there): it must link to every gateway before it reports ready
(``cluster.reload`` sets it, ``businessworker.worker`` reads it)."""


class ExitCode(IntEnum):
    """Exit codes of child processes; the master acts on them."""

    OK = 0
    """Stopped on request."""
    ERROR = 1
    """Crashed at run time: respawn (with growing delays if it keeps happening)."""
    BOOT_ERROR = 3
    """Could not start (Events import failed, bad config, port in use). At the first
    start the whole start fails; during a reload the reload ends and the old worker
    stays; a child that fails later is respawned with growing delays, each logged
    with the reason."""
    MASTER_GONE = 4
    """The master disappeared; the child exited so as not to hold ports as an orphan."""


@dataclass(slots=True)
class ChildSpec:
    """Everything a child needs. ``sockets`` holds listening sockets the master bound
    before forking: ``"public"`` (gateway WebSocket port, one SO_REUSEPORT socket per
    gateway process), ``"internal"`` (gateway internal port), ``"listen"`` (register).
    A role may find a key missing (tests, or a config that binds in the child) and
    then binds itself."""

    role: str
    config: Any
    index: int = 0
    generation: int = 0
    sockets: dict[str, socket.socket] = field(default_factory=dict)
    status_fd: int | None = None
    run_dir: str = ""
    master_pid: int = 0
    log_level: int = 20  # logging.INFO
    log_format: str = "text"  # or "json" (cluster.logs)

    @property
    def name(self) -> str:
        """Process title-ish name, e.g. ``chat.gateway.1``."""
        app = getattr(self.config, "app", "") or "app"
        return f"{app}.{getattr(self.config, 'name', self.role)}.{self.index}"

    def _report(self, kind: str, message: str = "") -> None:
        if self.status_fd is None:
            return
        line = json.dumps({"kind": kind, "message": message, "pid": os.getpid()}) + "\n"
        with contextlib.suppress(OSError):
            os.write(self.status_fd, line.encode())

    def notify_ready(self) -> None:
        """Tell the master this child is serving (listening, linked)."""
        self._report("ready")

    def notify_error(self, message: str) -> None:
        """Tell the master why this child could not start (before exiting with
        ``ExitCode.BOOT_ERROR``)."""
        self._report("error", message)

    def stats_path(self) -> str:
        """Where this child writes its stats snapshot (JSON)."""
        return os.path.join(self.run_dir, "stats", f"{self.name}.json")

    def write_stats(self, stats: dict[str, Any]) -> None:
        """Atomically replace this child's stats file (no-op without a run_dir)."""
        self.write_stats_text(json.dumps(stats))

    def write_stats_text(self, text: str) -> None:
        """Atomically replace this child's stats file with ``text`` (JSON)."""
        if not self.run_dir:
            return
        path = self.stats_path()
        # one writer per child (its stats thread), so a fixed temporary name is
        # enough: no mkstemp, whose name search and checks cost more than the write
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
