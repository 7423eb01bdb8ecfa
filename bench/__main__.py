"""Command line of the benchmark suite (``python -m bench run --help``)."""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.gatewaypath import measure_gateway_path
from bench.metrics import FULL, QUICK, Bench
from bench.phpcompare import CompareOptions, compare
from bench.pusherbench import measure_pusher_fanout
from bench.report import write_outputs
from bench.rss import measure_rss
from bench.soak import measure_soak
from bench.workerpath import APPS, measure_worker_path
from bench.yardstick import StealMeter, measure_yardstick

Measure = Callable[[Bench], Awaitable[dict[str, Any]]]
GROUPS: list[tuple[tuple[str, ...], str | Measure]] = [
    (("M1", "M2", "M3"), "measure_connections"),
    (("M3", "M3_TOKENS"), "measure_connect_rate"),  # plain, then with connect tokens
    (("M4", "M5"), "measure_fanout"),
    (("M6", "M6_LIMITS"), "measure_round_trip"),  # M6_LIMITS alone: inline and limits
    (("M7",), "measure_push"),
    (("M8",), "measure_php_push"),
    (("M9",), measure_pusher_fanout),  # a Bench method's name, or a function of the Bench
    (("RSS",), measure_rss),
]
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def _log(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)


async def run(quick: bool, only: set[str], out: Path, command: str, metrics: bool = False) -> int:
    """Run the selected measurements and write the reports; 0 when all ran."""
    bench = Bench(QUICK if quick else FULL, _log, metrics=metrics, only=frozenset(only))
    results: dict[str, Any] = {}
    errors: list[str] = []
    steal = StealMeter()
    steal.start()
    stick = await asyncio.to_thread(measure_yardstick, quick)
    _log(f"yardstick: {stick}")
    for names, method in GROUPS:
        if only and not only.intersection(names):
            continue
        measure: Callable[[], Awaitable[dict[str, Any]]] = (
            getattr(bench, method) if isinstance(method, str) else functools.partial(method, bench)
        )
        try:
            found = await measure()
        except Exception as exc:
            _log(f"{'/'.join(names)} failed: {exc!r}")
            traceback.print_exc()
            errors.append(f"{'/'.join(names)}: {exc.__class__.__name__}: {exc}")
            continue
        if names[0] in ("M6", "M7", "M8"):
            results[names[0]] = found
        else:
            results.update(found)
    errors.extend(bench.errors)
    if "M3_storm" in results:  # measured on the M1 cluster, reported under M3
        results.setdefault("M3", {})["reconnect_storm"] = results.pop("M3_storm")
    if "SOAK" in only:  # only on request: minutes long
        try:
            results.update(await measure_soak(quick, _log, metrics))
        except Exception as exc:
            traceback.print_exc()
            errors.append(f"SOAK: {exc.__class__.__name__}: {exc}")
    host = {"yardstick": stick, "cpu_steal": steal.stop()}
    _log(f"cpu steal during the run: {host['cpu_steal']}")
    paths = write_outputs(results, bench.configs, quick, out, command, errors, host)
    for kind, path in paths.items():
        _log(f"{kind}: {path}")
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("run", help="run the benchmark suite")
    cmd.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    cmd.add_argument(
        "--only",
        default="",
        help="comma-separated metrics, e.g. M4,M6; M3_TOKENS: M3 plain and with connect "
        "tokens; M6_LIMITS: M6 inline plain and with the limits; soak: the churn soak",
    )
    cmd.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    cmd.add_argument(
        "--metrics",
        action="store_true",
        help="run every cluster with --metrics-listen and scrape /metrics every second",
    )
    _add_php_compare(sub)
    cmd = sub.add_parser(
        "worker-path",
        help="a business worker's CPU per event in its own Python code (one process)",
        description="Feed chat events to a real worker link, dispatcher and app in one "
        "process (no sockets after the handshake) and print the loop thread's CPU per "
        "event; see bench/workerpath.py.",
    )
    cmd.add_argument("--events", type=int, default=40000, help="events per run")
    cmd.add_argument("--rounds", type=int, default=5, help="runs per app, alternating")
    cmd.add_argument(
        "--app", choices=[*APPS, "both"], default="both", help="the app's Events to run"
    )
    cmd.add_argument("--out", type=Path, help="also write worker-path.json here")
    cmd = sub.add_parser(
        "gateway-path",
        help="a gateway's CPU per client connection in its own Python code (one process)",
        description="Run connections (a browser's upgrade request, the 101, EV_CONNECT, "
        "the chat's init back, the close) through a real gateway's objects in one "
        "process (no sockets) and print the loop thread's CPU per connection; see "
        "bench/gatewaypath.py.",
    )
    cmd.add_argument("--connects", type=int, default=40000, help="connections per run")
    cmd.add_argument("--rounds", type=int, default=5, help="runs")
    cmd.add_argument("--out", type=Path, help="also write gateway-path.json here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    command = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    if args.command == "php-compare":
        if args.php_start is not None and not args.php_start.is_file():
            parser.error(f"--php-start {args.php_start}: no such file")
        if args.rounds < 1:
            parser.error("--rounds must be at least 1")
        options = CompareOptions(
            args.php_start, args.php_ws_port, args.rounds, args.quick, args.out, command
        )
        return int(runner(compare(options, _log)))
    if args.command == "worker-path":
        if args.events < 1 or args.rounds < 1:
            parser.error("--events and --rounds must be at least 1")
        apps = list(APPS) if args.app == "both" else [args.app]
        found = runner(measure_worker_path(apps, args.events, args.rounds, _log))
        for app, figures in found.items():
            print(
                f"{app}: {figures['us_cpu_per_event_median']} us CPU per event (median of "
                f"{figures['us_cpu_per_event_runs']})"
            )
        _write_found(args.out, "worker-path.json", found)
        return 0
    if args.command == "gateway-path":
        if args.connects < 1 or args.rounds < 1:
            parser.error("--connects and --rounds must be at least 1")
        found = runner(measure_gateway_path(args.connects, args.rounds, _log))
        print(
            f"gateway: {found['us_cpu_per_connect_median']} us CPU per connect (median of "
            f"{found['us_cpu_per_connect_runs']})"
        )
        _write_found(args.out, "gateway-path.json", found)
        return 0
    only = {m.strip().upper() for m in args.only.split(",") if m.strip()}
    return int(runner(run(args.quick, only, args.out, command, args.metrics)))


def _write_found(out: Path | None, name: str, found: dict[str, Any]) -> None:
    """Also write a one-process bench's figures to ``out/name`` (when given)."""
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(json.dumps(found, indent=2) + "\n")


def _add_php_compare(sub: Any) -> None:
    cmd = sub.add_parser(
        "php-compare",
        help="our chat cluster beside your GatewayWorker chat app, same machine",
        description="Start your GatewayWorker chat app (php START start -d), measure it, stop "
        "it, then our chat cluster of the same shape the same way, ROUNDS times, and write "
        "php-compare.json and php-compare.md. The PHP cluster gets free ports in "
        "BENCH_PHP_REGISTER_PORT, BENCH_PHP_WS_PORT and BENCH_PHP_START_PORT; without "
        "--php-start (or without php) only our side runs.",
    )
    cmd.add_argument("--php-start", type=Path, help="the start.php of your GatewayWorker chat app")
    cmd.add_argument(
        "--php-ws-port",
        type=int,
        help="the websocket port your start file listens on, if it does not read BENCH_PHP_WS_PORT",
    )
    cmd.add_argument("--rounds", type=int, default=2, help="PHP then ours, this many times")
    cmd.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    cmd.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")


if __name__ == "__main__":
    sys.exit(main())
