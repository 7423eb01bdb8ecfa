"""bench.stalls.StallSampler against a real child process (runtime.service): a stall
inside the measurement is reported, one from before it is not."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from bench.stalls import StallSampler
from tests.test_service import ChildProc


def _wait_stats(proc: ChildProc, done: object, timeout: float = 20.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        stats = json.loads(proc.stats.read_text()) if proc.stats.exists() else {}
        if callable(done) and done(stats):
            return stats
        assert time.monotonic() < deadline, stats
        time.sleep(0.02)


def test_a_stall_inside_the_measurement_is_reported(tmp_path: Path) -> None:
    with StallSampler(tmp_path / "run") as sampler:
        proc = ChildProc(tmp_path, master_pid=os.getpid(), block="0.4")
        try:
            assert proc.status_line()["kind"] == "ready"
            _wait_stats(proc, lambda s: s.get("loop_lag_peak_ms", 0) >= 300)
        except BaseException:
            proc.close()
            raise
    try:
        found = sampler.result()
        assert found["max_ms"] >= 300
        assert found["by_process"] == {"t.register.0": found["max_ms"]}
    finally:
        proc.close()


def test_a_stall_before_the_measurement_is_not_charged_to_it(tmp_path: Path) -> None:
    """The stats file still holds the interval with the stall when the measurement
    starts: the sampler starts a fresh interval and skips the old one."""
    proc = ChildProc(tmp_path, master_pid=os.getpid(), block="0.4")
    try:
        assert proc.status_line()["kind"] == "ready"
        stalled = _wait_stats(proc, lambda s: s.get("loop_lag_max_ms", 0) >= 300)
        assert stalled["loop_lag_since"] < time.time()
        with StallSampler(tmp_path / "run") as sampler:
            time.sleep(0.7)  # two samples while the old interval could still be read
        found = sampler.result()
        assert found["by_process"].keys() == {"t.register.0"}
        assert found["max_ms"] < 300
    finally:
        proc.close()
