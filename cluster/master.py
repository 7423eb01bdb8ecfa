"""The supervisor: one synchronous master process that binds, forks and watches.

How this works
--------------
(The model is gunicorn's arbiter.)

1. The master writes the pid file (refusing to start over a live master), then binds
   every listening socket before any child exists: the register's, and for each
   gateway process a public socket (``SO_REUSEPORT``: the kernel balances accepts
   across gateway processes) and an internal one. A port conflict is reported here,
   with nothing running. The sockets stay open in the master for its whole life, so
   a respawned child serves the very same socket and clients queue in its backlog
   instead of being refused while it restarts.
2. It forks the children role by role (registers, gateways, business workers); each
   group must report ``ready`` on the shared status pipe (JSON lines tagged with the
   child's pid, written by ``ChildSpec.notify_ready``/``notify_error``) before the
   next group starts. A child that reports an error, exits, or stays silent past the
   boot timeout fails the whole start: everything is stopped and the reason reported.
3. Then it loops on ``select`` over three pipes: signal wakeup, child status lines,
   child log output (cluster.logs). Signal handlers only queue the signal; the loop
   dispatches ``handle_<name>``: TERM/INT stop, QUIT stops gracefully, HUP reloads
   the business workers, USR2 asks every child for fresh stats, CHLD reaps.
4. A child that dies unexpectedly is respawned, with growing delays when it keeps
   dying (:func:`cluster.slots.respawn_delay`); the log says how it died.
5. A reload (:mod:`cluster.reload`) is a small state machine advanced by the loop,
   one worker slot at a time: fork the new generation (it imports the app's current
   Events code: the master never imported it), wait until it is ready (linked to
   every gateway), SIGQUIT the old one (it leaves its gateways and finishes the
   events it received, bounded by its ``drain_timeout``) and wait for it to exit. Registers and gateways keep running, so no
   client connection drops. A new worker that fails to boot ends the reload and the
   old workers keep serving.
6. Stopping signals gateways first (clients get their close frames while workers
   still run ``on_close``), then business workers, then registers; whatever is left
   at the deadline is killed.

The master imports no user code: declarations come from :mod:`cluster.apps`, and a
role's runtime is imported only in the forked child. Children cannot become orphans:
see the watchdog in :mod:`runtime.service`.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import logging
import os
import select
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, Protocol

from pygatewayworker.cluster.apps import AppsPlan, Declaration
from pygatewayworker.cluster.logs import LineBuffer, LogPipe, LogSink, configure_master_logging
from pygatewayworker.cluster.observe import RUNTIME as METRICS_RUNTIME
from pygatewayworker.cluster.observe import Metrics
from pygatewayworker.cluster.pidfile import AlreadyRunning, PidFile
from pygatewayworker.cluster.reload import Reloader
from pygatewayworker.cluster.slots import STABLE_AFTER, Child, Slot, describe_exit, respawn_delay
from pygatewayworker.cluster.sockets import BindError, bind_slot_sockets
from pygatewayworker.cluster.spawn import run_child
from pygatewayworker.cluster.state import RunPaths, write_json_atomic
from pygatewayworker.runtime.footprint import Imports, trim_heap
from pygatewayworker.runtime.spec import ChildSpec

__all__ = ["Master", "MasterOptions", "Reporter", "StartFailed", "BOOT_ORDER", "STOP_ORDER"]

log = logging.getLogger("cluster")

BOOT_ORDER = ("register", "gateway", "businessworker", "pushapi", "pusherapi", "metrics")
PRELOAD = ("asyncio", "ctypes", "hmac")
"""Standard-library modules every child imports (its event loop, the parent-death
signal, the links' handshake), imported by the master before its first fork so that
the children share their pages instead of each building its own copy. Measured on
the shipped chat cluster: 14 MiB less in the RSS sum and in the PSS sum
(docs/memory.md). Never a third-party package and never a role's module: the master
and the register load no uvloop, msgpack..., and a reload still imports new code.
The master does not run an event loop."""
STOP_ORDER = ("metrics", "pushapi", "pusherapi", "gateway", "businessworker", "register")
"""The metrics listener (``--metrics-listen``) starts last and stops first: its
``/healthz`` answers only while the whole cluster is up."""
SIGNAL_NAMES = {
    signal.SIGTERM: "term",
    signal.SIGINT: "int",
    signal.SIGQUIT: "quit",
    signal.SIGHUP: "hup",
    signal.SIGUSR2: "usr2",
    signal.SIGCHLD: "chld",
}
TICK = 1.0
KILL_WAIT = 5.0


@dataclass(slots=True)
class MasterOptions:
    """How the master runs (no I/O here)."""

    run_dir: str
    apps_dir: str = ""
    app: str | None = None
    foreground: bool = True
    boot_timeout: float = 30.0
    stop_timeout: float = 10.0
    graceful_timeout: float = 30.0
    reload_timeout: float = 30.0
    log_level: int = logging.INFO
    log_format: str = "text"
    """``text`` or ``json`` (cluster.logs), for the master and every child."""
    metrics: Metrics | None = None
    """The metrics listener to run as a process of its own (``--metrics-listen``)."""


class Reporter(Protocol):
    """Who hears about the outcome of the start (the terminal, or the CLI process
    waiting on a daemon's pipe)."""

    def ready(self, state: dict[str, Any]) -> None: ...

    def failed(self, message: str) -> None: ...

    def fds(self) -> tuple[int, ...]:
        """File descriptors children must close."""
        ...


class StartFailed(Exception):
    """The cluster could not start; ``interrupted`` when a stop signal ended it."""

    def __init__(self, message: str, interrupted: bool = False) -> None:
        super().__init__(message)
        self.interrupted = interrupted


class Master:
    """The supervisor; :meth:`run` returns the process exit code."""

    def __init__(self, plan: AppsPlan, options: MasterOptions, reporter: Reporter) -> None:
        self.plan = plan
        self.options = options
        self.reporter = reporter
        self.paths = RunPaths.at(options.run_dir)
        self.pidfile = PidFile(self.paths.pid_file)
        self.slots: list[Slot] = []
        self.phase = "init"
        self.generation = 0
        self.started_at = time.time()
        self.reloader = Reloader(self, options.reload_timeout)
        self._imports = Imports()
        self._by_pid: dict[int, tuple[Slot, Child]] = {}
        self._signals: list[int] = []
        self._stop_request: str | None = None
        self._force_kill = False
        self._boot_failure: str | None = None
        self._dirty = True
        self._status_lines = LineBuffer()
        self._sink: LogSink | None = None
        self._log_pipe: LogPipe | None = None
        self._status_r = self._status_w = self._wake_r = self._wake_w = -1

    # ---- lifecycle -------------------------------------------------------------------

    def run(self) -> int:
        """Start everything, serve until stopped, stop everything."""
        for name in PRELOAD:
            importlib.import_module(name)
        try:
            self._setup()
        except (AlreadyRunning, OSError) as exc:
            self.pidfile.remove()
            self.reporter.failed(str(exc))
            return 1
        try:
            self._bind()
            self._boot()
        except StartFailed as exc:
            log.error("start failed: %s", exc)
            self._stop_all(graceful=False)
            self._teardown()
            self.reporter.failed(str(exc))
            return 0 if exc.interrupted else 1
        self._write_state()
        log.info("ready: %d children", len(self._by_pid))
        with contextlib.suppress(OSError):  # e.g. stdout piped into a closed `head`
            self.reporter.ready(self.snapshot())
        self._serve()
        self._stop_all(graceful=self._stop_request == "graceful")
        self._teardown()
        return 0

    def _setup(self) -> None:
        os.makedirs(self.paths.stats_dir, exist_ok=True)
        self.pidfile.create()
        self._sink = LogSink(
            self.paths.log_file, echo=sys.stderr if self.options.foreground else None
        )
        configure_master_logging(self._sink, self.options.log_level, self.options.log_format)
        self._log_pipe = LogPipe(self._sink, self.options.log_format)
        self._status_r, self._status_w = os.pipe()
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._status_r, self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for sig in SIGNAL_NAMES:
            signal.signal(sig, self._queue_signal)
        self._clear_stats()
        log.info("master starting (pid %s): apps %s", os.getpid(), ", ".join(self.plan.apps))

    def _bind(self) -> None:
        public_ports: dict[int, int] = {}
        try:
            for decl in self._declarations():
                for index in range(decl.count):
                    sockets = bind_slot_sockets(decl, index, public_ports)
                    self.slots.append(Slot(decl, index, sockets))
        except BindError as exc:
            raise StartFailed(str(exc)) from None

    def _declarations(self) -> list[Declaration]:
        """The apps' declarations, and the metrics listener's when there is one."""
        metrics = self.options.metrics
        if metrics is None:
            return self.plan.declarations
        own = Declaration(metrics.app, "metrics", metrics, "--metrics-listen", METRICS_RUNTIME)
        return [*self.plan.declarations, own]

    def _boot(self) -> None:
        self.phase = "booting"
        for role in BOOT_ORDER:
            group = [s for s in self.slots if s.role == role]
            if not group:
                continue  # a role not run here costs no wait
            for slot in group:
                slot.current = self._spawn(slot)
            self._wait_ready(group)
        self.phase = "running"

    def _wait_ready(self, group: list[Slot]) -> None:
        deadline = time.monotonic() + self.options.boot_timeout
        while True:
            self._tick(0.2)
            self._write_state_if_dirty()
            if self._stop_request is not None:
                raise StartFailed("stopped by a signal while starting", interrupted=True)
            if self._boot_failure is not None:
                raise StartFailed(self._boot_failure)
            waiting = [s.name for s in group if not (s.current and s.current.ready)]
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise StartFailed(
                    f"{', '.join(waiting)} did not report ready within "
                    f"{self.options.boot_timeout:g} s"
                )

    def _serve(self) -> None:
        while self._stop_request is None:
            self._tick(self._next_timeout())
            self._spawn_due()
            self._advance_reload()
            self._write_state_if_dirty()

    def _advance_reload(self) -> None:
        reloader = self.reloader
        if not reloader.busy and reloader.pending:
            self._start_reload()
        if reloader.advance():
            self._dirty = True

    def _start_reload(self) -> None:
        self.generation += 1
        workers = [s for s in self.slots if s.role == "businessworker"]
        self.reloader.begin(workers, self.generation)
        self._dirty = True

    def _stop_all(self, graceful: bool) -> None:
        """Stop every child (gateways, then workers, then registers); kill leftovers."""
        self.phase = "stopping"
        self.reloader.cancel()
        timeout = self.options.graceful_timeout if graceful else self.options.stop_timeout
        deadline = time.monotonic() + timeout
        for role in STOP_ORDER:
            group = [c for s in self.slots if s.role == role for c in s.children()]
            for child in group:
                graceful_child = graceful and child.ready
                self._signal(child, signal.SIGQUIT if graceful_child else signal.SIGTERM)
                child.stopping = True
            self._wait_gone(group, deadline)
        leftovers = [(s, c) for s in self.slots for c in s.children()]
        for slot, child in leftovers:
            log.warning("%s (pid %s) is still running: killing it", slot.name, child.pid)
            self._signal(child, signal.SIGKILL)
        self._force_kill = False
        self._wait_gone([c for _, c in leftovers], time.monotonic() + KILL_WAIT)

    def _wait_gone(self, children: list[Child], deadline: float) -> None:
        while any(c.pid in self._by_pid for c in children):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._force_kill:
                return
            self._tick(min(0.2, remaining))
            self._write_state_if_dirty()

    def _teardown(self) -> None:
        for slot in self.slots:
            for sock in slot.sockets.values():
                sock.close()
        self._clear_stats()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.paths.state_file)
        self.pidfile.remove()
        log.info("master stopped")
        signal.set_wakeup_fd(-1)
        for sig in SIGNAL_NAMES:
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for fd in (self._status_r, self._status_w, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self._log_pipe is not None:
            self._log_pipe.drain()
            self._log_pipe.close()
        logging.getLogger().handlers.clear()
        if self._sink is not None:
            self._sink.close()

    # ---- the loop's primitives ---------------------------------------------------------

    def _queue_signal(self, signum: int, frame: object) -> None:
        """The only signal handler: queue it (the wakeup fd wakes ``select``)."""
        if len(self._signals) < 64:
            self._signals.append(signum)

    def _tick(self, timeout: float) -> None:
        """Wait for a signal, a status line or log output; handle what arrived."""
        fds = [self._wake_r, self._status_r]
        if self._log_pipe is not None:
            fds.append(self._log_pipe.read_fd)
        readable, _, _ = select.select(fds, [], [], max(0.0, timeout))
        if self._wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 4096):
                    pass
        if self._status_r in readable:
            self._read_status()
        if self._log_pipe is not None and self._log_pipe.read_fd in readable:
            self._log_pipe.drain()
        while self._signals:
            name = SIGNAL_NAMES.get(signal.Signals(self._signals.pop(0)))
            if name:
                getattr(self, f"handle_{name}")()
        self._reap()

    def _next_timeout(self) -> float:
        due = [s.respawn_at for s in self.slots if s.respawn_at is not None]
        if not due:
            return TICK
        return max(0.0, min(TICK, min(due) - time.monotonic()))

    def _signal(self, child: Child, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, sig)

    # The reloader's view of the master (cluster.reload.ChildControl).

    def spawn_child(self, slot: Slot, generation: int) -> Child:
        return self._spawn(slot, generation)

    def signal_child(self, child: Child, sig: int) -> None:
        self._signal(child, sig)

    def child_alive(self, child: Child) -> bool:
        return child.pid in self._by_pid

    # ---- signal handlers -----------------------------------------------------------

    def handle_term(self) -> None:
        self._request_stop("stop", "SIGTERM")

    def handle_int(self) -> None:
        self._request_stop("stop", "SIGINT")

    def handle_quit(self) -> None:
        self._request_stop("graceful", "SIGQUIT")

    def _request_stop(self, kind: str, signame: str) -> None:
        if self.phase == "stopping":
            if kind == "stop":
                log.warning("%s while stopping: killing the children now", signame)
                self._force_kill = True
        elif self._stop_request is None:
            log.info("%s: %s", signame, "graceful stop" if kind == "graceful" else "stopping")
            self._stop_request = kind

    def handle_hup(self) -> None:
        if self.phase == "stopping":
            return
        if self.phase != "running" or self.reloader.busy:
            busy = "start" if self.phase != "running" else "reload"
            log.info("SIGHUP: a reload will follow the current %s", busy)
            self.reloader.pending = True
            return
        self._start_reload()

    def handle_usr2(self) -> None:
        for slot in self.slots:
            for child in slot.children():
                if child.ready:
                    self._signal(child, signal.SIGUSR2)

    def handle_chld(self) -> None:
        """Children are reaped at the end of every tick."""

    # ---- children ---------------------------------------------------------------------

    def _spawn(self, slot: Slot, generation: int | None = None) -> Child:
        gen = self.generation if generation is None else generation
        spec = ChildSpec(
            role=slot.role,
            config=slot.decl.config,
            index=slot.index,
            generation=gen,
            sockets=slot.sockets,
            status_fd=self._status_w,
            run_dir=self.paths.run_dir,
            master_pid=os.getpid(),
            log_level=self.options.log_level,
            log_format=self.options.log_format,
        )
        assert self._log_pipe is not None
        log_fd, closes = self._log_pipe.write_fd, self._child_closes(slot)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        _prepare_fork()
        pid = os.fork()
        if pid == 0:
            run_child(slot, spec, log_fd, closes)
        child = Child(pid, gen, time.time(), time.monotonic())
        self._by_pid[pid] = (slot, child)
        self._dirty = True
        log.info("started %s (pid %s, generation %s)", slot.name, pid, gen)
        return child

    def _child_closes(self, slot: Slot) -> list[Any]:
        """What a new child must close: the master's pipes, others' sockets."""
        assert self._log_pipe is not None
        closes: list[Any] = [self._status_r, self._wake_r, self._wake_w]
        closes += [self._log_pipe.read_fd, self._log_pipe.write_fd]
        closes.extend(self.reporter.fds())
        for other in self.slots:
            if other is not slot:
                closes.extend(other.sockets.values())
        return closes

    def _read_status(self) -> None:
        for line in self._status_lines.read_from(self._status_r):
            self._on_status_line(line)

    def _on_status_line(self, line: str) -> None:
        try:
            message = json.loads(line)
            pid, kind, text = int(message["pid"]), str(message["kind"]), str(message["message"])
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable status line from a child: %.200r", line)
            return
        entry = self._by_pid.get(pid)
        handler = getattr(self, f"on_child_{kind}", None)
        if entry is not None and handler is not None:
            handler(entry[0], entry[1], text)

    def on_child_ready(self, slot: Slot, child: Child, message: str) -> None:
        if not child.ready:
            child.ready = True
            self._dirty = True
            log.info("%s (pid %s) is ready", slot.name, child.pid)

    def on_child_error(self, slot: Slot, child: Child, message: str) -> None:
        child.error = message
        what = "failed" if child.ready else "could not start"
        log.error("%s (pid %s) %s: %s", slot.name, child.pid, what, message)
        if self.phase == "booting" and self._boot_failure is None:
            self._boot_failure = f"{slot.name} could not start: {message}"

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._child_exited(pid, os.waitstatus_to_exitcode(status))

    def _child_exited(self, pid: int, code: int) -> None:
        """A child is reaped. What it wrote on the status pipe before it exited (why
        it could not start) is read first: the select that woke us may have come
        before that line, and its exit must not be reported without its reason."""
        self._read_status()
        entry = self._by_pid.pop(pid, None)
        if entry is not None:
            self._on_exit(entry[0], entry[1], code)

    def _on_exit(self, slot: Slot, child: Child, code: int) -> None:
        child.exit_reason = describe_exit(code) + (f": {child.error}" if child.error else "")
        self._dirty = True
        if child is slot.retiring:
            slot.retiring = None
            log.info("%s old generation (pid %s) %s", slot.name, child.pid, child.exit_reason)
            return
        if child is slot.replacement:
            slot.replacement = None
            log.warning("%s new generation (pid %s) %s", slot.name, child.pid, child.exit_reason)
            return
        if child is not slot.current:
            return
        slot.current = None
        slot.last_exit = child.exit_reason
        if child.stopping or self.phase == "stopping":
            log.info("%s (pid %s) %s", slot.name, child.pid, child.exit_reason)
        elif self.phase == "booting":
            if self._boot_failure is None:
                self._boot_failure = (
                    f"{slot.name} {child.exit_reason} while the cluster was starting"
                )
        else:
            self._schedule_respawn(slot, child)

    def _schedule_respawn(self, slot: Slot, child: Child) -> None:
        if time.monotonic() - child.started_mono >= STABLE_AFTER:
            slot.failures = 0
        slot.failures += 1
        delay = respawn_delay(slot.failures)
        slot.respawn_at = time.monotonic() + delay
        log.warning(
            "%s (pid %s) %s; respawning in %g s (failure %d in a row)",
            slot.name,
            child.pid,
            child.exit_reason,
            delay,
            slot.failures,
        )

    def _spawn_due(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.respawn_at is None or slot.respawn_at > now:
                continue
            if slot.current is None and slot.replacement is None:
                slot.respawn_at = None
                slot.restarts += 1
                slot.current = self._spawn(slot)

    # ---- state files ----------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The master's view, as written to ``state.json``."""
        return {
            "master": {
                "pid": os.getpid(),
                "started_at": self.started_at,
                "phase": self.phase,
                "generation": self.generation,
                "run_dir": self.paths.run_dir,
                "apps_dir": self.plan.apps_dir,
                "app": self.options.app,
                "apps": self.plan.apps,
                "start_files": self.plan.start_files,
                "log_file": self.paths.log_file,
                "foreground": self.options.foreground,
                "log_level": logging.getLevelName(self.options.log_level).lower(),
                "log_format": self.options.log_format,
                "metrics_listen": self.options.metrics.listen if self.options.metrics else None,
                **self._imports.snapshot(),
            },
            "reload": self.reloader.status,
            "reloads": self.reloader.outcomes,
            "processes": [slot.snapshot() for slot in self.slots],
        }

    def _write_state(self) -> None:
        self._dirty = False
        try:
            write_json_atomic(self.paths.state_file, self.snapshot())
        except OSError as exc:
            log.error("cannot write %s: %s", self.paths.state_file, exc)

    def _write_state_if_dirty(self) -> None:
        if self._dirty:
            self._write_state()

    def _clear_stats(self) -> None:
        with contextlib.suppress(OSError):
            for name in os.listdir(self.paths.stats_dir):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.paths.stats_dir, name))


def _prepare_fork() -> None:
    """Before a fork: import :data:`PRELOAD`, collect the master's garbage, then move
    every object it has left to the collector's permanent generation (``gc.freeze``).

    A forked child shares the master's pages until one of them writes to a page. A
    full collection in the child would write to the header of every object it
    scans, the master's included, and so copy the pages it inherited; frozen objects
    are never scanned. The master's objects live as long as the master, so nothing
    is lost by never collecting them. The pages the collection freed go back to
    the kernel first (:func:`trim_heap`), so that no child maps them."""
    gc.collect()
    trim_heap()
    gc.freeze()
