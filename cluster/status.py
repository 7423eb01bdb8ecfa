"""What ``start``, ``status`` and ``connections`` print: pure functions of the state
file, the children's stats files and gateway answers (no I/O here)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "process_rows",
    "totals",
    "render_status",
    "render_summary",
    "render_connections",
    "human_bytes",
    "human_duration",
]


def human_bytes(value: Any) -> str:
    """``12.3M``; ``-`` when unknown."""
    if not isinstance(value, int | float) or value < 0:
        return "-"
    amount = float(value)
    for unit in ("B", "K", "M", "G"):
        if amount < 1024 or unit == "G":
            return f"{amount:.0f}{unit}" if unit == "B" else f"{amount:.1f}{unit}"
        amount /= 1024
    return "-"


def human_duration(seconds: Any) -> str:
    """``45s``, ``12m03s``, ``5h02m``, ``3d04h``; ``-`` when unknown."""
    if not isinstance(seconds, int | float) or seconds < 0:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value) if isinstance(value, int) else "-"


def process_rows(
    state: dict[str, Any], stats: dict[str, dict[str, Any]], now: float, master_rss: int
) -> list[dict[str, Any]]:
    """One row per process (the master first) from ``state.json`` and the stats files.

    A stats file counts only if it was written by the slot's current pid (after a
    respawn or a reload the previous process's file is stale). ``connections`` is
    what the process holds: client connections for a gateway, gateway and worker
    connections for a register, gateway links for a business worker.
    """
    master = state.get("master", {})
    rows: list[dict[str, Any]] = [
        {
            "pid": master.get("pid"),
            "role": "master",
            "name": "master",
            "status": master.get("phase", ""),
            "memory": master_rss,
            "uptime": now - master["started_at"] if master.get("started_at") else None,
            "restarts": None,
        }
    ]
    for proc in state.get("processes", []):
        snap = stats.get(proc["name"], {})
        if snap.get("pid") != proc.get("pid"):
            snap = {}
        rate = [snap.get("messages_in_per_s"), snap.get("messages_out_per_s")]
        started = proc.get("started_at")
        rows.append(
            {
                "pid": proc.get("pid"),
                "role": proc["role"],
                "name": proc["name"],
                "status": proc.get("status", ""),
                "generation": proc.get("generation"),
                "memory": snap.get("rss"),
                "connections": snap.get("connections", snap.get("links")),
                "messages_in": snap.get("messages_in"),
                "messages_out": snap.get("messages_out"),
                "send_failures": snap.get("send_failures"),
                "msg_per_s": sum(r for r in rate if isinstance(r, int | float))
                if any(isinstance(r, int | float) for r in rate)
                else None,
                "uptime": now - started if started and proc.get("pid") else None,
                "restarts": proc.get("restarts", 0),
                "last_exit": proc.get("last_exit", ""),
                "stats": snap,
            }
        )
    return rows


def totals(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Cluster totals: memory of every process; client traffic of the gateways."""

    def total(key: str, role: str | None = None) -> float:
        return sum(
            r[key]
            for r in rows
            if isinstance(r.get(key), int | float) and (role is None or r["role"] == role)
        )

    return {
        "processes": sum(1 for r in rows if r.get("pid")),
        "memory": int(total("memory")),
        "connections": int(total("connections", "gateway")),
        "messages_in": int(total("messages_in", "gateway")),
        "messages_out": int(total("messages_out", "gateway")),
        "send_failures": int(total("send_failures")),
        "msg_per_s": round(total("msg_per_s", "gateway"), 2),
        "restarts": int(total("restarts")),
    }


_COLUMNS: list[tuple[str, str, Callable[[Any], str], bool]] = [
    # header, row key, formatter, right-aligned
    ("PID", "pid", lambda v: str(v) if v else "-", True),
    ("ROLE", "role", str, False),
    ("NAME", "name", str, False),
    ("STATUS", "status", str, False),
    ("MEM", "memory", human_bytes, True),
    ("CONNS", "connections", _number, True),
    ("MSG_IN", "messages_in", _number, True),
    ("MSG_OUT", "messages_out", _number, True),
    ("SEND_FAIL", "send_failures", _number, True),
    ("MSG/S", "msg_per_s", _number, True),
    ("UPTIME", "uptime", human_duration, True),
    ("RESTARTS", "restarts", _number, True),
]


def _table(headers: list[str], cells: list[list[str]], right: list[bool]) -> list[str]:
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]

    def line(values: list[str]) -> str:
        parts = [
            v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return [line(headers)] + [line(row) for row in cells]


def render_status(rows: Sequence[dict[str, Any]], sums: dict[str, Any]) -> str:
    """The ``status`` table and its summary line."""
    headers = [c[0] for c in _COLUMNS]
    cells = [[fmt(row.get(key)) for _, key, fmt, _ in _COLUMNS] for row in rows]
    lines = _table(headers, cells, [c[3] for c in _COLUMNS])
    lines.append(
        f"{sums['processes']} processes, memory {human_bytes(sums['memory'])}, "
        f"{sums['connections']} connections, messages in {sums['messages_in']} "
        f"out {sums['messages_out']}, {sums['msg_per_s']:g} msg/s, "
        f"send failures {sums['send_failures']}, restarts {sums['restarts']}"
    )
    for row in rows:
        if row.get("last_exit") and row.get("status") != "running":
            lines.append(f"{row['name']}: last exit: {row['last_exit']}")
    return "\n".join(lines)


def _where(proc: dict[str, Any]) -> str:
    addresses = proc.get("addresses", {})
    role = proc["role"]
    if role == "register":
        return f"listen {addresses.get('listen', '?')}"
    if role == "gateway":
        return f"public {addresses.get('url', '?')}  internal {addresses.get('internal', '?')}"
    if role == "pushapi":
        return f"http push api {addresses.get('url', '?')}"
    if role == "pusherapi":
        return f"pusher http api {addresses.get('url', '?')}"
    if role == "metrics":
        return f"metrics {addresses.get('url', '?')}"
    return f"events {addresses.get('events', '?')}"


def render_summary(state: dict[str, Any], foreground: bool = False) -> str:
    """What runs where, printed by ``start`` once everything is ready."""
    master = state.get("master", {})
    lines = [f"gatewayworker started: master pid {master.get('pid')}"]
    processes = state.get("processes", [])
    width = max([len(p["name"]) for p in processes] + [4])
    pages: list[str] = []
    for proc in processes:
        lines.append(f"  {proc['name']:<{width}}  pid {proc.get('pid') or '-':<7}  {_where(proc)}")
        page = proc.get("addresses", {}).get("page")
        if page and page not in pages:
            pages.append(page)
    for page in pages:
        lines.append(f"page: {page}")
    lines.append(f"log: {master.get('log_file', '?')}")
    if foreground:
        lines.append("Press Ctrl-C to stop.")
    return "\n".join(lines)


def render_connections(rows: Sequence[dict[str, Any]], errors: Sequence[str]) -> str:
    """The ``connections`` listing, one line per client connection."""
    headers = ["CLIENT_ID", "REMOTE", "GATEWAY", "UID", "GROUPS", "AGE", "BYTES_IN", "BYTES_OUT"]
    cells = [
        [
            str(r.get("client_id", "")),
            str(r.get("remote", "")),
            str(r.get("gateway", "")),
            "-" if r.get("uid") in (None, "") else str(r["uid"]),
            ",".join(str(g) for g in r.get("groups") or []) or "-",
            human_duration(r.get("age")),
            _number(r.get("bytes_in")),
            _number(r.get("bytes_out")),
        ]
        for r in rows
    ]
    right = [False] * 5 + [True] * 3
    lines = _table(headers, cells, right)
    lines.append(f"{len(rows)} connections")
    lines.extend(f"warning: {e}" for e in errors)
    return "\n".join(lines)
