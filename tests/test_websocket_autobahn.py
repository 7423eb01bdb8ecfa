"""The cases of sections 1-7 of the Autobahn|Testsuite (framing, pings and pongs,
reserved bits, opcodes, fragmentation, UTF-8 handling, close handling), run as unit
tests against the sans-I/O ``ServerConnection``: the client's bytes go in, and the
events and the server's bytes are checked. Case numbers are Autobahn's.

Where Autobahn accepts either behaviour we pick one and say so: invalid UTF-8 in a
fragmented text message fails *fast* (at the fragment that carries it, 6.4.x), and
close codes 1012-1014 are accepted (they were added to the IANA registry after the
suite listed them as invalid in 7.9.x)."""

from __future__ import annotations

import struct

import pytest

from pygatewayworker.gateway.frames import OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT
from pygatewayworker.gateway.websocket import FAILED, ServerConnection, State
from tests.wsclient import client_frame as frame
from tests.wsclient import opened

OP_CONT = 0
RSV1, RSV2, RSV3 = 0x40, 0x20, 0x10


def run(*wire: bytes, chunk: int = 0, max_size: int = 1 << 24) -> tuple[ServerConnection, list]:
    """Feed the client's frames (in ``chunk``-byte pieces when set) to an open
    connection; return it and every event."""
    ws = opened(max_size)
    data = b"".join(wire)
    events = []
    step = chunk or len(data) or 1
    for i in range(0, max(len(data), 1), step):
        events.extend(ws.receive_data(data[i : i + step]))
    return ws, events


def server_frames(ws: ServerConnection) -> list[tuple[int, bytes]]:
    """The server's queued frames as ``(opcode, payload)`` (checked to be final and
    unmasked, as a client would check them)."""
    data = ws.data_to_send()
    out, pos = [], 0
    while pos < len(data):
        b0, b1 = data[pos], data[pos + 1]
        assert b0 & 0x80 and not b0 & 0x70 and not b1 & 0x80  # final, no RSV, unmasked
        length, pos = b1 & 0x7F, pos + 2
        if length == 126:
            (length,), pos = struct.unpack_from("!H", data, pos), pos + 2
        elif length == 127:
            (length,), pos = struct.unpack_from("!Q", data, pos), pos + 8
        out.append((b0 & 0x0F, data[pos : pos + length]))
        pos += length
    return out


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


def assert_failed(ws: ServerConnection, events: list, code: int) -> list[tuple[int, bytes]]:
    """The connection was failed with ``code``: a FAILED event, the close frame with
    that code last, nothing read afterwards. Returns the frames the server sent."""
    assert events[-1][0] == FAILED and events[-1][1][0] == code, events
    assert ws.state is State.CLOSED and ws.half_close
    sent = server_frames(ws)
    assert sent[-1][0] == OP_CLOSE and struct.unpack("!H", sent[-1][1][:2])[0] == code
    assert ws.receive_data(frame(OP_TEXT, b"more")) == []
    return sent


# ---- 1 framing -----------------------------------------------------------------------


SIZES = [0, 125, 126, 127, 128, 65535, 65536]


@pytest.mark.parametrize("size", SIZES)
def test_1_1_text_messages_of_every_length_class(size: int) -> None:
    ws, events = run(frame(OP_TEXT, b"*" * size))
    assert events == [(OP_TEXT, "*" * size)]


@pytest.mark.parametrize("size", SIZES)
def test_1_2_binary_messages_of_every_length_class(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    ws, events = run(frame(OP_BINARY, payload))
    assert events == [(OP_BINARY, payload)]


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY])
def test_1_x_8_a_65536_byte_message_in_997_byte_chunks(opcode: int) -> None:
    payload = b"*" * 65536
    ws, events = run(frame(opcode, payload), chunk=997)
    assert events == [(opcode, payload.decode() if opcode == OP_TEXT else payload)]


# ---- 2 pings and pongs ---------------------------------------------------------------


@pytest.mark.parametrize(
    "payload", [b"", b"Hello, world!", b"\x00\xff\xfe\xfd\xfc\xfb\x00\xff", b"*" * 125]
)
def test_2_1_to_2_4_a_ping_is_answered_with_its_payload(payload: bytes) -> None:
    ws, events = run(frame(OP_PING, payload))
    assert events == [(OP_PING, payload)]
    assert server_frames(ws) == [(OP_PONG, payload)]


def test_2_5_a_ping_over_125_bytes_fails() -> None:
    ws, events = run(frame(OP_PING, b"*" * 126))
    assert_failed(ws, events, 1002)


def test_2_6_a_125_byte_ping_in_1_byte_chunks() -> None:
    ws, events = run(frame(OP_PING, b"*" * 125), chunk=1)
    assert server_frames(ws) == [(OP_PONG, b"*" * 125)]


@pytest.mark.parametrize("payload", [b"", b"unsolicited pong payload"])
def test_2_7_2_8_unsolicited_pongs_are_reported_and_not_answered(payload: bytes) -> None:
    ws, events = run(frame(OP_PONG, payload))
    assert events == [(OP_PONG, payload)] and server_frames(ws) == []


def test_2_9_an_unsolicited_pong_then_a_ping() -> None:
    ws, _ = run(frame(OP_PONG, b"unsolicited"), frame(OP_PING, b"ping"))
    assert server_frames(ws) == [(OP_PONG, b"ping")]


@pytest.mark.parametrize("chunk", [0, 1])
def test_2_10_2_11_ten_pings_get_ten_pongs_in_order(chunk: int) -> None:
    pings = [frame(OP_PING, f"payload-{i}".encode()) for i in range(10)]
    ws, _ = run(*pings, chunk=chunk)
    assert server_frames(ws) == [(OP_PONG, f"payload-{i}".encode()) for i in range(10)]


# ---- 3 reserved bits -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "opcode", "rsv"),
    [
        ("3.1", OP_TEXT, RSV1),
        ("3.2", OP_TEXT, RSV2),
        ("3.3", OP_TEXT, RSV1 | RSV2),
        ("3.4", OP_TEXT, RSV3),
        ("3.5", OP_BINARY, RSV1 | RSV3),
        ("3.6", OP_PING, RSV2 | RSV3),
        ("3.7", OP_CLOSE, RSV1 | RSV2 | RSV3),
    ],
)
def test_3_reserved_bits_fail_after_the_messages_before_them(
    case: str, opcode: int, rsv: int
) -> None:
    payload = close_payload(1000) if opcode == OP_CLOSE else b"small"
    ws, events = run(
        frame(OP_TEXT, b"before"), frame(opcode, payload, rsv=rsv), frame(OP_PING, b"after")
    )
    assert events[0] == (OP_TEXT, "before")
    sent = assert_failed(ws, events, 1002)
    assert [opcode for opcode, _ in sent] == [OP_CLOSE]  # the ping after it was never read


# ---- 4 opcodes -----------------------------------------------------------------------


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 11, 12, 13, 14, 15])
@pytest.mark.parametrize("payload", [b"", b"reserved opcode payload"])
def test_4_reserved_opcodes_fail(opcode: int, payload: bytes) -> None:
    ws, events = run(frame(OP_TEXT, b"first"), frame(opcode, payload), frame(OP_PING, b"p"))
    assert events[0] == (OP_TEXT, "first")
    assert_failed(ws, events, 1002)


# ---- 5 fragmentation -----------------------------------------------------------------


@pytest.mark.parametrize("opcode", [OP_PING, OP_PONG])
def test_5_1_5_2_fragmented_control_frames_fail(opcode: int) -> None:
    ws, events = run(frame(opcode, b"frag", fin=False), frame(OP_CONT, b"ment"))
    assert_failed(ws, events, 1002)


@pytest.mark.parametrize("chunk", [0, 1])
def test_5_3_to_5_5_a_text_message_in_two_fragments(chunk: int) -> None:
    ws, events = run(
        frame(OP_TEXT, b"fragment1", fin=False), frame(OP_CONT, b"fragment2"), chunk=chunk
    )
    assert events == [(OP_TEXT, "fragment1fragment2")]


@pytest.mark.parametrize("chunk", [0, 1])
def test_5_6_to_5_8_a_ping_between_two_fragments(chunk: int) -> None:
    ws, events = run(
        frame(OP_TEXT, b"fragment1", fin=False),
        frame(OP_PING, b"ping payload"),
        frame(OP_CONT, b"fragment2"),
        chunk=chunk,
    )
    assert events == [(OP_PING, b"ping payload"), (OP_TEXT, "fragment1fragment2")]
    assert server_frames(ws) == [(OP_PONG, b"ping payload")]


@pytest.mark.parametrize("chunk", [0, 1])
@pytest.mark.parametrize("fin", [True, False])
def test_5_9_to_5_14_a_continuation_with_nothing_to_continue_fails(fin: bool, chunk: int) -> None:
    ws, events = run(
        frame(OP_CONT, b"fragment1", fin=fin), frame(OP_TEXT, b"fragment2"), chunk=chunk
    )
    assert_failed(ws, events, 1002)


@pytest.mark.parametrize("chunk", [0, 1])
def test_5_15_a_stray_continuation_after_a_whole_message_fails(chunk: int) -> None:
    ws, events = run(
        frame(OP_TEXT, b"fragment1", fin=False),
        frame(OP_CONT, b"fragment2"),
        frame(OP_CONT, b"fragment3", fin=False),
        frame(OP_TEXT, b"fragment4"),
        chunk=chunk,
    )
    assert events[0] == (OP_TEXT, "fragment1fragment2")
    assert_failed(ws, events, 1002)


@pytest.mark.parametrize("chunk", [0, 1])
def test_5_16_5_17_continuations_in_the_wrong_place_fail(chunk: int) -> None:
    ws, events = run(
        frame(OP_CONT, b"fragment1", fin=False),
        frame(OP_TEXT, b"fragment2", fin=False),
        frame(OP_CONT, b"fragment3"),
        chunk=chunk,
    )
    assert_failed(ws, events, 1002)


def test_5_18_a_new_message_inside_a_fragmented_one_fails() -> None:
    ws, events = run(frame(OP_TEXT, b"fragment1", fin=False), frame(OP_TEXT, b"fragment2"))
    assert_failed(ws, events, 1002)


@pytest.mark.parametrize("chunk", [0, 1])
def test_5_19_5_20_five_fragments_with_pings_between(chunk: int) -> None:
    wire = [
        frame(OP_TEXT, b"fragment1", fin=False),
        frame(OP_CONT, b"fragment2", fin=False),
        frame(OP_PING, b"pongme 1!"),
        frame(OP_CONT, b"fragment3", fin=False),
        frame(OP_CONT, b"fragment4", fin=False),
        frame(OP_PING, b"pongme 2!"),
        frame(OP_CONT, b"fragment5"),
    ]
    ws, events = run(*wire, chunk=chunk)
    assert events == [
        (OP_PING, b"pongme 1!"),
        (OP_PING, b"pongme 2!"),
        (OP_TEXT, "fragment1fragment2fragment3fragment4fragment5"),
    ]
    assert server_frames(ws) == [(OP_PONG, b"pongme 1!"), (OP_PONG, b"pongme 2!")]


# ---- 6 UTF-8 handling ----------------------------------------------------------------


VALID_UTF8 = [
    b"",
    "Hello-µ@ßöäüàá-UTF-8!!".encode(),
    "κόσμε".encode(),
    b"\x00",
    b"\xc2\x80",  # U+0080, first 2-byte
    b"\xe0\xa0\x80",  # U+0800, first 3-byte
    b"\xf0\x90\x80\x80",  # U+10000, first 4-byte
    b"\x7f",
    b"\xdf\xbf",  # U+07FF
    b"\xef\xbf\xbf",  # U+FFFF (a noncharacter, still valid UTF-8)
    b"\xf4\x8f\xbf\xbf",  # U+10FFFF, the last code point
    b"\xed\x9f\xbf",  # U+D7FF, just below the surrogates
    b"\xee\x80\x80",  # U+E000, just above them
    b"\xef\xbf\xbd",  # U+FFFD
]
INVALID_UTF8 = [
    b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64",
    b"\xf4\x90\x80\x80",  # above U+10FFFF
    b"\xf8\x88\x80\x80\x80",  # 5-byte form
    b"\xfc\x84\x80\x80\x80\x80",  # 6-byte form
    b"\x80",  # a lone continuation byte
    b"\xbf",
    b"\x80\xbf\x80\xbf",
    b"\xc0 ",  # a lead byte followed by a space
    b"\xe0\x80",  # a truncated sequence
    b"\xc0\xaf",  # overlong "/"
    b"\xe0\x80\xaf",
    b"\xf0\x80\x80\xaf",
    b"\xc1\xbf",  # overlong maximum
    b"\xed\xa0\x80",  # a lone high surrogate
    b"\xed\xbf\xbf",  # a lone low surrogate
    b"\xed\xa0\x80\xed\xb0\x80",  # a surrogate pair, encoded as such
    b"\xfe",
    b"\xff",
    b"\xfe\xfe\xff\xff",
]


def byte_fragments(payload: bytes) -> list[bytes]:
    """A text message with one byte per fragment."""
    last = len(payload) - 1
    return [
        frame(OP_TEXT if i == 0 else OP_CONT, payload[i : i + 1], fin=i == last)
        for i in range(len(payload))
    ]


def test_6_1_empty_text_messages_whole_and_fragmented() -> None:
    ws, events = run(
        frame(OP_TEXT, b""),
        frame(OP_TEXT, b"", fin=False),
        frame(OP_CONT, b"", fin=False),
        frame(OP_CONT, b""),
        frame(OP_TEXT, b"", fin=False),
        frame(OP_CONT, b"middle", fin=False),
        frame(OP_CONT, b""),
    )
    assert events == [(OP_TEXT, ""), (OP_TEXT, ""), (OP_TEXT, "middle")]


@pytest.mark.parametrize("payload", VALID_UTF8)
def test_6_2_valid_utf8_whole_fragmented_at_every_byte_and_in_chunks(payload: bytes) -> None:
    text = payload.decode()
    assert run(frame(OP_TEXT, payload))[1] == [(OP_TEXT, text)]
    if payload:
        assert run(*byte_fragments(payload))[1] == [(OP_TEXT, text)]
    assert run(frame(OP_TEXT, payload), chunk=1)[1] == [(OP_TEXT, text)]


@pytest.mark.parametrize("payload", INVALID_UTF8)
def test_6_3_invalid_utf8_fails_with_1007(payload: bytes) -> None:
    ws, events = run(frame(OP_TEXT, payload))
    assert_failed(ws, events, 1007)
    ws, events = run(*byte_fragments(payload))
    assert_failed(ws, events, 1007)


def test_6_4_invalid_utf8_in_a_fragment_fails_fast() -> None:
    """The invalid code point is in the second fragment: the connection fails when it
    arrives, before the message is complete (the fourth fragment never comes)."""
    ws = opened()
    assert ws.receive_data(frame(OP_TEXT, "κόσμε".encode(), fin=False)) == []
    events = ws.receive_data(frame(OP_CONT, b"\xf4\x90\x80\x80", fin=False))
    assert_failed(ws, events, 1007)


def test_6_4_a_sequence_cut_across_fragments_is_fine() -> None:
    ws, events = run(frame(OP_TEXT, b"\xce", fin=False), frame(OP_CONT, b"\xba"))
    assert events == [(OP_TEXT, "κ")]


def test_6_x_a_message_ending_inside_a_sequence_fails() -> None:
    ws, events = run(frame(OP_TEXT, b"ok \xce", fin=False), frame(OP_CONT, b""))
    assert_failed(ws, events, 1007)


# ---- 7 close handling ----------------------------------------------------------------


def test_7_1_1_a_message_then_a_close_is_answered_by_a_close() -> None:
    ws, events = run(frame(OP_TEXT, b"Hello World!"), frame(OP_CLOSE, close_payload(1000)))
    assert events == [(OP_TEXT, "Hello World!"), (OP_CLOSE, (1000, ""))]
    assert server_frames(ws) == [(OP_CLOSE, close_payload(1000))]
    assert ws.state is State.CLOSED and not ws.half_close


@pytest.mark.parametrize(
    ("case", "after"),
    [
        ("7.1.2", frame(OP_CLOSE, close_payload(1000))),
        ("7.1.3", frame(OP_PING, b"")),
        ("7.1.4", frame(OP_TEXT, b"after close")),
    ],
)
def test_7_1_2_to_7_1_4_nothing_after_a_close_is_read(case: str, after: bytes) -> None:
    ws, events = run(frame(OP_CLOSE, close_payload(1000)), after)
    assert events == [(OP_CLOSE, (1000, ""))]
    assert server_frames(ws) == [(OP_CLOSE, close_payload(1000))]  # one close, no pong


def test_7_1_5_a_close_inside_a_fragmented_message() -> None:
    ws, events = run(
        frame(OP_TEXT, b"fragment1", fin=False),
        frame(OP_CLOSE, close_payload(1000)),
        frame(OP_CONT, b"fragment2"),
    )
    assert events == [(OP_CLOSE, (1000, ""))]
    assert server_frames(ws) == [(OP_CLOSE, close_payload(1000))]


def test_7_1_6_a_large_message_a_ping_and_a_close() -> None:
    big = b"BAsd7&jh23" * 26214
    ws, events = run(frame(OP_TEXT, big), frame(OP_PING, b"ping"), frame(OP_CLOSE, b""), chunk=4096)
    assert events == [(OP_TEXT, big.decode()), (OP_PING, b"ping"), (OP_CLOSE, (1005, ""))]
    assert server_frames(ws) == [(OP_PONG, b"ping"), (OP_CLOSE, b"")]


def test_7_3_1_an_empty_close_is_answered_empty() -> None:
    ws, events = run(frame(OP_CLOSE, b""))
    assert events == [(OP_CLOSE, (1005, ""))] and server_frames(ws) == [(OP_CLOSE, b"")]


def test_7_3_2_a_1_byte_close_payload_fails() -> None:
    ws, events = run(frame(OP_CLOSE, b"\x03"))
    assert_failed(ws, events, 1002)


@pytest.mark.parametrize("reason", [b"", b"Hello World!", b"*" * 123])
def test_7_3_3_to_7_3_5_a_close_with_a_code_and_reason_is_echoed(reason: bytes) -> None:
    ws, events = run(frame(OP_CLOSE, close_payload(1000, reason)))
    assert events == [(OP_CLOSE, (1000, reason.decode()))]
    assert server_frames(ws) == [(OP_CLOSE, close_payload(1000))]


def test_7_3_6_a_close_payload_over_125_bytes_fails() -> None:
    ws, events = run(frame(OP_CLOSE, close_payload(1000, b"*" * 124)))
    assert_failed(ws, events, 1002)


def test_7_5_1_a_close_reason_that_is_not_utf8_fails_with_1007() -> None:
    reason = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64"
    ws, events = run(frame(OP_CLOSE, close_payload(1000, reason)))
    assert_failed(ws, events, 1007)


@pytest.mark.parametrize(
    "code",
    [
        1000,
        1001,
        1002,
        1003,
        1007,
        1008,
        1009,
        1010,
        1011,
        1012,
        1013,
        1014,
        3000,
        3999,
        4000,
        4999,
    ],
)
def test_7_7_valid_close_codes_are_echoed(code: int) -> None:
    ws, events = run(frame(OP_CLOSE, close_payload(code)))
    assert events == [(OP_CLOSE, (code, ""))]
    assert server_frames(ws) == [(OP_CLOSE, close_payload(code))]


@pytest.mark.parametrize(
    "code", [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]
)
def test_7_9_7_13_invalid_close_codes_fail(code: int) -> None:
    ws, events = run(frame(OP_CLOSE, close_payload(code)))
    assert_failed(ws, events, 1002)


# ---- 9 (the part a gateway needs): sizes -----------------------------------------------


def test_9_a_message_over_the_limit_fails_with_1009_whole_or_fragmented() -> None:
    ws, events = run(frame(OP_TEXT, b"*" * 1001), max_size=1000)
    assert_failed(ws, events, 1009)
    ws, events = run(
        frame(OP_BINARY, b"*" * 600, fin=False), frame(OP_CONT, b"*" * 401), max_size=1000
    )
    assert_failed(ws, events, 1009)
    ws, events = run(frame(OP_TEXT, b"*" * 1000), max_size=1000)
    assert events == [(OP_TEXT, "*" * 1000)]
