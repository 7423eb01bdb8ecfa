"""cluster.scaffold and ``gatewayworker new``: the files of a new app, what
discovery makes of them, the refusals of the command, and a new app in a folder
not named ``apps`` served by a real cluster."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from pygatewayworker.cluster.apps import discover
from pygatewayworker.cluster.pidfile import pid_alive
from pygatewayworker.cluster.scaffold import AppTemplate, create_app, render_app
from tests.cluster import PYTHON, recv_json, wait_ports_free
from tests.ports import reserve_ports

FILES = {"Events.py", "start_register.py", "start_gateway.py", "start_businessworker.py"}


@pytest.fixture(autouse=True)
def keep_sys_path() -> Iterator[None]:
    saved = list(sys.path)
    yield
    sys.path[:] = saved


def gw(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m pygatewayworker ARGS`` in ``cwd``, as a user runs the command."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GW_")}
    return subprocess.run(
        [PYTHON, "-m", "pygatewayworker", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        env={**clean, **(env or {})},
    )


# ---- the files ------------------------------------------------------------------------


def test_rendered_files_compile_and_carry_the_settings() -> None:
    files = render_app(AppTemplate("my_app", "127.0.0.1:9001", 9002, 9003))
    assert set(files) == FILES
    for name, text in files.items():
        compile(text, name, "exec")  # a SyntaxError fails the test
        assert text.startswith('"""') and "my_app" in text, name
    assert 'listen="127.0.0.1:9001"' in files["start_gateway.py"]
    assert "start_port=9003" in files["start_gateway.py"]
    assert 'register="127.0.0.1:9002"' in files["start_businessworker.py"]
    assert 'name="MyAppGateway"' in files["start_gateway.py"]
    assert "# secret=" in files["start_register.py"]  # settings spelled out, commented


@pytest.mark.parametrize("name", ["my-app", "_hidden", "9lives", "", "a b", "app.sub"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="must be a Python identifier"):
        AppTemplate(name)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"listen": "7272"}, "--listen '7272' is not 'host:port'"),
        ({"listen": "0.0.0.0:99999"}, "port must be 0..65535"),
        ({"register_port": 0}, "--register-port must be 1..65535, got 0"),
        ({"start_port": 65535}, "--start-port must be 1..65534, got 65535"),
    ],
)
def test_bad_settings_are_refused(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        AppTemplate("ok", **settings)  # type: ignore[arg-type]


@pytest.mark.parametrize("folder", ["apps", "services"])
def test_discovery_resolves_the_relative_events_string(tmp_path: Path, folder: str) -> None:
    created = create_app(str(tmp_path / folder), AppTemplate("myapp", "127.0.0.1:9001", 9002, 9003))
    assert created == str(tmp_path / folder / "myapp")
    assert {p.name for p in Path(created).iterdir()} == FILES
    assert not (tmp_path / folder / "__init__.py").exists()

    plan = discover(str(tmp_path / folder))
    roles = [(d.role, d.name, d.count) for d in plan.declarations]
    assert roles == [
        ("register", "MyappRegister", 1),
        ("gateway", "MyappGateway", 2),
        ("businessworker", "MyappBusinessWorker", 2),
    ]
    (worker,) = plan.by_role("businessworker")
    assert worker.config.events == f"{folder}.myapp.Events:Events"
    assert worker.config.app == "myapp"
    (gateway,) = plan.by_role("gateway")
    assert (gateway.config.listen, gateway.config.start_port) == ("127.0.0.1:9001", 9003)
    assert plan.by_role("register")[0].config.listen == "127.0.0.1:9002"
    assert sorted(plan.start_files) == sorted(str(Path(created) / f) for f in FILES - {"Events.py"})


# ---- the command ----------------------------------------------------------------------


def test_new_refuses_an_existing_folder_and_a_bad_name(tmp_path: Path) -> None:
    first = gw(tmp_path, "new", "myapp")
    assert first.returncode == 0, first.stderr
    folder = tmp_path / "apps" / "myapp"
    assert f"created {folder}/" in first.stdout
    assert "next: gatewayworker start   (then connect to ws://127.0.0.1:7272/)" in first.stdout
    events = (folder / "Events.py").read_text()
    (folder / "Events.py").write_text(events + "# mine\n")

    again = gw(tmp_path, "new", "myapp")
    assert again.returncode == 1
    assert again.stderr.strip() == (
        f"cannot create app: {folder} exists already; choose another name or remove it"
    )
    assert (folder / "Events.py").read_text() == events + "# mine\n"  # untouched

    bad = gw(tmp_path, "new", "my-app")
    assert bad.returncode == 1
    assert "cannot create app: app name 'my-app' must be a Python identifier" in bad.stderr
    assert not (tmp_path / "apps" / "my-app").exists()

    port = gw(tmp_path, "new", "other", "--listen", "nowhere")
    assert port.returncode == 1 and "--listen 'nowhere' is not 'host:port'" in port.stderr
    assert sorted(p.name for p in (tmp_path / "apps").iterdir()) == ["myapp"]


def test_new_honours_gw_apps_dir(tmp_path: Path) -> None:
    result = gw(tmp_path, "new", "envapp", env={"GW_APPS_DIR": "elsewhere"})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "elsewhere" / "envapp" / "Events.py").is_file()
    assert "next: gatewayworker start   (" in result.stdout  # start reads GW_APPS_DIR too


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    """A directory to run a cluster in; whatever it started is stopped afterwards."""
    yield tmp_path
    state_file = tmp_path / "run" / "state.json"
    if not state_file.exists():
        return
    state = json.loads(state_file.read_text())
    gw(tmp_path, "stop", "--timeout", "10")
    pids = [state["master"].get("pid")] + [p.get("pid") for p in state["processes"]]
    for pid in filter(None, pids):
        with contextlib.suppress(ProcessLookupError):
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


async def test_new_app_in_a_services_folder_serves_a_client(project: Path) -> None:
    base = reserve_ports(4)
    ports = ["--listen", f"127.0.0.1:{base}", "--register-port", str(base + 1)]
    ports += ["--start-port", str(base + 2)]
    created = gw(project, "new", "myapp", "--apps-dir", "services", *ports)
    assert created.returncode == 0, created.stderr
    hint = (
        f"next: gatewayworker start --apps-dir services   (then connect to ws://127.0.0.1:{base}/)"
    )
    assert hint in created.stdout

    nothing = gw(project, "start", "-d")  # ./apps: no such folder here
    assert nothing.returncode == 1
    assert f"apps directory {project / 'apps'} does not exist" in nothing.stderr

    started = await asyncio.to_thread(gw, project, "start", "-d", "--apps-dir", "services")
    assert started.returncode == 0, started.stdout + started.stderr
    assert "services.myapp.Events:Events" in started.stdout
    async with connect(f"ws://127.0.0.1:{base}/", open_timeout=10) as ws:
        init = await recv_json(ws, 10)
        assert init["type"] == "init" and len(init["client_id"]) == 20
        for text in ("hello", "again"):
            await ws.send(text)
            assert await asyncio.wait_for(ws.recv(), 10) == text

    stopped = await asyncio.to_thread(gw, project, "stop")
    assert stopped.returncode == 0 and stopped.stdout.strip().endswith("stopped")
    assert wait_ports_free([base, base + 1, base + 2, base + 3]) == []
