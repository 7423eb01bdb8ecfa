"""RSS: the fixed memory of the shipped chat cluster, per process.

``python -m bench run --only RSS`` (also part of a full run): the shipped chat app
with its own start files (2 gateways with the chat page, 2 business workers, the
register; the metrics child off, as shipped), only its addresses moved to free
ports, started with ``start.py start -d``. Once every worker is linked to every
gateway and the cluster has been idle for ``settle`` seconds, each process is read:

- RSS, PSS and USS from ``/proc/<pid>/smaps_rollup``. The PHP original's 88 MiB is
  an RSS sum of forked processes, so the RSS sum is the figure compared with it; the
  PSS sum (shared pages divided among their sharers) is what the cluster really
  takes from the machine.
- the module count and the third-party packages loaded, from the process itself
  (the children's stats files, the master's ``state.json``: see
  ``pygatewayworker.runtime.footprint``), and the C extensions mapped, from
  ``/proc/<pid>/maps``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from dataclasses import dataclass
from typing import Any

from bench.cluster import APPS, BenchCluster, ClusterConfig
from bench.metrics import QUICK, Bench
from pygatewayworker.runtime.footprint import mapped_libraries, memory

__all__ = ["measure_rss", "rss_lines", "ShippedChatCluster", "WATCHED", "PHP_RSS_MIB"]

WATCHED = ("uvloop", "msgpack", "h11", "jwt", "prometheus_client", "websockets")
"""The dependencies whose presence is reported per process: the master and the
register use none of them, a gateway none but msgpack, uvloop and websockets' C
mask helper."""
PHP_RSS_MIB = 88.0
"""The PHP original's chat cluster (GatewayWorker 4, 2 gateways, 2 workers): RSS sum."""
MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class RssSizes:
    settle: float
    """Seconds the idle cluster runs before it is read (heartbeats, stats writes)."""


RSS_FULL = RssSizes(settle=5.0)
RSS_QUICK = RssSizes(settle=1.0)


class ShippedChatCluster(BenchCluster):
    """``apps/chat`` as shipped, its start files included; only the addresses change."""

    def _write_app(self) -> None:
        self.apps_dir.mkdir(parents=True)
        (self.apps_dir / "__init__.py").write_text("")
        dest = self.apps_dir / "chat"
        shutil.copytree(APPS["chat"], dest, ignore=shutil.ignore_patterns("__pycache__"))
        register = f"127.0.0.1:{self.register_port}"
        moves = {
            "start_register.py": [("127.0.0.1:1238", register)],
            "start_gateway.py": [
                ("0.0.0.0:7272", f"127.0.0.1:{self.public_port}"),
                ("start_port=2300", f"start_port={self.start_port}"),
                ("127.0.0.1:1238", register),
            ],
            "start_businessworker.py": [("127.0.0.1:1238", register)],
        }
        for name, replacements in moves.items():
            path = dest / name
            text = path.read_text()
            for old, new in replacements:
                if text.count(old) != 1:
                    raise RuntimeError(f"apps/chat/{name}: expected {old!r} once")
                text = text.replace(old, new)
            path.write_text(text)


def _read(cluster: BenchCluster) -> list[dict[str, Any]]:
    status = cluster.status()  # also makes every child write a fresh stats file
    state = json.loads((cluster.run_dir / "state.json").read_text())
    stats_dir = cluster.run_dir / "stats"
    rows: list[tuple[int, str, str, dict[str, Any]]] = [
        (cluster.master_pid, "master", "master", state.get("master", {}))
    ]
    for proc in status["processes"]:
        if not proc.get("pid") or proc["role"] == "master":
            continue
        with contextlib.suppress(OSError, ValueError):
            stats = json.loads((stats_dir / f"{proc['name']}.json").read_text())
            rows.append((int(proc["pid"]), proc["role"], proc["name"], stats))
    out = []
    for pid, role, name, info in rows:
        mem = memory(pid)
        packages = list(info.get("packages") or [])
        out.append(
            {
                "process": name,
                "role": role,
                "pid": pid,
                "rss_mib": round(mem.get("rss", 0) / MIB, 1),
                "pss_mib": round(mem.get("pss", 0) / MIB, 1),
                "uss_mib": round(mem.get("uss", 0) / MIB, 1),
                "modules": info.get("modules"),
                "packages": packages,
                "loaded": {dep: dep in packages for dep in WATCHED},
                "shared_objects": len(mapped_libraries(pid)),
            }
        )
    return out


async def measure_rss(bench: Bench) -> dict[str, Any]:
    """RSS (see the module docstring): per process and summed."""
    sizes = RSS_QUICK if bench.sizes is QUICK else RSS_FULL
    config = ClusterConfig(gateways=2, workers=2, app="chat")
    bench.configs["RSS"] = {**config.describe(), "start_files": "apps/chat's own"}
    cluster = ShippedChatCluster(config)
    try:
        await asyncio.to_thread(cluster.start)
        await asyncio.sleep(sizes.settle)
        processes = await asyncio.to_thread(_read, cluster)
    finally:
        await asyncio.to_thread(cluster.stop)
    totals = {
        key: round(sum(p[key] for p in processes), 1) for key in ("rss_mib", "pss_mib", "uss_mib")
    }
    bench.log(f"RSS: {totals} over {len(processes)} processes")
    return {"RSS": {"processes": processes, "totals": totals, "php_rss_mib": PHP_RSS_MIB}}


def rss_lines(rss: dict[str, Any]) -> list[str]:
    """The RSS section of bench.md: one row per process, then the totals."""
    deps = " | ".join(WATCHED)
    lines = [
        "Fixed memory (RSS) of the shipped chat cluster, idle: per process, MiB; "
        f"the PHP original's RSS sum is {rss['php_rss_mib']:g} MiB",
        "",
        f"| process | RSS | PSS | USS | modules | {deps} |",
        "|---|---|---|---|---|" + "---|" * len(WATCHED),
    ]
    for p in rss["processes"]:
        flags = " | ".join("yes" if p["loaded"][dep] else "-" for dep in WATCHED)
        lines.append(
            f"| {p['process']} | {p['rss_mib']} | {p['pss_mib']} | {p['uss_mib']} | "
            f"{p['modules']} | {flags} |"
        )
    t = rss["totals"]
    lines.append(
        f"| **total** | {t['rss_mib']} | {t['pss_mib']} | {t['uss_mib']} | |" + " |" * len(WATCHED)
    )
    return lines
