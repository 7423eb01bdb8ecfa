"""App discovery: read the declarations of every app, run nothing else.

An app is a directory ``<apps_dir>/<name>/`` holding one or more ``start*.py`` files
(``start_register.py``, ``start_gateway.py``, ``start_businessworker.py`` in the
original's layout). Each start file is executed with :func:`runpy.run_path` (under
the module name ``__gatewayworker_start__``, so an ``if __name__ == "__main__":``
block in it does not run) and every module-level instance of
:class:`register.Register`, :class:`gateway.Gateway` or
:class:`businessworker.BusinessWorker` it leaves behind becomes a
:class:`Declaration` of that app. Start files import declarations only: a
business worker names its Events class by import string, which only worker
processes import.

Import strings and the apps directory
-------------------------------------
The apps directory is a Python package named after the directory itself (``apps``,
or any other identifier; ``__init__.py`` files are optional), so
``"apps.chat.Events:Events"`` means ``<apps_dir>/chat/Events.py``. To make that
resolve to *this* apps directory, :func:`discover` puts its parent (the project root
of that copy) first on ``sys.path``; children inherit that through the fork.

An import string that starts with a dot is relative to its app's folder:
``events=".Events:Events"`` in ``<apps_dir>/chat/start_businessworker.py`` is
resolved to ``"<apps dir name>.chat.Events:Events"``, so an app keeps working when
the apps folder is renamed or moved (``gatewayworker new`` writes this form).

Custom runtimes
---------------
Each role's runtime is ``serve(spec) -> int`` in ``register.server``,
``gateway.server`` or ``businessworker.worker``. A subclass of a declaration may set
a class attribute ``runtime = "package.module:function"`` to run another function
(tests use this for fake roles); it is imported only in the child.
"""

from __future__ import annotations

import os
import runpy
import sys
import traceback
from dataclasses import dataclass, field
from dataclasses import replace as replace_field
from typing import Any

from pygatewayworker.businessworker.config import BusinessWorker
from pygatewayworker.gateway.config import Gateway
from pygatewayworker.pushapi.config import PushAPI
from pygatewayworker.pusher.config import PusherAPI
from pygatewayworker.register.config import Register

__all__ = [
    "ROLES",
    "DEFAULT_RUNTIMES",
    "AppError",
    "Declaration",
    "AppsPlan",
    "discover",
    "list_start_files",
    "role_of",
]

ROLES: tuple[tuple[str, type], ...] = (
    ("register", Register),
    ("gateway", Gateway),
    ("businessworker", BusinessWorker),
    ("pushapi", PushAPI),
    ("pusherapi", PusherAPI),
)
"""Every role, in boot order, with its declaration class."""

DEFAULT_RUNTIMES = {
    "register": "pygatewayworker.register.server:serve",
    "gateway": "pygatewayworker.gateway.server:serve",
    "businessworker": "pygatewayworker.businessworker.worker:serve",
    "pushapi": "pygatewayworker.pushapi.server:serve",
    "pusherapi": "pygatewayworker.pusher.server:serve",
}

START_RUN_NAME = "__gatewayworker_start__"


class AppError(Exception):
    """The apps directory or a start file is unusable; the message says where."""


def role_of(obj: object) -> str | None:
    """The role of a declaration object, or None if it is not one."""
    for role, cls in ROLES:
        if isinstance(obj, cls):
            return role
    return None


@dataclass(slots=True, frozen=True)
class Declaration:
    """One declaration found in a start file."""

    app: str
    role: str
    config: Any
    source: str
    runtime: str

    @property
    def name(self) -> str:
        """The declaration's ``name`` (e.g. ``gateway``)."""
        return str(self.config.name)

    @property
    def count(self) -> int:
        """How many processes it runs."""
        return int(self.config.count)


@dataclass(slots=True)
class AppsPlan:
    """Everything the master will run: declarations in boot order."""

    apps_dir: str
    declarations: list[Declaration] = field(default_factory=list)
    start_files: list[str] = field(default_factory=list)
    """Every start file read, so that ``reload`` can tell which appeared since."""

    @property
    def apps(self) -> list[str]:
        """App names, sorted, each once."""
        return sorted({d.app for d in self.declarations})

    def by_role(self, role: str) -> list[Declaration]:
        """The declarations of ``role``."""
        return [d for d in self.declarations if d.role == role]


def discover(apps_dir: str, only: str | None = None) -> AppsPlan:
    """Read every app under ``apps_dir`` (or only the app named ``only``).

    Raises :class:`AppError` naming the directory or start file at fault.
    """
    apps_dir = os.path.abspath(apps_dir)
    if not os.path.isdir(apps_dir):
        raise AppError(f"apps directory {apps_dir} does not exist")
    _put_first_on_path(os.path.dirname(apps_dir))
    found = _app_dirs(apps_dir)
    if not found:
        raise AppError(f"no apps in {apps_dir}: expected {apps_dir}/<name>/start*.py")
    if only is not None:
        if only not in found:
            raise AppError(f"no app named {only!r} in {apps_dir}; apps: {', '.join(found)}")
        found = {only: found[only]}
    plan = AppsPlan(apps_dir)
    for app, start_files in found.items():
        plan.start_files.extend(start_files)
        plan.declarations.extend(_read_app(app, start_files))
    _check_unique_names(plan.declarations)
    role_order = {role: i for i, (role, _) in enumerate(ROLES)}
    plan.declarations.sort(key=lambda d: role_order[d.role])  # stable: file order kept
    return plan


def list_start_files(apps_dir: str, only: str | None = None) -> list[str]:
    """The start files under ``apps_dir`` now (of the app ``only``, if given); reads
    no file. Missing or unusable directories give ``[]``."""
    try:
        found = _app_dirs(os.path.abspath(apps_dir))
    except (AppError, OSError):
        return []
    return sorted(p for app, paths in found.items() if only in (None, app) for p in paths)


def _put_first_on_path(directory: str) -> None:
    if directory in sys.path:
        sys.path.remove(directory)
    sys.path.insert(0, directory)


def _app_dirs(apps_dir: str) -> dict[str, list[str]]:
    """``{app name: [start file paths, sorted]}`` for every app directory."""
    out: dict[str, list[str]] = {}
    for name in sorted(os.listdir(apps_dir)):
        path = os.path.join(apps_dir, name)
        if name.startswith((".", "_")) or not os.path.isdir(path):
            continue
        starts = sorted(
            os.path.join(path, f)
            for f in os.listdir(path)
            if f.startswith("start") and f.endswith(".py")
        )
        if starts:
            if not name.isidentifier():
                raise AppError(f"app directory {path}: {name!r} is not a valid package name")
            out[name] = starts
    return out


def _read_app(app: str, start_files: list[str]) -> list[Declaration]:
    out: list[Declaration] = []
    for path in start_files:
        out.extend(_read_start_file(app, path))
    if not out:
        raise AppError(
            f"app {app!r}: its start files ({', '.join(os.path.basename(p) for p in start_files)}) "
            "declare no Register, Gateway or BusinessWorker"
        )
    return out


def _read_start_file(app: str, path: str) -> list[Declaration]:
    try:
        namespace = runpy.run_path(path, run_name=START_RUN_NAME)
    except SystemExit as exc:
        raise AppError(f"{path}: exited while being read (SystemExit {exc.code})") from None
    except BaseException as exc:
        raise AppError(f"{path}{_line_of(exc, path)}: {type(exc).__name__}: {exc}") from None
    out: list[Declaration] = []
    seen: set[int] = set()
    for value in namespace.values():
        role = role_of(value)
        if role is None or id(value) in seen:
            continue
        seen.add(id(value))
        value.app = app
        if role in ("businessworker", "pusherapi") and value.events.startswith("."):
            value = _resolve_relative_events(value, app, path)
        runtime = getattr(type(value), "runtime", None) or DEFAULT_RUNTIMES[role]
        out.append(Declaration(app, role, value, path, str(runtime)))
    return out


def _resolve_relative_events(worker: Any, app: str, path: str) -> Any:
    """``".Events:Events"`` -> ``"<apps dir name>.<app>.Events:Events"``."""
    package = os.path.basename(os.path.dirname(os.path.dirname(path)))
    if not package.isidentifier():
        raise AppError(
            f"{path}: events={worker.events!r} is relative to the apps folder, whose "
            f"name {package!r} is not a valid package name; rename the folder or give "
            "a full import string"
        )
    return replace_field(worker, events=f"{package}.{app}{worker.events}", app=app)


def _line_of(exc: BaseException, path: str) -> str:
    """``" line N"`` of the innermost frame of ``path`` in ``exc``'s traceback."""
    if isinstance(exc, SyntaxError) and exc.lineno:
        return f" line {exc.lineno}"
    line = 0
    for frame in traceback.extract_tb(exc.__traceback__):
        if os.path.abspath(frame.filename) == path and frame.lineno:
            line = frame.lineno
    return f" line {line}" if line else ""


def _check_unique_names(declarations: list[Declaration]) -> None:
    """Process names (``app.name.index``) name stats files and log lines: unique."""
    first: dict[tuple[str, str], Declaration] = {}
    for decl in declarations:
        key = (decl.app, decl.name)
        other = first.setdefault(key, decl)
        if other is not decl:
            raise AppError(
                f"app {decl.app!r}: two declarations are named {decl.name!r} "
                f"({other.source} and {decl.source}); give each a distinct name="
            )
