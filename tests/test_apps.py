"""cluster.apps: discovering declarations from start files."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pygatewayworker.businessworker import BusinessWorker
from pygatewayworker.cluster.apps import DEFAULT_RUNTIMES, AppError, discover, list_start_files
from pygatewayworker.gateway import Gateway
from pygatewayworker.register import Register


@pytest.fixture(autouse=True)
def keep_sys_path() -> Iterator[None]:
    saved = list(sys.path)
    yield
    sys.path[:] = saved


def write_app(apps: Path, name: str, files: dict[str, str]) -> Path:
    directory = apps / name
    directory.mkdir(parents=True)
    for file_name, text in files.items():
        (directory / file_name).write_text(text)
    return directory


CHAT = {
    "start_register.py": "from pygatewayworker import Register\nr = Register(listen='127.0.0.1:1238')\n",
    "start_gateway.py": (
        "from pygatewayworker import Gateway\n"
        "gw = Gateway(listen='0.0.0.0:7272', count=3)\n"
        "same = gw  # one object, one declaration\n"
        "if __name__ == '__main__':\n"
        "    raise SystemExit('a start file main block must not run')\n"
    ),
    "start_businessworker.py": (
        "from pygatewayworker import BusinessWorker\n"
        "w = BusinessWorker(events='apps.chat.Events:Events', count=2)\n"
    ),
    "Events.py": "raise RuntimeError('the master must never import Events')\n",
}


def test_discovers_every_declaration_in_boot_order(tmp_path: Path) -> None:
    apps = tmp_path / "apps"
    write_app(apps, "chat", CHAT)
    (apps / "__pycache__").mkdir()
    write_app(apps, "notes", {"README.txt": "no start file: not an app"})
    plan = discover(str(apps))
    assert plan.apps == ["chat"]
    assert plan.apps_dir == str(apps)
    assert [d.role for d in plan.declarations] == ["register", "gateway", "businessworker"]
    register, gateway, worker = (d.config for d in plan.declarations)
    assert isinstance(register, Register) and isinstance(gateway, Gateway)
    assert isinstance(worker, BusinessWorker)
    assert all(d.config.app == "chat" for d in plan.declarations)
    assert [d.count for d in plan.declarations] == [1, 3, 2]
    assert plan.declarations[1].runtime == DEFAULT_RUNTIMES["gateway"]
    assert plan.declarations[1].source.endswith("start_gateway.py")
    assert sys.path[0] == str(tmp_path)  # "apps.chat..." resolves to this copy


def test_only_one_app_and_unknown_app(tmp_path: Path) -> None:
    apps = tmp_path / "apps"
    write_app(apps, "chat", CHAT)
    write_app(apps, "other", {"start.py": "from pygatewayworker import Register\nr = Register()\n"})
    assert discover(str(apps)).apps == ["chat", "other"]
    assert discover(str(apps), only="other").apps == ["other"]
    with pytest.raises(AppError, match="no app named 'nope'.*chat, other"):
        discover(str(apps), only="nope")


def test_custom_runtime_from_a_subclass(tmp_path: Path) -> None:
    apps = tmp_path / "apps"
    write_app(
        apps,
        "x",
        {
            "start.py": (
                "from pygatewayworker import Register\n"
                "class Mine(Register):\n"
                "    runtime = 'my.module:serve'\n"
                "r = Mine()\n"
            )
        },
    )
    (decl,) = discover(str(apps)).declarations
    assert decl.role == "register" and decl.runtime == "my.module:serve"


def test_errors_name_the_start_file_and_line(tmp_path: Path) -> None:
    apps = tmp_path / "apps"
    write_app(
        apps,
        "bad",
        {
            "start_gateway.py": "from pygatewayworker import Gateway\n\ngw = Gateway(lan_ip='0.0.0.0')\n"
        },
    )
    with pytest.raises(AppError) as info:
        discover(str(apps))
    message = str(info.value)
    assert "bad/start_gateway.py line 3: ConfigError: Gateway lan_ip" in message


def test_syntax_error_and_exit_in_a_start_file(tmp_path: Path) -> None:
    apps = tmp_path / "apps"
    write_app(apps, "s", {"start.py": "x = (\n"})
    with pytest.raises(AppError, match=r"s/start.py line \d+: SyntaxError"):
        discover(str(apps))
    apps2 = tmp_path / "other" / "apps"
    write_app(apps2, "e", {"start.py": "raise SystemExit(2)\n"})
    with pytest.raises(AppError, match="exited while being read"):
        discover(str(apps2))


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"start.py": "x = 1\n"}, "declare no Register, Gateway or BusinessWorker"),
        (
            {
                "start_a.py": "from pygatewayworker import Register\nr = Register()\n",
                "start_b.py": "from pygatewayworker import Register\nr = Register(listen='127.0.0.1:2')\n",
            },
            "two declarations are named 'register'",
        ),
    ],
)
def test_unusable_apps(tmp_path: Path, files: dict[str, str], message: str) -> None:
    apps = tmp_path / "apps"
    write_app(apps, "a", files)
    with pytest.raises(AppError, match=message):
        discover(str(apps))


def worker_file(events: str) -> dict[str, str]:
    return {
        "start_businessworker.py": (
            f"from pygatewayworker import BusinessWorker\nw = BusinessWorker(events={events!r})\n"
        )
    }


def test_relative_events_strings_name_the_apps_folder_and_the_app(tmp_path: Path) -> None:
    apps = tmp_path / "my_services"
    write_app(apps, "shop", worker_file(".handlers.events:Events"))
    write_app(apps, "chat", worker_file("elsewhere.Events:Events"))  # absolute: kept
    plan = discover(str(apps))
    events = {d.app: d.config.events for d in plan.declarations}
    assert events == {
        "shop": "my_services.shop.handlers.events:Events",
        "chat": "elsewhere.Events:Events",
    }
    assert sorted(plan.start_files) == sorted(
        str(apps / app / "start_businessworker.py") for app in ("chat", "shop")
    )
    assert sys.path[0] == str(tmp_path)  # "my_services" is importable from the workers


def test_relative_events_in_a_folder_that_is_no_package_name(tmp_path: Path) -> None:
    apps = tmp_path / "my-apps"
    write_app(apps, "shop", worker_file(".Events:Events"))
    with pytest.raises(AppError) as info:
        discover(str(apps))
    message = str(info.value)
    assert str(apps / "shop" / "start_businessworker.py") in message
    assert "'my-apps' is not a valid package name" in message and "rename the folder" in message


def test_list_start_files(tmp_path: Path) -> None:
    apps = tmp_path / "apps"
    write_app(apps, "a", {"start_x.py": "", "start_y.py": "", "Events.py": "", "notes.txt": ""})
    write_app(apps, "b", {"start.py": ""})
    write_app(apps, "_private", {"start.py": ""})
    write_app(apps, "no_start", {"Events.py": ""})
    assert list_start_files(str(apps)) == [
        str(apps / "a" / "start_x.py"),
        str(apps / "a" / "start_y.py"),
        str(apps / "b" / "start.py"),
    ]
    assert list_start_files(str(apps), "b") == [str(apps / "b" / "start.py")]
    assert list_start_files(str(tmp_path / "nowhere")) == []


def test_missing_or_empty_apps_dir(tmp_path: Path) -> None:
    with pytest.raises(AppError, match="does not exist"):
        discover(str(tmp_path / "nowhere"))
    (tmp_path / "apps").mkdir()
    with pytest.raises(AppError, match="no apps in"):
        discover(str(tmp_path / "apps"))


def test_the_real_chat_app_is_discoverable() -> None:
    root = Path(__file__).resolve().parent.parent
    if not (root / "apps" / "chat").is_dir():
        pytest.skip("apps/chat is not there yet")
    plan = discover(str(root / "apps"), only="chat")
    assert {d.role for d in plan.declarations} == {"register", "gateway", "businessworker"}
