"""The master in an interpreter of its own: ``start`` hands over to it with ``exec``.

Why
---
The master forks every child, so whatever the master has imported every child has
too (docs/memory.md). The command line that parses ``start`` imports click and the
command modules, which no role uses; a master that simply ran on in that process
passed them to every child (about 2 MiB of RSS each). So once ``start`` has checked
the apps and the overrides (and reported what is wrong, as a command should), it
replaces itself with a fresh interpreter running :func:`main`, which loads only what
the master needs, discovers the apps again and runs the master.

How
---
:func:`exec_master` (in the command's process) pickles a :class:`BootOrder` (the
apps to run, the overrides, the master's options, the command's ``sys.path``, and
for ``start -d`` the pipe the daemon reports on) into an anonymous memory file,
and ``exec``\\s ``python -m pygatewayworker.cluster <the command's arguments>``
with that file's descriptor in ``GATEWAYWORKER_BOOT_FD``. The arguments are only
there for ``ps``: the master's command line still names the command and its apps
and run directories. The order goes through a file descriptor, not the environment
or the arguments, because the overrides may hold the cluster secret. The
interpreter keeps the command's flags (``-X``, ``-O`` ...); the package's own
directory is put on ``PYTHONPATH`` for the ``exec`` only (a checkout run without
installing), and the order restores the command's ``PYTHONPATH`` and ``sys.path``
before anything of the apps is imported.

In the foreground the terminal, the process id and Ctrl-C stay the command's; with
``start -d`` the daemon (``cluster.daemon``) is the process that ``exec``\\s.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from dataclasses import dataclass
from typing import NoReturn

from pygatewayworker.cluster.apps import AppError, discover
from pygatewayworker.cluster.daemon import ConsoleReporter, PipeReporter
from pygatewayworker.cluster.master import Master, MasterOptions, Reporter
from pygatewayworker.cluster.overrides import OverrideError, Overrides, apply_overrides

__all__ = ["BootOrder", "exec_master", "main"]

BOOT_FD_ENV = "GATEWAYWORKER_BOOT_FD"
MODULE = "pygatewayworker.cluster"
"""Run with ``-m``: its ``__main__`` calls :func:`main` (``-m`` on this module would
load it twice, as ``__main__`` and under its name, and the order's class would be
the other copy's)."""


@dataclass(slots=True)
class BootOrder:
    """What the exec'd master needs to run what ``start`` checked."""

    apps_dir: str
    app: str | None
    overrides: Overrides
    options: MasterOptions
    sys_path: list[str]
    pythonpath: str | None
    """The command's ``PYTHONPATH`` (``None``: unset), restored in the master."""
    report_fd: int | None = None
    """``start -d``: the pipe the daemon reports on (``None``: the terminal)."""


def _package_root() -> str:
    """The directory holding the ``pygatewayworker`` package."""
    import pygatewayworker

    return os.path.dirname(os.path.dirname(os.path.abspath(pygatewayworker.__file__)))


def exec_master(order: BootOrder, argv: list[str]) -> NoReturn:
    """Replace this process with the master (see the module docstring). ``argv``:
    the command's arguments, shown on the master's command line. Raises ``OSError``
    when the ``exec`` fails."""
    fd = os.memfd_create("gatewayworker-boot")
    os.write(fd, pickle.dumps(order))
    os.lseek(fd, 0, os.SEEK_SET)
    os.set_inheritable(fd, True)
    if order.report_fd is not None:
        os.set_inheritable(order.report_fd, True)
    env = dict(os.environ)
    env[BOOT_FD_ENV] = str(fd)
    paths = [_package_root()] + ([order.pythonpath] if order.pythonpath else [])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    flags = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.execve(sys.executable, [sys.executable, *flags, "-m", MODULE, *argv], env)


def _read_order() -> BootOrder:
    fd = int(os.environ.pop(BOOT_FD_ENV))
    with os.fdopen(fd, "rb") as file:
        order = pickle.load(file)
    if not isinstance(order, BootOrder):
        raise TypeError(f"{BOOT_FD_ENV} holds a {type(order).__name__}, not a BootOrder")
    return order


def main() -> int:
    """The master's entry point after ``exec``: run what the order says."""
    if BOOT_FD_ENV not in os.environ:
        print("the master is started by `gatewayworker start` (or start.py start)", file=sys.stderr)
        return 2
    order = _read_order()
    if order.pythonpath is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = order.pythonpath
    sys.path[:] = order.sys_path
    reporter: Reporter = (
        ConsoleReporter() if order.report_fd is None else PipeReporter(order.report_fd)
    )
    try:
        plan = apply_overrides(discover(order.apps_dir, order.app), order.overrides)
    except (AppError, OverrideError) as exc:  # the apps changed since start checked them
        reporter.failed(f"cannot start: {exc}")
        return 1
    return Master(plan, order.options, reporter).run()
