"""What each process of a real cluster has loaded, and what it costs.

The master and the register use none of the gateway's and the worker's
dependencies, and a gateway none of the worker's: checked on a running chat cluster
from the outside (``/proc/<pid>/maps``: the C extensions each process mapped) and
from the processes' own reports (the stats files and ``state.json``, written from
their ``sys.modules``: the pure-Python packages)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from pygatewayworker.runtime.footprint import (
    Imports,
    loaded_packages,
    mapped_libraries,
    memory,
    rss_bytes,
)
from tests import opsharness
from tests.cluster import cli

start_cluster = opsharness.start_cluster

GATEWAY_DEPENDENCIES = ("uvloop", "msgpack", "websockets", "h11", "jwt", "prometheus_client")
"""Third-party packages the master and the register must not load."""
C_EXTENSIONS = {
    "uvloop": "/uvloop/",
    "msgpack": "/msgpack/",
    "websockets": "/websockets/",
    "cryptography (jwt)": "/cryptography/",
    "asyncio": "/_asyncio.",
    "ssl": "/_ssl.",
}
"""What a mapped shared object's path contains when the package is loaded."""


def mapped(pid: int) -> set[str]:
    """The names of :data:`C_EXTENSIONS` whose shared objects ``pid`` maps."""
    paths = mapped_libraries(pid)
    assert paths, f"no shared object mapped by pid {pid}?"
    return {name for name, marker in C_EXTENSIONS.items() if any(marker in p for p in paths)}


# ---- the pure part ----------------------------------------------------------------


def test_memory_of_this_process_is_split_into_shared_and_private() -> None:
    mem = memory()
    assert mem["rss"] >= mem["pss"] >= mem["uss"] > 0
    assert abs(mem["rss"] - rss_bytes()) < mem["rss"] // 2


def test_memory_of_a_missing_process_is_empty() -> None:
    assert memory(2**22 + 12345) == {}
    assert rss_bytes(2**22 + 12345) == 0
    assert mapped_libraries(2**22 + 12345) == []


def test_mapped_libraries_lists_the_c_extensions_this_process_loaded() -> None:
    import _json  # noqa: F401 - a C extension of the standard library

    assert any("libpython" in p or "_json" in p for p in mapped_libraries())


def test_imports_reports_third_party_packages_and_our_subpackages() -> None:
    import pygatewayworker.runtime.footprint  # noqa: F401 - loaded for the check

    snapshot = Imports().snapshot()
    assert snapshot["modules"] == len(sys.modules)
    assert "pytest" in snapshot["packages"]
    assert "json" not in snapshot["packages"] and "pygatewayworker" not in snapshot["packages"]
    assert "runtime" in snapshot["subpackages"]
    assert (snapshot["packages"], snapshot["subpackages"]) == loaded_packages()


# ---- a running cluster --------------------------------------------------------------


def _processes(spec: Any) -> list[tuple[str, int, dict[str, Any]]]:
    """``(role, pid, imports report)`` of the master and every child."""
    status = json.loads(cli(spec, "status", "--json").stdout)  # fresh stats files
    state = json.loads((spec.run_dir / "state.json").read_text())
    out = [("master", int(status["master"]["pid"]), state["master"])]
    for proc in status["processes"][1:]:  # the master's row first
        stats = json.loads((spec.run_dir / "stats" / f"{proc['name']}.json").read_text())
        out.append((proc["role"], int(proc["pid"]), stats))
    return out


def test_each_role_loads_only_what_it_uses(start_cluster: Callable[..., Any]) -> None:
    cluster = start_cluster(source="chat")
    processes = _processes(cluster.spec)
    assert sorted(role for role, _, _ in processes) == sorted(
        ["master", "register", "gateway", "gateway", "businessworker", "businessworker"]
    )
    for role, pid, report in processes:
        packages, ours, libraries = set(report["packages"]), set(report["subpackages"]), mapped(pid)
        assert report["modules"] > 0
        where = f"{role} (pid {pid}): packages {sorted(packages)}, mapped {sorted(libraries)}"
        # the command line's click stays in the command: the master is exec'd afresh
        # (cluster.boot) and every child is forked from it
        assert "click" not in packages, where
        if role in ("master", "register"):
            assert not packages.intersection(GATEWAY_DEPENDENCIES), where
            assert not libraries & {"uvloop", "msgpack", "websockets", "cryptography (jwt)"}, where
            assert not ours & {"businessworker", "gatewayclient", "pushapi", "metrics"}, where
        # every child runs asyncio; the master imports it before forking them, so that
        # they share its pages (cluster.master.PRELOAD), and never runs a loop
        assert "asyncio" in libraries, where
        if role == "gateway":  # no worker code, no user code, no token library unasked
            assert not ours & {"businessworker", "gatewayclient"}, where
            assert "apps" not in packages and "jwt" not in packages, where
        if role in ("gateway", "businessworker"):  # they serve on uvloop, speak msgpack
            assert {"uvloop", "msgpack"} <= libraries, where
            assert {"uvloop", "msgpack"} <= packages, where
        if role == "businessworker":
            assert "apps" in packages, where  # the chat's Events, imported in the worker
            assert not packages & {"h11", "jwt", "prometheus_client"}, where
