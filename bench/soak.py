"""Soak: minutes of connect/close churn with chat traffic, every process sampled.

``python -m bench run --only soak`` (not part of a run without ``--only``): a
cluster of 2 gateways and 2 workers; ``clients`` tasks each connect, send
``messages`` echo messages and wait for each, then close, over and over, for
``minutes``. Every ``sample_every`` seconds the RSS and the open file descriptors of
every cluster process are sampled. The report gives, per process, the first sample
after the warm-up, the last one and the drift between them (and the peak), with the
churn's totals: cycles, messages sent and echoed, errors. A leak shows as a drift
that grows with the duration; a steady state as a drift near zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil
from websockets.asyncio.client import connect

from bench.cluster import BenchCluster, ClusterConfig

__all__ = ["SoakSizes", "SOAK_FULL", "SOAK_QUICK", "measure_soak"]


@dataclass(frozen=True, slots=True)
class SoakSizes:
    minutes: float = 5.0
    clients: int = 50
    messages: int = 5
    warmup: float = 10.0
    sample_every: float = 5.0


SOAK_FULL = SoakSizes()
SOAK_QUICK = SoakSizes(minutes=0.1, clients=5, messages=2, warmup=1.0, sample_every=1.0)


@dataclass
class _Churn:
    cycles: int = 0
    sent: int = 0
    echoed: int = 0
    errors: int = 0
    last_error: str = ""


def _sample(cluster: BenchCluster) -> dict[str, tuple[int, int]]:
    """``"name (pid)" -> (rss bytes, open fds)`` of every cluster process (names
    from ``status``: a respawned process shows as a new row)."""
    names = {int(r["pid"]): r["name"] for r in cluster.status()["processes"] if r.get("pid")}
    names[cluster.master_pid] = "master"
    out: dict[str, tuple[int, int]] = {}
    for proc in cluster.processes():
        with contextlib.suppress(psutil.Error):
            name = f"{names.get(proc.pid, proc.name())} ({proc.pid})"
            out[name] = (proc.memory_info().rss, proc.num_fds())
    return out


async def _client(url: str, messages: int, stop: asyncio.Event, churn: _Churn) -> None:
    n = 0
    while not stop.is_set():
        try:
            async with connect(url, open_timeout=10, ping_interval=None) as ws:
                ready = await asyncio.wait_for(ws.recv(), 10)
                assert isinstance(ready, str) and ready.startswith("I"), ready
                for _ in range(messages):
                    n += 1
                    text = f'{{"type":"say","n":{n},"content":"{"x" * 80}"}}'
                    await ws.send(text)
                    churn.sent += 1
                    while await asyncio.wait_for(ws.recv(), 10) != text:
                        pass  # a heartbeat ping
                    churn.echoed += 1
            churn.cycles += 1
        except Exception as exc:  # counted; the churn goes on
            churn.errors += 1
            churn.last_error = repr(exc)[:200]
            await asyncio.sleep(0.2)


def _drift(first: dict[str, tuple[int, int]], samples: list[dict[str, tuple[int, int]]]) -> Any:
    last = samples[-1]
    rows = []
    for name, (rss0, fds0) in sorted(first.items()):
        if name not in last:
            rows.append({"process": name, "gone": True})
            continue
        rss1, fds1 = last[name]
        peak = max(s[name][0] for s in samples if name in s)
        rows.append(
            {
                "process": name,
                "rss_mb_start": round(rss0 / 2**20, 1),
                "rss_mb_end": round(rss1 / 2**20, 1),
                "rss_mb_peak": round(peak / 2**20, 1),
                "rss_mb_drift": round((rss1 - rss0) / 2**20, 1),
                "fds_start": fds0,
                "fds_end": fds1,
                "fds_drift": fds1 - fds0,
            }
        )
    return rows


async def measure_soak(
    quick: bool, log: Callable[[str], None], metrics: bool = False
) -> dict[str, Any]:
    """Run the soak (see the module docstring) and return ``{"SOAK": {...}}``;
    ``metrics``: the cluster runs the metrics listener, scraped (``--metrics``)."""
    sizes = SOAK_QUICK if quick else SOAK_FULL
    config = ClusterConfig(gateways=2, workers=2, metrics=metrics)
    cluster = BenchCluster(config)
    log(f"soak: {sizes.minutes:g} min, {sizes.clients} churning clients, 2 gateways, 2 workers")
    await asyncio.to_thread(cluster.start)
    try:
        url = f"ws://127.0.0.1:{cluster.public_port}/"
        stop, churn = asyncio.Event(), _Churn()
        tasks = [
            asyncio.create_task(_client(url, sizes.messages, stop, churn))
            for _ in range(sizes.clients)
        ]
        await asyncio.sleep(sizes.warmup)
        first = await asyncio.to_thread(_sample, cluster)
        samples = [first]
        end = time.monotonic() + sizes.minutes * 60
        while time.monotonic() < end:
            await asyncio.sleep(min(sizes.sample_every, max(0.0, end - time.monotonic())))
            samples.append(await asyncio.to_thread(_sample, cluster))
            log(f"soak: {churn.cycles} cycles, {churn.echoed} echoes, {churn.errors} errors")
        stop.set()
        await asyncio.gather(*tasks)
    finally:
        await asyncio.to_thread(cluster.stop)
    return {
        "SOAK": {
            "minutes": sizes.minutes,
            "clients": sizes.clients,
            "cycles": churn.cycles,
            "messages_sent": churn.sent,
            "messages_echoed": churn.echoed,
            "errors": churn.errors,
            "last_error": churn.last_error,
            "samples": len(samples),
            "processes": _drift(first, samples),
        }
    }
