"""Smoke run of the benchmark suite: ``python -m bench run --quick`` starts real
clusters with tiny loads and must write every report with every metric. No timing
is asserted (the full run is a separate command, see the README)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.metrics import percentile
from bench.pool import split

ROOT = Path(__file__).resolve().parent.parent


def test_split_and_percentile() -> None:
    assert split(10, 3) == [4, 3, 3]
    assert sum(split(100_001, 6)) == 100_001
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile([], 99) == 0.0


@pytest.mark.timeout(180)
def test_quick_run_writes_every_report(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "run", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((out / "bench.json").read_text())
    assert doc["errors"] == []
    assert {"cpu", "cores", "kernel", "python", "uvloop"} <= set(doc["machine"])
    stick = doc["machine"]["yardstick"]
    assert stick["loopback_send_us"] > 0 and stick["echo_rtt_us"] > 0
    assert stick["connects_per_s"] > 0
    assert 0 <= doc["machine"]["cpu_steal"]["steal_pct"] <= 100
    for metric in ("M3", "M4", "M6", "M7"):
        assert doc["summary"][metric]["per_yardstick"] > 0, metric
    assert set(doc["summary"]) == {f"M{i}" for i in range(1, 9)}
    for metric, row in doc["summary"].items():
        assert row["value"] is not None, f"{metric} has no figure"
    results = doc["results"]
    assert results["M1"]["connections_held"] > 0
    assert results["M3"]["reconnect_storm"]["reconnected"] > 0
    assert results["M4"]["send_to_group"] and results["M4"]["send_to_all"]
    assert all(r["points"] for r in results["M4"]["sustained"].values())
    storm = results["M3"]["reconnect_storm"]
    assert {"seconds_to_99pct", "seconds_to_100pct", "missing", "gateway_exit_s"} <= set(storm)
    assert results["M5"]["deliveries"] > 0
    assert results["M6"]["series"]
    # every M6 point carries the longest loop stall of each cluster process
    points = [p for series in results["M6"]["series"].values() for p in series]
    assert (
        points
        and all(p["cpu"]["loop_stall_by_process_ms"] for p in points)
        and results["M6"]["thread"]["series"]
    )  # both modes
    assert doc["config"]["M6 thread"]["callbacks"] == "thread"
    assert results["M7"]["async"]["received"] == results["M7"]["async"]["calls"]
    assert results["M7"]["sync"]["received"] == results["M7"]["sync"]["calls"]
    for kind in ("msgpack", "php_persistent", "php_per_call"):
        assert results["M8"][kind]["deliveries"] == results["M8"][kind]["expected"], kind
    markdown = (out / "bench.md").read_text()
    for metric in doc["summary"]:
        assert f"| {metric} |" in markdown
    assert "Yardstick: loopback send" in markdown
    png = (out / "latency.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(120)
def test_quick_run_with_metrics_on(tmp_path: Path) -> None:
    """``--metrics`` starts every cluster with the metrics listener and scrapes it."""
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "run", "--quick", "--only", "M6", "--metrics"]
        + ["--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((out / "bench.json").read_text())
    assert doc["errors"] == []
    assert doc["config"] and all(c["metrics"] for c in doc["config"].values()), doc["config"]
