"""gateway/gatewayprotocol.py without sockets: header packing byte for byte, the
incremental decoder and its bounds, replies, and telling PHP links from ours."""

from __future__ import annotations

import struct

import pytest

from pygatewayworker.gateway.gatewayprotocol import (
    FLAG_BODY_IS_SCALAR,
    FLAG_NOT_CALL_ENCODE,
    HEAD_LEN,
    LINK_MSGPACK,
    LINK_PHP,
    GatewayProtocolError,
    PacketDecoder,
    PhpCmd,
    PhpPacket,
    ReplyDecoder,
    auth_packet,
    encode_error_reply,
    encode_packet,
    encode_reply,
    php_json,
    sniff,
)
from pygatewayworker.gateway.protocol import Cmd, encode

ZERO_ADDRESSES = bytes(12)  # local_ip, local_port, client_ip, client_port: GatewayClient's zeros


def header(length: int, cmd: int, conn_id: int, flag: int, ext_len: int) -> bytes:
    """The 28-byte header written out field by field from the protocol description
    (N C N n N n N C n N), independently of the module under test."""
    return (
        length.to_bytes(4, "big")
        + bytes([cmd])
        + ZERO_ADDRESSES
        + conn_id.to_bytes(4, "big")
        + bytes([flag])
        + (0).to_bytes(2, "big")  # gateway_port
        + ext_len.to_bytes(4, "big")
    )


# Each fixture: what GatewayClient writes for one call (checked against php 8.2's
# pack("NCNnNnNCnN", ...) . $ext . $body with the same inputs).
SEND_TO_GROUP = (
    bytes.fromhex("0000003f160000000000000000000000000000000001000000000021")
    + b'{"group":["room"],"exclude":null}hi'
)
KICK_WITHOUT_MESSAGE = (
    bytes.fromhex("0000001e070000000000000000000000000102030400000000000000") + b"N;"
)
AUTH = (
    bytes.fromhex("00000039ca0000000000000000000000000000000001000000000000")
    + b'{"secret_key":"a\\/b\\"\\u00e9"}'
)


def test_header_layout() -> None:
    assert HEAD_LEN == 28
    assert SEND_TO_GROUP[:28] == header(63, 22, 0, FLAG_BODY_IS_SCALAR, 33)
    assert KICK_WITHOUT_MESSAGE[:28] == header(30, 7, 0x01020304, 0, 0)


def test_encode_packet_writes_what_gatewayclient_writes() -> None:
    ext = php_json({"group": ["room"], "exclude": None})
    assert encode_packet(PhpCmd.SEND_TO_GROUP, ext_data=ext, body="hi") == SEND_TO_GROUP
    assert encode_packet(PhpCmd.KICK, connection_id=0x01020304, body=None) == KICK_WITHOUT_MESSAGE
    assert auth_packet('a/b"é') == AUTH
    assert php_json({"exclude": {5: 5, 9: 9}}) == '{"exclude":{"5":5,"9":9}}'
    raw = encode_packet(PhpCmd.SEND_TO_ALL, flag=FLAG_NOT_CALL_ENCODE, body=b"\x81\x01x")
    assert raw[21] == FLAG_NOT_CALL_ENCODE | FLAG_BODY_IS_SCALAR
    # a non-scalar body is serialized and the scalar flag stays clear
    listed = encode_packet(PhpCmd.SEND_TO_ALL, body=["a"])
    assert listed[21] == 0 and listed.endswith(b'a:1:{i:0;s:1:"a";}')


def test_decoder_reads_packets_in_pieces() -> None:
    stream = SEND_TO_GROUP + KICK_WITHOUT_MESSAGE + AUTH
    decoder = PacketDecoder()
    packets: list[PhpPacket] = []
    for i in range(len(stream)):
        packets += decoder.feed(stream[i : i + 1])
    assert decoder.buffered == 0
    group, kick, auth = packets
    assert group == PhpPacket(
        PhpCmd.SEND_TO_GROUP, 0, 1, b'{"group":["room"],"exclude":null}', b"hi"
    )
    assert group.body_is_scalar and not group.raw and group.name == "CMD_SEND_TO_GROUP"
    assert kick.connection_id == 0x01020304 and kick.body == b"N;" and not kick.body_is_scalar
    assert auth.cmd == PhpCmd.GATEWAY_CLIENT_CONNECT and auth.ext_data == b""
    whole = decoder.feed(stream)
    assert [p.cmd for p in whole] == [22, 7, 202]


def test_decoder_keeps_every_header_field() -> None:
    packet = encode_packet(
        99,
        connection_id=7,
        local_ip=0x7F000001,
        local_port=2300,
        client_ip=0x0A000001,
        client_port=51000,
        gateway_port=7272,
        ext_data=b"e",
        body=b"b",
    )
    (decoded,) = PacketDecoder().feed(packet)
    assert decoded.name == "cmd 99"
    assert (decoded.local_ip, decoded.local_port) == (0x7F000001, 2300)
    assert (decoded.client_ip, decoded.client_port) == (0x0A000001, 51000)
    assert (decoded.gateway_port, decoded.ext_data, decoded.body) == (7272, b"e", b"b")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (header(27, 22, 0, 1, 0), "below the 28-byte header"),
        (b"\x00\x00\x00\x00", "below"),
        (header(0x7FFFFFFF, 22, 0, 1, 0), "exceeds the limit"),
        (header(40, 22, 0, 1, 13) + bytes(12), "runs past"),
    ],
)
def test_decoder_refuses_bad_lengths(data: bytes, match: str) -> None:
    with pytest.raises(GatewayProtocolError, match=match):
        PacketDecoder().feed(data)


def test_decoder_bound_is_configurable() -> None:
    decoder = PacketDecoder(max_packet=100)
    assert decoder.feed(encode_packet(PhpCmd.SEND_TO_ALL, body=b"x" * 72))
    with pytest.raises(GatewayProtocolError, match="101 bytes exceeds"):
        decoder.feed(encode_packet(PhpCmd.SEND_TO_ALL, body=b"x" * 73))


def test_truncated_packet_waits() -> None:
    decoder = PacketDecoder()
    assert decoder.feed(SEND_TO_GROUP[:-1]) == []
    assert decoder.buffered == len(SEND_TO_GROUP) - 1
    assert decoder.expected == len(SEND_TO_GROUP)


def test_replies() -> None:
    # how the PHP gateway answers: pack('N', strlen($buffer)) . $buffer
    assert encode_reply(1) == b"\x00\x00\x00\x04i:1;"
    assert encode_reply(None) == b"\x00\x00\x00\x02N;"
    assert encode_reply({5: b""}) == b'\x00\x00\x00\x11a:1:{i:5;s:0:"";}'
    error = encode_error_reply("CMD_SELECT failed: boom")
    assert error[4:5] == b"#" and struct.unpack(">I", error[:4])[0] == len(error) - 4
    decoder = ReplyDecoder()
    stream = encode_reply([1, 2]) + error
    assert decoder.feed(stream[:5]) == []
    assert decoder.feed(stream[5:]) == [b"a:2:{i:0;i:1;i:1;i:2;}", error[4:]]


def test_sniff_tells_php_from_msgpack() -> None:
    hello = encode(Cmd.HELLO, "client", "push client", "a secret", 1234)
    assert sniff(hello) == LINK_MSGPACK
    assert sniff(hello[:4]) is None  # a HELLO's length can be a PHP packet's
    assert sniff(encode(Cmd.HELLO, "client", "", "", 1)[:4]) == LINK_MSGPACK  # < 28
    for packet in (SEND_TO_GROUP, KICK_WITHOUT_MESSAGE, AUTH):
        assert sniff(packet[:4]) is None
        assert sniff(packet[:5]) == LINK_PHP
    assert sniff(b"") is None and sniff(b"\x00\x00") is None
    # lengths no PHP packet has: decided from 4 bytes, left to our decoder
    assert sniff(b"\x00\x00\x00\x05") == LINK_MSGPACK
    assert sniff(b"\xff\xff\xff\xf0") == LINK_MSGPACK
    assert sniff(b"\x00\x00\x00\x05hello") == LINK_MSGPACK
    # an oversized PHP packet is still PHP (its own decoder refuses it)
    assert sniff(header(0x7FFFFFFF, 22, 0, 1, 0)[:5]) == LINK_PHP
    # every msgpack array header is ours, every GatewayWorker command is PHP's
    for marker in [*range(0x90, 0xA0), 0xDC, 0xDD]:
        assert sniff(b"\x00\x00\x01\x00" + bytes([marker])) == LINK_MSGPACK
    for cmd in PhpCmd:
        assert sniff(b"\x00\x00\x00\x1c" + bytes([cmd])) == LINK_PHP
