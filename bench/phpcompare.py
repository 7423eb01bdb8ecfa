"""``python -m bench php-compare``: our chat cluster beside the PHP original
(GatewayWorker on workerman, the workerman-chat app) on the same machine, measured
the same way (issue 15).

How this works
--------------
The user names the ``start.php`` of their own GatewayWorker chat app
(``--php-start``; the workerman-chat layout: a register, a websocket gateway with
``count = 2``, business workers with ``count = 2``, the chat's ``Events``). No PHP is
shipped here: the command runs ``php START start -d`` and ``php START stop``, finds
the master by the title workerman gives it (``... master process
start_file=<START>``) and measures the master and its children
(:class:`bench.phpcluster.PhpChatCluster`).

Ports: the command picks free ports and passes them in the environment as
``BENCH_PHP_REGISTER_PORT``, ``BENCH_PHP_WS_PORT`` and ``BENCH_PHP_START_PORT`` (the
gateways' ``startPort``; the second gateway takes the next); a start file that reads
them with ``getenv`` listens there. A start file with fixed ports is measured at
``--php-ws-port``.

Each round measures the PHP cluster, then ours (:func:`our_cluster`: 2 gateways, 2
business workers, heartbeat 55 s without a response limit, the shipped
``apps/chat`` ``Events``, started with ``start.py start -d`` by
:class:`bench.cluster.BenchCluster`), each started fresh, with the same steps
(:func:`measure_side`), from the same 2 load generator processes (:mod:`bench.loadgen`):

1. serving: a few chat clients log in and each gets its own ``say`` back (bounded);
2. idle: after ``settle`` seconds, RSS and PSS of the master and every child;
3. round trips: ``clients`` chat clients, each logged in to its own room, send
   ``say`` to ``all`` (itself) at fixed offered rates (open loop); latency is the
   sender's own ``say`` coming back, server CPU per round trip is the user + system
   time of every cluster process over the point divided by the replies;
4. connects: ``waves`` waves of ``wave`` connections (at most 100 handshakes in
   flight per generator), each counted at its ``101``, then all closed; the server
   CPU per connect covers the opening and the closing (and the generators' CPU per
   connect is reported beside it);
5. connects on split cores: the waves of step 4 again with every thread of the
   cluster on one CPU and the generators (and this runner) on another, so that the
   load generator no longer takes its CPU from the server it measures: the rate is
   then the capacity of one core running the cluster (skipped with fewer than 2 CPUs).

``wave`` stays below 1,024 per gateway process: workerman's ``Select`` loop (without
``ext-event``) cannot watch more descriptors. Over the whole run: CPU steal, load
average at start and end, the yardstick (:mod:`bench.yardstick`). The report is
:mod:`bench.phpreport`'s. Without ``--php-start``, or without ``php`` on the PATH,
only our side runs and the report says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from bench.chatload import SAY_PREFIX, SAY_SUFFIX
from bench.cluster import ROOT, BenchCluster, ClusterConfig
from bench.metrics import FULL, QUICK, Bench, per_unit_us
from bench.phpcluster import PhpChatCluster, php_info
from bench.phpreport import markdown, summarize
from bench.report import machine
from bench.yardstick import StealMeter, measure_yardstick
from pygatewayworker.runtime.footprint import memory

__all__ = ["CompareOptions", "CompareSizes", "compare", "measure_side", "php_side"]

MIB = 1024 * 1024
GENERATORS = 2
PROBE_CLIENTS = 8


@dataclass(frozen=True, slots=True)
class CompareSizes:
    """The load of one side's measurement; :data:`COMPARE_QUICK` for smoke runs."""

    settle: float = 3.0
    """Seconds the serving cluster idles before its memory is read."""
    clients: int = 100
    rates: tuple[int, ...] = (1_000, 3_000)
    """Offered ``say`` round trips per second, one point each."""
    duration: float = 10.0
    """Seconds of sending per point (then up to 2 s for the last replies)."""
    wave: int = 900
    waves: int = 5


COMPARE_FULL = CompareSizes()
COMPARE_QUICK = CompareSizes(
    # a point's CPU is read from /proc/<pid>/stat in 10 ms ticks per process: 1,000
    # round trips or more, so that each process's share is several ticks
    settle=1.0,
    clients=20,
    rates=(500, 1000),
    duration=2.0,
    wave=200,
    waves=2,
)


@dataclass(frozen=True, slots=True)
class CompareOptions:
    """The command line of ``python -m bench php-compare``."""

    php_start: Path | None = None
    php_ws_port: int | None = None
    rounds: int = 2
    quick: bool = False
    out: Path = ROOT / "bench" / "results"
    command: str = "python -m bench php-compare"


def our_cluster() -> BenchCluster:
    """Our chat cluster in the PHP one's shape (see the module docstring)."""
    return BenchCluster(
        ClusterConfig(gateways=2, workers=2, ping_interval=55.0, ping_limit=0, app="chat")
    )


def idle_memory(cluster: BenchCluster) -> dict[str, Any]:
    """RSS and PSS of the master and every child, per process and summed (MiB)."""
    names = cluster.process_names()
    rows = []
    for proc in cluster.processes():
        mem = memory(proc.pid)
        rows.append(
            {
                "process": names.get(proc.pid, "?"),
                "pid": proc.pid,
                "rss_mib": round(mem.get("rss", 0) / MIB, 1),
                "pss_mib": round(mem.get("pss", 0) / MIB, 1),
            }
        )
    return {
        "processes": rows,
        "count": len(rows),
        "rss_mib": round(sum(r["rss_mib"] for r in rows), 1),
        "pss_mib": round(sum(r["pss_mib"] for r in rows), 1),
    }


async def wait_serving(bench: Bench, timeout: float = 60.0) -> float:
    """Seconds until :data:`PROBE_CLIENTS` chat clients log in and each ``say``
    comes back (every gateway has a worker); ``RuntimeError`` after ``timeout``."""
    assert bench.pool is not None
    started = time.monotonic()
    last = ""
    while time.monotonic() - started < timeout:
        login = await bench.connect(PROBE_CLIENTS, protocol="chat")
        if login["ready"] == PROBE_CLIENTS:
            cmd = {"op": "echo", "rate": 20, "duration": 0.5, "prefix": SAY_PREFIX}
            results = await bench.pool.call({**cmd, "suffix": SAY_SUFFIX})
            sent, got = (sum(r[key] for r in results) for key in ("sent", "received"))
            if sent and got == sent:
                await bench.close_all()
                return round(time.monotonic() - started, 2)
            last = f"{got} of {sent} says came back"
        else:
            last = f"{login['ready']} of {PROBE_CLIENTS} clients logged in {login['errors']}"
        await bench.close_all()
        await asyncio.sleep(0.5)
    raise RuntimeError(f"the cluster does not serve chat clients after {timeout:g} s: {last}")


async def round_trips(bench: Bench, sizes: CompareSizes) -> dict[str, Any]:
    """Step 3 of the module docstring: one point per offered rate."""
    login = await bench.connect(sizes.clients, protocol="chat")
    if login["ready"] < sizes.clients:
        raise RuntimeError(f"{login['ready']} of {sizes.clients} logged in: {login['errors']}")
    points = {}
    for rate in sizes.rates:
        points[str(rate)] = point = await bench.echo(rate, SAY_PREFIX, SAY_SUFFIX)
        bench.log(
            f"  {rate}/s: {point['received']}/{point['sent']} back, p50 {point['p50_ms']} ms, "
            f"p99 {point['p99_ms']} ms, {point['cluster_cpu_us_per_msg']} µs CPU each"
        )
    await bench.close_all()
    return {"clients": sizes.clients, "login": login, "points": points}


async def connect_waves(bench: Bench, sizes: CompareSizes, label: str = "") -> dict[str, Any]:
    """Step 4 of the module docstring: connects/s over the waves' opening time, and
    the server's and the generators' CPU per connection, opening and closing."""
    waves = []
    for _ in range(sizes.waves):
        with bench.cpu() as meter:
            wave = await bench.connect(sizes.wave, protocol="chat-upgrade")
            await bench.close_all()
            await asyncio.sleep(0.3)  # the servers finish the closes
        wave["open_close_cluster_cpu_s"] = meter.result["cluster_cpu_s"]
        wave["open_close_generator_cpu_s"] = meter.result["generator_cpu_s"]
        waves.append(wave)
    connected = sum(w["ready"] for w in waves)
    opening = sum(w["elapsed_s"] for w in waves)
    cpu = [w["open_close_cluster_cpu_s"] for w in waves]
    gens = sum(w["open_close_generator_cpu_s"] for w in waves)
    found = {
        "connected": connected,
        "failed": sum(w["failed"] for w in waves),
        "errors": sorted({e for w in waves for e in w["errors"]})[:3],
        "per_s": round(connected / opening) if opening else 0,
        "per_wave_per_s": [w["per_s"] for w in waves],
        "cluster_cpu_us_per_connect": None
        if None in cpu
        else per_unit_us({"cluster_cpu_s": sum(cpu)}, connected),
        "generator_cpu_us_per_connect": per_unit_us({"cluster_cpu_s": gens}, connected),
        "waves": waves,
    }
    bench.log(
        f"  connects{label}: {connected} at {found['per_s']}/s, {found['per_wave_per_s']} per "
        f"wave; CPU per connect: server {found['cluster_cpu_us_per_connect']} µs, "
        f"generators {found['generator_cpu_us_per_connect']} µs"
    )
    return found


def _pin(procs: list[psutil.Process], cpus: set[int]) -> None:
    """Every thread of ``procs`` on ``cpus`` (an affinity is per thread: setting a
    process's leaves its other threads where they were)."""
    for proc in procs:
        try:
            tids = [thread.id for thread in proc.threads()]
        except psutil.Error:  # gone
            continue
        for tid in tids:
            with contextlib.suppress(OSError):  # the thread ended meanwhile
                os.sched_setaffinity(tid, cpus)


@contextlib.contextmanager
def split_cores(bench: Bench, cluster: BenchCluster, cpus: list[int]) -> Iterator[None]:
    """For the body: every process of ``cluster`` on ``cpus[0]``, the generators and
    this runner on ``cpus[1]``; then all of them on every CPU of ``cpus`` again."""
    assert bench.pool is not None
    server = cluster.processes()
    load = [psutil.Process(), *(psutil.Process(proc.pid) for proc in bench.pool.procs)]
    try:
        _pin(server, {cpus[0]})
        _pin(load, {cpus[1]})
        yield
    finally:
        _pin(server + load, set(cpus))


async def split_connect_waves(
    bench: Bench, cluster: BenchCluster, sizes: CompareSizes
) -> dict[str, Any] | None:
    """Step 5 of the module docstring: the waves of step 4 again with the cluster on
    one core and the load on another; ``None`` with fewer than 2 CPUs."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    with split_cores(bench, cluster, cpus):
        return await connect_waves(bench, sizes, " (cluster on one core, load on another)")


async def measure_side(bench: Bench, cluster: BenchCluster, sizes: CompareSizes) -> dict[str, Any]:
    """Start ``cluster``, measure it (the steps of the module docstring), stop it."""
    with bench.running(cluster, GENERATORS):
        found: dict[str, Any] = {"serving_after_s": await wait_serving(bench)}
        await asyncio.sleep(sizes.settle)
        found["idle"] = idle = idle_memory(cluster)
        bench.log(f"  idle: RSS {idle['rss_mib']} MiB, PSS {idle['pss_mib']} MiB")
        found["round_trip"] = await round_trips(bench, sizes)
        found["connects"] = await connect_waves(bench, sizes)
        found["connects_split"] = await split_connect_waves(bench, cluster, sizes)
    return found


def _our_setup() -> str:
    head = ""
    with contextlib.suppress(OSError):  # no git
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    return (
        f"pygatewayworker at {head or 'an unknown commit'}, the shipped apps/chat Events "
        "(inline callbacks), 2 gateways, 2 business workers, heartbeat 55 s without a "
        "response limit, `start.py start -d` (bench.cluster)"
    )


def php_side(options: CompareOptions) -> tuple[dict[str, Any], Callable[[], BenchCluster] | None]:
    """What the report says of the PHP side, and how to make its cluster (or None)."""
    php = shutil.which("php")
    if options.php_start is None:
        return {"missing": "no `--php-start` given"}, None
    if php is None:
        return {"missing": "`php` is not on the PATH"}, None
    start_file = options.php_start.resolve()
    info = {"start_file": str(start_file), **php_info(php)}
    return info, lambda: PhpChatCluster(php, start_file, options.php_ws_port)


async def compare(options: CompareOptions, log: Callable[[str], None]) -> int:
    """Run the rounds, write ``php-compare.json`` and ``.md``; 0 when all ran."""
    sizes = COMPARE_QUICK if options.quick else COMPARE_FULL
    preset = replace(QUICK if options.quick else FULL, rtt_duration=sizes.duration)
    # no stall sampling: its signals would make our processes (and not PHP's) work
    bench = Bench(preset, log, sample_stalls=False)
    php, make_php = php_side(options)
    if make_php is None:
        log(f"no PHP cluster: {php['missing']}; measuring our side only")
    steal = StealMeter()
    steal.start()
    load_start = list(os.getloadavg())
    stick = await asyncio.to_thread(measure_yardstick, options.quick)
    sides: list[tuple[str, Callable[[], BenchCluster]]] = [("py", our_cluster)]
    if make_php is not None:
        sides.insert(0, ("php", make_php))
    rounds, errors = await _run_rounds(bench, sides, sizes, options.rounds)
    host = {
        **machine(),
        "yardstick": stick,
        "cpu_steal": steal.stop(),
        "loadavg_start": load_start,
        "loadavg_end": list(os.getloadavg()),
    }
    doc = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "quick": options.quick,
        "command": options.command,
        "machine": host,
        "php": php,
        "py_setup": _our_setup(),
        "sizes": asdict(sizes),
        "rounds_done": len(rounds),
        "summary": summarize(rounds),
        "rounds": rounds,
        "errors": errors + bench.errors,
    }
    _write(doc, options.out, log)
    return 1 if doc["errors"] else 0


async def _run_rounds(
    bench: Bench,
    sides: list[tuple[str, Callable[[], BenchCluster]]],
    sizes: CompareSizes,
    count: int,
) -> tuple[list[dict[str, Any]], list[str]]:
    """``count`` rounds of every side in turn; a side that fails is left out of its
    round and reported, the others still run."""
    rounds: list[dict[str, Any]] = []
    errors: list[str] = []
    for number in range(1, count + 1):
        found: dict[str, Any] = {"round": number}
        for name, make in sides:
            bench.log(f"round {number}: {name}")
            try:
                found[name] = await measure_side(bench, make(), sizes)
            except Exception as exc:
                errors.append(f"round {number} {name}: {exc.__class__.__name__}: {exc}")
                bench.log(errors[-1])
        rounds.append(found)
    return rounds, errors


def _write(doc: dict[str, Any], out: Path, log: Callable[[str], None]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for suffix, text in (
        ("json", json.dumps(doc, indent=2, default=str) + "\n"),
        ("md", markdown(doc)),
    ):
        path = out / f"php-compare.{suffix}"
        path.write_text(text)
        log(f"{suffix}: {path}")
