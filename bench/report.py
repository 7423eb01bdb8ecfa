"""Turn a run's results into JSON, a Markdown table and a latency chart."""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from bench.rss import rss_lines
from bench.yardstick import ratios

__all__ = ["machine", "summary", "write_outputs", "TARGETS"]

TARGETS: dict[str, str] = {
    "M1": ">= 100,000 idle connections held, heartbeat on",
    "M2": "<= 6 KiB server memory per idle connection",
    "M3": ">= 5,000 connections/s",
    "M4": ">= 150,000 deliveries/s to 10k members (sustained, no message batching)",
    "M5": "p99 < 100 ms for one message to reach all 10k members",
    "M6": "p50 < 0.4 ms at low load; >= 20,000 round trips/s with p99 < 10 ms (100 clients)",
    "M7": ">= 30,000 pushes/s from one asyncio push client",
    "M8": "PHP GatewayClient's send_to_group next to the msgpack push client's (no target)",
    "M9": "Pusher HTTP events API fan-out to one 10k-subscriber channel, beside send_to_group "
    "(no target)",
    "RSS": "fixed memory of the shipped chat cluster (6 processes, idle): RSS sum < 88 MiB",
}
PHP = {
    "M1": "(not published)",
    "M2": "~7 KB",
    "M3": "~2,800/s",
    "M4": "75-90k/s",
    "M5": "-",
    "M6": "p50 0.4-0.6 ms, p99 1-2 ms at 3,000/s",
    "M7": "-",
    "M8": "-",
    "M9": "-",
    "RSS": "88 MiB (RSS sum)",
}


def machine() -> dict[str, Any]:
    """What ran the benchmark."""
    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import uvloop  # noqa: F401

        has_uvloop = True
    except ImportError:
        has_uvloop = False
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            ports = fh.read().split()
    except OSError:
        ports = []
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "uvloop": has_uvloop,
        "open_files_limit": _nofile(),
        "ip_local_port_range": " ".join(ports),
    }


def _nofile() -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def _get(results: dict[str, Any], *path: str) -> Any:
    node: Any = results
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _n(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int | float) else "-"


def summary(results: dict[str, Any], quick: bool) -> dict[str, dict[str, Any]]:
    """One row per metric: the headline figure and whether its target is met.
    In a quick run the sizes are too small to judge: ``met`` is ``None``."""
    rows: dict[str, dict[str, Any]] = {}

    def row(metric: str, value: Any, text: str, met: bool | None) -> None:
        rows[metric] = {
            "target": TARGETS[metric],
            "php": PHP[metric],
            "value": value,
            "result": text if value is not None else "not measured",
            "met": None if quick or value is None else met,
        }

    held = _get(results, "M1", "connections_held")
    row("M1", held, f"{_n(held)} held" if held is not None else "", (held or 0) >= 100_000)
    kib = _get(results, "M2", "kib_per_connection")
    row("M2", kib, f"{kib} KiB/connection", kib is not None and kib <= 6)
    rate = _get(results, "M3", "per_s")
    per_conn = _get(results, "M3", "cluster_cpu_us_per_connection")
    parts = [f"{_n(rate)}/s ({_n(per_conn)} us cluster CPU per connection)", _storm_text(results)]
    chat_rate = _get(results, "M3", "chat", "per_s")
    if chat_rate is not None:
        chat_cpu = _get(results, "M3", "chat", "cluster_cpu_us_per_connection")
        parts.insert(1, f"chat app (init sent): {_n(chat_rate)}/s ({_n(chat_cpu)} us)")
    row("M3", rate, "; ".join(p for p in parts if p) if rate else "", (rate or 0) >= 5000)
    _m3_tokens(rows["M3"], results)
    sustained = _get(results, "M4", "sustained")
    if sustained:
        size = "10000" if "10000" in sustained else max(sustained, key=int)
        best = sustained[size].get("best") or {}
        m4 = best.get("deliveries_per_s", 0)
        burst = _get(results, "M4", "send_to_group", size, "deliveries_per_s")
        text = (
            f"{_n(m4)}/s sustained to {size} ({best.get('messages_per_s', 0):g} msg/s); "
            f"one-off burst {_n(burst)}/s"
        )
        row("M4", m4, text, m4 >= 150_000)
    else:
        row("M4", None, "", False)
    p99 = _get(results, "M5", "all_members_p99_ms")
    member = _get(results, "M5", "member_p99_ms")
    row("M5", p99, f"all members p99 {p99} ms (per member p99 {member} ms)", (p99 or 1e9) < 100)
    low = _get(results, "M6", "low_load", "p50_ms")
    best = _get(results, "M6", "best_rate_p99_under_10ms") or {}
    first = next(iter(best), None)
    best100 = best.get(first) if first else None
    text = (
        f"p50 {low} ms at low load; {_n(best100)}/s with p99 < 10 ms ({first} clients)"
        if low is not None and best100 is not None
        else ""
    )
    thread_low = _get(results, "M6", "thread", "low_load", "p50_ms")
    thread_best = (_get(results, "M6", "thread", "best_rate_p99_under_10ms") or {}).get(first)
    if text and thread_low is not None:
        text = (
            f"inline: {text}; thread mode: p50 {thread_low} ms, "
            f"{_n(thread_best)}/s with p99 < 10 ms"
        )
    row("M6", low, text, low is not None and low < 0.4 and (best100 or 0) >= 20_000)
    _m6_chat(rows["M6"], results)
    _m6_limits(rows["M6"], results)
    pushes = _get(results, "M7", "async", "delivered_per_s")
    calls = _get(results, "M7", "async", "calls_per_s")
    sync = _get(results, "M7", "sync", "calls_per_s")
    text = (
        f"async {_n(pushes)}/s delivered ({_n(calls)} calls/s), sync {_n(sync)}/s" if pushes else ""
    )
    row("M7", pushes, text, (pushes or 0) >= 30_000)
    row("M8", _get(results, "M8", "php_persistent", "calls_per_s"), _m8_text(results), None)
    row("M9", _get(results, "M9", "http_events_api", "deliveries_per_s"), _m9_text(results), None)
    rss = _get(results, "RSS", "totals") or {}
    text = f"RSS sum {rss.get('rss_mib')} MiB, PSS sum {rss.get('pss_mib')} MiB"
    row("RSS", rss.get("rss_mib"), text, (rss.get("rss_mib") or 1e9) < 88)
    return rows


def _m9_text(results: dict[str, Any]) -> str:
    m9 = _get(results, "M9") or {}
    http, native = m9.get("http_events_api") or {}, m9.get("send_to_group") or {}
    return (
        f"{_n(m9.get('connections_held'))} Pusher connections held in one channel; HTTP "
        f"events API {_n(http.get('deliveries_per_s'))}/s delivered "
        f"({_n(http.get('calls_per_s'))} signed calls/s), send_to_group "
        f"{_n(native.get('deliveries_per_s'))}/s"
    )


def _m6_chat(row: dict[str, Any], results: dict[str, Any]) -> None:
    """Add the chat app's M6 figures (``results["M6"]["chat"]``) to the M6 row: its
    text, and ``row["chat"]`` for the README's headline to quote."""
    chat = _get(results, "M6", "chat") or {}
    series = chat.get("series") or {}
    if not series:
        return
    clients = next(iter(series))
    points = series[clients]
    low = points[0]
    best = (chat.get("best_rate_p99_under_10ms") or {}).get(clients)
    cpu = {str(p["offered_per_s"]): p.get("cluster_cpu_us_per_msg") for p in points}
    row["chat"] = {
        "clients": int(clients),
        "low_load_offered_per_s": low["offered_per_s"],
        "low_load_p50_ms": low["p50_ms"],
        "low_load_p99_ms": low["p99_ms"],
        "best_rate_p99_under_10ms": best,
        "cluster_cpu_us_per_msg": cpu,
        "connect_login_cluster_cpu_us_per_connection": _get(
            chat, "connect", "cluster_cpu_us_per_connection"
        ),
    }
    text = (
        f"chat app (login, say to one's own room, {clients} clients): p50 {low['p50_ms']} ms "
        f"at {_n(low['offered_per_s'])}/s, {_n(best)}/s with p99 < 10 ms, "
        f"{_n(low.get('cluster_cpu_us_per_msg'))} us cluster CPU per round trip"
    )
    inline_cpu = _get(results, "M6", "low_load", "cluster_cpu_us_per_msg")
    if inline_cpu is not None:
        text += f" (bench app inline: {_n(inline_cpu)} us)"
    row["result"] = f"{row['result']}; {text}" if row["value"] is not None else text


def _append(row: dict[str, Any], text: str) -> None:
    row["result"] = f"{row['result']}; {text}" if row["value"] is not None else text


def _m3_tokens(row: dict[str, Any], results: dict[str, Any]) -> None:
    """Add M3 with connect tokens (``results["M3"]["tokens"]``) to the M3 row."""
    tokens = _get(results, "M3", "tokens") or {}
    if not tokens.get("per_s"):
        return
    row["tokens"] = {
        "per_s": tokens["per_s"],
        "cluster_cpu_us_per_connection": tokens.get("cluster_cpu_us_per_connection"),
        "limits_hit": tokens.get("limits_hit"),
    }
    _append(
        row,
        f"with connect tokens: {_n(tokens['per_s'])}/s "
        f"({_n(tokens.get('cluster_cpu_us_per_connection'))} us per connection)",
    )


def _m6_limits(row: dict[str, Any], results: dict[str, Any]) -> None:
    """Add M6 with the limits configured (``results["M6"]["limits"]``) to the M6 row."""
    limits = _get(results, "M6", "limits") or {}
    low = limits.get("low_load")
    if not low:
        return
    clients = next(iter(limits.get("series") or {"": 0}))
    best = (limits.get("best_rate_p99_under_10ms") or {}).get(clients)
    row["limits"] = {
        "low_load_offered_per_s": low["offered_per_s"],
        "low_load_p50_ms": low["p50_ms"],
        "low_load_cluster_cpu_us_per_msg": low.get("cluster_cpu_us_per_msg"),
        "best_rate_p99_under_10ms": best,
        "limits_hit": limits.get("limits_hit"),
    }
    _append(
        row,
        f"with limits configured: p50 {low['p50_ms']} ms at {_n(low['offered_per_s'])}/s, "
        f"{_n(low.get('cluster_cpu_us_per_msg'))} us per round trip, "
        f"{_n(best)}/s with p99 < 10 ms",
    )


def security_pairs(results: dict[str, Any]) -> list[str]:
    """The ``bench.md`` table of the plain measurements beside their secured twins
    (M3 with connect tokens, M6 with the limits), or nothing when neither ran."""
    m3, m6 = _get(results, "M3") or {}, _get(results, "M6") or {}
    tokens, limits = m3.get("tokens") or {}, m6.get("limits") or {}
    rows: list[tuple[str, Any, Any]] = []
    if tokens:
        rows += [
            ("M3 connections/s (tokens)", m3.get("per_s"), tokens.get("per_s")),
            (
                "M3 cluster CPU us per connection (tokens)",
                m3.get("cluster_cpu_us_per_connection"),
                tokens.get("cluster_cpu_us_per_connection"),
            ),
        ]
    plain_low, limited_low = m6.get("low_load") or {}, limits.get("low_load") or {}
    if limited_low:
        clients = next(iter(limits.get("series") or {"": 0}))
        rows += [
            (
                f"M6 p50 ms at {_n(limited_low.get('offered_per_s'))}/s, {clients} clients (limits)",
                plain_low.get("p50_ms"),
                limited_low.get("p50_ms"),
            ),
            ("M6 p99 ms, same point (limits)", plain_low.get("p99_ms"), limited_low.get("p99_ms")),
            (
                "M6 cluster CPU us per round trip, same point (limits)",
                plain_low.get("cluster_cpu_us_per_msg"),
                limited_low.get("cluster_cpu_us_per_msg"),
            ),
            (
                "M6 best rate with p99 < 10 ms (limits)",
                (m6.get("best_rate_p99_under_10ms") or {}).get(clients),
                (limits.get("best_rate_p99_under_10ms") or {}).get(clients),
            ),
        ]
    if not rows:
        return []
    lines = [
        "Security on and off, same cluster shape (tokens: every client sends a signed "
        "connect token, verified by the gateway; limits: message/byte rate, per-IP, "
        "handshake rate and origin checks configured, none triggering):",
        "",
        "| measurement | plain | secured | change |",
        "|---|---|---|---|",
    ]
    for name, plain, secured in rows:
        lines.append(f"| {name} | {_n(plain)} | {_n(secured)} | {_change(plain, secured)} |")
    hit = [f"{k} {v.get('limits_hit')}" for k, v in (("M3", tokens), ("M6", limits)) if v]
    lines += ["", "Limits and checks that acted in the secured runs (must be 0): " + "; ".join(hit)]
    return lines


def _change(plain: Any, secured: Any) -> str:
    if not isinstance(plain, int | float) or not isinstance(secured, int | float) or not plain:
        return "-"
    return f"{100 * (secured - plain) / plain:+.1f} %"


def _m8_text(results: dict[str, Any]) -> str:
    def figures(kind: str) -> str:
        if _get(results, "M8", kind, "error"):
            return "FAILED (see errors)"
        calls = _get(results, "M8", kind, "calls_per_s")
        delivered = _get(results, "M8", kind, "deliveries_per_s")
        return f"{_n(calls)} calls/s ({_n(delivered)}/s delivered)"

    members = _get(results, "M8", "msgpack", "members")
    text = (
        f"to {_n(members)} members: PHP protocol, persistent link {figures('php_persistent')}; "
        f"msgpack push client {figures('msgpack')}; PHP, a connection per call "
        f"{figures('php_per_call')}"
    )
    if _get(results, "M8", "php_cli"):
        text += f"; php-cli {figures('php_cli')}"
    return text


def _storm_text(results: dict[str, Any]) -> str:
    storm = _get(results, "M3", "reconnect_storm") or {}
    if not storm:
        return ""
    t99, t100 = storm.get("seconds_to_99pct"), storm.get("seconds_to_100pct")
    return (
        f"reconnect storm: {_n(storm.get('reconnected'))} of {_n(storm.get('clients'))} back, "
        f"99% in {t99 if t99 is not None else 'n/a'} s, "
        f"100% in {t100 if t100 is not None else 'n/a (not all back)'} s"
    )


def _markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    lines = [
        f"# Benchmark results ({'quick' if doc['quick'] else 'full'} run)",
        "",
        f"Date: {doc['date']}  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, Linux {m['kernel']}, "
        f"Python {m['python']}, uvloop {'yes' if m['uvloop'] else 'no'}  ",
        f"Command: `{doc['command']}`  ",
        f"Yardstick: {_yardstick_text(m)}",
        "",
        "| metric | target | PHP original | result | per yardstick | met |",
        "|---|---|---|---|---|---|",
    ]
    for metric, row in doc["summary"].items():
        met = {True: "yes", False: "**no**", None: "-"}[row["met"]]
        scaled = row.get("per_yardstick")
        lines.append(
            f"| {metric} | {row['target']} | {row['php']} | {row['result']} | "
            f"{scaled if scaled is not None else '-'} | {met} |"
        )
    m6 = _m6_series(doc["results"])
    if m6:
        lines += [
            "",
            "Round trip (M6), open loop: the bench app's plain `on_message` inline and in "
            "threads, and the shipped chat app (`chat`: async `on_message`, login, `say` "
            "to one's own room):",
            "",
        ]
        lines += [
            "| callbacks | clients | offered/s | achieved/s | p50 ms | p90 ms | p99 ms "
            "| generator CPU % | cluster CPU % | cluster CPU us/msg | longest loop stall ms |"
        ]
        lines += ["|---|---|---|---|---|---|---|---|---|---|---|"]
        for mode, clients, points in m6:
            for p in points:
                lines.append(
                    f"| {mode} | {clients} | {p['offered_per_s']:,} | {p['achieved_per_s']:,} | "
                    f"{p['p50_ms']} | {p.get('p90_ms', '-')} | {p['p99_ms']} | "
                    f"{p['cpu']['generator_cpu_pct']} | {p['cpu']['cluster_cpu_pct']} | "
                    f"{_n(p.get('cluster_cpu_us_per_msg'))} | {_stall(p)} |"
                )
    pairs = security_pairs(doc["results"])
    if pairs:
        lines += ["", *pairs]
    m4 = _get(doc["results"], "M4") or {}
    if m4.get("sustained"):
        lines += ["", "Fan-out (M4), sustained: send_to_group, one message per call, paced:", ""]
        lines += [
            "| members | messages/s | offered deliveries/s | delivered/s | ratio "
            "| generator CPU % | cluster CPU % | longest loop stall ms |"
        ]
        lines += ["|---|---|---|---|---|---|---|---|"]
        for size, r in m4["sustained"].items():
            for p in r["points"]:
                lines.append(
                    f"| {size} | {p['messages_per_s']:g} | {p['offered_deliveries_per_s']:,} | "
                    f"{p['deliveries_per_s']:,} | {p['delivered_ratio']} | "
                    f"{p['cpu']['generator_cpu_pct']} | {p['cpu']['cluster_cpu_pct']} | "
                    f"{_stall(p)} |"
                )
    if m4:
        lines += ["", "Fan-out (M4), one-off burst (write coalescing merges the burst):", ""]
        lines += ["| call | members | messages | deliveries/s | generator CPU % | cluster CPU % |"]
        lines += ["|---|---|---|---|---|---|"]
        for call, sizes in m4.items():
            if call == "sustained":
                continue
            for size, r in sizes.items():
                lines.append(
                    f"| {call} | {size} | {r['messages']} | {r['deliveries_per_s']:,} | "
                    f"{r['cpu']['generator_cpu_pct']} | {r['cpu']['cluster_cpu_pct']} |"
                )
    rss = doc["results"].get("RSS")
    if rss:
        lines += ["", *rss_lines(rss)]
    soak = doc["results"].get("SOAK")
    if soak:
        lines += ["", *soak_lines(soak)]
    lines += ["", "Configurations:", ""]
    for name, cfg in doc["config"].items():
        lines.append(f"- {name}: " + ", ".join(f"{k}={v}" for k, v in cfg.items()))
    if doc.get("errors"):
        lines += ["", "Errors:", ""] + [f"- {e}" for e in doc["errors"]]
    return "\n".join(lines) + "\n"


def soak_lines(soak: dict[str, Any]) -> list[str]:
    """The soak's section: totals, then the drift of every process."""
    lines = [
        f"Soak: {soak['minutes']:g} min, {soak['clients']} churning clients: "
        f"{soak['cycles']:,} connect/close cycles, {soak['messages_echoed']:,} of "
        f"{soak['messages_sent']:,} messages echoed, {soak['errors']} errors",
        "",
        "| process | RSS start MB | RSS end MB | peak MB | drift MB | fds start | fds end |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in soak["processes"]:
        if r.get("gone"):
            lines.append(f"| {r['process']} | gone | | | | | |")
            continue
        lines.append(
            f"| {r['process']} | {r['rss_mb_start']} | {r['rss_mb_end']} | {r['rss_mb_peak']} "
            f"| {r['rss_mb_drift']:+} | {r['fds_start']} | {r['fds_end']} |"
        )
    return lines


def _stall(point: dict[str, Any]) -> str:
    """The longest loop stall of any cluster process during a point, and whose; then
    the longest not spent waiting for a CPU ("own")."""
    cpu = point.get("cpu", {})
    by = cpu.get("loop_stall_by_process_ms") or {}
    if not by:
        return "-"
    name = max(by, key=lambda n: by[n])
    text = f"{by[name]} ({name.split('.', 1)[-1]})"
    own = cpu.get("loop_stall_own_by_process_ms") or {}
    if own:
        name = max(own, key=lambda n: own[n])
        text += f"; own {own[name]} ({name.split('.', 1)[-1]})"
    return text


def _yardstick_text(m: dict[str, Any]) -> str:
    stick, steal = m.get("yardstick") or {}, m.get("cpu_steal") or {}
    if not stick:
        return "not measured"
    return (
        f"loopback send {stick['loopback_send_us']} us (100 B, 256 sockets), bare asyncio "
        f"echo round trip p50 {stick['echo_rtt_us']} us, bare TCP connects "
        f"{stick['connects_per_s']:,}/s; CPU steal during the run {steal.get('steal_pct')} %. "
        "Per yardstick: M3 / bare connects/s, M4 and M7 / bare sends/s, "
        "M6 p50 / bare echo p50"
    )


def _m6_series(results: dict[str, Any]) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """M6's series as (callbacks mode, clients, points): inline, thread mode, then
    the chat app (mode ``chat``)."""
    found = []
    modes = (("inline", ("M6",)), ("thread", ("M6", "thread")), ("chat", ("M6", "chat")))
    for mode, where in modes:
        for clients, points in (_get(results, *where, "series") or {}).items():
            found.append((mode, clients, points))
    return found


def _chart(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for mode, clients, points in _m6_series(doc["results"]):
        rates = [p["offered_per_s"] for p in points]
        style = {"inline": "-", "chat": "--"}.get(mode, ":")
        for q, marker in (("p50", "o"), ("p99", "x")):
            ax.plot(
                rates,
                [p[f"{q}_ms"] for p in points],
                style,
                marker=marker,
                label=f"{q}, {clients} clients, {mode}",
            )
    ax.axhline(10, color="grey", linestyle="--", linewidth=1, label="10 ms")
    ax.set_yscale("log")
    ax.set_xlabel("offered load (round trips/s)")
    ax.set_ylabel("round-trip latency (ms)")
    ax.set_title("client -> worker -> client echo latency (M6)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(
    results: dict[str, Any],
    config: dict[str, Any],
    quick: bool,
    out_dir: Path,
    command: str,
    errors: list[str],
    host: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``bench.json``, ``bench.md`` and ``latency.png`` to ``out_dir``.

    ``host`` holds the run's ``yardstick`` and ``cpu_steal`` (:mod:`bench.yardstick`);
    each summary row then also carries ``per_yardstick``, its figure divided by the
    yardstick, the form in which runs on different machines may be compared."""
    out_dir.mkdir(parents=True, exist_ok=True)
    host = host or {}
    rows = summary(results, quick)
    stick = host.get("yardstick") or {}
    if stick:
        scaled = ratios({metric: row["value"] for metric, row in rows.items()}, stick)
        for metric, row in rows.items():
            row["per_yardstick"] = scaled.get(metric)
    doc = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "quick": quick,
        "command": command,
        "machine": {**machine(), **host},
        "config": config,
        "summary": rows,
        "results": results,
        "errors": errors,
    }
    paths = {
        "json": out_dir / "bench.json",
        "markdown": out_dir / "bench.md",
        "chart": out_dir / "latency.png",
    }
    paths["json"].write_text(json.dumps(doc, indent=2, default=str) + "\n")
    paths["markdown"].write_text(_markdown(doc))
    _chart(doc, paths["chart"])
    return paths
