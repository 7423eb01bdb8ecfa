"""The handshake request that ``on_websocket_connect(client_id, request)`` receives.

The gateway ships the upgrade request as a plain dict (path, raw query string,
headers, cookies, peer address); the worker wraps it in :class:`ConnectRequest` so
that Events code reads attributes and a parsed query. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

__all__ = ["ConnectRequest"]


@dataclass(slots=True, frozen=True)
class ConnectRequest:
    """The WebSocket upgrade request of one client.

    - ``path``: the request path without the query (``/ws``).
    - ``query_string``: the raw query (``token=abc&room=1``), ``""`` when none.
    - ``query``: the query parsed, one ``str`` per name (the first value when a name is
      repeated; :attr:`query_lists` has them all). Blank values are kept.
    - ``headers``: lower-case names; repeated headers are joined with ``", "``.
    - ``cookies``: from the ``Cookie`` header.
    - ``remote_ip`` / ``remote_port``: the peer as the gateway saw it (behind a proxy,
      read ``headers["x-forwarded-for"]`` if you trust the proxy).

    ``request["path"]``, ``request.get("query")``, ``"path" in request`` and
    ``dict(request)`` also work, for code written against the dict this used to be
    (the keys are those of the dict; values are the attributes', except that
    ``request["query"]`` is the raw string, as it was).
    """

    path: str = "/"
    query_string: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    cookies: dict[str, str] = field(default_factory=dict)
    remote_ip: str = ""
    remote_port: int = 0
    query_lists: dict[str, list[str]] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_wire(cls, info: Any) -> ConnectRequest:
        """Build from the dict the gateway sends (unknown or missing keys tolerated:
        a gateway of another version may send more or fewer)."""
        if not isinstance(info, dict):
            return cls()
        raw = str(info.get("query") or "")
        lists = parse_qs(raw, keep_blank_values=True) if raw else {}  # most have none
        headers = info.get("headers")
        cookies = info.get("cookies")
        return cls(
            path=str(info.get("path") or "/"),
            query_string=raw,
            headers=dict(headers) if isinstance(headers, dict) else {},
            cookies=dict(cookies) if isinstance(cookies, dict) else {},
            remote_ip=str(info.get("remote_ip") or ""),
            remote_port=_port(info.get("remote_port")),
            query_lists=lists,
            query={name: values[0] for name, values in lists.items()},
        )

    def __getitem__(self, key: str) -> Any:
        if key == "query":
            return self.query_string
        if key in _KEYS:
            return getattr(self, key)
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return key in _KEYS

    def __iter__(self) -> Iterator[str]:
        return iter(_KEYS)

    def keys(self) -> tuple[str, ...]:
        """The keys of the dict this used to be."""
        return _KEYS

    def get(self, key: str, default: Any = None) -> Any:
        """Dict-style read (see the class docstring)."""
        try:
            return self[key]
        except KeyError:
            return default


_KEYS = ("path", "query", "headers", "cookies", "remote_ip", "remote_port")
"""The keys of the dict the gateway sends (and ``on_websocket_connect`` used to get)."""


def _port(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError, OverflowError):
        return 0
