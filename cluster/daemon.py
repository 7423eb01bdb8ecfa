"""``start -d``: run the master as a daemon and wait until it says how the start went.

The command forks; the child calls ``setsid`` and forks again (the daemon, which can
never reacquire a terminal), then exits. The daemon points stdin, stdout and stderr
at ``/dev/null`` (its own log goes to the log file) and runs the master with a
:class:`PipeReporter`: once every role listens and every worker is linked, or once
the start has failed and everything is stopped again, the master writes one JSON
line on a pipe. The command waits for that line, so it returns only when the
outcome is known, and exits 0 or non-zero accordingly.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pygatewayworker.cluster.master import Reporter
from pygatewayworker.cluster.status import render_summary

__all__ = ["PipeReporter", "ConsoleReporter", "DaemonResult", "start_daemon"]

log = logging.getLogger("cluster")


class PipeReporter:
    """The daemon's side: one JSON line on ``fd``, then close it."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def ready(self, state: dict[str, Any]) -> None:
        self._send({"ok": True, "state": state})

    def failed(self, message: str) -> None:
        self._send({"ok": False, "error": message})

    def fds(self) -> tuple[int, ...]:
        return () if self._fd is None else (self._fd,)

    @property
    def reported(self) -> bool:
        return self._fd is None

    def _send(self, message: dict[str, Any]) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        data = (json.dumps(message) + "\n").encode()
        with contextlib.suppress(OSError):
            while data:
                data = data[os.write(fd, data) :]
        with contextlib.suppress(OSError):
            os.close(fd)


class ConsoleReporter:
    """The foreground master's reporter: print to the terminal."""

    def ready(self, state: dict[str, Any]) -> None:
        print(render_summary(state, foreground=True), flush=True)

    def failed(self, message: str) -> None:
        print(f"start failed: {message}", file=sys.stderr, flush=True)

    def fds(self) -> tuple[int, ...]:
        return ()


@dataclass(slots=True)
class DaemonResult:
    """What the daemon reported."""

    ok: bool
    error: str = ""
    state: dict[str, Any] = field(default_factory=dict)


def start_daemon(run: Callable[[Reporter], int], timeout: float) -> DaemonResult:
    """Fork a daemon that calls ``run(reporter)``; return what it reported."""
    read_fd, write_fd = os.pipe()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _become_daemon(run, write_fd)
    os.close(write_fd)
    os.waitpid(pid, 0)  # the intermediate process exits at once
    try:
        return _read_result(read_fd, timeout)
    finally:
        os.close(read_fd)


def _become_daemon(run: Callable[[Reporter], int], write_fd: int) -> None:
    code = 1
    try:
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.close(devnull)
        reporter = PipeReporter(write_fd)
        try:
            code = run(reporter)
        except BaseException as exc:
            log.exception("the master failed")
            reporter.failed(f"the master failed: {type(exc).__name__}: {exc}")
            code = 1
    finally:
        os._exit(code)


def _read_result(fd: int, timeout: float) -> DaemonResult:
    buf = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return DaemonResult(False, f"the daemon did not report within {timeout:g} s")
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            return DaemonResult(False, "the daemon exited before it reported (see the log file)")
        buf += chunk
    try:
        message = json.loads(buf.split(b"\n", 1)[0])
    except ValueError:
        return DaemonResult(False, "the daemon sent an unreadable report")
    return DaemonResult(
        bool(message.get("ok")), str(message.get("error", "")), message.get("state") or {}
    )
