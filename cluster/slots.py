"""Process slots: the master's bookkeeping, with no I/O.

A :class:`Slot` is one place in the plan (``chat.gateway.1``): its declaration, its
listening sockets (bound once by the master and handed to every process that ever
fills the slot), and the processes that fill it. Normally one child is ``current``;
during a reload a ``replacement`` boots beside it and the old one is ``retiring``
until it has exited. A slot whose child died waits for ``respawn_at`` (growing
delays when the child keeps dying, :func:`respawn_delay`).
"""

from __future__ import annotations

import signal
import socket
from dataclasses import dataclass, field
from typing import Any

from pygatewayworker.cluster.apps import Declaration
from pygatewayworker.runtime.spec import ChildSpec, ExitCode

__all__ = [
    "Child",
    "Slot",
    "respawn_delay",
    "describe_exit",
    "STABLE_AFTER",
    "MAX_RESPAWN_DELAY",
]

STABLE_AFTER = 60.0
"""A child that stayed up this long (seconds) resets its slot's failure count."""
MAX_RESPAWN_DELAY = 30.0


def respawn_delay(failures: int) -> float:
    """Seconds to wait before respawning after ``failures`` quick deaths in a row:
    0 for the first, then 1, 2, 4 ... capped at :data:`MAX_RESPAWN_DELAY`."""
    if failures <= 1:
        return 0.0
    return min(MAX_RESPAWN_DELAY, float(2 ** (failures - 2)))


def describe_exit(code: int) -> str:
    """Say how a child ended, from :func:`os.waitstatus_to_exitcode`'s result."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by signal {-code} ({name})"
    try:
        meaning = ExitCode(code).name
    except ValueError:
        return f"exited with code {code}"
    return f"exited with code {code} ({meaning})"


@dataclass(slots=True)
class Child:
    """One forked process."""

    pid: int
    generation: int
    started_at: float
    """Wall clock (for display)."""
    started_mono: float
    """Monotonic clock (for uptime arithmetic)."""
    ready: bool = False
    error: str = ""
    """What the child reported with ``notify_error``."""
    stopping: bool = False
    """The master asked it to stop: its exit is expected."""
    exit_reason: str = ""


@dataclass(slots=True)
class Slot:
    """One process place of the plan; see the module docstring."""

    decl: Declaration
    index: int
    sockets: dict[str, socket.socket] = field(default_factory=dict)
    current: Child | None = None
    replacement: Child | None = None
    retiring: Child | None = None
    restarts: int = 0
    failures: int = 0
    respawn_at: float | None = None
    last_exit: str = ""
    name: str = ""
    addresses: dict[str, str] = field(default_factory=dict)
    """What this slot offers (listen/public/internal/url/page/events), for ``start``'s
    summary and ``connections``; fixed once the sockets are bound."""

    def __post_init__(self) -> None:
        self.name = ChildSpec(self.decl.role, self.decl.config, self.index).name
        self.addresses = self._addresses()

    @property
    def role(self) -> str:
        return self.decl.role

    def children(self) -> list[Child]:
        """Every live process of this slot."""
        return [c for c in (self.current, self.replacement, self.retiring) if c is not None]

    def status(self) -> str:
        """``running``, ``starting``, ``respawning`` or ``down``."""
        if self.current is not None:
            return "running" if self.current.ready else "starting"
        return "respawning" if self.respawn_at is not None else "down"

    def _addresses(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for key, sock in self.sockets.items():
            host, port = sock.getsockname()[:2]
            out[key] = f"{host}:{port}"
        config = self.decl.config
        if self.role == "gateway":
            out.setdefault("internal", config.internal_address(self.index))
            out["advertised"] = f"{config.lan_ip}:{out['internal'].rpartition(':')[2]}"
            public = out.get("public", config.listen.split("://", 1)[-1])
            host, _, port = public.rpartition(":")
            out["url"] = f"ws://{public}"
            if config.static_dir:
                page_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
                out["page"] = f"http://{page_host}:{port}/"
        elif self.role == "businessworker":
            out["events"] = config.events
        elif self.role == "metrics":
            out["url"] = f"http://{out.get('listen', config.listen)}/metrics"
        elif self.role in ("pushapi", "pusherapi"):
            out.setdefault("listen", config.listen.split("://", 1)[-1])
            out["url"] = f"http://{out['listen']}/"
        return out

    def snapshot(self) -> dict[str, Any]:
        """This slot as a JSON-able dict (``state.json``)."""
        child = self.current
        return {
            "name": self.name,
            "app": self.decl.app,
            "role": self.role,
            "decl": self.decl.name,
            "index": self.index,
            "pid": child.pid if child else None,
            "generation": child.generation if child else None,
            "started_at": child.started_at if child else None,
            "status": self.status(),
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "addresses": self.addresses,
            "other_pids": [c.pid for c in (self.replacement, self.retiring) if c is not None],
        }
