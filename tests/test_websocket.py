"""The sans-I/O WebSocket server connection: bytes in, events and bytes out, no
sockets (``gateway.websocket``, with ``gateway.frames`` and ``gateway.http11``)."""

from __future__ import annotations

import base64
import os
import random
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pygatewayworker.gateway import frames, http11
from pygatewayworker.gateway.frames import OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT
from pygatewayworker.gateway.websocket import (
    FAILED,
    REQUEST,
    InvalidState,
    ServerConnection,
    State,
)
from tests.wsclient import KEY, client_frame, feed_in_pieces, opened, request, upgrade_lines


def failure(events: list) -> tuple[int, str]:
    """The (code, reason) of the FAILED event that ends ``events``."""
    assert events and events[-1][0] == FAILED, events
    return events[-1][1]


def feed_all(ws: ServerConnection, stream: bytes, step: int = 5) -> list:
    events = []
    for i in range(0, len(stream), step):
        events.extend(ws.receive_data(stream[i : i + step]))
    return events


# ---- masking -------------------------------------------------------------------------


@given(st.binary(max_size=300), st.binary(min_size=4, max_size=4))
def test_python_mask_matches_c_mask(data: bytes, key: bytes) -> None:
    assert frames._py_apply_mask(data, key) == frames.apply_mask(data, key)
    assert frames.apply_mask(frames.apply_mask(data, key), key) == data


# ---- handshake -----------------------------------------------------------------------


def test_upgrade_request_parses_in_one_or_many_pieces() -> None:
    raw = request(upgrade_lines(Cookie="a=1; b=x%20y")) + b"\x81"
    for step in (1, 3, len(raw)):
        ws = ServerConnection(1 << 20)
        result = None
        for i in range(0, len(raw), step):
            events = ws.receive_data(raw[i : i + step])
            if events:
                ((kind, result),) = events
                assert kind == REQUEST
                break
        assert result is not None and ws.state is State.CONNECTING
        assert result.method == "GET" and result.path == "/chat" and result.query == "room=1"
        assert result.headers["upgrade"] == "websocket"
        assert result.wants_upgrade
        assert http11.check_upgrade(result) == KEY
        assert http11.parse_cookies(result.headers["cookie"]) == {"a": "1", "b": "x y"}
        assert ws.data_to_send() == b""  # nothing is answered before accept()
    ws.accept(result)
    assert ws.buffered == 1  # the byte behind the head waits for the frame parser
    assert ws.receive_data(b"") == []


def test_accept_response_uses_rfc_example_key() -> None:
    # The example of RFC 6455 section 1.3.
    assert http11.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    response = http11.accept_response("dGhlIHNhbXBsZSBub25jZQ==")
    assert response.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in response
    assert response.endswith(b"\r\n\r\n")


def test_accept_writes_the_101_and_opens() -> None:
    ws = ServerConnection(100)
    ((_, req),) = ws.receive_data(request(upgrade_lines()))
    ws.accept(req)
    response = ws.data_to_send()
    assert response == http11.accept_response(KEY)
    assert ws.state is State.OPEN and ws.data_to_send() == b""


def test_frames_behind_the_head_are_parsed_after_accept() -> None:
    ws = ServerConnection(100)
    ((_, req),) = ws.receive_data(request(upgrade_lines()) + client_frame(OP_TEXT, b"eager"))
    ws.accept(req)
    assert ws.receive_data(b"") == [(OP_TEXT, "eager")]


def test_repeated_headers_are_joined() -> None:
    ((_, req),) = ServerConnection(10).receive_data(request(["GET / HTTP/1.1", "X-A: 1", "x-a: 2"]))
    assert req.headers["x-a"] == "1, 2"
    assert not req.wants_upgrade


def test_plain_http_is_answered_with_respond_and_ends() -> None:
    ws = ServerConnection(10)
    ((kind, req),) = ws.receive_data(b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n")
    assert kind == REQUEST and not req.wants_upgrade
    ws.respond(http11.http_response(404, b"not found\n"))
    assert ws.data_to_send().startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert ws.state is State.CLOSED and not ws.half_close
    assert ws.receive_data(b"more bytes are discarded") == []


@pytest.mark.parametrize(
    ("override", "status"),
    [
        ({"Upgrade": ""}, 400),
        ({"Upgrade": "websocket2"}, 400),
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
    if "Upgrade" in override and not override["Upgrade"]:
        # no Upgrade header at all: a plain request, which check_upgrade refuses
        ((_, req),) = ServerConnection(10).receive_data(request(lines))
        with pytest.raises(ValueError) as info:
            http11.check_upgrade(req)
        assert info.value.args[0] == status
        return
    ws = ServerConnection(10)
    events = ws.receive_data(request(lines))
    assert failure(events)[0] == status
    assert ws.state is State.CLOSED
    response = ws.data_to_send()
    assert response.startswith(f"HTTP/1.1 {status} ".encode())
    assert b"Connection: close" in response
    if status == 426:
        assert b"Sec-WebSocket-Version: 13" in response


def test_upgrade_with_wrong_method_is_rejected() -> None:
    lines = upgrade_lines()
    lines[0] = "POST /chat HTTP/1.1"
    ws = ServerConnection(10)
    assert failure(ws.receive_data(request(lines)))[0] == 400
    assert ws.data_to_send().startswith(b"HTTP/1.1 400 ")


def test_upgrade_over_http_1_0_is_rejected() -> None:
    lines = upgrade_lines()
    lines[0] = "GET /chat HTTP/1.0"
    assert failure(ServerConnection(10).receive_data(request(lines)))[0] == 400


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
    ws = ServerConnection(10)
    assert failure(ws.receive_data(raw))[0] == 400
    assert ws.data_to_send().startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert ws.state is State.CLOSED


@pytest.mark.parametrize(
    "chunks",
    [
        [b"GET / HTTP/1.1\nHost: x\nUpgrade: websocket\n\n"],
        [b"GET / HTTP/1.1\r\nHost: x\n", b"\n"],  # the blank line split across reads
    ],
)
def test_a_head_with_bare_lf_lines_gives_400_at_its_end(chunks: list[bytes]) -> None:
    ws = ServerConnection(10)
    for chunk in chunks[:-1]:
        assert ws.receive_data(chunk) == []
    assert failure(ws.receive_data(chunks[-1])) == (400, "request head lines must end with CRLF")
    assert ws.data_to_send().startswith(b"HTTP/1.1 400 Bad Request\r\n")


def test_oversized_head_gives_431_without_waiting_for_the_end() -> None:
    ws = ServerConnection(10, max_head=1024)
    assert ws.receive_data(b"GET / HTTP/1.1\r\n") == []
    assert failure(ws.receive_data(b"X-Long: " + b"a" * 2000))[0] == 431
    assert ws.data_to_send().startswith(b"HTTP/1.1 431 ")
    ws = ServerConnection(10, max_head=1024)
    head = b"GET / HTTP/1.1\r\nX-Long: " + b"a" * 1100 + b"\r\n\r\n"
    assert failure(ws.receive_data(head))[0] == 431  # complete, but too large


def test_http_response() -> None:
    resp = http11.http_response(200, b"<p>", "text/html; charset=utf-8")
    head, _, body = resp.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"Content-Type: text/html; charset=utf-8" in head
    assert b"Content-Length: 3" in head and b"Connection: close" in head
    assert body == b"<p>"
    head_only = http11.http_response(200, b"<p>", head_only=True)
    assert head_only.endswith(b"\r\n\r\n") and b"Content-Length: 3" in head_only


def test_misuse_raises_invalid_state() -> None:
    ws = ServerConnection(10)
    ((_, req),) = ws.receive_data(b"GET / HTTP/1.1\r\n\r\n")
    with pytest.raises(InvalidState):
        ws.accept(req)  # not an upgrade
    with pytest.raises(InvalidState):
        ws.receive_data(b"GET / HTTP/1.1\r\n\r\n")  # the REQUEST was not answered
    with pytest.raises(InvalidState):
        ws.fail(1002, "too early")  # a handshake is refused with respond()
    ws = opened()
    with pytest.raises(InvalidState):
        ws.accept(req)
    with pytest.raises(InvalidState):
        ws.respond(b"HTTP/1.1 200 OK\r\n\r\n")


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
        ws = opened()
        events = feed_in_pieces(ws, stream, rng)
        assert events == [
            (OP_TEXT, text),
            (OP_BINARY, binary),
            (OP_PING, b"p"),
            (OP_PONG, b""),
            (OP_TEXT, ""),
            (OP_CLOSE, (1000, "bye")),
        ]
        assert ws.buffered == 0
        assert ws.data_to_send() == frames.pong_frame(b"p") + frames.close_frame(1000)


def test_fragmented_message_with_interleaved_control_frames() -> None:
    word = "naïve ✓".encode()
    # Split inside a multi-byte character: UTF-8 is checked across fragments.
    stream = (
        client_frame(OP_TEXT, word[:3], fin=False)
        + client_frame(OP_PING, b"x")
        + client_frame(0, word[3:7], fin=False)
        + client_frame(0, word[7:])
        + client_frame(OP_BINARY, b"a", fin=False)
        + client_frame(0, b"b")
    )
    ws = opened(100)
    assert ws.receive_data(stream) == [(OP_PING, b"x"), (OP_TEXT, "naïve ✓"), (OP_BINARY, b"ab")]
    assert ws.data_to_send() == frames.pong_frame(b"x")


def test_empty_close_payload_means_1005_and_is_echoed_empty() -> None:
    ws = opened(10)
    assert ws.receive_data(client_frame(OP_CLOSE, b"")) == [(OP_CLOSE, (1005, ""))]
    assert ws.data_to_send() == b"\x88\x00"


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
    ws = opened(100)
    events = feed_all(ws, stream)
    got, reason = failure(events)
    assert got == code and reason
    assert ws.state is State.CLOSED and ws.half_close
    # the close frame that says why is queued, and nothing after it is read
    assert ws.data_to_send() == frames.close_frame(code, reason)
    assert ws.receive_data(client_frame(OP_TEXT, b"late")) == []


def test_oversized_message_is_rejected_from_its_header_alone() -> None:
    header = client_frame(OP_BINARY, b"", length_override=10**9)[:10]
    ws = opened(1 << 20)
    assert failure(ws.receive_data(header))[0] == 1009  # no payload sent at all


def test_a_64_bit_length_with_the_top_bit_set_is_a_protocol_error() -> None:
    header = bytes([0x82, 0x80 | 127]) + struct.pack("!Q", 1 << 63 | 5) + b"mask"
    ws = opened(1 << 20)
    assert failure(ws.receive_data(header)) == (1002, "64-bit frame length with the top bit set")


def test_events_before_an_error_are_returned_before_it() -> None:
    stream = client_frame(OP_TEXT, b"ok") + client_frame(OP_TEXT, b"x", mask=False)
    events = opened(100).receive_data(stream)
    assert events[0] == (OP_TEXT, "ok") and failure(events)[0] == 1002


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
    events = feed_in_pieces(opened(1 << 16), stream, rng)
    assert events == messages


# ---- the close handshake -------------------------------------------------------------


def test_peer_starts_the_close_we_echo_its_code_and_end() -> None:
    ws = opened()
    events = ws.receive_data(client_frame(OP_CLOSE, struct.pack("!H", 1001) + b"bye"))
    assert events == [(OP_CLOSE, (1001, "bye"))]
    assert ws.data_to_send() == frames.close_frame(1001)
    assert ws.state is State.CLOSED and not ws.half_close  # the server closes TCP first
    assert ws.receive_data(client_frame(OP_TEXT, b"after close")) == []


def test_close_frame_ends_reading_in_the_same_chunk() -> None:
    ws = opened()
    stream = client_frame(OP_CLOSE, b"") + client_frame(OP_TEXT, b"ignored")
    assert ws.receive_data(stream) == [(OP_CLOSE, (1005, ""))]
    assert ws.buffered == 0


def test_we_start_the_close_and_wait_for_the_peer() -> None:
    ws = opened()
    ws.close(1000, "bye")
    assert ws.state is State.CLOSING
    assert ws.data_to_send() == frames.close_frame(1000, "bye")
    ws.close(1001)  # a second close is a no-op
    assert ws.data_to_send() == b""
    # data still arriving is checked but dropped; pings are still answered
    events = ws.receive_data(client_frame(OP_TEXT, b"late") + client_frame(OP_PING, b"p"))
    assert events == [(OP_PING, b"p")]
    assert ws.data_to_send() == frames.pong_frame(b"p")
    assert ws.state is State.CLOSING
    assert ws.receive_data(client_frame(OP_CLOSE, struct.pack("!H", 1000))) == [
        (OP_CLOSE, (1000, ""))
    ]
    assert ws.data_to_send() == b""  # no second close frame: the handshake is done
    assert ws.state is State.CLOSED


def test_a_protocol_error_while_closing_sends_no_second_close_frame() -> None:
    ws = opened()
    ws.close(1000)
    ws.data_to_send()
    events = ws.receive_data(client_frame(OP_TEXT, b"x", mask=False))
    assert failure(events)[0] == 1002
    assert ws.data_to_send() == b"" and ws.state is State.CLOSED and not ws.half_close


def test_fail_is_also_the_callers_to_use() -> None:
    ws = opened()
    assert ws.fail(1011, "internal error") == (FAILED, (1011, "internal error"))
    assert ws.data_to_send() == frames.close_frame(1011, "internal error")
    assert ws.half_close and ws.state is State.CLOSED


def test_connection_lost_closes() -> None:
    ws = opened()
    ws.connection_lost()
    assert ws.state is State.CLOSED
    ws.close()  # harmless
    assert ws.data_to_send() == b""


# ---- frame encoding ------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 100000])
def test_encode_frame_lengths(size: int) -> None:
    payload = os.urandom(size)
    frame = frames.binary_frame(payload)
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
    assert frames.text_frame("é") == b"\x81\x02" + "é".encode()
    assert frames.close_frame(1000, "bye") == b"\x88\x05\x03\xe8bye"
    assert frames.close_frame(None) == b"\x88\x00"
    assert frames.close_frame(1005) == b"\x88\x00"
    assert frames.ping_frame(b"x") == b"\x89\x01x"
    assert frames.pong_frame() == b"\x8a\x00"
    long_reason = frames.close_frame(1001, "é" * 100)
    assert len(long_reason) <= 2 + 125
    long_reason[4:].decode("utf-8")  # cut on a character boundary
    with pytest.raises(ValueError):
        frames.ping_frame(b"x" * 126)


def test_close_code_validity() -> None:
    valid = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 4999]
    invalid = [0, 999, 1004, 1005, 1006, 1015, 2000, 2999, 5000]
    assert all(frames.is_valid_close_code(c) for c in valid)
    assert not any(frames.is_valid_close_code(c) for c in invalid)
