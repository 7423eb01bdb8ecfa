"""``ConnectRequest`` (businessworker.request): the handshake request that
``on_websocket_connect`` receives, built from the dict the gateway sends. Pure: no
sockets (tests/test_api_e2e.py checks the same object through a real cluster)."""

from __future__ import annotations

from typing import Any

import pytest

from pygatewayworker import ConnectRequest

WIRE = {
    "path": "/ws/room",
    "query": "token=abc&room=1&room=2&empty=&flag&name=J%C3%B6rg+M",
    "headers": {"user-agent": "test/1", "cookie": "sid=s1; theme=dark"},
    "cookies": {"sid": "s1", "theme": "dark"},
    "remote_ip": "127.0.0.1",
    "remote_port": 50123,
}


def test_attributes_and_the_parsed_query() -> None:
    request = ConnectRequest.from_wire(WIRE)
    assert request.path == "/ws/room"
    assert request.query_string == WIRE["query"]
    assert request.query == {
        "token": "abc",
        "room": "1",  # the first of repeated names
        "empty": "",
        "flag": "",  # a name without "=" is kept, blank
        "name": "Jörg M",  # percent-decoded, "+" is a space
    }
    assert request.query_lists["room"] == ["1", "2"]
    assert request.query_lists["empty"] == [""]
    assert request.headers == WIRE["headers"] and request.headers is not WIRE["headers"]
    assert request.cookies == {"sid": "s1", "theme": "dark"}
    assert (request.remote_ip, request.remote_port) == ("127.0.0.1", 50123)


def test_dict_style_access_as_the_dict_it_used_to_be() -> None:
    request = ConnectRequest.from_wire(WIRE)
    assert request["path"] == "/ws/room"
    assert request["query"] == WIRE["query"]  # raw, as the dict had it
    assert request.get("query") == WIRE["query"]
    assert request.get("headers", {}).get("user-agent") == "test/1"
    assert request["cookies"]["sid"] == "s1"
    assert (request["remote_ip"], request["remote_port"]) == ("127.0.0.1", 50123)
    assert request.get("missing") is None and request.get("missing", 7) == 7
    with pytest.raises(KeyError):
        request["missing"]
    assert "path" in request and "query" in request and "missing" not in request
    assert set(request) == set(request.keys()) == set(WIRE)
    assert dict(request) == WIRE


def test_no_query() -> None:
    request = ConnectRequest.from_wire({"path": "/", "query": ""})
    assert (request.query_string, request.query, request.query_lists) == ("", {}, {})
    assert request.get("query") == ""


@pytest.mark.parametrize(
    "wire",
    [
        None,
        "GET / HTTP/1.1",
        [1, 2],
        {},
        {"path": None, "query": None, "headers": "x", "cookies": ["a"], "remote_port": None},
        {"remote_port": "not a port", "remote_ip": 12},
        {"remote_port": float("inf")},
        {"query": "%zz=%G1&&=&a=%", "unknown": {"from": "another version"}},
        {"query": b"a=1", "path": 3},
    ],
)
def test_garbage_gives_a_usable_request(wire: Any) -> None:
    """A gateway of another version, or a bug, must not crash the worker's event."""
    request = ConnectRequest.from_wire(wire)
    assert isinstance(request.path, str) and request.path
    assert isinstance(request.query_string, str)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in request.query.items())
    assert isinstance(request.headers, dict) and isinstance(request.cookies, dict)
    assert isinstance(request.remote_ip, str) and isinstance(request.remote_port, int)
    assert request.get("path") == request.path


def test_garbage_query_is_kept_raw_and_parsed_leniently() -> None:
    request = ConnectRequest.from_wire({"query": "%zz=%G1&&=&a=%"})
    assert request.query_string == "%zz=%G1&&=&a=%"
    assert request.query == {"%zz": "%G1", "": "", "a": "%"}  # "=": blank name and value


def test_frozen() -> None:
    request = ConnectRequest.from_wire(WIRE)
    with pytest.raises(AttributeError):
        request.path = "/other"  # type: ignore[misc]
