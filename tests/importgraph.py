"""The import graph of the installed ``pygatewayworker`` package, read with ``ast``.

How this works
--------------
Every module under the installed package (the role folders are reached through its
symlinks) is parsed; nothing is imported. Every ``import`` and ``from ... import``
statement counts wherever it stands: at module level, inside a function (the usual
way to hide a cycle), and under ``if TYPE_CHECKING:`` (a cycle a reader has to
follow all the same).

An edge goes to the module a statement names: ``from pygatewayworker.gatewayclient
import merge`` is an edge to ``gatewayclient.merge`` (a submodule), ``from
pygatewayworker.gatewayclient import GatewayClient`` one to ``gatewayclient``'s
``__init__`` (a name defined there). The implicit import of a module's parent
packages is not an edge: Python initialises a package before its children and that
order never deadlocks, whereas counting it would make every package that re-exports
its own modules a "cycle".
"""

from __future__ import annotations

import ast
import os
from collections.abc import Container, Iterator
from functools import cache
from pathlib import Path

import pygatewayworker

__all__ = ["ROOT_PACKAGE", "modules", "names_in", "imported_names", "graph", "cycles"]

ROOT_PACKAGE = "pygatewayworker"


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
