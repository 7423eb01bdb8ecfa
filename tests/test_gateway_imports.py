"""No import cycle in the gateway package: every ``import`` statement counts, at the
top, under ``TYPE_CHECKING`` or inside a function; and the pure modules import no
asyncio and nothing of the asyncio shell."""

from __future__ import annotations

import ast
from pathlib import Path

GATEWAY = Path(__file__).resolve().parent.parent / "gateway"
PREFIX = "pygatewayworker.gateway."
PURE = {
    "client_id",
    "clients",
    "commands",
    "core",
    "directory",
    "frames",
    "http11",
    "protocol",
    "records",
    "static",
    "websocket",
    "workers",
}
SHELL = {"connection", "links", "server", "phplink"}


def imports(module: str) -> set[str]:
    """Every module ``module`` imports: gateway modules by short name, others whole."""
    tree = ast.parse((GATEWAY / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            short = name[len(PREFIX) :].split(".")[0] if name.startswith(PREFIX) else ""
            found.add(short if (GATEWAY / f"{short}.py").exists() else name)
    return found - {module}


def test_no_module_of_the_gateway_imports_one_that_imports_it_back() -> None:
    modules = sorted(p.stem for p in GATEWAY.glob("*.py") if p.stem != "__init__")
    graph = {m: {i for i in imports(m) if i in modules} for m in modules}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = path[path.index(module) :] + [module]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        for dep in graph[module]:
            visit(dep, [*path, module])
        done.add(module)

    for module in modules:
        visit(module, [])


def test_the_pure_modules_import_no_event_loop_and_no_shell() -> None:
    for module in sorted(PURE):
        found = imports(module)
        assert "asyncio" not in found and "uvloop" not in found, module
        assert not found & SHELL, (module, found & SHELL)
