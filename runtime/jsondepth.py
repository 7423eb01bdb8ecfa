"""JSON from peers, with a bound on nesting that does not depend on the interpreter.

``json.loads`` raises ``RecursionError`` on deep nesting, and where that happens
depends on the Python version: 3.11 and 3.12 give up near 1,000 levels, 3.13 parses
thousands. A document nested that deep is never a sensible push call, session,
Pusher event or register line; what we do with it next (msgpack refuses 512 levels,
our own code walks it) would fail later and less clearly. So every parser of peer
JSON goes through :func:`loads`, which refuses more than :data:`MAX_DEPTH` levels
with :class:`TooDeep` (a ``ValueError``) on every version.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

__all__ = ["MAX_DEPTH", "TooDeep", "depth_exceeds", "loads"]

MAX_DEPTH = 100
"""Levels of arrays and objects a peer's JSON document may have."""


class TooDeep(ValueError):
    """The document is nested more than the bound allows."""


def depth_exceeds(document: Any, limit: int) -> bool:
    """Whether ``document`` (parsed JSON) has more than ``limit`` levels of lists
    and dicts (a scalar has none). Iterative: no recursion of its own."""
    level: list[Any] = [document]
    depth = 0
    while level:
        containers = [v for v in level if isinstance(v, (dict, list))]
        if not containers:
            return False
        depth += 1
        if depth > limit:
            return True
        level = [
            child
            for container in containers
            for child in (container.values() if isinstance(container, dict) else container)
        ]
    return False


def loads(
    text: str | bytes | bytearray,
    max_depth: int = MAX_DEPTH,
    decode: Callable[[Any], Any] = json.loads,
) -> Any:
    """``decode(text)`` (``json.loads`` or a decoder's ``decode``), refusing more than
    ``max_depth`` levels of nesting with :class:`TooDeep`. Each level takes an
    opening and a closing bracket: text of at most twice the bound is not checked,
    longer text is walked only when it has more opening brackets than the bound."""
    try:
        document = decode(text)
    except RecursionError:
        raise TooDeep(f"nested more than {max_depth} levels deep") from None
    if len(text) <= 2 * max_depth:
        return document
    if isinstance(text, str):
        opens = text.count("[") + text.count("{")
    else:
        opens = text.count(b"[") + text.count(b"{")
    if opens > max_depth and depth_exceeds(document, max_depth):
        raise TooDeep(f"nested more than {max_depth} levels deep")
    return document
