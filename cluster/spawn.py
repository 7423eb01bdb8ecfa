"""The child's side of a fork: from the master's copy of memory to the role's ``serve``.

:func:`run_child` runs in the child right after ``os.fork()`` and never returns:
it resets what the child must not inherit (the master's signal handlers, pipes,
other children's sockets, the master's log file), points stdout and stderr at the
master's log pipe, imports the role's runtime (only now: the master never imports
it, which is why a reload picks up new code), calls ``serve(spec)`` and leaves with
``os._exit(code)`` so nothing of the master (atexit handlers, buffered output) runs
twice.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import signal
import socket
import sys
import traceback
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

from pygatewayworker.cluster.slots import Slot
from pygatewayworker.runtime.logs import configure_child_logging
from pygatewayworker.runtime.spec import ChildSpec, ExitCode

__all__ = ["run_child", "import_runtime"]

log = logging.getLogger("cluster")


def import_runtime(import_string: str) -> Callable[[ChildSpec], int]:
    """Resolve ``"package.module:function"``."""
    module_name, _, attr = import_string.partition(":")
    module = importlib.import_module(module_name)
    function = getattr(module, attr)
    if not callable(function):
        raise TypeError(f"{import_string} is not callable")
    return function  # type: ignore[no-any-return]


def run_child(slot: Slot, spec: ChildSpec, log_fd: int, closes: Iterable[Any]) -> NoReturn:
    """Become ``slot``'s process: prepare, import the runtime, serve, ``_exit``.

    ``log_fd`` becomes stdout and stderr; ``closes`` are the master's file
    descriptors and socket objects this child must not keep.
    """
    code: int = ExitCode.BOOT_ERROR
    try:
        _prepare(spec, log_fd, closes)
        try:
            serve = import_runtime(slot.decl.runtime)
        except Exception as exc:
            reason = f"cannot import {slot.decl.runtime}: {type(exc).__name__}: {exc}"
            log.error("%s", reason)
            spec.notify_error(reason)
        else:
            result = serve(spec)
            code = result if isinstance(result, int) else ExitCode.OK
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else ExitCode.ERROR
    except BaseException as exc:
        with contextlib.suppress(BaseException):
            traceback.print_exc()
            spec.notify_error(f"{type(exc).__name__}: {exc}")
        code = ExitCode.ERROR
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(BaseException):
                stream.flush()
        os._exit(code)


def _prepare(spec: ChildSpec, log_fd: int, closes: Iterable[Any]) -> None:
    signal.set_wakeup_fd(-1)
    # Until run_service installs its own handlers: TERM/QUIT end the process; INT is
    # the master's business (Ctrl-C reaches the whole process group); a USR2 or HUP
    # arriving while the child still imports must not kill it.
    for sig in (signal.SIGTERM, signal.SIGQUIT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)
    _redirect_stdio(log_fd)
    for item in closes:
        with contextlib.suppress(OSError):
            if isinstance(item, socket.socket):
                item.close()
            else:
                os.close(item)
    configure_child_logging(spec.name, level=spec.log_level, fmt=spec.log_format)
    _set_title(f"gatewayworker {spec.name}")


def _redirect_stdio(log_fd: int) -> None:
    """stdin from /dev/null, stdout and stderr to the master's log pipe."""
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]


def _set_title(title: str) -> None:
    try:
        import setproctitle  # type: ignore[import-not-found]
    except ImportError:
        return
    setproctitle.setproctitle(title)
