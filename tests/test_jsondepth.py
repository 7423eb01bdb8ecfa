"""``runtime.jsondepth``: peer JSON refused past a nesting bound on every Python
(``json.loads`` alone gives up at a depth that depends on the version)."""

from __future__ import annotations

import json

import pytest

from pygatewayworker.pusher.protocol import ProtocolError, parse_client_message
from pygatewayworker.register.lines import LineError, decode_line
from pygatewayworker.runtime.jsondepth import MAX_DEPTH, TooDeep, depth_exceeds, loads


def nested(levels: int) -> str:
    return "[" * levels + "]" * levels


def test_the_bound_is_exact() -> None:
    assert loads(nested(MAX_DEPTH)) is not None
    with pytest.raises(TooDeep, match=f"more than {MAX_DEPTH} levels deep"):
        loads(nested(MAX_DEPTH + 1))
    document: object = 1
    for level in range(MAX_DEPTH + 1):  # dicts and lists in turn
        document = {"a": document} if level % 2 else [document]
    mixed = json.dumps(document)
    assert depth_exceeds(document, MAX_DEPTH) and not depth_exceeds(document, MAX_DEPTH + 1)
    with pytest.raises(TooDeep):
        loads(mixed)


@pytest.mark.parametrize("levels", [5_000, 200_000])
def test_very_deep_documents_are_refused_whatever_the_parser_manages(levels: int) -> None:
    """3.13's parser accepts 5,000 levels, 3.11's raises RecursionError: both TooDeep."""
    with pytest.raises(TooDeep):
        loads(nested(levels))


def test_wide_documents_and_scalars_pass() -> None:
    wide = {"client_ids": [f"c{i}" for i in range(10_000)], "message": "x" * 1000}
    assert loads(json.dumps(wide)) == wide
    assert not depth_exceeds("text", 0) and not depth_exceeds([], 1)
    assert depth_exceeds([[]], 1)


def test_peer_parsers_name_the_problem() -> None:
    deep = nested(MAX_DEPTH + 1)
    with pytest.raises(ProtocolError, match="levels deep"):
        parse_client_message('{"event": "client-x", "channel": "c", "data": ' + deep + "}")
    with pytest.raises(LineError, match="levels deep"):
        decode_line(('{"event": "ping", "x": ' + deep + "}").encode())
