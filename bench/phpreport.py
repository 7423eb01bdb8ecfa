"""The report of ``python -m bench php-compare`` (:mod:`bench.phpcompare`): pure
functions from the measured rounds to the figures, their ranges, the ratios
ours/PHP and the Markdown page. No I/O here, so the arithmetic is tested with
hand-made rounds (the PHP cluster cannot run in CI).

A round holds one measurement of each side, ``"php"`` and ``"py"`` (ours), each as
:func:`bench.phpcompare.measure_side` returns it. Every figure is reported as the
range over the rounds of each side, and the ratio ours/PHP as the ratio of the
medians with, beside it, the range of the per-round ratios (round ``i`` of ours over
round ``i`` of PHP, measured minutes apart on the same machine).
"""

from __future__ import annotations

import statistics
from typing import Any

__all__ = ["SIDES", "figures", "summarize", "markdown"]

SIDES = ("php", "py")
"""The two clusters, in the order each round measures them."""


def figures(side: dict[str, Any]) -> dict[str, float | None]:
    """The compared figures of one side's measurement, by label (in report order)."""
    idle = side["idle"]
    found: dict[str, float | None] = {
        "idle RSS sum, MiB": idle["rss_mib"],
        "idle PSS sum, MiB": idle["pss_mib"],
        "processes": idle["count"],
    }
    for rate, point in side["round_trip"]["points"].items():
        sent = point["sent"]
        found[f"{rate}/s: round trip p50, ms"] = point["p50_ms"]
        found[f"{rate}/s: round trip p90, ms"] = point["p90_ms"]
        found[f"{rate}/s: round trip p99, ms"] = point["p99_ms"]
        found[f"{rate}/s: server CPU per round trip, µs"] = point["cluster_cpu_us_per_msg"]
        found[f"{rate}/s: replies received, %"] = (
            round(100.0 * point["received"] / sent, 2) if sent else None
        )
    connects = side["connects"]
    found["connects/s"] = connects["per_s"]
    found["server CPU per connect (open + close), µs"] = connects["cluster_cpu_us_per_connect"]
    found["load generator CPU per connect, µs"] = connects.get("generator_cpu_us_per_connect")
    split = side.get("connects_split")
    if split:
        found["connects/s, cluster on one core, load on another"] = split["per_s"]
        found["server CPU per connect on one core, µs"] = split["cluster_cpu_us_per_connect"]
    return found


def _ratio(ours: float | None, php: float | None) -> float | None:
    if ours is None or php is None or not php:
        return None
    return round(ours / php, 3)


def _span(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "min": min(values),
        "median": round(statistics.median(values), 3),
        "max": max(values),
    }


def summarize(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per figure: each side's values over the rounds and their span
    (``None`` for a side not measured), and the ratio ours/PHP (``ratio``: of the
    medians; ``ratio_per_round``: the span of the per-round ratios)."""
    by_side: dict[str, list[dict[str, float | None]]] = {
        name: [figures(r[name]) for r in rounds if name in r] for name in SIDES
    }
    labels = [label for side in by_side.values() for found in side for label in found]
    paired = [(figures(r["py"]), figures(r["php"])) for r in rounds if _both(r)]
    rows = []
    for label in dict.fromkeys(labels):
        row: dict[str, Any] = {"figure": label}
        for name in SIDES:
            values = [f[label] for f in by_side[name] if f.get(label) is not None]
            row[name] = values
            row[f"{name}_span"] = _span([v for v in values if v is not None])
        php, py = row["php_span"], row["py_span"]
        row["ratio"] = _ratio(py["median"], php["median"]) if php and py else None
        ratios = [_ratio(ours.get(label), php_.get(label)) for ours, php_ in paired]
        row["ratio_per_round"] = _span([r for r in ratios if r is not None])
        rows.append(row)
    return rows


def _both(round_: dict[str, Any]) -> bool:
    return all(name in round_ for name in SIDES)


def _num(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:g}"


def _range(span: dict[str, float] | None) -> str:
    if span is None:
        return "-"
    if span["min"] == span["max"]:
        return _num(span["min"])
    return f"{_num(span['min'])} - {_num(span['max'])}"


def _ratio_text(row: dict[str, Any]) -> str:
    if row["ratio"] is None:
        return "-"
    per_round = row["ratio_per_round"]
    if per_round is None or per_round["min"] == per_round["max"]:
        return f"{row['ratio']:.2f}"
    return f"{row['ratio']:.2f} ({per_round['min']:.2f} - {per_round['max']:.2f})"


def _host_lines(doc: dict[str, Any]) -> list[str]:
    host = doc["machine"]
    steal = host.get("cpu_steal") or {}
    load0, load1 = host.get("loadavg_start") or [], host.get("loadavg_end") or []
    stick = host.get("yardstick") or {}
    lines = [
        f"- machine: {host.get('cpu') or 'unknown CPU'}, {host.get('cores')} cores, "
        f"kernel {host.get('kernel')}, Python {host.get('python')}",
        f"- CPU steal over the run: {steal.get('steal_pct')} % (machine busy "
        f"{steal.get('busy_pct')} % over {steal.get('seconds')} s)",
        "- load average (1/5/15 min): "
        f"{' '.join(f'{v:.2f}' for v in load0)} at start, "
        f"{' '.join(f'{v:.2f}' for v in load1)} at end",
    ]
    if stick:
        lines.append(
            f"- yardstick of this run: loopback send {stick.get('loopback_send_us')} µs, "
            f"bare asyncio echo round trip p50 {stick.get('echo_rtt_us')} µs, "
            f"bare TCP connects {stick.get('connects_per_s')}/s"
        )
    return lines


def _side_lines(doc: dict[str, Any]) -> list[str]:
    php = doc["php"]
    lines = [f"- ours: {doc['py_setup']}"]
    if php.get("start_file"):
        lines.append(
            f"- PHP: `{php['start_file']}`, PHP {php.get('version')}; "
            f"event loop: {php.get('event_loop')}"
        )
    else:
        lines.append(f"- **No PHP cluster was given**: {php.get('missing')}. Our side only.")
    return lines


def _process_lines(rounds: list[dict[str, Any]]) -> list[str]:
    first = rounds[0] if rounds else {}
    lines = []
    for name, title in (("php", "PHP"), ("py", "ours")):
        if name not in first:
            continue
        rows = first[name]["idle"]["processes"]
        each = "; ".join(f"{p['process']} {p['rss_mib']:g}/{p['pss_mib']:g}" for p in rows)
        lines.append(f"- {title} (RSS/PSS MiB, round 1): {each}")
    return lines


def markdown(doc: dict[str, Any]) -> str:
    """``php-compare.md``: the setup, the machine, and the side-by-side table."""
    rows = doc["summary"]
    sizes = doc["sizes"]
    rates = ", ".join(f"{r:,}" for r in sizes["rates"])
    lines = [
        "# Our chat cluster beside the PHP original (GatewayWorker), same machine",
        "",
        f"{doc['date']}; `{doc['command']}`" + (" (quick: smoke sizes)" if doc["quick"] else ""),
        "",
        *_side_lines(doc),
        *_host_lines(doc),
        f"- each side measured {doc['rounds_done']} time(s), alternating PHP then ours; "
        f"idle after {sizes['settle']:g} s; {sizes['clients']} chat clients, each in its "
        f"own room, `say` to all at {rates}/s for {sizes['duration']:g} s each (open loop); "
        f"connects: {sizes['waves']} waves of {sizes['wave']:,} (counted at the 101, "
        "then closed)",
        "",
        "| figure | PHP | ours | ours/PHP |",
        "|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['figure']} | {_range(row['php_span'])} | {_range(row['py_span'])} | "
            f"{_ratio_text(row)} |"
        )
    lines += [
        "",
        "Ranges are min - max over the rounds; ours/PHP is the ratio of the medians, "
        "with the range of the per-round ratios in brackets. Server CPU is user + system "
        "time of the master and every child over the phase, divided by the replies or "
        "connections. On connect our chat's worker sends the client an `init` message; "
        "the PHP chat sends nothing (neither is waited for).",
        "",
        *_process_lines(doc["rounds"]),
    ]
    if doc["errors"]:
        lines += ["", "Errors:", "", *(f"- {e}" for e in doc["errors"])]
    return "\n".join(lines) + "\n"
