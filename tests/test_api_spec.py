"""Every surface of the Gateway API against its one table (``gatewayclient/spec.py``):
the worker's ``api``, ``GatewayAPI``, ``AsyncGatewayClient``, ``GatewayClient`` and the
push API's verbs. Signatures are compared, not only names: parameter names, order,
kinds, defaults, resolved annotations, the return type and whether the call is a
coroutine."""

from __future__ import annotations

import ast
import inspect
import json
import re
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pygatewayworker.businessworker.handle import WorkerAPI
from pygatewayworker.gatewayclient.api import GatewayAPI
from pygatewayworker.gatewayclient.client import AsyncGatewayClient
from pygatewayworker.gatewayclient.spec import (
    BY_NAME,
    CALLS,
    HELPERS,
    NO_DEFAULT,
    Arg,
    Call,
    Cost,
    JsonField,
    Kind,
    calls_of,
    render_markdown,
)
from pygatewayworker.gatewayclient.sync import GatewayClient
from pygatewayworker.pushapi.verbs import CONVERTERS, VERBS, parse_call
from tests.importgraph import modules

ROOT = Path(__file__).resolve().parent.parent

Coroutine = Callable[[Call], bool]
"""Whether a surface's method for a call must be a coroutine function."""

SURFACES: dict[str, tuple[type, tuple[Call, ...], Coroutine, set[str]]] = {
    # name: (class, calls it has, coroutine rule, public methods beyond the API)
    "GatewayAPI": (GatewayAPI, calls_of(worker=False), lambda c: c.kind is Kind.QUERY, set()),
    "WorkerAPI (the worker's api)": (
        WorkerAPI,
        calls_of(worker=True),
        lambda c: c.kind is Kind.QUERY,
        set(),
    ),
    "AsyncGatewayClient": (
        AsyncGatewayClient,
        calls_of(worker=False),
        lambda c: True,
        {"connect", "close", "flush", *(h.name for h in HELPERS)},
    ),
    "GatewayClient": (
        GatewayClient,
        calls_of(worker=False),
        lambda c: False,
        {"close", *(h.name for h in HELPERS)},
    ),
}


def _public_methods(cls: type) -> set[str]:
    return {
        name
        for name in dir(cls)
        if not name.startswith("_") and inspect.isfunction(getattr(cls, name))
    }


def signature_problems(cls: type, call: Call, coroutine: bool) -> list[str]:
    """How ``cls.<call.name>`` differs from the table (empty: it matches)."""
    method = getattr(cls, call.name, None)
    if method is None or not inspect.isfunction(method):
        return [f"{call.name}: missing"]
    where = f"{cls.__name__}.{call.name}"
    problems = []
    if inspect.iscoroutinefunction(method) != coroutine:
        problems.append(f"{where}: {'should' if coroutine else 'should not'} be a coroutine")
    hints = typing.get_type_hints(method)
    params = list(inspect.signature(method).parameters.values())[1:]  # self
    names = [p.name for p in params]
    if names != [a.name for a in call.args]:
        return [*problems, f"{where}: parameters {names}, table {[a.name for a in call.args]}"]
    for param, arg in zip(params, call.args, strict=True):
        if param.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD:
            problems.append(f"{where}({arg.name}): kind {param.kind.description}")
        if param.default is not arg.default and param.default != arg.default:
            problems.append(
                f"{where}({arg.name}): default {param.default!r}, table {arg.default!r}"
            )
        if hints.get(arg.name) != arg.type:
            problems.append(f"{where}({arg.name}): type {hints.get(arg.name)}, table {arg.type}")
    returns = type(None) if call.returns is None else call.returns
    if hints.get("return") != returns:
        problems.append(f"{where}: returns {hints.get('return')}, table {returns}")
    return problems


@pytest.mark.parametrize("surface", list(SURFACES))
def test_surface_matches_the_table(surface: str) -> None:
    cls, calls, coroutine, extra = SURFACES[surface]
    problems = [p for call in calls for p in signature_problems(cls, call, coroutine(call))]
    assert not problems, f"{surface} drifted from gatewayclient/spec.py:\n" + "\n".join(problems)
    unlisted = _public_methods(cls) - {call.name for call in calls} - extra
    assert not unlisted, f"{surface} has public calls the table does not list: {sorted(unlisted)}"


@pytest.mark.parametrize("cls", [AsyncGatewayClient, GatewayClient], ids=lambda c: c.__name__)
@pytest.mark.parametrize("helper", HELPERS, ids=lambda c: c.name)
def test_helpers_match_the_table(cls: type, helper: Call) -> None:
    """The push clients' helpers (no gateway asked) are plain methods in both."""
    assert signature_problems(cls, helper, coroutine=False) == []


def test_a_drifting_surface_is_caught() -> None:
    """The comparison sees each kind of drift, not only a missing name."""

    class Drifted:
        async def send_to_all(self, message: str, client_ids: list[str] | None = None) -> None:
            """A wrong type, a missing parameter."""

        def get_client_count_by_group(self, group: str = "all") -> int:
            """Not a coroutine, a wrong default and type."""
            return 0

        def bind_uid(self, client_id: str, *, uid: str | int) -> None:
            """A keyword-only parameter."""

    problems = signature_problems(Drifted, BY_NAME["send_to_all"], coroutine=False)
    assert any("should not be a coroutine" in p for p in problems)
    assert any("parameters ['message', 'client_ids']" in p for p in problems)
    problems = signature_problems(Drifted, BY_NAME["get_client_count_by_group"], coroutine=True)
    assert any("should be a coroutine" in p for p in problems)
    assert any("default 'all'" in p for p in problems)
    assert any("type <class 'str'>" in p for p in problems)
    problems = signature_problems(Drifted, BY_NAME["bind_uid"], coroutine=False)
    assert problems == ["Drifted.bind_uid(uid): kind keyword-only"]
    assert signature_problems(Drifted, BY_NAME["ungroup"], coroutine=False) == ["ungroup: missing"]


def test_the_table_is_consistent() -> None:
    assert len(BY_NAME) == len(CALLS), "a call is listed twice"
    for call in CALLS:
        assert isinstance(call.kind, Kind) and isinstance(call.cost, Cost)
        if call.kind is Kind.SEND:
            assert call.returns is None, call.name
        if call.worker_only:
            assert not call.verb and "current_client" in call.name, call.name
        optional = [not arg.required for arg in call.args]
        assert optional == sorted(optional), (
            f"{call.name}: a required argument after an optional one"
        )
    # every T-class call of a client is addressed by a client_id
    for call in calls_of(worker=False):
        if call.cost is Cost.T:
            assert call.args[0].name == "client_id", call.name


def test_verbs_are_built_from_the_table() -> None:
    assert set(VERBS) == {call.name for call in CALLS + HELPERS if call.verb}
    assert all(VERBS[call.verb] is call for call in CALLS + HELPERS if call.verb)
    assert set(CONVERTERS) == set(JsonField) - {JsonField.MESSAGE}


@pytest.mark.parametrize("call", [c for c in CALLS + HELPERS if c.verb], ids=lambda c: c.name)
def test_each_verb_takes_its_fields_in_the_call_order(call: Call) -> None:
    """A body with every field gives the arguments in the method's order, and a body
    without the optional ones gives their defaults."""
    sample: dict[JsonField, Any] = {
        JsonField.CLIENT_ID: "c1",
        JsonField.CLIENT_IDS: ["c1", "c2"],
        JsonField.CLIENT_IDS_OR_ONE: ["c3"],
        JsonField.MESSAGE: "hello",
        JsonField.KEY: "k",
        JsonField.KEYS: ["k1", 2],
        JsonField.KEY_LIST: ["k3", 4],
        JsonField.OBJECT: {"a": 1},
        JsonField.NUMBER: 60.0,
        JsonField.CLOSE_CODE: 4001,
        JsonField.TEXT: "bye",
    }
    body = {arg.field: sample[arg.json] for arg in call.args}
    args = parse_call(call.verb, _json(body))
    assert args == [sample[arg.json] for arg in call.args]
    required = {arg.field: sample[arg.json] for arg in call.args if arg.required}
    expected = [sample[a.json] if a.required else a.default for a in call.args]
    assert parse_call(call.verb, _json(required)) == expected


def _json(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode()


def test_update_session_reads_the_session_field() -> None:
    partial: Arg = BY_NAME["update_session"].args[1]
    assert (partial.name, partial.field) == ("partial", "session")
    assert partial.default is NO_DEFAULT


def test_docs_api_page_is_rendered_from_the_table() -> None:
    page = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    assert page == render_markdown(), "docs/api.md is stale: run scripts/api_doc.py"


COST_PREFIX = re.compile(r"^\s*[TBS](\s*/\s*[TBS])?\s*:\s")


def test_no_docstring_begins_with_a_cost_class() -> None:
    """The cost class is stated in the table (and docs/api.md), not as a docstring's
    first letters."""
    offenders = []
    for module, path in modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                doc = ast.get_docstring(node)
                if doc and COST_PREFIX.match(doc):
                    offenders.append(f"{module}.{node.name}: {doc.splitlines()[0]}")
    assert not offenders, "\n".join(offenders)
