"""``python -m bench php-compare`` (bench.phpcompare, bench.phpreport).

The PHP half needs a GatewayWorker chat app, which cannot be installed here: the
report's arithmetic is tested with hand-made rounds, and the command's own run
(without a PHP cluster) starts our real chat cluster. No timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from bench.phpcluster import event_loop_of
from bench.phpcompare import CompareOptions, _pin, php_side
from bench.phpreport import markdown, summarize

ROOT = Path(__file__).resolve().parent.parent


def _side(rss: float, p50: float, cpu: float, connects: float) -> dict[str, Any]:
    """One side's measurement as ``bench.phpcompare.measure_side`` returns it."""
    process = {"process": "master", "pid": 1, "rss_mib": rss, "pss_mib": rss / 2}
    point = {
        "sent": 200,
        "received": 198,
        "p50_ms": p50,
        "p90_ms": 2 * p50,
        "p99_ms": 3 * p50,
        "cluster_cpu_us_per_msg": cpu,
    }
    return {
        "idle": {"rss_mib": rss, "pss_mib": rss / 2, "count": 6, "processes": [process]},
        "round_trip": {"points": {"1000": point}},
        "connects": {
            "per_s": connects,
            "cluster_cpu_us_per_connect": 100.0,
            "generator_cpu_us_per_connect": 50.0,
        },
        "connects_split": {"per_s": connects / 2, "cluster_cpu_us_per_connect": 120.0},
    }


def _doc(rounds: list[dict[str, Any]], php: dict[str, Any]) -> dict[str, Any]:
    """What ``bench.phpcompare.compare`` hands the report."""
    sizes = {"settle": 1.0, "clients": 20, "rates": [1000], "duration": 1.0}
    return {
        "date": "2026-12-02 05:00:00 UTC",
        "quick": True,
        "command": "python -m bench php-compare --quick",
        "machine": {"cpu": "Test CPU", "cores": 2, "cpu_steal": {"steal_pct": 0.5}},
        "php": php,
        "py_setup": "ours",
        "sizes": {**sizes, "wave": 200, "waves": 2},
        "rounds_done": len(rounds),
        "summary": summarize(rounds),
        "rounds": rounds,
        "errors": [],
    }


def test_summary_gives_ranges_and_ratios_ours_over_php() -> None:
    rounds = [
        {
            "round": 1,
            "php": _side(50.0, 0.4, 200.0, 2000.0),
            "py": _side(150.0, 0.2, 300.0, 4000.0),
        },
        {
            "round": 2,
            "php": _side(60.0, 0.5, 250.0, 2000.0),
            "py": _side(150.0, 0.3, 250.0, 5000.0),
        },
    ]
    rows = {row["figure"]: row for row in summarize(rounds)}
    rss = rows["idle RSS sum, MiB"]
    assert rss["php"] == [50.0, 60.0] and rss["py"] == [150.0, 150.0]
    assert rss["php_span"] == {"min": 50.0, "median": 55.0, "max": 60.0}
    assert rss["ratio"] == round(150 / 55, 3)  # of the medians
    assert rss["ratio_per_round"] == {"min": 2.5, "median": 2.75, "max": 3.0}
    assert rows["1000/s: round trip p50, ms"]["ratio"] == round(0.25 / 0.45, 3)
    assert rows["1000/s: replies received, %"]["py"] == [99.0, 99.0]
    assert rows["connects/s"]["ratio_per_round"] == {"min": 2.0, "median": 2.25, "max": 2.5}

    text = markdown(
        _doc(
            rounds, {"start_file": "/srv/chat/start.php", "version": "8.2", "event_loop": "Select"}
        )
    )
    assert "| idle RSS sum, MiB | 50 - 60 | 150 | 2.73 (2.50 - 3.00) |" in text
    assert "| connects/s | 2,000 | 4,000 - 5,000 | 2.25 (2.00 - 2.50) |" in text
    assert (
        "| connects/s, cluster on one core, load on another | 1,000 | 2,000 - 2,500 | "
        "2.25 (2.00 - 2.50) |" in text
    )
    assert "| load generator CPU per connect, µs | 50 | 50 | 1.00 |" in text
    assert "event loop: Select" in text and "Test CPU" in text and "0.5 %" in text


def test_a_round_without_php_has_no_ratio_and_says_so() -> None:
    """A side that failed in a round leaves that round out of the per-round ratios;
    without any PHP measurement the report says no PHP cluster was given."""
    rounds = [
        {
            "round": 1,
            "php": _side(50.0, 0.4, 200.0, 2000.0),
            "py": _side(150.0, 0.2, 300.0, 4000.0),
        },
        {"round": 2, "py": _side(100.0, 0.2, 300.0, 4000.0)},
    ]
    rss = {row["figure"]: row for row in summarize(rounds)}["idle RSS sum, MiB"]
    assert (
        rss["ratio"] == 2.5
        and rss["ratio_per_round"]["min"] == rss["ratio_per_round"]["max"] == 3.0
    )

    alone = [{"round": 1, "py": _side(150.0, 0.2, 300.0, 4000.0)}]
    rows = summarize(alone)
    assert all(row["php_span"] is None and row["ratio"] is None for row in rows)
    text = markdown(_doc(alone, {"missing": "no `--php-start` given"}))
    assert "**No PHP cluster was given**: no `--php-start` given" in text
    assert "| idle RSS sum, MiB | - | 150 | - |" in text


def test_event_loop_is_read_from_php_modules() -> None:
    assert event_loop_of("[PHP Modules]\nCore\npcntl\nposix\n").startswith("Select")
    assert event_loop_of("[PHP Modules]\nCore\nev\nevent\n").startswith("Event (ext-event)")
    assert event_loop_of("Core\nev\n").startswith("Ev ")


def test_without_php_on_the_path_the_php_side_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = tmp_path / "start.php"
    start.write_text("<?php\n")
    monkeypatch.setenv("PATH", str(tmp_path))
    info, make = php_side(CompareOptions(php_start=start))
    assert make is None and info == {"missing": "`php` is not on the PATH"}
    info, make = php_side(CompareOptions())
    assert make is None and info == {"missing": "no `--php-start` given"}


def test_quick_php_compare_without_php_measures_our_side(tmp_path: Path) -> None:
    """``python -m bench php-compare --quick`` without ``--php-start``: exit 0, our
    chat cluster measured (6 processes with memory, every say back, connects made),
    and the report says no PHP cluster was given."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "php-compare", "--quick", "--rounds", "1"]
        + ["--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "no PHP cluster" in proc.stdout
    doc = json.loads((tmp_path / "php-compare.json").read_text())
    assert doc["errors"] == [] and doc["php"] == {"missing": "no `--php-start` given"}
    assert doc["machine"]["cpu_steal"]["steal_pct"] is not None and doc["machine"]["loadavg_end"]
    (ours,) = [r["py"] for r in doc["rounds"]]
    idle = ours["idle"]
    assert idle["count"] == 6 and all(p["rss_mib"] > 0 for p in idle["processes"])
    for point in ours["round_trip"]["points"].values():
        assert point["sent"] > 0 and point["received"] == point["sent"]
        assert point["cluster_cpu_us_per_msg"] > 0
    for phase in ("connects", "connects_split"):
        connects = ours[phase]
        assert connects["connected"] == 400 and connects["failed"] == 0 and connects["per_s"] > 0
        assert connects["generator_cpu_us_per_connect"] is not None
    text = (tmp_path / "php-compare.md").read_text()
    assert "No PHP cluster was given" in text and "| connects/s | - |" in text


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to pin apart")
def test_pinning_moves_every_thread_of_a_process_and_back() -> None:
    """``split_cores`` pins each thread (an affinity is per thread), then restores."""
    code = (
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        proc = psutil.Process(child.pid)
        tids = [t.id for t in proc.threads()]
        cpus = sorted(os.sched_getaffinity(0))
        assert len(tids) == 2
        _pin([proc], {cpus[1]})
        assert [os.sched_getaffinity(tid) for tid in tids] == [{cpus[1]}, {cpus[1]}]
        _pin([proc], set(cpus))
        assert [os.sched_getaffinity(tid) for tid in tids] == [set(cpus), set(cpus)]
    finally:
        child.kill()
        child.wait()
