"""The measurements M1..M8 (see the README's Benchmarks section; M9 is in
``bench.pusherbench``).

Each ``measure_*`` coroutine starts (or reuses) a cluster of the shape it needs, drives
the load generators, and returns a dict of figures. Every wait is bounded in time,
every load in count. CPU used by the generators (and by the runner, where the push
client runs) is reported next to each figure, to show the generator was not the
bottleneck.
"""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import signal
import sys
import threading
import time
from array import array
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil

from bench.chatload import SAY_PREFIX, SAY_SUFFIX
from bench.cluster import ORIGIN, TOKEN_KEY, BenchCluster, ClusterConfig
from bench.phppush import PhpPusher, php_cli_burst
from bench.pool import GenPool, latencies, split
from bench.stalls import StallSampler
from pygatewayworker.gatewayclient import AsyncGatewayClient, GatewayClient

__all__ = ["Sizes", "FULL", "QUICK", "Bench", "percentile", "per_unit_us"]


@dataclass(frozen=True, slots=True)
class Sizes:
    """Every size of a run; :data:`FULL` and :data:`QUICK` are the two presets."""

    conns: int = 100_000  # M1/M2/M3
    conn_gateways: int = 8
    conn_workers: int = 2
    conn_gens: int = 6
    conn_concurrency: int = 100  # handshakes in flight per generator
    rate_conns: int = 20_000  # M3: a cluster sized for the 2 cores (few processes)
    rate_gateways: int = 2
    rate_gens: int = 2
    rate_chat_conns: int = 10_000  # M3 chat: plain connects (no login) to the chat app
    ping_interval: float = 10.0
    hold: float = 25.0  # > 2 ping intervals: the heartbeat really runs
    fanout_sizes: tuple[int, ...] = (1_000, 10_000, 50_000)
    fanout_gateways: int = 2  # one per core
    fanout_gens: int = 2
    fanout_large: int = 30_000  # larger groups: more processes (fd limit 20,000)
    fanout_large_gateways: int = 3
    fanout_large_gens: int = 3
    fanout_deliveries: int = 2_000_000
    m5_messages: int = 20
    # M4 sustained: offered deliveries/s (messages/s x members), counted over a window
    sustained_deliveries: tuple[int, ...] = (
        100_000,
        150_000,
        200_000,
        300_000,
        450_000,
        600_000,
        800_000,
    )
    sustained_warmup: float = 1.0
    sustained_window: float = 4.0
    rtt_clients: tuple[int, ...] = (100, 1_000)
    rtt_rates: tuple[int, ...] = (1_000, 3_000, 5_000, 10_000, 15_000, 20_000, 25_000, 30_000)
    rtt_duration: float = 3.0
    rtt_gateways: int = 1
    rtt_workers: int = 1
    rtt_gens: int = 2
    pushes: int = 60_000
    sync_pushes: int = 20_000
    push_receivers: int = 100
    m8_members: int = 100  # M8: send_to_group from PHP's protocol vs the msgpack client
    m8_calls: int = 20_000
    m8_per_call_calls: int = 2_000  # one connection per call (GatewayClient's default)


FULL = Sizes()
QUICK = Sizes(
    conns=300,
    conn_gateways=2,
    conn_workers=1,
    conn_gens=2,
    # enough connects that the cluster's CPU over them is many 10 ms clock ticks
    # (/proc/<pid>/stat): at about 100 us each, 300 made 3 ticks over 6 processes,
    # and sometimes none
    rate_conns=1500,
    rate_chat_conns=1500,
    ping_interval=1.0,
    hold=2.5,
    fanout_sizes=(100, 300),
    fanout_gateways=2,
    fanout_deliveries=6_000,
    fanout_gens=2,
    m5_messages=3,
    sustained_deliveries=(3_000, 6_000),
    sustained_warmup=0.2,
    sustained_window=0.5,
    rtt_clients=(10, 50),
    rtt_rates=(200, 500),
    rtt_duration=0.5,
    pushes=500,
    sync_pushes=200,
    push_receivers=10,
    m8_members=10,
    m8_calls=300,
    m8_per_call_calls=50,
)


def percentile(values: array[int] | list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by nearest rank; 0.0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return float(ordered[rank])


def _ms(us: float) -> float:
    return round(us / 1000, 3)


def per_unit_us(cpu: dict[str, Any], units: int) -> float | None:
    """Cluster CPU microseconds per unit (message, connection) of a
    :class:`CpuMeter` result; ``None`` without units or without a CPU figure."""
    seconds = cpu.get("cluster_cpu_s")
    if seconds is None or units <= 0:
        return None
    return round(1e6 * seconds / units, 1)


def _payload(size: int = 100) -> str:
    return "x" * (size - 20)


def _m8_send_buffer_limit(calls: int) -> int:
    """M8's ``send_buffer_limit``: twice a whole burst of ``calls`` messages (100
    bytes and a frame header each) per member, and never below the default 1 MiB."""
    return max(1 << 20, 2 * calls * 128)


@dataclass
class CpuMeter:
    """CPU used by the generators, the runner and the cluster over a window."""

    bench: Bench
    wall: float = 0.0
    gens0: list[float] = field(default_factory=list)
    runner0: float = 0.0
    cluster0: float = 0.0
    result: dict[str, Any] = field(default_factory=dict)
    stalls: StallSampler | None = None

    def __enter__(self) -> CpuMeter:
        cluster = self.bench.cluster
        sampled = cluster.run_dir if cluster and self.bench.sample_stalls else None
        self.stalls = StallSampler(sampled).__enter__()
        self.wall = time.monotonic()
        self.gens0 = self.bench.pool.cpu_seconds() if self.bench.pool else []
        times = psutil.Process().cpu_times()
        self.runner0 = times.user + times.system
        self.cluster0 = self.bench.cluster.cpu_seconds() if self.bench.cluster else 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        wall = max(1e-6, time.monotonic() - self.wall)
        gens = self.bench.pool.cpu_seconds() if self.bench.pool else []
        used = [b - a for a, b in zip(self.gens0, gens, strict=False)]
        times = psutil.Process().cpu_times()
        cluster = self.bench.cluster.cpu_seconds() if self.bench.cluster else 0.0
        self.result = {
            "wall_s": round(wall, 3),
            "generator_cpu_pct": round(100 * sum(used) / wall, 1),
            "generator_cpu_s": round(sum(used), 4),
            "generator_cpu_pct_max_process": round(100 * max(used, default=0) / wall, 1),
            "runner_cpu_pct": round(100 * (times.user + times.system - self.runner0) / wall, 1),
            # None when cluster processes were replaced (their CPU left the sum)
            "cluster_cpu_pct": round(100 * (cluster - self.cluster0) / wall, 1)
            if cluster >= self.cluster0
            else None,
            "cluster_cpu_s": round(cluster - self.cluster0, 4)
            if cluster >= self.cluster0
            else None,
        }
        if self.stalls is not None:
            self.stalls.__exit__()
            stalls = self.stalls.result()
            if stalls:
                self.result["loop_stall_max_ms"] = stalls["max_ms"]
                self.result["loop_stall_by_process_ms"] = stalls["by_process"]
                if "own_max_ms" in stalls:
                    self.result["loop_stall_own_max_ms"] = stalls["own_max_ms"]
                    self.result["loop_stall_own_by_process_ms"] = stalls["own_by_process"]


class Bench:
    """One benchmark run: the current cluster and generators, and the results."""

    def __init__(
        self,
        sizes: Sizes,
        log: Callable[[str], None] = print,
        metrics: bool = False,
        only: frozenset[str] = frozenset(),
        sample_stalls: bool = True,
    ) -> None:
        self.sizes = sizes
        self.log = log
        self.metrics = metrics
        """Run every cluster with the metrics listener, scraped every second."""
        self.only = only
        """The ``--only`` selection (empty: everything)."""
        self.sample_stalls = sample_stalls
        """Sample the cluster's loop stalls over each measured window
        (:class:`bench.stalls.StallSampler`, which signals every process)."""
        self.cluster: BenchCluster | None = None
        self.pool: GenPool | None = None
        self.configs: dict[str, dict[str, Any]] = {}
        self.errors: list[str] = []
        """Failures found inside a measurement that still returned its other figures
        (reported as the run's errors)."""

    # ---- plumbing ------------------------------------------------------------------
    @contextmanager
    def setup(
        self, metric: str, config: ClusterConfig, gens: int, kind: type[BenchCluster] = BenchCluster
    ) -> Iterator[None]:
        """Run ``config`` (a cluster of ``kind``) with ``gens`` generator processes for
        the body."""
        config = replace(config, metrics=self.metrics)
        self.log(f"{metric}: starting {config.gateways} gateway(s), {config.workers} worker(s)")
        self.configs[metric] = {**config.describe(), "generator_processes": gens}
        with self.running(kind(config), gens):
            yield

    @contextmanager
    def running(self, cluster: BenchCluster, gens: int) -> Iterator[None]:
        """Start ``cluster`` and ``gens`` generator processes aimed at its public
        port for the body; stop both after it."""
        self.cluster = cluster
        try:
            cluster.start()
            self.pool = GenPool(gens, "127.0.0.1", cluster.public_port)
            yield
        finally:
            if self.pool is not None:
                self.pool.close()
                self.pool = None
            cluster.stop()
            self.cluster = None

    def cpu(self) -> CpuMeter:
        return CpuMeter(self)

    async def connect(
        self,
        total: int,
        query: dict[str, str] | None = None,
        reconnect: bool = False,
        protocol: str = "bench",
        path: str = "/",
        security: str = "",
    ) -> dict[str, Any]:
        """Open ``total`` clients over the generators; figures of the connect phase,
        with the cluster's CPU per connection (handshake, ``on_connect`` in a worker,
        and for ``protocol="chat"`` the chat's login). ``protocol``: what the clients
        speak, the bench app's (ready on ``I...``), the chat app's
        (:mod:`bench.chatload`) or Pusher's (:mod:`bench.pusherload`, on ``path``
        ``/app/<key>``). ``security``: the cluster's (``bench.cluster.SECURITY``):
        with ``"tokens"`` every client sends a signed connect token, with
        ``"limits"`` an allowed ``Origin``."""
        assert self.pool is not None
        counts = split(total, len(self.pool))
        firsts = [sum(counts[:i]) for i in range(len(counts))]
        cmds = [
            {
                "op": "connect",
                "count": n,
                "first": first,
                "query": query or {},
                "reconnect": reconnect,
                "protocol": protocol,
                "path": path,
                "token_key": TOKEN_KEY if security == "tokens" else "",
                "origin": ORIGIN if security == "limits" else "",
                "concurrency": self.sizes.conn_concurrency,
                "timeout": 30 + total / 1000,
            }
            for n, first in zip(counts, firsts, strict=True)
        ]
        with self.cpu() as meter:
            results = await self.pool.call(cmds)
        ready = sum(r["ready"] for r in results)
        elapsed = max(r["elapsed"] for r in results)
        errors = sorted({r["last_error"] for r in results if r["last_error"]})
        return {
            "ready": ready,
            "failed": sum(r["failed"] for r in results),
            "elapsed_s": round(elapsed, 3),
            "per_s": round(ready / elapsed) if elapsed else 0,
            "errors": errors[:3],
            "cluster_cpu_us_per_connection": per_unit_us(meter.result, ready),
            "cpu": meter.result,
        }

    async def close_all(self) -> None:
        assert self.pool is not None
        await self.pool.call({"op": "close_all"})

    # ---- M1 / M2 / M3 --------------------------------------------------------------
    async def measure_connections(self) -> dict[str, Any]:
        """M1 idle connections held with heartbeat on, M2 memory per connection, and
        (M3) the reconnect storm of all of them after a gateway restart."""
        s = self.sizes
        config = ClusterConfig(s.conn_gateways, s.conn_workers, s.ping_interval, 2)
        with self.setup("M1-M3", config, s.conn_gens):
            assert self.cluster is not None and self.pool is not None
            await asyncio.sleep(1.0)
            rss0 = self.cluster.rss()
            connect = await self.connect(s.conns, reconnect=True)
            self.log(f"M1: {connect['ready']} connections at {connect['per_s']}/s")
            with self.cpu() as meter:
                await asyncio.sleep(s.hold)
            status = await self.pool.call({"op": "status"})
            held = sum(r["open"] for r in status)
            lost = sum(r["lost"] for r in status)
            rss1 = self.cluster.rss()
            per_conn = (rss1 - rss0) / max(1, connect["ready"])
            self.log(f"M1: {held} held after {s.hold:g} s; M2: {per_conn / 1024:.2f} KiB/conn")
            storm = await self._storm(held)
            await self.close_all()
        return {
            "M1": {
                "connections_held": held,
                "lost_during_hold": lost,
                "hold_s": s.hold,
                "ping_interval_s": s.ping_interval,
                "cpu_while_holding": meter.result,
            },
            "M2": {
                "rss_before_mb": round(rss0 / 1e6, 1),
                "rss_after_mb": round(rss1 / 1e6, 1),
                "bytes_per_connection": round(per_conn),
                "kib_per_connection": round(per_conn / 1024, 2),
            },
            "M3_storm": {**storm, "connect_phase": connect},
        }

    async def measure_connect_rate(self) -> dict[str, Any]:
        """M3 connections/s (connect + handshake + on_connect in a worker) on a
        cluster with as many processes as this machine has cores to spare: with the
        bench app; then the same with connect tokens (``"tokens"``: every client sends
        a valid signed token, the gateway verifies it and binds its uid before the
        ``101``); then (under ``"chat"``) ``rate_chat_conns`` plain connects to the
        shipped chat app, whose ``on_connect`` sends ``init`` from the worker (no
        login: the client is ready on ``init``)."""
        s = self.sizes
        config = ClusterConfig(s.rate_gateways, 1, s.ping_interval, 2)
        plain = await self._connect_rate("M3", config, s.rate_conns, "bench")
        tokens = await self._connect_rate(
            "M3 tokens", replace(config, security="tokens"), s.rate_conns, "bench"
        )
        chat = await self._connect_rate(
            "M3 chat", replace(config, app="chat"), s.rate_chat_conns, "chat-connect"
        )
        return {"M3": {**plain, "tokens": tokens, "chat": chat}}

    async def _connect_rate(
        self, label: str, config: ClusterConfig, total: int, protocol: str
    ) -> dict[str, Any]:
        with self.setup(label, config, self.sizes.rate_gens):
            connect = await self.connect(total, protocol=protocol, security=config.security)
            self.log(
                f"{label}: {connect['ready']} connections at {connect['per_s']}/s, "
                f"{connect['cluster_cpu_us_per_connection']} us cluster CPU per connection"
            )
            if config.security:
                connect["limits_hit"] = await self._limits_hit()
            await self.close_all()
        return connect

    async def _limits_hit(self) -> dict[str, int]:
        """The gateways' rate-limit closes and refused handshakes so far (once their
        stats files caught up): a secured cluster's measurement must show none."""
        assert self.cluster is not None
        await asyncio.sleep(1.5)  # stats files are rewritten every second
        hit = self.cluster.limits_hit()
        if any(hit.values()):
            self.log(f"limits or checks acted during the measurement: {hit}")
        return hit

    async def _storm(self, held: int) -> dict[str, Any]:
        """Restart every gateway process (SIGTERM; the master respawns them) and time
        the clients coming back: to 50%, 99% and 100% of those held (``None`` when
        that share never came back within the bound), how long each old gateway
        took to exit, and where the missing clients are."""
        assert self.cluster is not None and self.pool is not None
        pids = self.cluster.pids("gateway")
        status = await self.pool.call({"op": "status"})
        started_ns = time.monotonic_ns()
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        exits = asyncio.create_task(_watch_exits(pids, started_ns, self.log))
        with self.cpu() as meter:
            results = await self.pool.call(
                [
                    {
                        "op": "wait_reconnected",
                        "min_lost": r["open"],
                        "timeout": 30 + held / 2000,
                        "stall": 20.0,
                    }
                    for r in status
                ]
            )
        exit_s, dumps = await exits
        back = sum(r["reconnected"] for r in results)
        times = sorted(t - started_ns for t in latencies(results, "back_ns"))
        missing: dict[str, int] = {}
        for r in results:
            for key, n in r["missing"].items():
                missing[key] = missing.get(key, 0) + n

        def time_to(share: float) -> float | None:
            need = math.ceil(share * held)
            return round(times[need - 1] / 1e9, 3) if need and len(times) >= need else None

        waited = max(r["at"] for r in results) - started_ns / 1e9
        self.log(
            f"M3: reconnect storm: {back}/{held} back; 99% in {time_to(0.99)} s, "
            f"100% in {time_to(1.0)} s; gateways exited in {exit_s} s; missing {missing}"
        )
        return {
            "clients": held,
            "reconnected": back,
            "seconds_to_50pct": time_to(0.5),
            "seconds_to_99pct": time_to(0.99),
            "seconds_to_100pct": time_to(1.0),
            "waited_s": round(waited, 3),
            "missing": missing,
            "gateway_exit_s": exit_s,
            "stuck_gateway_dumps": dumps,
            "cpu": meter.result,
        }

    # ---- M4 / M5 -------------------------------------------------------------------
    async def measure_fanout(self) -> dict[str, Any]:
        """M4 broadcast deliveries/s to groups of each size, M5 time for one message
        to reach every member of the 10k (or largest) group. Groups up to
        ``fanout_large`` members run on ``fanout_gateways`` gateways (one per core),
        larger ones on ``fanout_large_gateways`` (a process holds < 20,000 fds)."""
        s = self.sizes
        out: dict[str, Any] = {"sustained": {}, "send_to_group": {}, "send_to_all": {}}
        m5: dict[str, Any] = {}
        m5_size = max(n for n in s.fanout_sizes if n <= 10_000)
        small = [n for n in s.fanout_sizes if n <= s.fanout_large]
        large = [n for n in s.fanout_sizes if n > s.fanout_large]
        shapes = [
            ("M4-M5", small, s.fanout_gateways, s.fanout_gens),
            (
                f"M4 (> {s.fanout_large:,} members)",
                large,
                s.fanout_large_gateways,
                s.fanout_large_gens,
            ),
        ]
        for label, sizes, gateways, gens in shapes:
            if not sizes:
                continue
            with self.setup(label, ClusterConfig(gateways, 1, s.ping_interval, 2), gens):
                assert self.cluster is not None
                register = f"127.0.0.1:{self.cluster.register_port}"
                client = AsyncGatewayClient(register, timeout=10)
                await client.connect()
                try:
                    for size in sizes:
                        found = await self._fanout_size(client, size, size == m5_size, out)
                        m5 = found or m5
                finally:
                    await client.close()
        return {"M4": out, "M5": {"members": m5_size, **m5}}

    async def _fanout_size(
        self, client: AsyncGatewayClient, size: int, with_m5: bool, out: dict[str, Any]
    ) -> dict[str, Any]:
        s = self.sizes
        connect = await self.connect(size, {"g": "bench"})
        members = connect["ready"]
        count = max(5, s.fanout_deliveries // max(1, members))

        def group(msg: str) -> Any:
            return client.send_to_group("bench", msg)

        def everyone(msg: str) -> Any:
            return client.send_to_all(msg)

        m5: dict[str, Any] = {}
        if with_m5:  # first, on a quiet cluster
            m5 = await self._one_by_one(group, members, s.m5_messages)
            self.log(f"M5: {m5}")
        sustained = await self._sustained(client, group, members)
        out["sustained"][str(size)] = sustained
        self.log(f"M4: sustained, group of {members}: {sustained['best']}")
        out["send_to_group"][str(size)] = await self._burst(group, members, count)
        self.log(f"M4: group of {members}: {out['send_to_group'][str(size)]}")
        if with_m5:
            out["send_to_all"][str(size)] = await self._burst(everyone, members, count)
        await self.close_all()
        return m5

    async def _sustained(
        self, client: AsyncGatewayClient, send: Callable[[str], Any], members: int
    ) -> dict[str, Any]:
        """M4 as a sustained rate: for each offered rate, one ~100-byte message per
        ``send_to_group`` call (its own write: no batching by the application), paced
        evenly; deliveries are counted at the receivers over a fixed window after a
        warm-up (the window holds at least 16 messages). ``best`` is the highest
        delivered rate with at least 95% of the offered deliveries arriving in the
        window."""
        s = self.sizes
        points: list[dict[str, Any]] = []
        for offered in s.sustained_deliveries:
            rate = max(1.0, offered / max(1, members))
            point = await self._offer(client, send, members, rate)
            points.append(point)
            self.log(f"M4: {members} members, {rate:g} msg/s: {point['deliveries_per_s']:,}/s")
            if point["delivered_ratio"] < 0.85:
                break  # saturated: higher rates only queue
        ok = [p for p in points if p["delivered_ratio"] >= 0.95]
        best = max(ok, key=lambda p: p["deliveries_per_s"], default=None)
        return {"members": members, "points": points, "best": best}

    async def _offer(
        self,
        client: AsyncGatewayClient,
        send: Callable[[str], Any],
        members: int,
        rate: float,
    ) -> dict[str, Any]:
        assert self.pool is not None
        s = self.sizes
        await self.pool.call({"op": "recv_reset", "track": False})
        pad = _payload()
        stop = asyncio.Event()
        sent = 0

        async def sender() -> None:
            nonlocal sent
            started = time.monotonic()
            while not stop.is_set():
                due = int((time.monotonic() - started) * rate) - sent
                for _ in range(due):
                    await send(f"B{time.monotonic_ns():019d}{pad}")
                    client.flush()  # each message its own write
                    sent += 1
                await asyncio.sleep(0.001)

        async def count() -> tuple[int, float]:
            stats = await self.pool.call({"op": "recv_stats"})  # type: ignore[union-attr]
            return sum(r["count"] for r in stats), time.monotonic()

        task = asyncio.create_task(sender())
        try:
            with self.cpu() as meter:
                await asyncio.sleep(max(s.sustained_warmup, 2 / rate))
                c0, t0 = await count()
                sent0 = sent
                await asyncio.sleep(max(s.sustained_window, 16 / rate))
                c1, t1 = await count()
                sent1 = sent
        finally:
            stop.set()
            await task
        window = t1 - t0
        offered = (sent1 - sent0) * members / window
        delivered = (c1 - c0) / window
        await self._wait_received(sent * members, 10)  # drain before the next rate
        return {
            "messages_per_s": round(rate, 2),
            "offered_deliveries_per_s": round(offered),
            "deliveries_per_s": round(delivered),
            "delivered_ratio": round(delivered / offered, 3) if offered else 0.0,
            "window_s": round(window, 3),
            "cpu": meter.result,
        }

    async def _burst(self, send: Callable[[str], Any], members: int, count: int) -> dict[str, Any]:
        """Send ``count`` ~100-byte messages as fast as the API takes them; time until
        every member has every message (a one-off burst: the gateway merges the
        broadcasts that arrive in one read into one write per member)."""
        pad = _payload()

        async def sends() -> None:
            for _ in range(count):
                await send(f"B{time.monotonic_ns():019d}{pad}")

        return await self._delivered(sends, members, count)

    async def _delivered(
        self, sends: Callable[[], Awaitable[Any]], members: int, count: int
    ) -> dict[str, Any]:
        """Run ``sends`` (``count`` broadcasts to ``members``) and time until every
        member has every message."""
        assert self.pool is not None
        await self.pool.call({"op": "recv_reset", "track": False})
        expected = members * count
        with self.cpu() as meter:
            started_ns = time.monotonic_ns()
            await sends()
            sent_s = (time.monotonic_ns() - started_ns) / 1e9
            received, last_ns = await self._wait_received(expected, 10 + expected / 50_000)
        seconds = max(1e-9, (last_ns - started_ns) / 1e9)
        return {
            "members": members,
            "messages": count,
            "deliveries": received,
            "expected": expected,
            "seconds": round(seconds, 3),
            "send_seconds": round(sent_s, 3),
            "deliveries_per_s": round(received / seconds),
            "cpu": meter.result,
        }

    async def _wait_received(self, expected: int, timeout: float) -> tuple[int, int]:
        """Poll the generators until ``expected`` broadcasts arrived (or no progress
        for 3 s, or ``timeout``); return the count and the last arrival (ns)."""
        assert self.pool is not None
        deadline = time.monotonic() + timeout
        last_progress, best = time.monotonic(), -1
        while True:
            stats = await self.pool.call({"op": "recv_stats"})
            received = sum(r["count"] for r in stats)
            last_ns = max(r["last_ns"] for r in stats)
            now = time.monotonic()
            if received > best:
                best, last_progress = received, now
            if received >= expected or now > deadline or now - last_progress > 3:
                return received, last_ns
            await asyncio.sleep(0.005 if expected < 20_000 else 0.05)

    async def _one_by_one(
        self, send: Callable[[str], Any], members: int, messages: int
    ) -> dict[str, Any]:
        """Send one message at a time and time each member's copy."""
        assert self.pool is not None
        await self.pool.call({"op": "recv_reset", "track": True})
        pad = _payload()
        completions: list[float] = []
        for n in range(messages):
            started_ns = time.monotonic_ns()
            await send(f"B{started_ns:019d}{pad}")
            received, last_ns = await self._wait_received(members * (n + 1), 10)
            completions.append((last_ns - started_ns) / 1000)
            await asyncio.sleep(0.1)
        stats = await self.pool.call({"op": "recv_stats"})
        lat = latencies(stats)
        return {
            "messages": messages,
            "deliveries": len(lat),
            "member_p50_ms": _ms(percentile(lat, 50)),
            "member_p99_ms": _ms(percentile(lat, 99)),
            "all_members_p50_ms": _ms(percentile(completions, 50)),
            "all_members_p99_ms": _ms(percentile(completions, 99)),
            "all_members_max_ms": _ms(max(completions, default=0.0)),
            "all_members_each_ms": [_ms(c) for c in completions],
        }

    # ---- M6 ------------------------------------------------------------------------
    async def measure_round_trip(self) -> dict[str, Any]:
        """M6 echo round trips at fixed offered rates (open loop), with the bench
        app's plain ``on_message`` run inline (the figures at the top level, which
        the target is about), then in thread mode (under ``"thread"``), then with the
        shipped chat app (under ``"chat"``, see :meth:`_chat_round_trips`), then
        inline again with every gateway limit configured (under ``"limits"``, see
        :meth:`_limited_round_trips`). ``--only M6_LIMITS``: the inline and the
        limits series only."""
        inline = await self._round_trips("inline")
        if "M6" not in self.only and "M6_LIMITS" in self.only:
            return {**inline, "limits": await self._limited_round_trips()}
        thread = await self._round_trips("thread")
        chat = await self._chat_round_trips()
        return {
            **inline,
            "thread": thread,
            "chat": chat,
            "limits": await self._limited_round_trips(),
        }

    async def _limited_round_trips(self) -> dict[str, Any]:
        """M6 inline, ``rtt_clients[0]`` clients, on a cluster with the message and
        byte rate limits, the per-IP connection limit, the handshake rate limit and
        ``allowed_origins`` configured (``bench.cluster.SECURITY["limits"]``: so high
        that none triggers; ``limits_hit`` shows they did not), the clients sending
        an allowed ``Origin``."""
        s = self.sizes
        config = ClusterConfig(
            s.rtt_gateways, s.rtt_workers, s.ping_interval, 2, "inline", security="limits"
        )
        return await self._round_trips("inline", config, "M6 limits", (s.rtt_clients[0],))

    async def _chat_round_trips(self) -> dict[str, Any]:
        """M6 with the shipped chat app (``apps/chat/Events.py``, its ``async
        on_message``, with its start file's ``callbacks="inline"``, as users run it):
        ``rtt_clients[0]`` clients, each logged in to its own room, each sending
        ``say`` to ``"all"`` (its room: itself), at M6's offered rates. Same figures
        as the other series, plus the connect+login phase (``"connect"``)."""
        s = self.sizes
        config = ClusterConfig(s.rtt_gateways, s.rtt_workers, s.ping_interval, 2, "inline", "chat")
        return await self._round_trips(
            "inline", config, "M6 chat", (s.rtt_clients[0],), "chat", SAY_PREFIX, SAY_SUFFIX
        )

    async def _round_trips(
        self,
        callbacks: str,
        config: ClusterConfig | None = None,
        label: str = "",
        client_counts: tuple[int, ...] = (),
        protocol: str = "bench",
        prefix: bytes = b"",
        suffix: bytes = b"",
    ) -> dict[str, Any]:
        s = self.sizes
        if config is None:
            config = ClusterConfig(s.rtt_gateways, s.rtt_workers, s.ping_interval, 2, callbacks)
        label = label or ("M6" if callbacks == "inline" else f"M6 {callbacks}")
        client_counts = client_counts or s.rtt_clients
        series: dict[str, list[dict[str, Any]]] = {}
        connects: dict[str, dict[str, Any]] = {}
        with self.setup(label, config, s.rtt_gens):
            assert self.pool is not None
            for clients in client_counts:
                connects[str(clients)] = await self.connect(
                    clients, protocol=protocol, security=config.security
                )
                points: list[dict[str, Any]] = []
                series[str(clients)] = points
                for rate in s.rtt_rates:
                    point = await self.echo(rate, prefix, suffix)
                    points.append(point)
                    self.log(f"{label}: {clients} clients, {rate}/s: {point}")
                    if point["p99_ms"] > 200 or point["received"] < 0.8 * point["sent"]:
                        break  # saturated: higher rates only queue
                await self.close_all()
            hit = await self._limits_hit() if config.security else None
        best: dict[str, int] = {}
        for clients_label, points in series.items():
            ok = [
                p["offered_per_s"]
                for p in points
                if p["p99_ms"] < 10 and p["received"] >= 0.99 * p["sent"]
            ]
            best[clients_label] = max(ok, default=0)
        low = series[str(client_counts[0])][0]
        found = {"series": series, "best_rate_p99_under_10ms": best, "low_load": low}
        if protocol != "bench":
            found["connect"] = connects[str(client_counts[0])]
        if hit is not None:
            found["limits_hit"] = hit
        return found

    async def echo(self, rate: int, prefix: bytes = b"", suffix: bytes = b"") -> dict[str, Any]:
        """One M6 point; ``prefix``/``suffix`` wrap each timed request (the chat's
        ``say``). ``cluster_cpu_us_per_msg``: the cluster's CPU over the point
        divided by the round trips completed."""
        assert self.pool is not None
        per_gen = rate / len(self.pool)
        duration = self.sizes.rtt_duration
        cmd = {"op": "echo", "rate": per_gen, "duration": duration, "size": 32}
        if prefix or suffix:
            cmd.update(prefix=prefix, suffix=suffix)
        with self.cpu() as meter:
            results = await self.pool.call(cmd)
        lat = latencies(results)
        sent = sum(r["sent"] for r in results)
        received = sum(r["received"] for r in results)
        return {
            "offered_per_s": rate,
            "sent": sent,
            "received": received,
            "achieved_per_s": round(received / duration),
            "p50_ms": _ms(percentile(lat, 50)),
            "p90_ms": _ms(percentile(lat, 90)),
            "p99_ms": _ms(percentile(lat, 99)),
            "max_ms": _ms(max(lat, default=0)),
            "cluster_cpu_us_per_msg": per_unit_us(meter.result, received),
            "cpu": meter.result,
        }

    # ---- M7 ------------------------------------------------------------------------
    async def measure_push(self) -> dict[str, Any]:
        """M7 send_to_uid calls/s from one asyncio and one sync push client, and the
        end-to-end latency to the receiving connection."""
        s = self.sizes
        config = ClusterConfig(1, 1, s.ping_interval, 2)
        with self.setup("M7", config, 1):
            assert self.cluster is not None and self.pool is not None
            register = f"127.0.0.1:{self.cluster.register_port}"
            await self.connect(s.push_receivers, {"u": "u{i}"})
            uids = [f"u{i}" for i in range(s.push_receivers)]
            client = AsyncGatewayClient(register, timeout=10)
            await client.connect()
            try:
                result = {"async": await self._push_async(client, uids, s.pushes)}
                result["async_paced_1000_per_s"] = await self._push_paced(client, uids)
            finally:
                await client.close()
            result["sync"] = await self._push_sync(register, uids, s.sync_pushes)
            await self.close_all()
        self.log(f"M7: {result}")
        return result

    async def _push_async(
        self, client: AsyncGatewayClient, uids: list[str], count: int
    ) -> dict[str, Any]:
        assert self.pool is not None
        await self.pool.call({"op": "recv_reset", "track": True})
        pad = _payload()
        n = len(uids)
        with self.cpu() as meter:
            started_ns = time.monotonic_ns()
            for i in range(count):
                await client.send_to_uid(uids[i % n], f"B{time.monotonic_ns():019d}{pad}")
            client.flush()
            seconds = (time.monotonic_ns() - started_ns) / 1e9
            received, last_ns = await self._wait_received(count, 30)
        delivered_s = max(1e-9, (last_ns - started_ns) / 1e9)
        lat = latencies(await self.pool.call({"op": "recv_stats"}))
        return {
            "calls": count,
            "seconds": round(seconds, 3),
            "calls_per_s": round(count / seconds),
            "received": received,
            "delivered_seconds": round(delivered_s, 3),
            "delivered_per_s": round(received / delivered_s),
            "e2e_p50_ms": _ms(percentile(lat, 50)),
            "e2e_p99_ms": _ms(percentile(lat, 99)),
            "cpu": meter.result,
        }

    async def _push_paced(
        self, client: AsyncGatewayClient, uids: list[str], rate: int = 1000, seconds: float = 2.0
    ) -> dict[str, Any]:
        """End-to-end latency of pushes at a moderate, paced rate."""
        assert self.pool is not None
        await self.pool.call({"op": "recv_reset", "track": True})
        pad = _payload()
        count = int(rate * seconds)
        started = time.monotonic()
        for i in range(count):
            await client.send_to_uid(uids[i % len(uids)], f"B{time.monotonic_ns():019d}{pad}")
            client.flush()
            delay = started + (i + 1) / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        received, _ = await self._wait_received(count, 10)
        lat = latencies(await self.pool.call({"op": "recv_stats"}))
        return {
            "calls": count,
            "received": received,
            "e2e_p50_ms": _ms(percentile(lat, 50)),
            "e2e_p99_ms": _ms(percentile(lat, 99)),
        }

    async def _push_sync(self, register: str, uids: list[str], count: int) -> dict[str, Any]:
        assert self.pool is not None
        await self.pool.call({"op": "recv_reset", "track": True})
        pad = _payload()
        timing: dict[str, float] = {}

        def run() -> None:
            with GatewayClient(register, timeout=10) as client:
                client.get_all_client_count()  # discovery and links, outside the timing
                started = time.monotonic()
                for i in range(count):
                    client.send_to_uid(uids[i % len(uids)], f"B{time.monotonic_ns():019d}{pad}")
                timing["seconds"] = time.monotonic() - started

        with self.cpu() as meter:
            thread = threading.Thread(target=run, name="sync-push")
            thread.start()
            while thread.is_alive():
                await asyncio.sleep(0.05)
            received, _ = await self._wait_received(count, 30)
        lat = latencies(await self.pool.call({"op": "recv_stats"}))
        seconds = timing.get("seconds", 0.0)
        return {
            "calls": count,
            "seconds": round(seconds, 3),
            "calls_per_s": round(count / seconds) if seconds else 0,
            "received": received,
            "e2e_p50_ms": _ms(percentile(lat, 50)),
            "e2e_p99_ms": _ms(percentile(lat, 99)),
            "cpu": meter.result,
        }

    # ---- M8 ------------------------------------------------------------------------
    async def measure_php_push(self) -> dict[str, Any]:
        """M8 ``send_to_group`` from PHP's GatewayClient (GatewayWorker's protocol on
        the gateway's internal port) next to the msgpack push client, same cluster and
        group: calls/s as the sender made them and deliveries/s at the members. PHP
        side: one persistent link (``$persistentConnection``), one connection per call
        (GatewayClient's default), and php-cli itself when installed.

        Each burst puts ``m8_calls`` messages (about 2.2 MB at full size) on every
        member, more than the gateway's default ``send_buffer_limit`` (1 MiB): when
        the one generator process falls behind the sender, the gateway rightly
        closes the members as slow consumers, and every later phase measured
        nothing. M8 measures the senders, so its gateway holds a whole burst per
        member (:func:`_m8_send_buffer_limit`). A phase that still loses messages or
        members is an error with the gateway's log lines (:meth:`_checked`), never a
        figure."""
        s = self.sizes
        config = ClusterConfig(
            1, 1, s.ping_interval, 2, send_buffer_limit=_m8_send_buffer_limit(s.m8_calls)
        )
        with self.setup("M8", config, 1):
            assert self.cluster is not None
            register = f"127.0.0.1:{self.cluster.register_port}"
            address = f"127.0.0.1:{self.cluster.start_port}"
            members = (await self.connect(s.m8_members, {"g": "m8"}))["ready"]
            client = AsyncGatewayClient(register, timeout=10)
            await client.connect()
            try:
                result = {
                    "msgpack": await self._checked(
                        "M8 msgpack",
                        members,
                        self._calls(client.send_to_group, members, s.m8_calls),
                    )
                }
            finally:
                await client.close()
            php = PhpPusher(address)
            await php.open()
            try:
                result["php_persistent"] = await self._checked(
                    "M8 php_persistent",
                    members,
                    self._calls(php.send_to_group, members, s.m8_calls),
                )
            finally:
                await php.close()
            result["php_per_call"] = await self._checked(
                "M8 php_per_call",
                members,
                self._calls(php.send_to_group_once, members, s.m8_per_call_calls),
            )
            php_cli = shutil.which("php")
            if php_cli:
                result["php_cli"] = await self._checked(
                    "M8 php_cli", members, self._php_cli(php_cli, address, members, s.m8_calls)
                )
            await self.close_all()
        self.log(f"M8: {result}")
        return result

    async def _checked(
        self, name: str, members: int, phase: Awaitable[dict[str, Any]]
    ) -> dict[str, Any]:
        """Run one burst (a :meth:`_delivered` result) to ``members`` clients. When it
        did not deliver everything, or members were closed, it is an error (in
        :attr:`errors`, with the cluster's log lines of the phase and how many
        members are still open), and its rates are left out: a burst to nobody is
        fast and must not read as a figure."""
        assert self.cluster is not None and self.pool is not None
        offset = self.cluster.log_offset()
        result = await phase
        status = await self.pool.call({"op": "status"})
        still_open = sum(r["open"] for r in status)
        result["members_open_after"] = still_open
        if result["deliveries"] >= result["expected"] and still_open >= members:
            return result
        log = self.cluster.log_since(offset, 5)
        reason = (
            f"{name}: {result['deliveries']} of {result['expected']} delivered, "
            f"{still_open} of {members} members still open; the cluster logged: "
            f"{' | '.join(log) if log else 'nothing'}"
        )
        self.log(reason)
        self.errors.append(reason)
        result["error"] = reason
        for figure in ("deliveries_per_s", "calls_per_s"):
            result.pop(figure, None)
        return result

    async def _calls(
        self, send: Callable[[str, str], Any], members: int, count: int
    ) -> dict[str, Any]:
        """A :meth:`_burst` of ``send("m8", message)`` calls, with calls/s."""
        burst = await self._burst(lambda message: send("m8", message), members, count)
        burst["calls_per_s"] = round(count / max(1e-9, burst["send_seconds"]))
        return burst

    async def _php_cli(self, php: str, address: str, members: int, count: int) -> dict[str, Any]:
        """``count`` sendToGroup calls made by php-cli (bench/phppush.php); calls/s
        from the time PHP itself measured (without starting php)."""
        timing: list[float] = []

        async def sends() -> None:
            timing.append(await php_cli_burst(php, address, "m8", count))

        result = await self._delivered(sends, members, count)
        result["php_seconds"] = round(timing[0], 3)
        result["calls_per_s"] = round(count / max(1e-9, timing[0]))
        return result


async def _watch_exits(
    pids: list[int], started_ns: int, log: Callable[[str], None], limit: float = 90.0
) -> tuple[list[float | None], list[str]]:
    """Seconds until each of ``pids`` exited (``None``: not within ``limit``); a
    ``py-spy dump`` of any still running after 10 s (when py-spy is installed)."""
    exited: dict[int, float] = {}
    dumps: list[str] = []
    dumped: set[int] = set()
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    while len(exited) < len(pids):
        elapsed = (time.monotonic_ns() - started_ns) / 1e9
        if elapsed > limit:
            break
        for pid in pids:
            if pid in exited:
                continue
            try:
                gone = psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                gone = True
            if gone:
                exited[pid] = round(elapsed, 3)
            elif elapsed > 10 and pid not in dumped and os.path.exists(spy):
                dumped.add(pid)
                log(f"M3: gateway pid {pid} still stopping after {elapsed:.0f} s; py-spy dump")
                proc = await asyncio.create_subprocess_exec(
                    spy,
                    "dump",
                    "--pid",
                    str(pid),
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                )
                out, _ = await proc.communicate()
                dumps.append(out.decode(errors="replace")[-4000:])
        await asyncio.sleep(0.05)
    return [exited.get(pid) for pid in pids], dumps
