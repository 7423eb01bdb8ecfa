"""``python -m bench gateway-path``: a short run through the command line (every
connection must get its ``101`` and the worker's ``init``, and the worker link must be
written to, or the run fails), the figures in ``gateway-path.json``; and a run whose
``init`` goes to the wrong connection is an error, not a figure."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bench import gatewaypath
from bench.__main__ import main


def test_gateway_path_runs_and_writes_its_figures(tmp_path: Path) -> None:
    assert (
        main(["gateway-path", "--connects", "3000", "--rounds", "2", "--out", str(tmp_path)]) == 0
    )
    found = json.loads((tmp_path / "gateway-path.json").read_text())
    assert found["connects_per_run"] == 3000
    assert found["request_head_bytes"] == len(gatewaypath.REQUEST)
    assert len(found["us_cpu_per_connect_runs"]) == 2
    assert all(0 < value < 10_000 for value in found["us_cpu_per_connect_runs"])
    assert found["us_cpu_per_connect_median"] > 0


def test_a_connection_without_its_init_fails_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    made = gatewaypath._Connects.__init__

    def misrouted(self: gatewaypath._Connects, *args: object) -> None:
        made(self, *args)
        if len(self.inits) == 50:  # the timed run (not the warm-up): the last init misrouted
            self.inits[-1] = self.inits[0]

    monkeypatch.setattr(gatewaypath._Connects, "__init__", misrouted)
    with pytest.raises(RuntimeError, match="1 of 50 connections got 1 writes"):
        asyncio.run(gatewaypath._one_run(50))
