"""cluster.pidfile: atomic pid file, refusal over a live master, stale files."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pygatewayworker.cluster.pidfile import AlreadyRunning, PidFile, pid_alive, process_start_time


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_create_writes_our_pid_and_start_time(tmp_path: Path) -> None:
    pidfile = PidFile(str(tmp_path / "run" / "x.pid"))
    pidfile.create()
    assert pidfile.read() == (os.getpid(), process_start_time(os.getpid()))
    assert pidfile.running_pid() == os.getpid()
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["x.pid"]  # no temp left
    pidfile.remove()
    assert not (tmp_path / "run" / "x.pid").exists()


def test_refuses_a_live_owner(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    path = tmp_path / "x.pid"
    path.write_text(f"{sleeper.pid}\n{process_start_time(sleeper.pid)}\n")
    with pytest.raises(AlreadyRunning, match=f"already running \\(pid {sleeper.pid}\\)"):
        PidFile(str(path)).create()
    assert path.read_text().split()[0] == str(sleeper.pid)
    PidFile(str(path)).remove()  # not ours: left alone
    assert path.exists()


def test_pid_only_file_of_a_live_process_is_trusted(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    path = tmp_path / "x.pid"
    path.write_text(f"{sleeper.pid}\n")
    assert PidFile(str(path)).running_pid() == sleeper.pid


@pytest.mark.parametrize("content", ["{dead}\n", "{dead}\n123\n", "garbage\n", ""])
def test_stale_or_broken_file_is_replaced(tmp_path: Path, content: str) -> None:
    path = tmp_path / "x.pid"
    path.write_text(content.format(dead=dead_pid()))
    pidfile = PidFile(str(path))
    assert pidfile.running_pid() is None
    pidfile.create()
    assert pidfile.read() == (os.getpid(), process_start_time(os.getpid()))


def test_reused_pid_is_stale(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    """The pid lives but started at another time: it is not our old master."""
    started = process_start_time(sleeper.pid)
    assert started is not None
    path = tmp_path / "x.pid"
    path.write_text(f"{sleeper.pid}\n{started + 1}\n")
    assert PidFile(str(path)).running_pid() is None


def test_zombie_is_not_alive() -> None:
    """An exited child not yet waited for is a zombie: it holds no port, it is dead."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while ") Z" not in Path(f"/proc/{proc.pid}/stat").read_text():
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.02)
    assert not pid_alive(proc.pid)
    proc.wait()
    assert not pid_alive(proc.pid)
    assert not pid_alive(0) and not pid_alive(-5)
