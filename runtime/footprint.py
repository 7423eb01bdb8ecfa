"""What a process costs in memory and what it has imported, read from ``/proc`` and
``sys.modules``; no import of its own beyond ``os`` and ``sys``.

Every child puts :meth:`Imports.snapshot` in its stats file and the master puts it in
``state.json``, so ``status --json``, the ``RSS`` benchmark and the tests see which
third-party packages each role has loaded (a role must load only what it uses: see
docs/memory.md). :func:`memory` reads ``/proc/<pid>/smaps_rollup`` for the figures
that tell shared pages from private ones.
"""

from __future__ import annotations

import os
import sys
from typing import Any

__all__ = ["rss_bytes", "memory", "mapped_libraries", "trim_heap", "Imports", "loaded_packages"]

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes(pid: int | str = "self") -> int:
    """Resident memory of ``pid`` in bytes (0 if unknown)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return 0


def memory(pid: int | str = "self") -> dict[str, int]:
    """``rss``, ``pss`` and ``uss`` (private pages only) of ``pid`` in bytes, from
    ``/proc/<pid>/smaps_rollup`` (Linux 4.14+); empty when unreadable.

    RSS counts every page the process maps, so pages a forked child still shares
    with the master count in both; PSS divides each shared page among its sharers
    (the PSS of all processes sums to what they really use); USS is what would be
    freed if the process exited."""
    fields: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as fh:
            for line in fh:
                key, _, rest = line.partition(b":")
                parts = rest.split()
                if len(parts) == 2 and parts[1] == b"kB":
                    fields[key.decode()] = int(parts[0]) * 1024
    except (OSError, ValueError):
        return {}
    if "Rss" not in fields:
        return {}
    return {
        "rss": fields["Rss"],
        "pss": fields.get("Pss", 0),
        "uss": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
    }


def mapped_libraries(pid: int | str = "self") -> list[str]:
    """Paths of the shared objects ``pid`` maps (C extensions and the libraries they
    link), from ``/proc/<pid>/maps``; empty when unreadable."""
    found: set[str] = set()
    try:
        with open(f"/proc/{pid}/maps") as fh:
            for line in fh:
                parts = line.split(maxsplit=5)
                if len(parts) == 6 and ".so" in parts[5]:
                    found.add(parts[5].strip())
    except OSError:
        return []
    return sorted(found)


def trim_heap() -> None:
    """Hand the C heap's free pages back to the kernel (glibc's ``malloc_trim``).

    Importing leaves freed memory behind (the bytes of every ``.pyc`` read, the
    temporaries of module bodies); the allocator keeps it mapped, so it counts in
    RSS until reused. Called once a process has booted, and by the master before a
    fork so that no child inherits those pages. Not glibc: nothing to do."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - another C library
        pass


class Imports:
    """``sys.modules`` summed up: the module count, the top-level third-party
    packages loaded (not the standard library's, not ``pygatewayworker``'s) and the
    subpackages of ``pygatewayworker`` whose code is loaded (``gateway``,
    ``businessworker``...: a module of it other than its ``__init__`` and the
    declaration ``config``, which the master reads for every role).

    The package list is recomputed only when the module count changed, so taking a
    snapshot every second costs a ``len()`` once the process has settled."""

    __slots__ = ("_count", "_snapshot")

    def __init__(self) -> None:
        self._count = -1
        self._snapshot: dict[str, Any] = {}

    def snapshot(self) -> dict[str, Any]:
        """``{"modules": <count>, "packages": [...], "subpackages": [...]}``."""
        count = len(sys.modules)
        if count != self._count:
            self._count = count
            packages, ours = loaded_packages()
            self._snapshot = {"modules": count, "packages": packages, "subpackages": ours}
        return self._snapshot


def loaded_packages() -> tuple[list[str], list[str]]:
    """The sorted top-level names in ``sys.modules`` that are neither the standard
    library's nor ours (private helpers such as ``_cffi_backend`` left out), and the
    sorted subpackages of ``pygatewayworker`` with a module in it other than their
    ``__init__`` and ``config``."""
    stdlib = sys.stdlib_module_names
    names = list(sys.modules)
    top = {name.partition(".")[0] for name in names}
    packages = sorted(
        name
        for name in top
        if name not in stdlib
        and not name.startswith("_")
        and name not in ("pygatewayworker", "__main__", "cython_runtime")
    )
    prefix = "pygatewayworker."
    ours: set[str] = set()
    for name in names:
        if name.startswith(prefix):
            sub, _, module = name[len(prefix) :].partition(".")
            if module and module != "config":
                ours.add(sub)
    return packages, sorted(ours)
