"""The operator page's data: the process table, the last reload and the recent past.

:class:`History` keeps one sample a second (client connections, messages in and out
per second, summed over the gateways) for ``history_seconds``, so the page's charts
show the last minutes as soon as it opens. :func:`ops_data` is the JSON the page
polls (``GET /ops/data``). Both are pure functions of a
:class:`~metrics.view.ClusterView`; the page itself is ``ops.html`` beside this file.
"""

from __future__ import annotations

from collections import deque
from importlib import resources
from typing import Any

from pygatewayworker.cluster.status import process_rows, totals
from pygatewayworker.metrics.view import ClusterView

__all__ = ["History", "ops_data", "page_html", "ROW_KEYS"]

ROW_KEYS = (
    "name",
    "role",
    "pid",
    "status",
    "generation",
    "memory",
    "connections",
    "msg_per_s",
    "uptime",
    "restarts",
    "last_exit",
)
"""What the page shows of each process row (``cluster.status.process_rows``)."""


def _gateway_sum(view: ClusterView, key: str) -> float:
    total = 0.0
    for proc in view.processes:
        value = view.stats_of(proc).get(key) if proc.get("role") == "gateway" else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            total += value
    return total


class History:
    """The last ``seconds`` of cluster-wide samples, one per :meth:`sample` call."""

    __slots__ = ("_samples",)

    def __init__(self, seconds: float, interval: float = 1.0) -> None:
        self._samples: deque[tuple[float, int, float, float]] = deque(
            maxlen=max(2, int(seconds / interval))
        )

    def sample(self, view: ClusterView) -> None:
        """Add the cluster's totals as ``view`` shows them."""
        self._samples.append(
            (
                round(view.now, 3),
                int(_gateway_sum(view, "connections")),
                round(_gateway_sum(view, "messages_in_per_s"), 2),
                round(_gateway_sum(view, "messages_out_per_s"), 2),
            )
        )

    def series(self) -> dict[str, list[float]]:
        """Columns: ``t`` (Unix time), ``connections``, ``messages_in``, ``messages_out``
        (per second)."""
        columns: dict[str, list[float]] = {
            "t": [],
            "connections": [],
            "messages_in": [],
            "messages_out": [],
        }
        for t, conns, rate_in, rate_out in self._samples:
            columns["t"].append(t)
            columns["connections"].append(conns)
            columns["messages_in"].append(rate_in)
            columns["messages_out"].append(rate_out)
        return columns


def ops_data(view: ClusterView, history: History) -> dict[str, Any]:
    """What ``GET /ops/data`` answers."""
    rows = process_rows(view.state, view.stats, view.now, view.master_rss)
    master = view.master
    return {
        "time": view.now,
        "master": {
            key: master.get(key)
            for key in ("pid", "phase", "generation", "started_at", "apps", "log_level")
        },
        "reload": view.state.get("reload", {}),
        "reloads": view.state.get("reloads", {}),
        "processes": [{key: row.get(key) for key in ROW_KEYS} for row in rows],
        "totals": totals(rows),
        "history": history.series(),
    }


def page_html() -> bytes:
    """The operator page (plain HTML and JavaScript; no build step, no CDN)."""
    return resources.files("pygatewayworker.metrics").joinpath("ops.html").read_bytes()
