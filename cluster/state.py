"""Files in the run directory, shared by the master and the command line.

``run/`` (default: ``./run`` in the current directory, the project's; ``--run-dir`` or
``GW_RUN_DIR`` elsewhere; a checkout's ``start.py`` makes it ``run/`` beside itself)::

    gatewayworker.pid    the master's pid (cluster.pidfile)
    gatewayworker.log    the log file, rotated by the master (cluster.logs)
    state.json           the master's view: every process slot, its pid, restarts,
                         addresses, and the last reload's outcome; rewritten
                         atomically whenever something changes
    stats/<name>.json    one snapshot per child, written by the child itself every
                         second and on SIGUSR2 (runtime.service)

``status``, ``stop``, ``reload`` and ``connections`` read these files; the master
never answers a socket for them, so a busy master cannot block an operator.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from typing import Any

__all__ = [
    "RunPaths",
    "default_run_dir",
    "default_apps_dir",
    "write_json_atomic",
    "read_json",
    "read_stats",
]


def default_run_dir() -> str:
    """``./run``: the run directory of the project in the current directory (never a
    folder of the installed package)."""
    return os.path.abspath("run")


def default_apps_dir() -> str:
    """``./apps``: the apps directory of the project in the current directory."""
    return os.path.abspath("apps")


@dataclass(slots=True, frozen=True)
class RunPaths:
    """Where the files of one installation live (``run_dir`` is absolute)."""

    run_dir: str

    @classmethod
    def at(cls, run_dir: str | None) -> RunPaths:
        """Paths for ``run_dir`` (``None``: the default), made absolute."""
        return cls(os.path.abspath(run_dir or default_run_dir()))

    @property
    def pid_file(self) -> str:
        return os.path.join(self.run_dir, "gatewayworker.pid")

    @property
    def log_file(self) -> str:
        return os.path.join(self.run_dir, "gatewayworker.log")

    @property
    def state_file(self) -> str:
        return os.path.join(self.run_dir, "state.json")

    @property
    def stats_dir(self) -> str:
        return os.path.join(self.run_dir, "stats")


def write_json_atomic(path: str, data: Any) -> None:
    """Replace ``path`` with ``data`` as JSON, atomically (temp file + rename)."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_json(path: str) -> Any:
    """The JSON document at ``path``, or None if missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def read_stats(stats_dir: str) -> dict[str, dict[str, Any]]:
    """Every child's stats snapshot, by process name."""
    out: dict[str, dict[str, Any]] = {}
    try:
        names = os.listdir(stats_dir)
    except OSError:
        return out
    for file_name in names:
        if file_name.endswith(".json") and not file_name.startswith("."):
            data = read_json(os.path.join(stats_dir, file_name))
            if isinstance(data, dict):
                out[file_name[: -len(".json")]] = data
    return out
