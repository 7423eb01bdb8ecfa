"""The internal wire format: round trips, random splits, truncated, oversized and
garbage input."""

from __future__ import annotations

import random
import struct

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pygatewayworker.gateway.protocol import (
    DEFAULT_MAX_PACKET,
    MAX_SESSION,
    Cmd,
    Decoder,
    InvalidText,
    PacketTooLarge,
    ProtocolError,
    encode,
    encode_body,
    pack_session,
    unpack_session,
)

SAMPLES = [
    encode(Cmd.HELLO, "worker", "w0", 'se"cr\\et', 1234),
    encode(Cmd.EV_MESSAGE, 7, None, "127.0.0.1", 5555, "hello"),
    encode(Cmd.EV_MESSAGE, 8, pack_session({"a": 1}), "127.0.0.1", 5555, b"\x00\xffbin"),
    encode(Cmd.SEND_TO_GROUP, ["room", "2"], "x" * 3000, [1, 2, 3]),
    encode(Cmd.Q_GROUPS, 9, None, "count"),
    encode(Cmd.REPLY, 9, {"": 3}),
    encode(Cmd.PING),
]
EXPECTED = [Decoder().feed(sample)[0] for sample in SAMPLES]


def test_round_trip_keeps_text_and_binary_apart() -> None:
    text, binary = Decoder().feed(SAMPLES[1] + SAMPLES[2])
    assert text[0] is Cmd.EV_MESSAGE and text[5] == "hello" and isinstance(text[5], str)
    assert binary[5] == b"\x00\xffbin" and isinstance(binary[5], bytes)
    assert unpack_session(binary[2]) == {"a": 1}


def test_commands_decode_as_enum_members() -> None:
    for packet in EXPECTED:
        assert isinstance(packet[0], Cmd)


@pytest.mark.parametrize("seed", range(25))
def test_random_splits_give_the_same_packets(seed: int) -> None:
    rng = random.Random(seed)
    stream = b"".join(SAMPLES)
    decoder = Decoder()
    got: list[list[object]] = []
    pos = 0
    while pos < len(stream):
        step = rng.randint(1, 64)
        got.extend(decoder.feed(stream[pos : pos + step]))
        pos += step
    assert got == EXPECTED
    assert decoder.buffered == 0


@given(st.lists(st.integers(min_value=0, max_value=200), max_size=20))
def test_any_split_points(cuts: list[int]) -> None:
    stream = b"".join(SAMPLES)
    points = sorted({c % len(stream) for c in cuts} | {0, len(stream)})
    decoder = Decoder()
    got: list[list[object]] = []
    for start, end in zip(points, points[1:], strict=False):
        got.extend(decoder.feed(stream[start:end]))
    assert got == EXPECTED


def test_truncated_input_waits_without_error() -> None:
    decoder = Decoder()
    sample = SAMPLES[3]
    assert decoder.feed(sample[:-1]) == []
    assert decoder.buffered == len(sample) - 1 - 4  # the header is consumed
    assert decoder.feed(sample[-1:]) == [EXPECTED[3]]


def test_oversized_length_is_rejected_before_buffering() -> None:
    decoder = Decoder(max_packet=1024)
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        decoder.feed(struct.pack("!I", 1025))


def test_zero_length_packet_is_rejected() -> None:
    with pytest.raises(ProtocolError):
        Decoder().feed(b"\x00\x00\x00\x00")


@pytest.mark.parametrize(
    "body",
    [
        b"\xc1",  # never-used msgpack byte
        msgpack.packb({"not": "an array"}),
        msgpack.packb([]),
        msgpack.packb(["1", 2]),
        msgpack.packb([9999]),
        msgpack.packb([7, 1, 2]) + b"x",  # trailing bytes after a packet
        msgpack.packb([12, 1]) + b"trailing",
    ],
)
def test_garbage_bodies_are_protocol_errors(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        Decoder().feed(struct.pack("!I", len(body)) + body)


def test_http_request_on_internal_port_is_rejected() -> None:
    # "GET " read as a length is about 1.2 GB: refused at once.
    with pytest.raises(ProtocolError):
        Decoder().feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")


def test_encode_rejects_unserialisable_fields() -> None:
    with pytest.raises(TypeError):
        encode(Cmd.SEND_TO_CLIENT, 1, object())


def test_a_lone_surrogate_is_invalid_text_named_with_its_command() -> None:
    """``json.loads('"\\ud800"')`` gives a str with no UTF-8 form: the call that
    would send it fails with a clear ``ValueError``, whatever field holds it."""
    for make in (
        lambda: encode(Cmd.SEND_TO_CLIENT, 1, "a\ud800b"),
        lambda: encode(Cmd.SEND_TO_GROUP, ["room\udfff"], "hi", None),
        lambda: encode_body(Cmd.EV_MESSAGE, (1, None, "127.0.0.1", 5555, "\ud83d")),
        lambda: pack_session({"client_name": "\ud800"}),
    ):
        with pytest.raises(InvalidText, match=r"a lone surrogate with no UTF-8 form") as err:
            make()
        assert isinstance(err.value, ValueError)
    with pytest.raises(InvalidText, match=r"^SEND_TO_CLIENT: a text holds '\\ud800'"):
        encode(Cmd.SEND_TO_CLIENT, 1, "a\ud800b")
    # a surrogate pair that json.loads joined is one valid character
    assert Decoder().feed(encode(Cmd.SEND_TO_CLIENT, 1, "\U0001f600"))[0][2] == "\U0001f600"


def test_session_helpers() -> None:
    assert unpack_session(None) == {}
    assert unpack_session(b"") == {}
    session = {"name": "a", "nested": {"x": [1, 2]}, "n": 3}
    assert unpack_session(pack_session(session)) == session
    with pytest.raises(ProtocolError):
        unpack_session(msgpack.packb([1, 2]))
    with pytest.raises(ProtocolError):
        unpack_session(b"\xc1")


def test_data_over_the_link_limit_raises_where_it_is_made() -> None:
    with pytest.raises(PacketTooLarge, match="SEND_TO_CLIENT of 1048.* exceeds the internal"):
        encode(Cmd.SEND_TO_CLIENT, 7, "x" * DEFAULT_MAX_PACKET)
    with pytest.raises(PacketTooLarge, match="session of .* exceeds the limit"):
        pack_session({"big": "x" * MAX_SESSION})
    assert isinstance(PacketTooLarge("x"), ValueError)  # a misuse by our caller
    size = len(encode(Cmd.SEND_TO_CLIENT, 7, "x" * (DEFAULT_MAX_PACKET - 20)))
    assert size <= DEFAULT_MAX_PACKET + 4
