"""The pure WebSocket protocol: bytes in, events and bytes out, no sockets."""

from __future__ import annotations

import base64
import os
import random
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pygatewayworker.gateway import wsproto
from pygatewayworker.gateway.wsproto import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameError,
    FrameParser,
    HandshakeError,
    RequestParser,
)
from tests.wsframes import KEY, client_frame, request, upgrade_lines


def feed_in_pieces(parser: FrameParser, data: bytes, rng: random.Random) -> list:
    events = []
    pos = 0
    while pos < len(data):
        step = rng.randint(1, 7)
        events.extend(parser.feed(data[pos : pos + step]))
        pos += step
    return events


# ---- masking -------------------------------------------------------------------------


@given(st.binary(max_size=300), st.binary(min_size=4, max_size=4))
def test_python_mask_matches_c_mask(data: bytes, key: bytes) -> None:
    assert wsproto._py_apply_mask(data, key) == wsproto.apply_mask(data, key)
    assert wsproto.apply_mask(wsproto.apply_mask(data, key), key) == data


# ---- handshake -----------------------------------------------------------------------


def test_upgrade_request_parses_in_one_or_many_pieces() -> None:
    raw = request(upgrade_lines(Cookie="a=1; b=x%20y")) + b"\x81"
    for step in (1, 3, len(raw)):
        parser = RequestParser()
        result = None
        for i in range(0, len(raw), step):
            got = parser.feed(raw[i : i + step])
            if got is not None:
                result = got
                break
        assert result is not None
        assert result.method == "GET" and result.path == "/chat" and result.query == "room=1"
        assert result.headers["upgrade"] == "websocket"
        assert result.wants_upgrade
        assert wsproto.check_upgrade(result) == KEY
        assert wsproto.parse_cookies(result.headers["cookie"]) == {"a": "1", "b": "x y"}
    assert parser.rest == b"\x81"


def test_accept_response_uses_rfc_example_key() -> None:
    # The example of RFC 6455 section 1.3.
    assert wsproto.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    response = wsproto.accept_response("dGhlIHNhbXBsZSBub25jZQ==")
    assert response.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in response
    assert response.endswith(b"\r\n\r\n")


def test_repeated_headers_are_joined() -> None:
    req = RequestParser().feed(request(["GET / HTTP/1.1", "X-A: 1", "x-a: 2"]))
    assert req is not None and req.headers["x-a"] == "1, 2"
    assert not req.wants_upgrade


@pytest.mark.parametrize(
    ("override", "status"),
    [
        ({"Upgrade": ""}, 400),
        ({"Connection": "keep-alive"}, 400),
        ({"Sec-WebSocket-Key": ""}, 400),
        ({"Sec-WebSocket-Key": "not base64!"}, 400),
        ({"Sec-WebSocket-Key": base64.b64encode(b"short").decode()}, 400),
        ({"Sec-WebSocket-Version": "8"}, 426),
        ({"Sec-WebSocket-Version": ""}, 426),
    ],
)
def test_invalid_upgrades_are_rejected(override: dict[str, str], status: int) -> None:
    lines = upgrade_lines(**override)
    req = RequestParser().feed(request(lines))
    assert req is not None
    with pytest.raises(HandshakeError) as info:
        wsproto.check_upgrade(req)
    assert info.value.status == status
    response = info.value.response
    assert response.startswith(f"HTTP/1.1 {status} ".encode())
    assert b"Connection: close" in response
    if status == 426:
        assert b"Sec-WebSocket-Version: 13" in response


def test_upgrade_with_wrong_method_is_rejected() -> None:
    lines = upgrade_lines()
    lines[0] = "POST /chat HTTP/1.1"
    req = RequestParser().feed(request(lines))
    assert req is not None and req.wants_upgrade
    with pytest.raises(HandshakeError) as info:
        wsproto.check_upgrade(req)
    assert info.value.status == 400


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /\r\n\r\n",
        b"GET http://x/ HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET / SPDY/3\r\n\r\n",
    ],
)
def test_malformed_heads_give_400(raw: bytes) -> None:
    with pytest.raises(HandshakeError) as info:
        RequestParser().feed(raw)
    assert info.value.status == 400


def test_oversized_head_gives_431_without_waiting_for_the_end() -> None:
    parser = RequestParser(limit=1024)
    assert parser.feed(b"GET / HTTP/1.1\r\n") is None
    with pytest.raises(HandshakeError) as info:
        parser.feed(b"X-Long: " + b"a" * 2000)
    assert info.value.status == 431


def test_static_file_path_refuses_traversal() -> None:
    root = "/srv/web"
    assert wsproto.static_file_path(root, "/") == "/srv/web/index.html"
    assert wsproto.static_file_path(root, "/css/app.css") == "/srv/web/css/app.css"
    assert wsproto.static_file_path(root, "/sub/") == "/srv/web/sub/index.html"
    for bad in ("/../etc/passwd", "/a/../../x", "/%2e%2e/x", "/.git/config", "/a\\b", "/a%00b"):
        assert wsproto.static_file_path(root, bad) is None, bad
    assert wsproto.static_file_path("", "/index.html") is None
    assert wsproto.static_file_path(root, "/%ff") is None


def test_http_response_and_content_types() -> None:
    resp = wsproto.http_response(200, b"<p>", wsproto.content_type_for("x/index.HTML"))
    head, _, body = resp.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"Content-Type: text/html; charset=utf-8" in head
    assert b"Content-Length: 3" in head and b"Connection: close" in head
    assert body == b"<p>"
    head_only = wsproto.http_response(200, b"<p>", head_only=True)
    assert head_only.endswith(b"\r\n\r\n") and b"Content-Length: 3" in head_only
    assert wsproto.content_type_for("a.bin") == "application/octet-stream"


# ---- frame parsing -------------------------------------------------------------------


def test_messages_in_random_pieces() -> None:
    rng = random.Random(7)
    text = "héllo wörld ✓" * 50
    binary = os.urandom(70000)
    stream = (
        client_frame(OP_TEXT, text.encode())
        + client_frame(OP_BINARY, binary)
        + client_frame(OP_PING, b"p")
        + client_frame(OP_PONG, b"")
        + client_frame(OP_TEXT, b"")
        + client_frame(OP_CLOSE, struct.pack("!H", 1000) + b"bye")
    )
    for _ in range(5):
        parser = FrameParser(1 << 20)
        events = feed_in_pieces(parser, stream, rng)
        assert events == [
            (OP_TEXT, text),
            (OP_BINARY, binary),
            (OP_PING, b"p"),
            (OP_PONG, b""),
            (OP_TEXT, ""),
            (OP_CLOSE, (1000, "bye")),
        ]
        assert parser.buffered == 0


def test_fragmented_message_with_interleaved_control_frames() -> None:
    word = "naïve ✓".encode()
    # Split inside a multi-byte character: UTF-8 is checked on the whole message.
    stream = (
        client_frame(OP_TEXT, word[:3], fin=False)
        + client_frame(OP_PING, b"x")
        + client_frame(0, word[3:7], fin=False)
        + client_frame(0, word[7:])
        + client_frame(OP_BINARY, b"a", fin=False)
        + client_frame(0, b"b")
    )
    parser = FrameParser(100)
    assert parser.feed(stream) == [(OP_PING, b"x"), (OP_TEXT, "naïve ✓"), (OP_BINARY, b"ab")]


def test_empty_close_payload_means_1005() -> None:
    assert FrameParser(10).feed(client_frame(OP_CLOSE, b"")) == [(OP_CLOSE, (1005, ""))]


@pytest.mark.parametrize(
    ("stream", "code"),
    [
        (client_frame(OP_TEXT, b"hi", mask=False), 1002),
        (client_frame(OP_TEXT, b"hi", rsv=0x40), 1002),
        (client_frame(0x3, b"hi"), 1002),
        (client_frame(0xB, b"hi"), 1002),
        (client_frame(0, b"hi"), 1002),
        (client_frame(OP_TEXT, b"a", fin=False) + client_frame(OP_TEXT, b"b"), 1002),
        (client_frame(OP_PING, b"x" * 126), 1002),
        (client_frame(OP_PING, b"x", fin=False), 1002),
        (client_frame(OP_CLOSE, b"\x03"), 1002),
        (client_frame(OP_CLOSE, struct.pack("!H", 1005)), 1002),
        (client_frame(OP_CLOSE, struct.pack("!H", 999)), 1002),
        (client_frame(OP_CLOSE, struct.pack("!H", 1000) + b"\xff"), 1007),
        (client_frame(OP_TEXT, b"\xff\xfe"), 1007),
        (client_frame(OP_TEXT, "é".encode()[:1]), 1007),
        (client_frame(OP_BINARY, b"x" * 101), 1009),
        (client_frame(OP_TEXT, b"x" * 60, fin=False) + client_frame(0, b"x" * 41), 1009),
    ],
)
def test_protocol_errors_carry_their_close_code(stream: bytes, code: int) -> None:
    parser = FrameParser(100)
    with pytest.raises(FrameError) as info:
        for i in range(0, len(stream), 5):
            parser.feed(stream[i : i + 5])
    assert info.value.code == code
    assert info.value.reason


def test_oversized_message_is_rejected_from_its_header_alone() -> None:
    header = client_frame(OP_BINARY, b"", length_override=10**9)[:10]
    parser = FrameParser(1 << 20)
    with pytest.raises(FrameError) as info:
        parser.feed(header)  # no payload sent at all
    assert info.value.code == 1009


def test_events_before_an_error_are_kept_on_the_error() -> None:
    stream = client_frame(OP_TEXT, b"ok") + client_frame(OP_TEXT, b"x", mask=False)
    with pytest.raises(FrameError) as info:
        FrameParser(100).feed(stream)
    assert info.value.events == [(OP_TEXT, "ok")]


@given(
    st.lists(
        st.one_of(
            st.text(max_size=200).map(lambda t: (OP_TEXT, t)),
            st.binary(max_size=300).map(lambda b: (OP_BINARY, b)),
        ),
        max_size=8,
    ),
    st.randoms(use_true_random=False),
)
def test_any_message_sequence_round_trips(messages: list, rng: random.Random) -> None:
    stream = b""
    for op, value in messages:
        payload = value.encode() if op == OP_TEXT else value
        # Fragment some messages at random points.
        cut = rng.randint(0, len(payload))
        if rng.random() < 0.5 and 0 < cut < len(payload):
            stream += client_frame(op, payload[:cut], fin=False) + client_frame(0, payload[cut:])
        else:
            stream += client_frame(op, payload)
    events = feed_in_pieces(FrameParser(1 << 16), stream, rng)
    assert events == messages


# ---- frame encoding ------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 100000])
def test_encode_frame_lengths(size: int) -> None:
    payload = os.urandom(size)
    frame = wsproto.binary_frame(payload)
    assert frame[0] == 0x82
    if size < 126:
        assert frame[1] == size and frame[2:] == payload
    elif size < 65536:
        assert frame[1] == 126 and struct.unpack("!H", frame[2:4])[0] == size
        assert frame[4:] == payload
    else:
        assert frame[1] == 127 and struct.unpack("!Q", frame[2:10])[0] == size
        assert frame[10:] == payload


def test_frame_shorthands() -> None:
    assert wsproto.text_frame("é") == b"\x81\x02" + "é".encode()
    assert wsproto.close_frame(1000, "bye") == b"\x88\x05\x03\xe8bye"
    assert wsproto.close_frame(None) == b"\x88\x00"
    assert wsproto.close_frame(1005) == b"\x88\x00"
    assert wsproto.ping_frame(b"x") == b"\x89\x01x"
    assert wsproto.pong_frame() == b"\x8a\x00"
    long_reason = wsproto.close_frame(1001, "é" * 100)
    assert len(long_reason) <= 2 + 125
    long_reason[4:].decode("utf-8")  # cut on a character boundary
    with pytest.raises(ValueError):
        wsproto.ping_frame(b"x" * 126)


def test_close_code_validity() -> None:
    valid = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 4999]
    invalid = [0, 999, 1004, 1005, 1006, 1015, 2000, 2999, 5000]
    assert all(wsproto.is_valid_close_code(c) for c in valid)
    assert not any(wsproto.is_valid_close_code(c) for c in invalid)
