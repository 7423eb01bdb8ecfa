"""The command line: ``gatewayworker start|stop|restart|reload|status|connections|new``
(also ``python -m pygatewayworker ...`` and, in a checkout, ``python start.py ...``).

Every command finds the running master through the pid file in the run directory
(``--run-dir``, env ``GW_RUN_DIR``, default ``./run``) and talks to it with signals
only: TERM/QUIT stop, HUP reloads, USR2 refreshes the stats files. What it prints
comes from the files the master and the children write there
(:mod:`pygatewayworker.cluster.state`).

Exit codes: 0 done; 1 failed or (``status``, ``reload``, ``connections``) not running,
with "not running (looked in DIR)"; 2 usage error. ``stop`` with nothing running
says so and exits 0, so scripts can call it whatever the state.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NoReturn

import click
from click.core import ParameterSource

from pygatewayworker.cluster.apps import AppError, discover, list_start_files
from pygatewayworker.cluster.boot import BootOrder, exec_master
from pygatewayworker.cluster.daemon import start_daemon
from pygatewayworker.cluster.master import MasterOptions, Reporter
from pygatewayworker.cluster.observe import Metrics
from pygatewayworker.cluster.overrides import (
    OverrideError,
    Overrides,
    apply_overrides,
    from_env,
    from_saved,
    override_options,
)
from pygatewayworker.cluster.pidfile import PidFile, pid_alive
from pygatewayworker.cluster.state import (
    RunPaths,
    default_apps_dir,
    read_json,
    read_stats,
    write_json_atomic,
)
from pygatewayworker.cluster.status import (
    process_rows,
    render_connections,
    render_status,
    render_summary,
    totals,
)
from pygatewayworker.register.config import ConfigError
from pygatewayworker.runtime.footprint import rss_bytes
from pygatewayworker.runtime.logs import LOG_FORMATS

if TYPE_CHECKING:
    from pygatewayworker.cluster.query import GatewayTarget

__all__ = ["main"]

STOP_TIMEOUT = 15.0
GRACEFUL_STOP_TIMEOUT = 35.0
DAEMON_REPORT_TIMEOUT = 150.0
STATS_SETTLE = 0.5
"""The longest ``status`` waits for the stats it asked the children for (a child
that is starting or stuck does not answer in time: its last file is shown)."""
STATS_POLL = 0.01
POLL = 0.05


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(code)


def _not_running(paths: RunPaths) -> str:
    return f"not running (looked in {paths.run_dir})"


def _running(paths: RunPaths) -> int:
    """The master's pid, or exit 1 with "not running (looked in DIR)"."""
    pid = PidFile(paths.pid_file).running_pid()
    if pid is None:
        _fail(_not_running(paths))
    return pid


def _state(paths: RunPaths) -> dict[str, Any]:
    state = read_json(paths.state_file)
    return state if isinstance(state, dict) else {"master": {}, "processes": []}


def _wait_until(check: Callable[[], bool], timeout: float, poll: float = POLL) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll)
    return True


def _ask_stats(paths: RunPaths, pid: int) -> None:
    """Have every child write its stats now (``SIGUSR2`` to the master, which
    forwards it) and wait until each running child did, at most
    :data:`STATS_SETTLE`: usually a few ms, as each child writes on its next loop
    turn."""
    asked = time.time()
    os.kill(pid, signal.SIGUSR2)

    def answered() -> bool:
        stats = read_stats(paths.stats_dir)
        for proc in _state(paths).get("processes", []):
            if proc.get("status") != "running":
                continue
            snap = stats.get(proc["name"], {})
            written = snap.get("updated_at")
            if snap.get("pid") != proc.get("pid") or not isinstance(written, int | float):
                return False
            if written < asked:
                return False
        return True

    _wait_until(answered, STATS_SETTLE, STATS_POLL)


_run_dir_option = click.option(
    "--run-dir",
    envvar="GW_RUN_DIR",
    type=click.Path(file_okay=False),
    default=None,
    help="Directory of the pid file, log file and stats [env GW_RUN_DIR; default: ./run].",
)
_apps_dir_option = click.option(
    "--apps-dir",
    envvar="GW_APPS_DIR",
    type=click.Path(file_okay=False),
    default=None,
    help="The apps directory [env GW_APPS_DIR; default: ./apps, or the running one's].",
)


LOG_LEVELS = ("debug", "info", "warning", "error")

log_level_option = click.option(
    "--log-level",
    envvar="GW_LOG_LEVEL",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default=None,
    help="Level of the master's and every child's log [env GW_LOG_LEVEL; default: info, "
    "for restart the running cluster's].",
)


_log_format_option = click.option(
    "--log-format",
    envvar="GW_LOG_FORMAT",
    type=click.Choice(LOG_FORMATS, case_sensitive=False),
    default=None,
    help="text, or json: one JSON object per line [env GW_LOG_FORMAT; default: text, "
    "for restart the running cluster's].",
)
_metrics_listen_option = click.option(
    "--metrics-listen",
    envvar="GW_METRICS_LISTEN",
    default=None,
    metavar="[IP:]PORT",
    help="Serve /metrics, /healthz, /readyz and /ops here (a port alone: 127.0.0.1) "
    "[env GW_METRICS_LISTEN; default: off, for restart the running cluster's].",
)
_metrics_token_option = click.option(
    "--metrics-token",
    envvar="GW_METRICS_TOKEN",
    default=None,
    help="Token of the operator page /ops [env GW_METRICS_TOKEN; default: page off].",
)


def observability_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """``--log-format``, ``--metrics-listen`` and ``--metrics-token`` (docs/observability.md)."""
    return _log_format_option(_metrics_listen_option(_metrics_token_option(function)))


def _metrics(listen: str | None, token: str | None) -> Metrics | None:
    """The metrics listener to run, or None; exits 2 with the reason when unusable."""
    if not listen:
        return None
    try:
        return Metrics(listen=listen, token=token or "")
    except ConfigError as exc:
        _fail(f"cannot start: {exc}", 2)


def run_dir_option(function: Callable[..., Any]) -> Callable[..., Any]:
    """``--run-dir``, plus ``--apps-dir`` so that one command line (as scripts build
    it) works for every command; commands that need no apps ignore it."""
    return _run_dir_option(_apps_dir_option(function))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Run and operate the gateway cluster (register, gateways, business workers)."""


# ---- start / stop / restart --------------------------------------------------------


@main.command()
@click.option("-d", "--daemon", is_flag=True, help="Run in the background.")
@click.option("--app", "app_name", default=None, help="Start only this app.")
@log_level_option
@observability_options
@run_dir_option
@override_options
def start(
    daemon: bool,
    app_name: str | None,
    log_level: str | None,
    log_format: str | None,
    metrics_listen: str | None,
    metrics_token: str | None,
    apps_dir: str | None,
    run_dir: str | None,
    cli_overrides: Overrides,
) -> None:
    """Start every app (Ctrl-C stops it; -d returns once everything is ready).

    Per-host settings override the start files: options > GW_* environment > files
    (see docs/deployment.md)."""
    paths = RunPaths.at(run_dir)
    metrics = _metrics(metrics_listen, metrics_token)
    sys.exit(
        _start(
            paths, daemon, app_name, apps_dir, log_level, cli_overrides, None, log_format, metrics
        )
    )


def _start(
    paths: RunPaths,
    daemon: bool,
    app_name: str | None,
    apps_dir: str | None,
    log_level: str | None = None,
    cli_overrides: Overrides | None = None,
    saved_overrides: Overrides | None = None,
    log_format: str | None = None,
    metrics: Metrics | None = None,
) -> int:
    owner = PidFile(paths.pid_file).running_pid()
    if owner is not None:
        _fail(f"already running (pid {owner})")
    try:
        overrides = (cli_overrides or Overrides()).over(
            from_env(os.environ).over(saved_overrides or Overrides())
        )
        plan = apply_overrides(discover(apps_dir or default_apps_dir(), app_name), overrides)
    except (AppError, OverrideError) as exc:
        _fail(f"cannot start: {exc}")
    if overrides:
        click.echo(f"host overrides: {overrides.describe()}", err=True)
    with contextlib.suppress(OSError):
        write_json_atomic(_overrides_file(paths), overrides.to_json())
    options = MasterOptions(
        run_dir=paths.run_dir,
        apps_dir=plan.apps_dir,
        app=app_name,
        foreground=not daemon,
        log_level=logging.getLevelName((log_level or "info").upper()),
        log_format=(log_format or "text").lower(),
        metrics=metrics,
    )
    # The master runs in an interpreter of its own, without this command's modules
    # (cluster.boot): it discovers the apps checked here again and runs them.
    order = BootOrder(
        apps_dir=apps_dir or default_apps_dir(),
        app=app_name,
        overrides=overrides,
        options=options,
        sys_path=list(sys.path),
        pythonpath=os.environ.get("PYTHONPATH"),
    )
    argv = sys.argv[:]
    if not daemon:
        try:
            exec_master(order, argv)
        except OSError as exc:
            _fail(f"cannot start the master: {exc}")

    def run(reporter: Reporter) -> int:
        (report_fd,) = reporter.fds()
        exec_master(replace(order, report_fd=report_fd), argv)

    result = start_daemon(run, DAEMON_REPORT_TIMEOUT)
    if not result.ok:
        _fail(f"start failed: {result.error}")
    click.echo(render_summary(result.state))
    return 0


@main.command()
@click.option("-g", "--graceful", is_flag=True, help="Let gateways close clients (1001) and drain.")
@click.option("--timeout", type=float, default=None, help="Seconds before killing what remains.")
@run_dir_option
def stop(graceful: bool, timeout: float | None, apps_dir: str | None, run_dir: str | None) -> None:
    """Stop the master and every child (nothing running: says so and exits 0)."""
    paths = RunPaths.at(run_dir)
    pid = PidFile(paths.pid_file).running_pid()
    if pid is None:
        click.echo(_not_running(paths))
        return
    _stop(paths, pid, graceful, timeout)


def _stop(paths: RunPaths, pid: int, graceful: bool, timeout: float | None) -> None:
    limit = (
        timeout if timeout is not None else (GRACEFUL_STOP_TIMEOUT if graceful else STOP_TIMEOUT)
    )
    state = _state(paths)
    pids = [pid] + [p["pid"] for p in state.get("processes", []) if p.get("pid")]
    pids += [o for p in state.get("processes", []) for o in p.get("other_pids", [])]
    os.kill(pid, signal.SIGQUIT if graceful else signal.SIGTERM)
    click.echo(f"stopping (master pid {pid}{', graceful' if graceful else ''}) ...")

    def all_gone() -> bool:
        return not any(pid_alive(p) for p in pids)

    if not _wait_until(all_gone, limit):
        alive = [p for p in pids if pid_alive(p)]
        for p in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        _wait_until(all_gone, 5.0)
        click.echo(f"killed {len(alive)} process(es) still running after {limit:g} s")
    click.echo("stopped")


@main.command()
@click.option("-d", "--daemon", is_flag=True, help="Run in the background.")
@click.option("-g", "--graceful", is_flag=True, help="Stop gracefully first.")
@click.option("--app", "app_name", default=None, help="Start only this app.")
@log_level_option
@observability_options
@run_dir_option
@override_options
def restart(
    daemon: bool,
    graceful: bool,
    app_name: str | None,
    log_level: str | None,
    log_format: str | None,
    metrics_listen: str | None,
    metrics_token: str | None,
    apps_dir: str | None,
    run_dir: str | None,
    cli_overrides: Overrides,
) -> None:
    """Stop (if running) and start again, with the same apps and host overrides
    unless told otherwise."""
    paths = RunPaths.at(run_dir)
    pid = PidFile(paths.pid_file).running_pid()
    saved = Overrides()
    if pid is not None:
        master = _state(paths).get("master", {})
        apps_dir = apps_dir or master.get("apps_dir")
        app_name = app_name or master.get("app")
        log_level = log_level or master.get("log_level")
        log_format = log_format or master.get("log_format")
        metrics_listen = metrics_listen or master.get("metrics_listen")
        saved = _saved_overrides(paths)
    metrics = _metrics(metrics_listen, metrics_token)  # a bad value stops nothing
    if pid is not None:
        _stop(paths, pid, graceful, None)
    else:
        click.echo(f"{_not_running(paths)}; starting")
    sys.exit(
        _start(
            paths, daemon, app_name, apps_dir, log_level, cli_overrides, saved, log_format, metrics
        )
    )


def _overrides_file(paths: RunPaths) -> str:
    return os.path.join(paths.run_dir, "overrides.json")


def _saved_overrides(paths: RunPaths) -> Overrides:
    """The (secret-free) overrides of the last start in this run directory."""
    saved = read_json(_overrides_file(paths))
    try:
        return from_saved(saved) if isinstance(saved, dict) else Overrides()
    except OverrideError as exc:
        click.echo(f"ignoring the saved overrides: {exc}", err=True)
        return Overrides()


# ---- reload -----------------------------------------------------------------------------


@main.command()
@click.option(
    "-g", "--graceful", is_flag=True, help="Accepted for familiarity: reload is always graceful."
)
@click.option("--timeout", type=float, default=300.0, show_default=True)
@run_dir_option
def reload(graceful: bool, timeout: float, apps_dir: str | None, run_dir: str | None) -> None:
    """Replace the business workers one at a time with fresh code; no client drops."""
    paths = RunPaths.at(run_dir)
    pid = _running(paths)
    before = int(_state(paths).get("reload", {}).get("id", 0))
    os.kill(pid, signal.SIGHUP)
    click.echo(f"reloading (master pid {pid}) ...")

    def finished() -> bool:
        status = _state(paths).get("reload", {})
        return not pid_alive(pid) or (
            int(status.get("id", 0)) > before and status.get("state") in ("done", "failed")
        )

    if not _wait_until(finished, timeout):
        _fail(f"the reload did not finish within {timeout:g} s")
    if not pid_alive(pid):
        _fail("the master stopped during the reload")
    status = _state(paths)["reload"]
    for line in status.get("replaced", []):
        click.echo(f"  {line}")
    _report_start_file_changes(_state(paths).get("master", {}))
    if status["state"] != "done":
        _fail(f"reload failed: {status.get('message', '')}")
    click.echo(f"reloaded: {status.get('message', '')}")


def _report_start_file_changes(master: dict[str, Any]) -> None:
    """Say which start files appeared or vanished since ``start``: a reload replaces
    the business workers' code but not the set of declarations."""
    apps_dir, known = master.get("apps_dir"), master.get("start_files")
    if not apps_dir or not isinstance(known, list):
        return
    now = set(list_start_files(apps_dir, master.get("app")))
    added, removed = sorted(now - set(known)), sorted(set(known) - now)
    for label, paths in (("added", added), ("removed", removed)):
        if paths:
            click.echo(
                f"start files {label} since start: {', '.join(paths)}; "
                "reload only replaces business workers: run `restart` for them to take effect",
                err=True,
            )


# ---- status -----------------------------------------------------------------------------


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("-d", "--live", is_flag=True, help="Refresh every second until Ctrl-C.")
@run_dir_option
def status(as_json: bool, live: bool, apps_dir: str | None, run_dir: str | None) -> None:
    """One line per process: memory, connections, messages, rates, uptime, restarts."""
    paths = RunPaths.at(run_dir)
    pid = _running(paths)
    _ask_stats(paths, pid)
    if not live:
        click.echo(_status_text(paths, pid, as_json))
        return
    try:
        while pid_alive(pid):
            text = _status_text(paths, pid, as_json)
            click.clear()
            click.echo(text)
            time.sleep(1.0)
    except KeyboardInterrupt:
        return
    _fail(_not_running(paths))


def _status_text(paths: RunPaths, pid: int, as_json: bool) -> str:
    state = _state(paths)
    rows = process_rows(state, read_stats(paths.stats_dir), time.time(), rss_bytes(pid))
    sums = totals(rows)
    if as_json:
        return json.dumps(
            {
                "master": state.get("master", {}),
                "reload": state.get("reload", {}),
                "processes": rows,
                "totals": sums,
            },
            indent=2,
        )
    return render_status(rows, sums)


# ---- connections --------------------------------------------------------------------------


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--timeout", type=float, default=3.0, show_default=True, help="Per answer of a gateway."
)
@run_dir_option
def connections(as_json: bool, timeout: float, apps_dir: str | None, run_dir: str | None) -> None:
    """One line per client connection of every gateway process."""
    # Imported here, not with the module: the master is forked from the process that
    # runs ``start``, and it must not carry asyncio and msgpack (see docs/memory.md).
    import asyncio

    from pygatewayworker.cluster.query import connection_rows

    paths = RunPaths.at(run_dir)
    _running(paths)
    state = _state(paths)
    targets = _gateway_targets(state, apps_dir)
    answers, errors = asyncio.run(connection_rows(targets, timeout=timeout))
    rows = [
        {**conn, "gateway": name}
        for name, conns in answers.items()
        for conn in (conns if isinstance(conns, list) else [])
        if isinstance(conn, dict)
    ]
    if as_json:
        click.echo(json.dumps({"connections": rows, "errors": errors}, indent=2, default=str))
    else:
        click.echo(render_connections(rows, errors))
    if errors and not answers:
        sys.exit(1)


def _gateway_targets(state: dict[str, Any], apps_dir: str | None) -> list[GatewayTarget]:
    """Every running gateway process with its secret (read from the declarations the
    master was started with: secrets are not written to the run directory)."""
    from pygatewayworker.cluster.query import GatewayTarget

    master = state.get("master", {})
    secrets: dict[tuple[str, str], str] = {}
    try:
        plan = discover(apps_dir or master.get("apps_dir") or default_apps_dir(), master.get("app"))
    except AppError as exc:
        _fail(f"cannot read the apps' declarations: {exc}")
    secret_override = os.environ.get("GW_SECRET")  # a host override; never saved on disk
    for decl in plan.by_role("gateway"):
        secrets[(decl.app, decl.name)] = secret_override or decl.config.secret
    targets: list[GatewayTarget] = []
    for proc in state.get("processes", []):
        if proc["role"] != "gateway" or not proc.get("pid"):
            continue
        addresses = proc.get("addresses", {})
        address = addresses.get("advertised") or addresses.get("internal", "")
        if address.startswith("0.0.0.0:"):
            address = "127.0.0.1:" + address.rpartition(":")[2]
        secret = secrets.get((proc["app"], proc["decl"]), "")
        targets.append(GatewayTarget(proc["name"], address, secret))
    return targets


# ---- new --------------------------------------------------------------------------------


@main.command()
@click.argument("app")
@click.option(
    "--apps-dir",
    envvar="GW_APPS_DIR",
    type=click.Path(file_okay=False),
    default=None,
    help="Where to create it [env GW_APPS_DIR; default: ./apps].",
)
@click.option("--listen", default="0.0.0.0:7272", show_default=True, help="Public address.")
@click.option("--register-port", type=int, default=1238, show_default=True)
@click.option("--start-port", type=int, default=2300, show_default=True)
def new(app: str, apps_dir: str | None, listen: str, register_port: int, start_port: int) -> None:
    """Create apps/APP/ with a working Events.py (init on connect, echo) and start
    files with every setting commented; `gatewayworker start` then serves it."""
    from pygatewayworker.cluster.scaffold import AppTemplate, create_app

    try:
        template = AppTemplate(app, listen, register_port, start_port)
        folder = create_app(apps_dir or default_apps_dir(), template)
    except (ValueError, OSError) as exc:
        _fail(f"cannot create app: {exc}")
    click.echo(f"created {folder}/: Events.py and the start files of its roles")
    # Name a folder given on the command line, or the hint would start ./apps.
    given = click.get_current_context().get_parameter_source("apps_dir")
    where = ""
    if given is ParameterSource.COMMANDLINE and apps_dir is not None:
        where = f" --apps-dir {shlex.quote(apps_dir)}"
    click.echo(f"next: gatewayworker start{where}   (then connect to ws://{_local(listen)}/)")


def _local(listen: str) -> str:
    host, _, port = listen.rpartition(":")
    return f"{'127.0.0.1' if host in ('', '0.0.0.0') else host}:{port}"
