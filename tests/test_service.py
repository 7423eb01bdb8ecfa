"""runtime.service.run_service in a real process: readiness, stats, signals, boot
errors and the master watchdog (each case runs a small script in a subprocess)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pygatewayworker.runtime.spec import ExitCode
from tests.cluster import PYTHON, ROOT

SCRIPT = textwrap.dedent(
    """
    import asyncio, json, os, sys, time
    from pygatewayworker.runtime.service import run_service
    from pygatewayworker.runtime.spec import ChildSpec
    from pygatewayworker.register.config import Register

    class Service:
        def __init__(self):
            self.messages_in = 0

        async def start(self):
            if os.environ.get("FAIL"):
                raise RuntimeError(os.environ["FAIL"])
            if not os.environ.get("QUIET"):
                asyncio.get_running_loop().call_soon(self.count)

        def count(self):
            self.messages_in += 5
            if os.environ.get("BLOCK") and self.messages_in == 50:
                time.sleep(float(os.environ["BLOCK"]))  # a stall the lag probe must see
            asyncio.get_running_loop().call_later(0.05, self.count)

        async def stop(self, graceful):
            from pygatewayworker.runtime.service import PULSE
            with open(os.environ["STOPPED"], "w") as fh:  # the probe runs on while stopping
                json.dump({"graceful": graceful, "probed": PULSE.due > 0}, fh)

        def stats(self):
            return {"connections": 3, "messages_in": self.messages_in}

    config = Register(listen="127.0.0.1:1")
    config.app = "t"
    spec = ChildSpec(
        role="register", config=config, index=0, generation=7,
        status_fd=int(os.environ["STATUS_FD"]), run_dir=os.environ["RUN_DIR"],
        master_pid=int(os.environ["MASTER_PID"]),
    )
    sys.exit(run_service(spec, Service()))
    """
)


class ChildProc:
    def __init__(
        self, tmp: Path, master_pid: int, fail: str = "", block: str = "", quiet: bool = False
    ) -> None:
        self.read_fd, write_fd = os.pipe()
        self.stats = tmp / "run" / "stats" / "t.register.0.json"
        self.stopped = tmp / "stopped.json"
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "STATUS_FD": str(write_fd),
            "RUN_DIR": str(tmp / "run"),
            "STOPPED": str(self.stopped),
            "MASTER_PID": str(master_pid),
            "FAIL": fail,
            "BLOCK": block,
            "QUIET": "1" if quiet else "",
        }
        self.proc = subprocess.Popen(
            [PYTHON, "-c", SCRIPT],
            env=env,
            pass_fds=(write_fd,),
            stderr=subprocess.PIPE,
            text=True,
        )
        os.close(write_fd)

    def status_line(self, timeout: float = 10.0) -> dict[str, str]:
        ready, _, _ = select.select([self.read_fd], [], [], timeout)
        assert ready, "no status line"
        data = os.read(self.read_fd, 65536)
        return json.loads(data.decode().splitlines()[0])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        os.close(self.read_fd)


@pytest.fixture
def child(tmp_path: Path) -> Iterator[ChildProc]:
    proc = ChildProc(tmp_path, master_pid=os.getpid())
    yield proc
    proc.close()


def wait_file(path: Path, timeout: float = 10.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return json.loads(path.read_text())
        time.sleep(0.02)
    raise AssertionError(f"{path} was not written")


def test_ready_stats_and_stop(child: ChildProc) -> None:
    line = child.status_line()
    assert line["kind"] == "ready" and line["pid"] == child.proc.pid
    first = wait_file(child.stats)
    assert first["pid"] == child.proc.pid
    assert first["connections"] == 3
    assert first["name"] == "t.register.0" and first["generation"] == 7
    assert isinstance(first["rss"], int) and first["rss"] > 0
    time.sleep(1.2)
    child.stats.unlink()
    child.proc.send_signal(signal.SIGUSR2)  # the master forwards this for `status`
    fresh = wait_file(child.stats, timeout=0.8)
    assert isinstance(fresh["messages_in_per_s"], float) and fresh["messages_in_per_s"] > 0
    child.proc.send_signal(signal.SIGINT)  # ignored: Ctrl-C is the master's business
    child.proc.send_signal(signal.SIGHUP)  # ignored too
    time.sleep(0.2)
    assert child.proc.poll() is None
    child.proc.send_signal(signal.SIGTERM)
    assert child.proc.wait(10) == ExitCode.OK
    assert json.loads(child.stopped.read_text()) == {"graceful": False, "probed": True}


def test_sigquit_is_a_graceful_stop(child: ChildProc) -> None:
    assert child.status_line()["kind"] == "ready"
    child.proc.send_signal(signal.SIGQUIT)
    assert child.proc.wait(10) == ExitCode.OK
    assert json.loads(child.stopped.read_text()) == {"graceful": True, "probed": True}


def test_failing_start_reports_and_exits_with_boot_error(tmp_path: Path) -> None:
    proc = ChildProc(tmp_path, master_pid=os.getpid(), fail="port 1 is taken")
    try:
        line = proc.status_line()
        assert line == {"kind": "error", "message": "port 1 is taken", "pid": proc.proc.pid}
        assert proc.proc.wait(10) == ExitCode.BOOT_ERROR
        assert proc.proc.stderr is not None
        assert "could not start: port 1 is taken" in proc.proc.stderr.read()
    finally:
        proc.close()


def test_exits_when_its_master_is_gone(tmp_path: Path) -> None:
    # The parent (this test) is not the declared master: the watchdog sees a
    # foreign parent at once, as after the master died and the child was adopted.
    proc = ChildProc(tmp_path, master_pid=1)
    try:
        assert proc.proc.wait(10) == ExitCode.MASTER_GONE
        assert proc.proc.stderr is not None
        assert "master (pid 1) is gone" in proc.proc.stderr.read()
    finally:
        proc.close()


def test_stats_report_the_longest_loop_stall(tmp_path: Path) -> None:
    """The loop-lag probe sees a 0.4 s stall of the loop (it reports the longest one
    per stats interval and since start, and the part not spent waiting for a CPU); a
    quiet loop reports small figures."""
    proc = ChildProc(tmp_path, master_pid=os.getpid(), block="0.4")
    try:
        assert proc.status_line()["kind"] == "ready"
        deadline = time.monotonic() + 20
        while True:
            stats = json.loads(proc.stats.read_text()) if proc.stats.exists() else {}
            if stats.get("loop_lag_peak_ms", 0) >= 300:
                break
            assert time.monotonic() < deadline, stats
            time.sleep(0.1)
        assert stats["loop_lag_peak_ms"] < 5000
        if os.path.exists("/proc/thread-self/schedstat"):
            # a sleep is no wait for a CPU: the stall is all the loop's own
            assert stats["loop_lag_own_max_ms"] >= 200
        time.sleep(2.5)  # two more intervals: the per-interval figure is back to small
        quiet = json.loads(proc.stats.read_text())
        assert quiet["loop_lag_max_ms"] < 300 <= quiet["loop_lag_peak_ms"]
    finally:
        proc.close()


def test_the_stats_writer_writes_the_newest_snapshot_off_the_caller(tmp_path: Path) -> None:
    """``submit`` returns at once; the file ends up holding the newest snapshot; a
    directory that cannot be written is logged once, not per snapshot."""
    from pygatewayworker.register.config import Register
    from pygatewayworker.runtime.spec import ChildSpec
    from pygatewayworker.runtime.statsfile import StatsWriter

    config = Register(listen="127.0.0.1:1")
    config.app = "t"
    spec = ChildSpec(role="register", config=config, run_dir=str(tmp_path / "run"))
    writer = StatsWriter(spec)
    for n in range(200):
        writer.submit({"n": n})
    writer.close()
    assert json.loads(Path(spec.stats_path()).read_text()) == {"n": 199}


def _wakeups(pid: int) -> int:
    """Times the process's main (loop) thread was put on a CPU (schedstat)."""
    return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[2])


@pytest.mark.skipif(not os.path.exists("/proc/thread-self/schedstat"), reason="Linux schedstat")
def test_the_lag_probe_wakes_an_idle_loop_rarely_and_a_busy_one_often(tmp_path: Path) -> None:
    """Idle (nothing but the stats timer and the master watchdog): the probe slows
    to a wake-up every 0.5 s; a loop with a 50 ms timer of its own keeps the probe
    at 20 a second (its own 20 wake-ups and the probe's)."""
    procs: dict[bool, ChildProc] = {}
    try:  # both at once, measured over the same 4 s
        for quiet in (True, False):
            procs[quiet] = ChildProc(tmp_path / str(quiet), master_pid=os.getpid(), quiet=quiet)
        for proc in procs.values():
            assert proc.status_line()["kind"] == "ready"
        time.sleep(1.5)  # settled
        before = {quiet: _wakeups(proc.proc.pid) for quiet, proc in procs.items()}
        time.sleep(4)
        rates = {
            quiet: (_wakeups(proc.proc.pid) - before[quiet]) / 4 for quiet, proc in procs.items()
        }
    finally:
        for proc in procs.values():
            proc.close()
    assert rates[True] < 8, rates
    assert rates[False] > 30, rates


def test_a_quiet_period_allows_the_cpu_a_wake_up_costs_but_no_work() -> None:
    """The quietness rule of the lag probe: a wake-up may be charged a few ms of CPU
    on a small VM (seen in CI: 1-3 ms at times), which must not keep an idle loop's
    probe at 20 a second; a callback of 10 ms, or a wake-up besides the probe's while
    it runs every 50 ms, is work."""
    from pygatewayworker.runtime.service import period_is_quiet

    assert period_is_quiet(0.05, 0.0001, 1, idle=False)
    assert period_is_quiet(0.05, 0.0025, 1, idle=False)  # a slow wake-up
    assert not period_is_quiet(0.05, 0.010, 1, idle=False)  # a 10 ms callback
    assert not period_is_quiet(0.05, 0.0001, 2, idle=False)  # a timer of its own
    assert period_is_quiet(0.5, 0.004, 3, idle=True)  # stats and watchdog timers
    assert not period_is_quiet(0.5, 0.004, 12, idle=True)  # 20 wake-ups a second
    assert not period_is_quiet(0.5, 0.030, 2, idle=True)  # a 30 ms callback
