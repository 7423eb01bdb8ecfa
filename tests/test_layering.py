"""The import graph of the installed packages: no cycle, dependencies pointing one way.

How this works
--------------
Every module under the installed ``pygatewayworker`` package (the role folders are
reached through its symlinks) is parsed with :mod:`ast`; nothing is imported. Every
``import`` and ``from ... import`` statement counts wherever it stands: at module
level, inside a function (the usual way to hide a cycle), and under
``if TYPE_CHECKING:`` (a cycle a reader has to follow all the same).

An edge goes to the module a statement names: ``from pygatewayworker.gatewayclient
import merge`` is an edge to ``gatewayclient.merge`` (a submodule), ``from
pygatewayworker.gatewayclient import GatewayClient`` one to ``gatewayclient``'s
``__init__`` (a name defined there). The implicit import of a module's parent
packages is not an edge: Python initialises a package before its children and that
order never deadlocks, whereas counting it would make every package that re-exports
its own modules a "cycle".

The layers, lowest first: protocol modules (pure) <- ``runtime`` <- role runtimes
(``gateway``, ``register``, ``businessworker``, ``gatewayclient``, ``pushapi``) <-
``cluster`` (the supervisor and the command line).
"""

from __future__ import annotations

import ast
import os
from collections.abc import Container, Iterator
from functools import cache
from pathlib import Path

import pygatewayworker

ROOT_PACKAGE = "pygatewayworker"
ROLES = ("gateway", "register", "businessworker", "gatewayclient", "pushapi")
SUPERVISOR = f"{ROOT_PACKAGE}.cluster"
RUNTIME = f"{ROOT_PACKAGE}.runtime"

PURE_MODULES = (
    "gateway.protocol",
    "gateway.client_id",
    "gateway.directory",
    "gatewayclient.merge",
    "gatewayclient.errors",
    "register.lines",
    "pushapi.verbs",
    "pushapi.http",
)
"""Modules that do no I/O: bytes or values in, values out."""
IO_MODULES = frozenset({"asyncio", "socket", "selectors", "ssl", "threading", "subprocess"})
"""What a pure module may not import, directly or through the modules it imports."""

KNOWN_GATEWAY_CYCLE = frozenset(
    f"{ROOT_PACKAGE}.gateway.{name}"
    for name in ("server", "links", "commands", "connection", "sweeps")
)
"""The one cycle allowed for now: ``GatewayServer`` and its mixins, tied together by
TYPE_CHECKING imports. Removed by the gateway core refactor (then delete this
allow-list: every cycle fails the test)."""


def _module_files() -> Iterator[tuple[str, Path]]:
    top = Path(pygatewayworker.__file__).parent
    for directory, subdirs, files in os.walk(top, followlinks=True):
        here = Path(directory)
        subdirs[:] = sorted(d for d in subdirs if (here / d / "__init__.py").is_file())
        parts = here.relative_to(top).parts
        for file_name in sorted(files):
            if not file_name.endswith(".py"):
                continue
            stem = file_name[: -len(".py")]
            tail = parts if stem == "__init__" else (*parts, stem)
            yield ".".join((ROOT_PACKAGE, *tail)), here / file_name


@cache
def modules() -> dict[str, Path]:
    """Every module of the installed package by dotted name."""
    return dict(_module_files())


def names_in(tree: ast.AST, module: str, is_package: bool, known: Container[str]) -> set[str]:
    """Every module name the statements of ``tree`` import, wherever they stand;
    ``from X import y`` names ``X.y`` when that is a module in ``known``."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:  # relative: from the package of ``module``
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, node.module] if node.module else base)
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                names.add(submodule if submodule in known else source)
    return names


@cache
def imported_names(module: str) -> frozenset[str]:
    """Every module name ``module`` imports (the library's and everyone else's)."""
    path = modules()[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return frozenset(names_in(tree, module, path.name == "__init__.py", modules()))


@cache
def graph() -> dict[str, frozenset[str]]:
    """The internal import graph: module -> the modules of the package it imports."""
    known = modules()
    return {
        module: frozenset(name for name in imported_names(module) if name in known)
        for module in known
    }


def cycles(edges: dict[str, frozenset[str]]) -> list[frozenset[str]]:
    """Every strongly connected component with a cycle (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1 or node in edges[node]:
                    found.append(frozenset(component))
    return found


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
    unexpected = [
        sorted(component) for component in cycles(graph()) if not component <= KNOWN_GATEWAY_CYCLE
    ]
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
