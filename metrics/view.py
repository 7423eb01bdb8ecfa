"""One look at the cluster: the master's ``state.json`` and the children's stats files.

:meth:`ClusterView.read` is the only I/O; everything built on a view (metrics,
health, the operator page's data) is a pure function of it, tested with plain dicts.

A stats file counts only when it was written by the slot's *current* pid: after a
respawn or a reload the previous process's file is stale (its counters belong to a
process that is gone; Prometheus sees the new process's counters start again from
zero, which ``rate()`` handles as a counter reset).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from pygatewayworker.cluster.state import RunPaths, read_json, read_stats
from pygatewayworker.runtime.footprint import rss_bytes

__all__ = ["ClusterView", "process_labels", "MASTER_LABELS"]

MASTER_LABELS = {"app": "", "role": "master", "index": "0"}


def process_labels(proc: dict[str, Any]) -> dict[str, str]:
    """The labels of one process slot: ``app``, ``role``, ``index`` (all bounded by the
    declarations: never a client_id, uid or group)."""
    return {
        "app": str(proc.get("app", "")),
        "role": str(proc.get("role", "")),
        "index": str(proc.get("index", 0)),
    }


@dataclass(slots=True)
class ClusterView:
    """``state.json`` and the current processes' stats, read at one moment."""

    state: dict[str, Any]
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Process name -> its stats snapshot (only those of the current pid)."""
    now: float = 0.0
    master_rss: int = 0

    @classmethod
    def read(cls, paths: RunPaths) -> ClusterView:
        """Read the run directory now (missing or unreadable files: empty)."""
        state = read_json(paths.state_file)
        if not isinstance(state, dict):
            state = {}
        current = {p.get("name"): p.get("pid") for p in state.get("processes", [])}
        stats = {
            name: snap
            for name, snap in read_stats(paths.stats_dir).items()
            if current.get(name) is not None and snap.get("pid") == current[name]
        }
        master_pid = state.get("master", {}).get("pid")
        rss = rss_bytes(master_pid) if master_pid else 0
        return cls(state, stats, time.time(), rss)

    @property
    def master(self) -> dict[str, Any]:
        return dict(self.state.get("master", {}))

    @property
    def processes(self) -> list[dict[str, Any]]:
        """Every process slot of ``state.json`` (the master's view)."""
        return list(self.state.get("processes", []))

    def stats_of(self, proc: dict[str, Any]) -> dict[str, Any]:
        """The stats snapshot of ``proc``'s current process (``{}``: none yet)."""
        return self.stats.get(str(proc.get("name")), {})

    def fresh(self, proc: dict[str, Any], within: float) -> bool:
        """Whether ``proc``'s current process wrote its stats in the last ``within`` s."""
        updated = self.stats_of(proc).get("updated_at")
        return isinstance(updated, int | float) and self.now - updated <= within
