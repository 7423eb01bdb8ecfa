"""The supervisor through the real command line (``start.py`` in subprocesses).

Each test builds a temporary ``apps/fake/`` whose declarations name the fake role
runtimes of tests/cluster_fakeapp/roles.py, so these tests exercise the master, the
CLI and ``runtime.service`` for real without depending on the real roles.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pygatewayworker.cluster.apps import discover
from pygatewayworker.cluster.daemon import ConsoleReporter
from pygatewayworker.cluster.master import Master, MasterOptions
from pygatewayworker.cluster.pidfile import pid_alive
from pygatewayworker.cluster.slots import Child, Slot
from pygatewayworker.runtime.spec import ExitCode
from tests.cluster import PYTHON, ROOT, wait_ports_free
from tests.ports import port_is_free, reserve_ports

FAKE_ROLES = Path(__file__).resolve().parent / "cluster_fakeapp" / "roles.py"

START_FILE = """\
from pygatewayworker.businessworker import BusinessWorker
from pygatewayworker.gateway import Gateway
from pygatewayworker.register import Register


class FakeRegister(Register):
    runtime = "apps.fake.roles:serve_register"


class FakeGateway(Gateway):
    runtime = "apps.fake.roles:serve_gateway"


class FakeWorker(BusinessWorker):
    runtime = "apps.fake.roles:serve_worker"


register = FakeRegister(listen="127.0.0.1:{register_port}", secret="s3cret")
gateway = FakeGateway(
    listen="{gateway_listen}", count={gateways}, start_port=0, secret="s3cret",
    register="127.0.0.1:{register_port}", static_dir="web",
)
worker = FakeWorker(
    events="apps.fake.Events:Events", count={workers}, secret="s3cret",
    register="127.0.0.1:{register_port}",
)
"""


@dataclass
class FakeApp:
    root: Path
    register_port: int

    @property
    def apps_dir(self) -> Path:
        return self.root / "apps"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    def events(self, source: str) -> None:
        (self.apps_dir / "fake" / "Events.py").write_text(source)

    def cli(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PYTHON, str(ROOT / "start.py"), *args]
            + ["--apps-dir", str(self.apps_dir), "--run-dir", str(self.run_dir)],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )

    def state(self) -> dict[str, Any]:
        return json.loads((self.run_dir / "state.json").read_text())

    def pids(self) -> dict[str, int]:
        return {p["name"]: p["pid"] for p in self.state()["processes"]}

    def log(self) -> str:
        path = self.run_dir / "gatewayworker.log"
        return path.read_text() if path.exists() else ""

    def processes(self) -> list[int]:
        """Live processes started for this app (master and children share the
        master's command line, which names our temporary directory)."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if str(self.root).encode() in cmdline and pid_alive(int(entry)):
                found.append(int(entry))
        return found


def make_fake_app(
    root: Path, gateways: int = 2, workers: int = 2, gateway_listen: str = "127.0.0.1:0"
) -> FakeApp:
    app_dir = root / "apps" / "fake"
    (app_dir / "web").mkdir(parents=True)
    (root / "apps" / "__init__.py").write_text("")
    (app_dir / "__init__.py").write_text("")
    shutil.copy(FAKE_ROLES, app_dir / "roles.py")
    app = FakeApp(root, reserve_ports(1))
    app.events("class Events:\n    VERSION = 1\n")
    (app_dir / "start_fake.py").write_text(
        START_FILE.format(
            register_port=app.register_port,
            gateway_listen=gateway_listen,
            gateways=gateways,
            workers=workers,
        )
    )
    return app


def wait_for(check: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def fake_app(tmp_path: Path) -> Iterator[FakeApp]:
    app = make_fake_app(tmp_path)
    yield app
    cleanup(app)


def cleanup(app: FakeApp) -> None:
    """Never leave a process behind, whatever the test did."""
    if app.processes():
        app.cli("stop", "--timeout", "5")
    for pid in app.processes():
        os.kill(pid, signal.SIGKILL)


def test_start_daemon_status_connections_stop(fake_app: FakeApp) -> None:
    started = fake_app.cli("start", "-d")
    assert started.returncode == 0, started.stderr
    names = [
        "fake.register.0",
        "fake.gateway.0",
        "fake.gateway.1",
        "fake.businessworker.0",
        "fake.businessworker.1",
    ]
    for name in names:
        assert name in started.stdout
    assert "page: http://127.0.0.1:" in started.stdout
    pids = fake_app.pids()
    assert sorted(pids) == sorted(names)
    assert all(pid_alive(pid) for pid in pids.values())
    master = fake_app.state()["master"]["pid"]

    again = fake_app.cli("start", "-d")
    assert again.returncode != 0
    assert f"already running (pid {master})" in again.stderr

    time.sleep(1.2)  # two stats ticks: the fake gateways' rates are known
    table = fake_app.cli("status")
    assert table.returncode == 0, table.stderr
    for name in ["master", *names]:
        assert name in table.stdout
    assert "6 processes" in table.stdout
    as_json = json.loads(fake_app.cli("status", "--json").stdout)
    rows = {row["name"]: row for row in as_json["processes"]}
    assert {rows[n]["pid"] for n in names} == set(pids.values())
    assert rows["master"]["pid"] == master
    assert rows["fake.gateway.0"]["connections"] == 1
    assert rows["fake.gateway.0"]["msg_per_s"] > 0
    assert rows["fake.businessworker.0"]["memory"] > 0
    assert as_json["totals"]["connections"] == 2

    conns = fake_app.cli("connections", "--json")
    assert conns.returncode == 0, conns.stderr
    listed = json.loads(conns.stdout)
    assert sorted(c["gateway"] for c in listed["connections"]) == names[1:3]
    assert listed["errors"] == []
    assert "alice" in fake_app.cli("connections").stdout

    stopped = fake_app.cli("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert not any(pid_alive(pid) for pid in [master, *pids.values()])
    assert not (fake_app.run_dir / "gatewayworker.pid").exists()
    assert port_is_free(fake_app.register_port)
    looked = f"not running (looked in {fake_app.run_dir})"
    for command in ("status", "reload", "connections"):
        result = fake_app.cli(command)
        assert result.returncode == 1 and looked in result.stderr, command
    result = fake_app.cli("stop")  # idempotent for scripts: nothing to stop is fine
    assert result.returncode == 0 and looked in result.stdout


def test_boot_failure_reports_the_reason_and_leaves_nothing(fake_app: FakeApp) -> None:
    fake_app.events('raise RuntimeError("boom: events broken")\n')
    result = fake_app.cli("start", "-d")
    assert result.returncode != 0
    assert "could not start: boom: events broken" in result.stderr
    assert "fake.businessworker." in result.stderr
    assert fake_app.processes() == []
    assert not (fake_app.run_dir / "gatewayworker.pid").exists()
    assert port_is_free(fake_app.register_port)


def test_an_exit_seen_before_the_childs_status_line_still_reports_its_reason(
    tmp_path: Path,
) -> None:
    """A child writes why it could not start on the status pipe, then exits; when the
    master's wake-up came before that line, the reaped exit reads it first."""
    plan = discover(str(ROOT / "apps"), "chat")
    master = Master(plan, MasterOptions(run_dir=str(tmp_path)), ConsoleReporter())
    master._status_r, master._status_w = os.pipe()
    os.set_blocking(master._status_r, False)
    try:
        slot = Slot(plan.by_role("businessworker")[0], 0)
        child = slot.current = Child(4242, 1, time.time(), time.monotonic())
        master._by_pid[child.pid] = (slot, child)
        master.phase = "booting"
        line = {"kind": "error", "message": "cannot import Events: boom", "pid": child.pid}
        os.write(master._status_w, (json.dumps(line) + "\n").encode())
        master._child_exited(child.pid, ExitCode.BOOT_ERROR)
        assert master._boot_failure == f"{slot.name} could not start: cannot import Events: boom"
        assert child.exit_reason.endswith(": cannot import Events: boom")
    finally:
        os.close(master._status_r)
        os.close(master._status_w)


def test_address_in_use_names_the_holder(tmp_path: Path) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    app = make_fake_app(tmp_path, gateway_listen=f"127.0.0.1:{port}")
    try:
        result = app.cli("start", "-d")
        assert result.returncode != 0
        assert f"127.0.0.1:{port}" in result.stderr
        assert f"address in use by pid {os.getpid()}" in result.stderr
        assert app.processes() == []
        assert port_is_free(app.register_port)
    finally:
        holder.close()
        cleanup(app)


def test_killed_child_is_respawned_and_reload_replaces_only_workers(fake_app: FakeApp) -> None:
    assert fake_app.cli("start", "-d").returncode == 0
    before = fake_app.pids()
    os.kill(before["fake.gateway.1"], signal.SIGKILL)
    after = wait_for(
        lambda: (
            (p := fake_app.pids())["fake.gateway.1"] not in (None, before["fake.gateway.1"]) and p
        ),
        what="gateway respawn",
    )
    assert {n: p for n, p in after.items() if n != "fake.gateway.1"} == {
        n: p for n, p in before.items() if n != "fake.gateway.1"
    }
    slot = next(p for p in fake_app.state()["processes"] if p["name"] == "fake.gateway.1")
    assert slot["restarts"] == 1
    assert "killed by signal 9" in slot["last_exit"]
    assert "fake.gateway.1" in fake_app.log() and "killed by signal 9 (SIGKILL)" in fake_app.log()

    fake_app.events("class Events:\n    VERSION = 2\n")
    reloaded = fake_app.cli("reload")
    assert reloaded.returncode == 0, reloaded.stderr
    assert "reloaded" in reloaded.stdout
    final = fake_app.pids()
    for name, pid in final.items():
        if "businessworker" in name:
            assert pid != after[name] and pid_alive(pid)
            assert not pid_alive(after[name])
        else:
            assert pid == after[name]
    status = json.loads(fake_app.cli("status", "--json").stdout)
    versions = [
        r["stats"].get("events_version") for r in status["processes"] if "worker" in r["role"]
    ]
    assert versions == [2, 2]  # the new workers imported the edited Events


def test_failed_reload_keeps_the_old_workers(fake_app: FakeApp) -> None:
    assert fake_app.cli("start", "-d").returncode == 0
    before = fake_app.pids()
    fake_app.events('raise RuntimeError("broken edit")\n')
    result = fake_app.cli("reload")
    assert result.returncode != 0
    assert "broken edit" in result.stderr
    assert fake_app.pids() == before
    assert all(pid_alive(pid) for pid in before.values())


def test_crash_loop_backs_off(tmp_path: Path) -> None:
    app = make_fake_app(tmp_path, gateways=1, workers=1)
    try:
        started = app.cli("start", "-d", env={"FAKE_CRASH_AFTER": "0.3"})
        assert started.returncode == 0, started.stderr
        wait_for(lambda: "respawning in 2 s" in app.log(), timeout=20, what="third crash")
        delays = re.findall(r"fake\.businessworker\.0 .*respawning in (\d+) s", app.log())
        assert delays[:3] == ["0", "1", "2"]
        assert "exited with code 1 (ERROR)" in app.log()
        slot = next(p for p in app.state()["processes"] if p["role"] == "businessworker")
        assert 2 <= slot["restarts"] <= 3
    finally:
        cleanup(app)


def test_children_exit_when_the_master_is_killed(fake_app: FakeApp) -> None:
    assert fake_app.cli("start", "-d").returncode == 0
    children = list(fake_app.pids().values())
    os.kill(fake_app.state()["master"]["pid"], signal.SIGKILL)
    wait_for(lambda: not any(pid_alive(p) for p in children), timeout=10, what="orphans to exit")
    # the stale pid file does not block the next start
    again = fake_app.cli("start", "-d")
    assert again.returncode == 0, again.stderr
    graceful = fake_app.cli("stop", "-g")
    assert graceful.returncode == 0
    assert fake_app.processes() == []
    assert "fake.gateway.0 INFO cluster: graceful stop requested" in fake_app.log()


def test_stop_kills_what_does_not_stop_in_time(fake_app: FakeApp) -> None:
    assert fake_app.cli("start", "-d", env={"FAKE_HANG_ON_STOP": "1"}).returncode == 0
    result = fake_app.cli("stop", "--timeout", "1")
    assert result.returncode == 0
    assert "killed" in result.stdout and "still running after 1 s" in result.stdout
    assert fake_app.processes() == []
    assert port_is_free(fake_app.register_port)


def test_foreground_start_stops_on_ctrl_c(fake_app: FakeApp) -> None:
    proc = subprocess.Popen(
        [PYTHON, str(ROOT / "start.py"), "start"]
        + ["--apps-dir", str(fake_app.apps_dir), "--run-dir", str(fake_app.run_dir)],
        cwd=fake_app.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "Press Ctrl-C" in line:
                break
        assert any("fake.gateway.1" in line for line in lines)
        # the command became the master (exec, cluster.boot): same process, same
        # terminal, its arguments still on the command line, and no click loaded
        master = fake_app.state()["master"]
        assert master["pid"] == proc.pid and "click" not in master["packages"]
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert b"pygatewayworker.cluster" in cmdline
        assert str(fake_app.apps_dir).encode() in cmdline
        children = list(fake_app.pids().values())
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole group
        assert proc.wait(30) == 0
        assert not any(pid_alive(p) for p in children)
        assert wait_ports_free([fake_app.register_port], 5) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_unknown_app_is_refused(fake_app: FakeApp) -> None:
    result = fake_app.cli("start", "-d", "--app", "nope")
    assert result.returncode != 0
    assert "no app named 'nope'" in result.stderr and "fake" in result.stderr
    assert fake_app.processes() == []


def test_reload_names_start_files_added_or_removed_since_start(fake_app: FakeApp) -> None:
    """A reload replaces the business workers only; start files that appeared or
    vanished since ``start`` are named, with the advice to ``restart``."""
    app_dir = fake_app.apps_dir / "fake"
    (app_dir / "start_extra.py").write_text("# declares nothing yet\n")
    assert fake_app.cli("start", "-d").returncode == 0
    before = fake_app.pids()
    (app_dir / "start_extra.py").unlink()
    (app_dir / "start_more.py").write_text("# new since start\n")
    (fake_app.apps_dir / "other").mkdir()
    (fake_app.apps_dir / "other" / "start.py").write_text("# a whole new app\n")

    reloaded = fake_app.cli("reload")
    assert reloaded.returncode == 0, reloaded.stderr
    assert "reloaded" in reloaded.stdout
    added = f"{app_dir}/start_more.py, {fake_app.apps_dir}/other/start.py"
    assert f"start files added since start: {added}; " in reloaded.stderr
    assert f"start files removed since start: {app_dir}/start_extra.py; " in reloaded.stderr
    assert "run `restart` for them to take effect" in reloaded.stderr
    after = fake_app.pids()
    assert set(after) == set(before)  # no new process for the new files
    for name, pid in after.items():
        assert (pid != before[name]) == ("businessworker" in name), name

    # nothing changed since start: nothing said
    (app_dir / "start_more.py").unlink()
    shutil.rmtree(fake_app.apps_dir / "other")
    (app_dir / "start_extra.py").write_text("# back\n")
    quiet = fake_app.cli("reload")
    assert quiet.returncode == 0 and "start files" not in quiet.stderr, quiet.stderr


def test_checkout_start_py_defaults_to_the_checkouts_folders(tmp_path: Path) -> None:
    """``python start.py`` from anywhere reads the checkout's apps/ and run/ (the
    ``gatewayworker`` command reads the current directory's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GW_")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PYTHON, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )

    refused = run(str(ROOT / "start.py"), "start", "-d", "--app", "no_such_app")
    assert refused.returncode == 1
    assert f"no app named 'no_such_app' in {ROOT / 'apps'}; apps: chat" in refused.stderr
    if not (ROOT / "run" / "gatewayworker.pid").exists():
        status = run(str(ROOT / "start.py"), "status")
        assert status.returncode == 1
        assert f"not running (looked in {ROOT / 'run'})" in status.stderr

    here = run("-m", "pygatewayworker", "start", "-d")
    assert here.returncode == 1
    assert f"cannot start: apps directory {tmp_path / 'apps'} does not exist" in here.stderr
    status = run("-m", "pygatewayworker", "status")
    assert status.returncode == 1
    assert status.stderr.strip() == f"not running (looked in {tmp_path / 'run'})"
    assert sorted(os.listdir(tmp_path)) == []  # nothing written where nothing runs
