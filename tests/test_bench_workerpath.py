"""``python -m bench worker-path``: a short run of both apps through the command line;
each event is answered with one send and bytes reach the sink (the bench checks
both, and fails otherwise), and the figures land in ``worker-path.json``."""

from __future__ import annotations

import json
from pathlib import Path

from bench.__main__ import main


def test_worker_path_runs_both_apps_and_writes_its_figures(tmp_path: Path) -> None:
    assert main(["worker-path", "--events", "3000", "--rounds", "2", "--out", str(tmp_path)]) == 0
    found = json.loads((tmp_path / "worker-path.json").read_text())
    assert set(found) == {"chat", "inline"}
    for figures in found.values():
        assert figures["events_per_run"] == 3000
        assert len(figures["us_cpu_per_event_runs"]) == 2
        assert all(0 < value < 10_000 for value in figures["us_cpu_per_event_runs"])
        assert figures["us_cpu_per_event_median"] > 0
