"""The package as a user installs it: build the wheel, install it into a fresh venv
in an empty temporary directory, and run ``gatewayworker`` in a project of the
user's own that also holds packages named ``apps``, ``register``, ``gateway`` and
``cluster`` (the names the installed package must not take).

Nothing here sees the checkout: the wheel is built from a copy of the source tree
(a stale ``build/`` in the checkout cannot leak into it), the venv has no access to
the test venv's packages, and every command runs from the project directory with
no ``PYTHONPATH``. pip fetches the dependencies (websockets, msgpack, click, h11, uvloop)
through its usual index and cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from pygatewayworker.cluster.pidfile import pid_alive
from tests.cluster import PYTHON, ROOT, recv_json, wait_ports_free
from tests.ports import reserve_ports

PIP_TIMEOUT = 300
CLI_TIMEOUT = 120
GENERIC = ("apps", "gateway", "register", "businessworker", "gatewayclient", "pushapi")
GENERIC += ("cluster", "runtime", "tests", "bench", "examples", "scripts", "docs", "start")
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv*", "run", "build", "dist", "*.egg-info", "__pycache__", "*_cache"
)

# The user's own packages, named like the roles of a careless install.
USER_PACKAGES = {
    "apps/shared.py": 'GREETING = "hello from the project\'s apps/"\n',
    "register/__init__.py": "",
    "register/signup.py": 'def welcome(name):\n    return f"signed up {name}"\n',
    "gateway/__init__.py": "",
    "gateway/routes.py": 'HOME = "/home"\n',
    "cluster/__init__.py": "",
    "cluster/nodes.py": 'NODES = ["node-a", "node-b"]\n',
}

# Added to the Events.py that ``gatewayworker new`` writes: a "whoami" message is
# answered with what the project's own packages say and where they were loaded from.
USER_IMPORTS = """\
import apps.shared
import cluster.nodes
import gateway.routes
import register.signup
"""
WHOAMI = """\
        if message == "whoami":
            api.send_to_current_client(json.dumps({
                "welcome": register.signup.welcome(client_id),
                "home": gateway.routes.HOME,
                "nodes": cluster.nodes.NODES,
                "greeting": apps.shared.GREETING,
                "files": [m.__file__ for m in (register.signup, gateway.routes,
                                               cluster.nodes, apps.shared)],
            }))
            return
"""


@dataclass
class Venv:
    """A fresh virtual environment with the wheel installed."""

    root: Path
    site_packages: Path
    before: set[str]
    """Top-level entries of site-packages before the wheel was installed."""

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def command(self) -> Path:
        return self.root / "bin" / "gatewayworker"


def clean_env() -> dict[str, str]:
    """The environment of a user's shell: no PYTHONPATH, no test venv, no GW_*."""
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("GW_")}


def run(
    args: list[str | Path], cwd: Path, timeout: float = CLI_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def checked(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"{result.args}:\n{result.stdout}\n{result.stderr}"
    return result


def build_wheel(work: Path) -> Path:
    """Build the wheel from a copy of the checkout with the test venv's pip."""
    source = work / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=NOT_SOURCE)
    dist = work / "dist"
    pip = [PYTHON, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    checked(run([*pip, "wheel", "--no-deps", "-w", dist, source], work, PIP_TIMEOUT))
    (wheel,) = dist.glob("pygatewayworker-*.whl")
    return wheel


def create_venv(work: Path, wheel: Path) -> Venv:
    """A venv without pip (nothing to download or copy), filled by the test venv's
    pip through ``--python``."""
    root = work / "venv"
    checked(run([PYTHON, "-m", "venv", "--without-pip", root], work))
    where = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site_packages = Path(checked(run([root / "bin" / "python", "-c", where], work)).stdout.strip())
    before = set(os.listdir(site_packages))
    pip = [PYTHON, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    checked(run([*pip, "--python", root / "bin" / "python", "install", wheel], work, PIP_TIMEOUT))
    return Venv(root, site_packages, before)


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    work = tmp_path_factory.mktemp("install")
    return create_venv(work, build_wheel(work))


def owned_top_levels(site_packages: Path) -> dict[str, set[str]]:
    """``{distribution dist-info: top-level entries its RECORD installed}``."""
    owned: dict[str, set[str]] = {}
    for info in site_packages.glob("*.dist-info"):
        record = (info / "RECORD").read_text().splitlines()
        paths = [line.rsplit(",", 2)[0] for line in record if line]
        owned[info.name] = {p.split("/")[0] for p in paths if not p.startswith("..")}
    return owned


# ---- what the wheel installs --------------------------------------------------------


def test_the_wheel_installs_only_pygatewayworker(venv: Venv) -> None:
    after = set(os.listdir(venv.site_packages))
    added = after - venv.before
    owned = owned_top_levels(venv.site_packages)
    (ours,) = [name for name in owned if name.startswith("pygatewayworker-")]
    assert owned[ours] == {"pygatewayworker", ours}
    assert (venv.site_packages / ours / "top_level.txt").read_text().split() == ["pygatewayworker"]
    record = (venv.site_packages / ours / "RECORD").read_text()
    assert "../../../bin/gatewayworker," in record  # the console script
    # every other new entry belongs to a dependency, none has a generic role name
    others = set().union(*(names for name, names in owned.items() if name != ours))
    assert added - others == {"pygatewayworker", ours}
    assert not {n for n in after if n.removesuffix(".py") in GENERIC}, sorted(after)
    assert not list(venv.site_packages.glob("*.pth")), "no path hooks: a plain install"

    package = venv.site_packages / "pygatewayworker"
    assert (package / "py.typed").is_file()
    for role in (
        "gateway",
        "register",
        "businessworker",
        "gatewayclient",
        "pushapi",
        "cluster",
        "runtime",
    ):
        folder = package / role
        assert folder.is_dir() and not folder.is_symlink(), role  # copied, not a link
        assert (folder / "__init__.py").is_file(), role
    assert (package / "cluster" / "scaffold.py").is_file()
    assert venv.command.is_file()


def test_python_dash_m_and_imports_from_an_unrelated_directory(venv: Venv, tmp_path: Path) -> None:
    helped = checked(run([venv.python, "-m", "pygatewayworker", "--help"], tmp_path))
    for command in ("start", "stop", "restart", "reload", "status", "connections", "new"):
        assert f"  {command} " in helped.stdout, helped.stdout
    assert checked(run([venv.command, "--help"], tmp_path)).stdout == helped.stdout

    probe = (
        "import importlib.util, pygatewayworker as p\n"
        "from pygatewayworker import Gateway, BusinessWorker, Register, PushAPI, api, context\n"
        "from pygatewayworker import GatewayClient, AsyncGatewayClient, ConnectRequest\n"
        "print(p.__file__)\n"
        "print([n for n in ('gateway', 'register', 'cluster', 'apps', 'businessworker')\n"
        "       if importlib.util.find_spec(n)])\n"
    )
    lines = checked(run([venv.python, "-c", probe], tmp_path)).stdout.splitlines()
    assert lines[0] == str(venv.site_packages / "pygatewayworker" / "__init__.py")
    assert lines[1] == "[]"  # no role is importable at the top level


# ---- a user's project -------------------------------------------------------------------


@dataclass
class Project:
    root: Path
    venv: Venv
    register_port: int
    public_port: int
    start_port: int

    def gw(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run([self.venv.command, *args], self.root)

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    def pids(self) -> list[int]:
        with contextlib.suppress(OSError, ValueError):
            state = json.loads((self.run_dir / "state.json").read_text())
            pids = [state["master"].get("pid")] + [p.get("pid") for p in state["processes"]]
            return [p for p in pids if p]
        return []


@pytest.fixture
def project(venv: Venv, tmp_path: Path) -> Iterator[Project]:
    root = tmp_path / "project"
    for name, text in USER_PACKAGES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    base = reserve_ports(4)
    made = Project(root, venv, base, base + 1, base + 2)
    seen: set[int] = set()
    yield made
    seen.update(made.pids())
    if seen:
        made.gw("stop", "--timeout", "10")
    for pid in seen:
        with contextlib.suppress(ProcessLookupError):
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


async def test_new_start_chat_status_stop_in_a_project_with_generic_packages(
    project: Project,
) -> None:
    created = project.gw(
        "new",
        "myapp",
        "--listen",
        f"127.0.0.1:{project.public_port}",
        "--register-port",
        str(project.register_port),
        "--start-port",
        str(project.start_port),
    )
    checked(created)
    app = project.root / "apps" / "myapp"
    assert f"created {app}/" in created.stdout
    assert not (project.root / "apps" / "__init__.py").exists()  # left as the user had it
    events = app / "Events.py"
    source = events.read_text()
    echo = "        api.send_to_current_client(message)\n"
    assert source.count(echo) == 1 and source.startswith('"""')
    source = source.replace("import json\n", "import json\n\n" + USER_IMPORTS, 1)
    events.write_text(source.replace(echo, WHOAMI + echo))

    started = await asyncio.to_thread(project.gw, "start", "-d")
    checked(started)
    names = ["myapp.MyappRegister.0", "myapp.MyappGateway.0", "myapp.MyappGateway.1"]
    names += ["myapp.MyappBusinessWorker.0", "myapp.MyappBusinessWorker.1"]
    assert all(name in started.stdout for name in names), started.stdout
    assert (project.run_dir / "gatewayworker.pid").is_file()  # ./run of the project

    async with connect(f"ws://127.0.0.1:{project.public_port}/", open_timeout=10) as ws:
        init = await recv_json(ws, 10)
        assert init["type"] == "init" and len(init["client_id"]) == 20, init
        await ws.send("hello there")
        assert await asyncio.wait_for(ws.recv(), 10) == "hello there"
        await ws.send(b"\x00\x01bin")
        assert await asyncio.wait_for(ws.recv(), 10) == b"\x00\x01bin"
        await ws.send("whoami")
        mine = await recv_json(ws, 10)
    assert mine["welcome"] == f"signed up {init['client_id']}"
    assert (mine["home"], mine["nodes"]) == ("/home", ["node-a", "node-b"])
    assert mine["greeting"] == "hello from the project's apps/"
    assert [Path(f).parent.parent for f in mine["files"]] == [project.root] * 4, mine["files"]

    status = await asyncio.to_thread(project.gw, "status")
    checked(status)
    for name in names:
        assert any(name in line and " running " in line for line in status.stdout.splitlines()), (
            status.stdout
        )

    pids = project.pids()
    stopped = await asyncio.to_thread(project.gw, "stop")
    checked(stopped)
    assert stopped.stdout.strip().endswith("stopped")
    assert not any(pid_alive(p) for p in pids)
    ports = [project.register_port, project.public_port, project.start_port, project.start_port + 1]
    assert wait_ports_free(ports) == []

    looked = f"not running (looked in {project.run_dir})"
    again = project.gw("stop")
    assert again.returncode == 0 and looked in again.stdout, again
    status = project.gw("status")
    assert status.returncode == 1 and looked in status.stderr, status
    log = (project.run_dir / "gatewayworker.log").read_text()
    assert " myapp.MyappBusinessWorker.0 INFO " in log and " master INFO " in log
