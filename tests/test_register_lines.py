"""The register line protocol, without sockets."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from pygatewayworker.register import lines
from pygatewayworker.register.lines import LineDecoder, LineError


def feed_in_pieces(data: bytes, rng: random.Random) -> list[dict]:
    decoder = LineDecoder()
    out: list[dict] = []
    pos = 0
    while pos < len(data):
        step = rng.randint(1, 40)
        out.extend(decoder.feed(data[pos : pos + step]))
        pos += step
    assert decoder.buffered == 0
    return out


def test_encode_is_one_compact_json_line():
    line = lines.encode({"event": "ping"})
    assert line == b'{"event":"ping"}\n'
    assert line == lines.PING
    assert lines.PONG == b'{"event":"pong"}\n'


def test_secret_with_quotes_backslashes_and_newlines_roundtrips():
    secret = 'a"b\\c\n{"event":"x"}\u00e9\u2028'
    line = lines.gateway_connect("127.0.0.1:2300", secret)
    assert line.count(b"\n") == 1 and line.endswith(b"\n")
    (doc,) = LineDecoder().feed(line)
    assert doc == {"event": "gateway_connect", "address": "127.0.0.1:2300", "secret_key": secret}
    assert lines.check_gateway_connect(doc) == ("127.0.0.1:2300", secret)


def test_builders():
    assert json.loads(lines.worker_connect("s")) == {"event": "worker_connect", "secret_key": "s"}
    assert json.loads(lines.broadcast_addresses(("1.2.3.4:5",))) == {
        "event": "broadcast_addresses",
        "addresses": ["1.2.3.4:5"],
    }
    assert json.loads(lines.error("no")) == {"event": "error", "message": "no"}


def test_encode_misuse_raises_type_or_value_error():
    with pytest.raises(TypeError):
        lines.encode(["event"])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        lines.encode({"event": object()})
    with pytest.raises(ValueError):
        lines.encode({"event": "x", "pad": "a" * lines.MAX_LINE})
    with pytest.raises(ValueError):
        lines.encode({"event": "x", "n": float("nan")})


@pytest.mark.parametrize("seed", range(20))
def test_random_splits_give_the_same_documents(seed: int):
    rng = random.Random(seed)
    docs: list[dict[str, Any]] = [
        {"event": "gateway_connect", "address": f"10.0.0.{i}:{2300 + i}", "secret_key": "k\"'\\"}
        for i in range(30)
    ] + [{"event": "ping"}, {"event": "broadcast_addresses", "addresses": ["1.1.1.1:1"] * 50}]
    rng.shuffle(docs)
    data = b"".join(lines.encode(d) for d in docs)
    assert feed_in_pieces(data, rng) == docs


def test_blank_lines_and_crlf_are_tolerated():
    decoder = LineDecoder()
    assert decoder.feed(b'\n\r\n  \n{"event":"ping"}\r\n') == [{"event": "ping"}]


def test_line_of_exactly_the_limit_is_accepted():
    pad = lines.MAX_LINE - len('{"event":"ping","p":""}')
    line = json.dumps({"event": "ping", "p": "x" * pad}, separators=(",", ":")).encode()
    assert len(line) == lines.MAX_LINE
    (doc,) = LineDecoder().feed(line + b"\n")
    assert doc["event"] == "ping"


def test_oversized_line_is_rejected_before_its_newline():
    decoder = LineDecoder()
    decoder.feed(b'{"event":"ping","p":"')
    chunk = b"x" * 4096
    with pytest.raises(LineError, match="longer than"):
        for _ in range(lines.MAX_LINE // len(chunk) + 2):
            decoder.feed(chunk)


def test_oversized_line_in_one_chunk_is_rejected():
    with pytest.raises(LineError, match="longer than"):
        LineDecoder(max_line=10).feed(b'{"event":"ping"}\n')


def test_small_limit_keeps_short_lines():
    decoder = LineDecoder(max_line=20)
    assert decoder.feed(b'{"event":"ping"}\n{"event":') == [{"event": "ping"}]
    assert decoder.feed(b'"pong"}\n') == [{"event": "pong"}]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\xff\xfe\x00garbage\n", "UTF-8"),
        (b"hello there\n", "not valid JSON"),
        (b'{"event": "ping"\n', "not valid JSON"),
        (b"[1, 2, 3]\n", "not an object"),
        (b'"ping"\n', "not an object"),
        (b"42\n", "not an object"),
        (b'{"event": NaN}\n', "NaN"),
        (b"[" * 50000 + b"\n", "not valid JSON"),
    ],
)
def test_garbage_raises_line_error(data: bytes, match: str):
    with pytest.raises(LineError, match=match):
        LineDecoder().feed(data)


@pytest.mark.parametrize("seed", range(5))
def test_random_binary_garbage_never_raises_anything_but_line_error(seed: int):
    rng = random.Random(seed)
    for _ in range(200):
        blob = bytes(rng.randrange(256) for _ in range(rng.randint(1, 200))) + b"\n"
        try:
            docs = LineDecoder().feed(blob)
        except LineError:
            continue
        assert all(isinstance(d, dict) for d in docs)


def test_event_of():
    assert lines.event_of({"event": "ping"}) == "ping"
    for bad in ({}, {"event": 1}, {"event": ""}, {"event": None}):
        with pytest.raises(LineError, match="event"):
            lines.event_of(bad)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("127.0.0.1:2300", "127.0.0.1:2300"), ("10.1.2.3:01238", "10.1.2.3:1238")],
)
def test_check_address_accepts_and_normalises(value: str, expected: str):
    assert lines.check_address(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        None,
        2300,
        "",
        "127.0.0.1",
        "127.0.0.1:",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "127.0.0.1:123456",
        "127.0.0.1:-1",
        "127.0.0.1:２３",
        "localhost:2300",
        "::1:2300",
        "[::1]:2300",
        "256.0.0.1:2300",
        "127.0.0.01:2300",
        ":2300",
    ],
)
def test_check_address_rejects(value: object):
    with pytest.raises(LineError):
        lines.check_address(value)


def test_check_gateway_connect():
    doc = {"event": "gateway_connect", "address": "127.0.0.1:2300"}
    assert lines.check_gateway_connect(doc) == ("127.0.0.1:2300", "")
    with pytest.raises(LineError, match="secret_key"):
        lines.check_gateway_connect({**doc, "secret_key": 5})
    with pytest.raises(LineError, match="address"):
        lines.check_gateway_connect({"event": "gateway_connect", "secret_key": ""})


def test_check_worker_connect():
    assert lines.check_worker_connect({"event": "worker_connect", "secret_key": "s"}) == "s"
    assert lines.check_worker_connect({"event": "worker_connect"}) == ""
    with pytest.raises(LineError):
        lines.check_worker_connect({"event": "worker_connect", "secret_key": ["s"]})


def test_secret_with_a_lone_surrogate_is_a_line_error():
    # Valid JSON, but not encodable as UTF-8: the register must refuse it cleanly
    # (it used to raise UnicodeEncodeError out of data_received).
    doc = lines.decode_line(b'{"event":"worker_connect","secret_key":"\\ud800"}')
    with pytest.raises(LineError, match="not valid Unicode"):
        lines.check_worker_connect(doc)
    doc = lines.decode_line(
        b'{"event":"gateway_connect","address":"1.2.3.4:5","secret_key":"\\udfff"}'
    )
    with pytest.raises(LineError, match="not valid Unicode"):
        lines.check_gateway_connect(doc)


def test_check_broadcast_addresses():
    doc = {"event": "broadcast_addresses", "addresses": ["1.2.3.4:5", "1.2.3.4:5", "5.6.7.8:9"]}
    assert lines.check_broadcast_addresses(doc) == frozenset({"1.2.3.4:5", "5.6.7.8:9"})
    for bad in (None, "1.2.3.4:5", ["nope"], [1]):
        with pytest.raises(LineError):
            lines.check_broadcast_addresses({"event": "broadcast_addresses", "addresses": bad})


def test_check_error():
    assert (
        lines.check_error({"event": "error", "message": "wrong secret key"}) == "wrong secret key"
    )
    assert lines.check_error({"event": "error"}) == "no reason given"


def test_shorten_cuts_long_peer_text():
    assert lines.shorten("abc") == "'abc'"
    assert len(lines.shorten("x" * 1000)) == 60
