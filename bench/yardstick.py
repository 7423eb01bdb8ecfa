"""What this machine can do without the cluster: the yardstick every headline figure
is divided by, and the CPU steal during the run.

Figures from two machines (or two runs on a noisy VM) cannot be compared as they
are: a loopback ``send()`` or an event-loop wake-up costs several times more on one
than on another. So each run also measures, in the same sitting:

- ``loopback_send_us``: CPU time of one ``send()`` of 100 bytes, round-robin over
  256 connected TCP loopback sockets whose peers read in another process (the unit
  cost of a fan-out delivery; M4 and M7 are divided by the rate it implies);
- ``echo_rtt_us``: the p50 of a bare asyncio (uvloop when present) TCP echo round
  trip between two processes, 100-byte messages one at a time (the floor of M6);
- ``connects_per_s``: bare TCP connect + accept + close per second between two
  processes (the floor of M3).

and :class:`StealMeter` reads the ``steal`` column of ``/proc/stat`` over the run:
time the hypervisor gave our virtual CPUs to someone else. A run with high steal
is reported as such instead of being taken for a slow cluster.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import socket
import statistics
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["StealMeter", "measure_yardstick", "ratios"]

PAYLOAD = b"x" * 100
SENDS = 50_000
ROUND_TRIPS = 5_000
CONNECTS = 2_000


def _cpu_times() -> list[int] | None:
    """The aggregate ``cpu`` line of /proc/stat (clock ticks), or None."""
    try:
        with open("/proc/stat") as fh:
            first = fh.readline().split()
    except OSError:
        return None
    if not first or first[0] != "cpu":
        return None
    return [int(v) for v in first[1:]]


@dataclass(slots=True)
class StealMeter:
    """CPU steal (and busy share) between :meth:`start` and :meth:`stop`, in % of
    all CPU time of the machine."""

    _start: list[int] | None = None
    _wall: float = 0.0

    def start(self) -> None:
        self._start = _cpu_times()
        self._wall = time.monotonic()

    def stop(self) -> dict[str, Any]:
        end = _cpu_times()
        if self._start is None or end is None:
            return {"steal_pct": None}
        delta = [b - a for a, b in zip(self._start, end, strict=False)]
        total = sum(delta[:8]) or 1  # user nice system idle iowait irq softirq steal
        steal = delta[7] if len(delta) > 7 else 0
        idle = delta[3] + delta[4]
        return {
            "steal_pct": round(100.0 * steal / total, 2),
            "busy_pct": round(100.0 * (total - idle - steal) / total, 2),
            "seconds": round(time.monotonic() - self._wall, 1),
        }


# ---- the peers, each in a process of its own ------------------------------------------


def _sink(port_w: Any, conns: int) -> None:
    """Accept ``conns`` connections and read them all until they close."""
    import selectors

    server = socket.create_server(("127.0.0.1", 0), backlog=conns)
    port_w.send(server.getsockname()[1])
    selector = selectors.DefaultSelector()
    for _ in range(conns):
        conn, _ = server.accept()
        conn.setblocking(False)
        selector.register(conn, selectors.EVENT_READ)
    open_conns = conns
    while open_conns:
        for key, _ in selector.select(5.0):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if not sock.recv(1 << 16):
                selector.unregister(sock)
                sock.close()
                open_conns -= 1


def _echo(port_w: Any) -> None:
    """An asyncio echo server (uvloop when importable), one connection."""

    async def main() -> None:
        done = asyncio.get_running_loop().create_future()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(1 << 16):
                writer.write(data)
            writer.close()
            done.set_result(None)

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port_w.send(server.sockets[0].getsockname()[1])
        await done

    _run(main())


def _acceptor(port_w: Any, count: int) -> None:
    server = socket.create_server(("127.0.0.1", 0), backlog=1024)
    port_w.send(server.getsockname()[1])
    for _ in range(count):
        conn, _ = server.accept()
        conn.close()


def _run(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)


def _peer(target: Any, *args: Any) -> tuple[Any, int]:
    ctx = multiprocessing.get_context("fork")
    read, write = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=target, args=(write, *args), daemon=True)
    proc.start()
    if not read.poll(30):
        proc.kill()
        raise RuntimeError(f"yardstick peer {target.__name__} did not start")
    return proc, int(read.recv())


# ---- the measurements -------------------------------------------------------------------


def _loopback_send_us(sends: int, conns: int = 256) -> float:
    proc, port = _peer(_sink, conns)
    try:
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(conns)]
        for sock in socks:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.send(PAYLOAD)  # warm-up
        rounds = max(1, sends // conns)
        start = time.process_time()
        for _ in range(rounds):
            for sock in socks:
                sock.send(PAYLOAD)
        spent = time.process_time() - start
        for sock in socks:
            sock.close()
        sends = rounds * conns
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    return 1e6 * spent / sends


def _echo_rtt_us(round_trips: int) -> float:
    proc, port = _peer(_echo)

    async def client() -> list[float]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        times: list[float] = []
        for i in range(round_trips + 200):
            start = time.perf_counter()
            writer.write(PAYLOAD)
            got = 0
            while got < len(PAYLOAD):
                got += len(await reader.read(1 << 16))
            if i >= 200:  # after the warm-up
                times.append(time.perf_counter() - start)
        writer.close()
        return times

    try:
        times = _run(client())
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    return 1e6 * statistics.median(times)


def _connects_per_s(count: int) -> float:
    proc, port = _peer(_acceptor, count)
    try:
        start = time.perf_counter()
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.close()
        spent = time.perf_counter() - start
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    return count / spent


def measure_yardstick(quick: bool = False) -> dict[str, Any]:
    """The yardstick of this machine, now (a few seconds; quick: a fraction)."""
    scale = 10 if quick else 1
    send_us = _loopback_send_us(SENDS // scale)
    return {
        "loopback_send_us": round(send_us, 3),
        "loopback_sends_per_s": round(1e6 / send_us),
        "echo_rtt_us": round(_echo_rtt_us(ROUND_TRIPS // scale), 1),
        "connects_per_s": round(_connects_per_s(CONNECTS // scale)),
        "pid": os.getpid(),
    }


def ratios(summary_values: dict[str, Any], stick: dict[str, Any]) -> dict[str, float | None]:
    """Headline figures divided by the yardstick (machine-independent-ish):

    - M3: connects/s per bare connect/s;
    - M4, M7: deliveries/s per bare loopback sends/s;
    - M6: p50 round trip (ms) per bare echo round trip (ms).
    """

    def div(a: Any, b: Any) -> float | None:
        if not isinstance(a, int | float) or not isinstance(b, int | float) or not b:
            return None
        return float(f"{a / b:.3g}")  # 3 significant digits: a small ratio is not 0.0

    echo_ms = stick.get("echo_rtt_us", 0) / 1000.0
    return {
        "M3": div(summary_values.get("M3"), stick.get("connects_per_s")),
        "M4": div(summary_values.get("M4"), stick.get("loopback_sends_per_s")),
        "M6": div(summary_values.get("M6"), echo_ms),
        "M7": div(summary_values.get("M7"), stick.get("loopback_sends_per_s")),
    }
