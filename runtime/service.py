"""What every child process shares: event loop, signals, master watchdog, stats.

A role's ``serve(spec)`` builds its service object and returns
``run_service(spec, service)``. The service has ``async start()`` (bind/connect;
return when ready, raise to fail the boot), ``async stop(graceful)`` and
``stats() -> dict``. ``stop`` is cut off after :data:`SELF_STOP_LIMIT` seconds, or
after the service's ``stop_limit`` attribute when it has a larger one (a business
worker draining its events for ``drain_timeout``).

Signals (installed on the loop):

- ``SIGTERM``: stop (``service.stop(graceful=False)``), exit ``ExitCode.OK``.
- ``SIGQUIT``: graceful stop (``graceful=True``: gateways close clients with 1001
  and wait for them; a business worker leaves its gateways and finishes the events
  it already received, which is how a reload retires the old worker).
- ``SIGUSR2``: write the stats file now (``status`` asks the master, which forwards).
- ``SIGINT``, ``SIGHUP``: ignored; the master coordinates Ctrl-C and reload.

The watchdog: ``PR_SET_PDEATHSIG`` makes the kernel send ``SIGTERM`` when the
master dies, and every second the child also checks that its parent is still
``spec.master_pid``; either way it stops and exits with ``ExitCode.MASTER_GONE`` so
no orphan keeps a port.

Stats: every second and on ``SIGUSR2`` the child writes ``service.stats()`` plus
``pid``, ``role``, ``name``, ``app``, ``index``, ``generation``, ``started_at``,
``updated_at``, ``rss`` (bytes), ``modules`` (the size of ``sys.modules``),
``packages`` (the third-party packages loaded) and the loop-lag probe's figures
(``loop_lag_max_ms``, ``loop_lag_own_max_ms``, ``loop_lag_peak_ms``, and
``loop_lag_since``: the wall-clock time the interval of the first two began) to
``spec.stats_path()``. For every key of
:data:`RATE_KEYS` the service reports (monotonic counters), it adds
``<key>_per_s``, the rate over the last interval. ``start.py status`` shows the keys
``connections``, ``messages_in``, ``messages_out``, ``send_failures`` and the rates.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

from pygatewayworker.runtime.footprint import Imports, rss_bytes, trim_heap
from pygatewayworker.runtime.logs import configure_child_logging
from pygatewayworker.runtime.spec import ChildSpec, ExitCode
from pygatewayworker.runtime.statsfile import StatsWriter

__all__ = ["Service", "run_service", "RATE_KEYS", "new_event_loop", "PULSE", "LoopPulse"]

log = logging.getLogger("cluster")  # lifecycle lines keep the supervisor's logger name

STATS_INTERVAL = 1.0
WATCHDOG_INTERVAL = 1.0
LAG_PROBE_INTERVAL = 0.05
"""How often the loop-lag probe wakes while the loop works: 20 times a second (its
periods alternate 45 and 55 ms, so that it never keeps step with a 50 ms timer of
the service's and takes that timer's wake-ups for its own)."""
LAG_PROBE_IDLE_INTERVAL = 0.5
"""How often it wakes once the loop is idle: each wake-up of an idle process costs
some 100 us of CPU on a small VM (timer, context switch), 20 a second in each of six
processes about 17 ms/s of an idle cluster."""
LAG_PROBE_IDLE_AFTER = 5
"""Consecutive quiet periods (below) after which the loop counts as idle; one
period that is not quiet makes it busy again."""
LAG_PROBE_QUIET_CPU = 0.01
"""A quiet period: the loop thread used under this share of it on a CPU, plus
:data:`LAG_PROBE_WAKE_CPU` for each time it was woken..."""
LAG_PROBE_WAKE_CPU = 0.003
"""... for the CPU a wake-up itself is charged: on a small VM a thread that slept
is charged 0.05-0.7 ms for waking from a bare ``time.sleep``, and 1-3 ms for the
probe's wake-ups at times (measured with schedstat), more than 1 % of a 50 ms
period; a callback that runs for longer than this is work, not a wake-up..."""
LAG_PROBE_QUIET_WAKEUPS = 15.0
"""... and was woken for nothing but the probe (in a 50 ms period), or at most this
many times a second besides it (once idle: the housekeeping timers of a worker,
a gateway, the register)."""
SELF_STOP_LIMIT = 60.0
"""Upper bound for ``service.stop`` when no master is left to enforce one (unless
the service's ``stop_limit`` is larger)."""
RATE_KEYS = ("messages_in", "messages_out")
_MIN_RATE_INTERVAL = 0.5
_PR_SET_PDEATHSIG = 1


class Service(Protocol):
    """What a role hands to :func:`run_service`."""

    async def start(self) -> None: ...

    async def stop(self, graceful: bool) -> None: ...

    def stats(self) -> dict[str, Any]: ...


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A uvloop loop when uvloop is installed, else the default asyncio loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run_service(spec: ChildSpec, service: Service, *, fast_loop: bool = True) -> int:
    """Run ``service`` in this process until asked to stop; return the exit code.

    ``fast_loop``: run on uvloop when it is installed (:func:`new_event_loop`); a role
    whose traffic is a few lines a second (the register) passes ``False`` and runs on
    asyncio's own loop, which spares the process uvloop's memory."""
    configure_child_logging(spec.name, level=spec.log_level, fmt=spec.log_format)
    if spec.master_pid:
        _set_parent_death_signal(signal.SIGTERM)
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    factory = new_event_loop if fast_loop else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return int(runner.run(_ChildRuntime(spec, service).run()))


def _set_parent_death_signal(sig: int) -> None:
    """Ask Linux to send ``sig`` to this process when its parent dies."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        pass  # the once-a-second watchdog still covers it


class _ChildRuntime:
    """The lifecycle of one child: boot, serve until a stop request, stop."""

    def __init__(self, spec: ChildSpec, service: Service) -> None:
        self.spec = spec
        self.service = service
        self.started_at = time.time()
        self.exit_code = ExitCode.OK
        self.graceful = False
        self._stop = asyncio.Event()
        self._stopping = False
        self._last_counts: tuple[float, dict[str, float]] | None = None
        self._rates: dict[str, float] = {}
        self._ready = False
        self._stats_writer = StatsWriter(spec)
        self._lag_max = 0.0
        self._lag_peak = 0.0
        self._imports = Imports()
        self._lag_own_max = 0.0
        self._lag_since = time.time()

    def request_stop(self, graceful: bool) -> None:
        """Signal handler of SIGTERM/SIGQUIT, and the watchdog's exit."""
        if self._stopping:
            return
        self._stopping = True
        self.graceful = graceful
        if self.spec.master_pid and os.getppid() != self.spec.master_pid:
            self.exit_code = ExitCode.MASTER_GONE
        self._stop.set()

    async def run(self) -> ExitCode:
        loop = asyncio.get_running_loop()
        handlers: dict[int, Callable[[], None]] = {
            signal.SIGTERM: lambda: self.request_stop(False),
            signal.SIGQUIT: lambda: self.request_stop(True),
            signal.SIGUSR2: self.write_stats,
        }
        for sig, handler in handlers.items():
            loop.add_signal_handler(sig, handler)
        watchdog = asyncio.create_task(self._watch_master())
        try:
            booted = await self._boot()
            if booted is not None:
                return booted
            self._ready = True
            gc.collect()  # what the imports and the boot left behind,
            trim_heap()  # and the heap pages it leaves free, back to the kernel
            self.spec.notify_ready()
            log.info("ready (%s)", self.spec.role)
            stats_task = asyncio.create_task(self._write_stats_every_second())
            lag_probe = _LagProbe(self)
            try:
                await self._stop.wait()
                stats_task.cancel()
                await self._stop_service()  # probed too: a worker's watchdog reads the pulse
            finally:
                lag_probe.close()
            return self.exit_code
        finally:
            watchdog.cancel()
            self._stats_writer.close()
            for sig in handlers:
                loop.remove_signal_handler(sig)

    async def _boot(self) -> ExitCode | None:
        """Start the service; None when it is ready, else the exit code to return."""
        start = asyncio.create_task(self.service.start())
        stop = asyncio.create_task(self._stop.wait())
        await asyncio.wait({start, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not start.done():
            log.info("stop requested while starting")
            start.cancel()
            with contextlib.suppress(BaseException):
                await start
            await self._stop_service()
            return self.exit_code
        exc = start.exception()
        if exc is None:
            return None
        reason = str(exc) or type(exc).__name__
        log.error("could not start: %s", reason, exc_info=exc)
        self.spec.notify_error(reason)
        return ExitCode.BOOT_ERROR

    async def _stop_service(self) -> None:
        kind = "graceful stop" if self.graceful else "stop"
        log.info("%s requested", kind)
        limit = max(SELF_STOP_LIMIT, float(getattr(self.service, "stop_limit", 0.0)))
        try:
            await asyncio.wait_for(self.service.stop(self.graceful), limit)
        except TimeoutError:
            log.error("%s did not finish within %g s; exiting anyway", kind, limit)
        except Exception:
            log.exception("error while stopping")

    async def _watch_master(self) -> None:
        master = self.spec.master_pid
        if not master:
            return
        while True:
            if os.getppid() != master:
                log.warning("master (pid %s) is gone; stopping", master)
                self.request_stop(False)
                return
            await asyncio.sleep(WATCHDOG_INTERVAL)

    async def _write_stats_every_second(self) -> None:
        while True:
            self.write_stats()
            await asyncio.sleep(STATS_INTERVAL)

    def write_stats(self) -> None:
        """Hand this child's stats snapshot to the writer thread (once the service is
        ready): the loop only builds the JSON text, the file is written off the loop."""
        if not self._ready:
            return
        self._stats_writer.submit(self.snapshot())

    def snapshot(self) -> dict[str, Any]:
        """The service's counters plus who we are and the counter rates."""
        try:
            stats = dict(self.service.stats())
        except Exception:
            log.exception("service.stats() failed")
            stats = {}
        now = time.monotonic()
        self._update_rates(stats, now)
        stats.update(self._rates)
        spec = self.spec
        stats.update(
            pid=os.getpid(),
            role=spec.role,
            name=spec.name,
            app=getattr(spec.config, "app", ""),
            index=spec.index,
            generation=spec.generation,
            started_at=self.started_at,
            updated_at=time.time(),
            rss=rss_bytes(),
            **self._imports.snapshot(),
            loop_lag_max_ms=round(self._lag_max * 1000, 2),
            loop_lag_peak_ms=round(self._lag_peak * 1000, 2),
            loop_lag_own_max_ms=round(self._lag_own_max * 1000, 2),
            loop_lag_since=self._lag_since,
        )
        self._lag_max = self._lag_own_max = 0.0
        self._lag_since = stats["updated_at"]
        return stats

    def _update_rates(self, stats: dict[str, Any], now: float) -> None:
        counts = {k: float(stats[k]) for k in RATE_KEYS if isinstance(stats.get(k), int | float)}
        last = self._last_counts
        if last is not None and now - last[0] < _MIN_RATE_INTERVAL:
            return  # too short an interval (SIGUSR2 right after a tick): keep the rates
        if last is not None:
            elapsed = now - last[0]
            for key, value in counts.items():
                if key in last[1]:
                    self._rates[f"{key}_per_s"] = round(max(0.0, value - last[1][key]) / elapsed, 2)
        self._last_counts = (now, counts)


class LoopPulse:
    """When this process's loop-lag probe is due next (``time.monotonic()``; 0.0
    while no probe runs). A probe this late means the loop has run nothing since:
    a watcher in another thread (the business worker's slow-callback watchdog)
    tells a blocked loop from an idle one by it, without a timer of its own waking
    the loop."""

    __slots__ = ("due", "idle_interval")

    def __init__(self) -> None:
        self.due = 0.0
        self.idle_interval = LAG_PROBE_IDLE_INTERVAL
        """How often the probe wakes an idle loop: a watcher that needs a finer
        pulse lowers it (the watchdog, to its period: it measures a blocked loop
        from the probe that is overdue, so the interval is how late it may notice)."""


PULSE = LoopPulse()
"""The pulse of this process's loop (one probe per process: the child's)."""


class _LagProbe:
    """How late the loop wakes a timer: the longest stall of the loop (by our own
    housekeeping or anyone's) within each stats interval, reported as
    ``loop_lag_max_ms`` (and ``loop_lag_peak_ms`` since start). On a machine with
    more runnable processes than cores much of that is time spent waiting for a
    CPU; ``loop_lag_own_max_ms`` is the lag minus the loop thread's run-queue
    wait over the same period (Linux ``/proc/thread-self/schedstat``): what our
    own callbacks cost, a lower bound when the wait fell before the due time.

    A plain timer callback that re-arms itself (not a task sleeping in a loop: no
    future and no task step per probe), with one ``schedstat`` reading per probe
    that also starts the next probe's period: every :data:`LAG_PROBE_INTERVAL`
    while the loop works, every :data:`LAG_PROBE_IDLE_INTERVAL` once it is idle
    (:data:`LAG_PROBE_IDLE_AFTER` quiet periods in a row: hardly any CPU, woken
    for nothing but the probe; in an idle period, a few housekeeping timers a
    second are allowed). A stall needs a callback that runs, so it comes in a busy
    loop, or ends an idle one: then the probe due next (at most 0.5 s later) sees
    it and the probe goes back to 50 ms. Like any timer probe it sees a stall only
    when a probe falls due during it: its figures are lower bounds."""

    __slots__ = ("_child", "_loop", "_read", "_timer", "_quiet", "_flip")

    def __init__(self, child: _ChildRuntime) -> None:
        self._child = child
        self._loop = asyncio.get_running_loop()
        self._read = _SchedStat()
        self._quiet = 0
        self._flip = False
        self._timer = self._arm(self._loop.time(), LAG_PROBE_INTERVAL, self._read())

    def _arm(self, now: float, wait: float, stat: tuple[float, float, int]) -> asyncio.TimerHandle:
        due = now + wait
        PULSE.due = time.monotonic() + wait
        return self._loop.call_at(due, self._probe, due, wait, stat)

    def _probe(self, due: float, wait: float, stat0: tuple[float, float, int]) -> None:
        now = self._loop.time()
        stat = self._read()
        wait_next = LAG_PROBE_INTERVAL
        try:
            wait_next = self._measure(now, due, wait, stat0, stat)
        finally:  # never left unarmed: a stale pulse would read as a blocked loop
            self._timer = self._arm(now, wait_next, stat)

    def _measure(
        self,
        now: float,
        due: float,
        wait: float,
        stat0: tuple[float, float, int],
        stat: tuple[float, float, int],
    ) -> float:
        """Note this probe's lag; return how long to wait for the next one."""
        ran, waited, woken = stat
        lag = now - due
        child = self._child
        if lag > child._lag_max:
            child._lag_max = lag
            child._lag_peak = max(child._lag_peak, lag)
        own = lag - (waited - stat0[1])
        if own > child._lag_own_max:
            child._lag_own_max = own
        period = wait + lag
        idle = self._quiet >= LAG_PROBE_IDLE_AFTER
        quiet = woken > 0 and period_is_quiet(period, ran - stat0[0], woken - stat0[2], idle)
        self._quiet = self._quiet + 1 if quiet else 0
        if self._quiet >= LAG_PROBE_IDLE_AFTER:
            return PULSE.idle_interval
        self._flip = not self._flip
        return LAG_PROBE_INTERVAL * (0.9 if self._flip else 1.1)

    def close(self) -> None:
        """Stop probing (the child stops)."""
        PULSE.due = 0.0
        self._timer.cancel()
        self._read.close()


def period_is_quiet(period: float, ran: float, woken: int, idle: bool) -> bool:
    """Whether a probe period of ``period`` seconds, in which the loop thread ran
    for ``ran`` seconds and was put on a CPU ``woken`` times (the probe's own
    wake-up included), was quiet: no wake-up besides the probe's while the probe
    runs every 50 ms (a few a second once idle), and no more CPU than those
    wake-ups cost."""
    extra = woken - 1
    if extra > (int(LAG_PROBE_QUIET_WAKEUPS * period) if idle else 0):
        return False
    return ran < LAG_PROBE_QUIET_CPU * period + LAG_PROBE_WAKE_CPU * max(woken, 1)


class _SchedStat:
    """The calling thread's seconds on a CPU, seconds runnable but waiting for one,
    and times it was put on a CPU (its wake-ups and preemptions): the three fields
    of Linux's ``/proc/thread-self/schedstat`` (zeros where it is missing). One
    ``pread`` on a file kept open: about half a microsecond."""

    def __init__(self) -> None:
        try:
            self._fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        except OSError:
            self._fd = -1

    def __call__(self) -> tuple[float, float, int]:
        if self._fd < 0:
            return 0.0, 0.0, 0
        try:
            fields = os.pread(self._fd, 64, 0).split()
            return int(fields[0]) / 1e9, int(fields[1]) / 1e9, int(fields[2])
        except (OSError, ValueError, IndexError):
            return 0.0, 0.0, 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
