"""The import graph of the installed packages: no cycle, dependencies pointing one way.

The graph comes from ``tests/importgraph.py`` (every module parsed with ``ast``;
module-level, function-level and ``TYPE_CHECKING`` imports all count). The layers,
lowest first: pure modules <- ``runtime`` <- role runtimes (``gateway``, ``register``,
``businessworker``, ``gatewayclient``, ``pushapi``, ``pusher``) <- ``cluster`` (the
supervisor and the command line) <- ``metrics`` (the metrics listener, which reads
what the supervisor writes; the supervisor names it by import string only).
"""

from __future__ import annotations

import ast

from tests.importgraph import ROOT_PACKAGE, cycles, graph, imported_names, modules, names_in

ROLES = ("gateway", "register", "businessworker", "gatewayclient", "pushapi", "pusher")
SUPERVISOR = f"{ROOT_PACKAGE}.cluster"
RUNTIME = f"{ROOT_PACKAGE}.runtime"

PURE_MODULES = (
    "gateway.protocol",
    "gateway.linkproto",
    "gateway.client_id",
    "gateway.directory",
    "gateway.decider",
    "gateway.gatewayprotocol",
    "gateway.phpcommands",
    "gateway.phpserialize",
    "gatewayclient.spec",
    "gatewayclient.merge",
    "gatewayclient.errors",
    "register.lines",
    "pushapi.verbs",
    "pushapi.http",
    "runtime.histogram",
    "pusher.protocol",
    "pusher.presence",
    "pusher.httpauth",
    "pusher.ratelimit",
    "pusher.hooks",
)
"""Modules that do no I/O: bytes or values in, values out."""
IO_MODULES = frozenset({"asyncio", "socket", "selectors", "ssl", "threading", "subprocess"})
"""What a pure module may not import, directly or through the modules it imports."""


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


# ---- the checks ------------------------------------------------------------------------


def test_every_package_is_parsed() -> None:
    found = modules()
    for package in (*ROLES, "cluster", "runtime"):
        assert f"{ROOT_PACKAGE}.{package}" in found, package
    assert f"{ROOT_PACKAGE}.gateway.protocol" in found
    assert len(found) > 50


def test_the_cycle_finder_finds_cycles() -> None:
    edges = {
        "a": frozenset({"b"}),
        "b": frozenset({"c"}),
        "c": frozenset({"a"}),
        "d": frozenset({"d"}),
        "e": frozenset({"a"}),
    }
    assert sorted(map(sorted, cycles(edges))) == [["a", "b", "c"], ["d"]]


def test_function_level_relative_and_type_checking_imports_count() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import p.hidden\n"
        "def serve():\n    from p.late import run\n"
        "from . import sibling\n"
        "from .. import top_level\n"
    )
    known = {"p.hidden", "p.late", "p.pkg.sibling"}
    names = names_in(ast.parse(source), "p.pkg.mod", False, known)
    assert names == {"typing", "p.hidden", "p.late", "p.pkg.sibling", "p"}
    assert f"{RUNTIME}.service" in graph()[f"{ROOT_PACKAGE}.gateway.server"]  # inside serve()


def test_no_import_cycle() -> None:
    unexpected = [sorted(component) for component in cycles(graph())]
    assert not unexpected, f"import cycles: {unexpected}"


def package_of(module: str) -> str:
    """``pygatewayworker.gateway.server`` -> ``pygatewayworker.gateway``."""
    return ".".join(module.split(".")[:2])


def test_no_cycle_between_packages() -> None:
    """Collapsed to packages, the graph has no cycle either: before the runtime layer
    existed, the roles imported ``cluster`` (function-level) and ``cluster`` imported
    the roles, a cycle no single module showed."""
    edges: dict[str, set[str]] = {}
    for module, targets in graph().items():
        here = package_of(module)
        edges.setdefault(here, set()).update(
            package_of(t) for t in targets if package_of(t) != here
        )
    found = cycles({name: frozenset(targets) for name, targets in edges.items()})
    assert not found, f"cycles between packages: {[sorted(c) for c in found]}"


def test_roles_never_import_the_supervisor() -> None:
    offenders = [
        f"{module} imports {name}"
        for module in modules()
        if any(_in(module, f"{ROOT_PACKAGE}.{role}") for role in ROLES)
        for name in sorted(imported_names(module))
        if _in(name, SUPERVISOR)
    ]
    assert not offenders, (
        "roles must not import cluster (use pygatewayworker.runtime):\n" + "\n".join(offenders)
    )


def test_runtime_imports_no_role_and_not_the_supervisor() -> None:
    offenders = [
        f"{module} imports {name}"
        for module in modules()
        if _in(module, RUNTIME)
        for name in sorted(graph()[module])
        if not _in(name, RUNTIME)
    ]
    assert not offenders, "\n".join(offenders)


def _reachable(start: str) -> set[str]:
    seen = {start}
    todo = [start]
    while todo:
        for name in graph()[todo.pop()]:
            if name not in seen:
                seen.add(name)
                todo.append(name)
    return seen


def test_pure_modules_import_no_io() -> None:
    offenders = []
    for short in PURE_MODULES:
        module = f"{ROOT_PACKAGE}.{short}"
        assert module in modules(), f"{module} is listed as pure but does not exist"
        for reached in sorted(_reachable(module)):
            io = sorted(n for n in imported_names(reached) if n.split(".")[0] in IO_MODULES)
            if io:
                via = "" if reached == module else f" (through {reached})"
                offenders.append(f"{module} imports {', '.join(io)}{via}")
    assert not offenders, "\n".join(offenders)
