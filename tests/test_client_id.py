"""The client_id codec."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pygatewayworker.gateway.client_id import (
    ClientAddress,
    InvalidClientId,
    decode_client_id,
    encode_client_id,
)


def test_known_value() -> None:
    client_id = encode_client_id("127.0.0.1", 2300, 1)
    assert client_id == "7f00000108fc00000001"
    assert decode_client_id(client_id) == ClientAddress("127.0.0.1", 2300, 1)
    assert decode_client_id(client_id).gateway == "127.0.0.1:2300"


@given(
    st.ip_addresses(v=4).map(str),
    st.integers(min_value=1, max_value=65535),
    st.integers(min_value=1, max_value=2**32 - 1),
)
def test_round_trip(ip: str, port: int, conn_id: int) -> None:
    client_id = encode_client_id(ip, port, conn_id)
    assert len(client_id) == 20 and client_id == client_id.lower()
    assert decode_client_id(client_id) == (ip, port, conn_id)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "7f00000108fc0000000",  # 19 characters
        "7f00000108fc000000011",  # 21
        "7F00000108FC00000001",  # upper case
        "7f00000108fc0000000g",
        "7f000001000000000001",  # port 0
        "7f00000108fc00000000",  # connection 0
        " 7f00000108fc0000001",
        None,
        12345,
        b"7f00000108fc00000001",
    ],
)
def test_invalid_ids_raise_clear_errors(bad: object) -> None:
    with pytest.raises(InvalidClientId) as info:
        decode_client_id(bad)
    assert "client_id" in str(info.value)


def test_invalid_client_id_is_a_value_error() -> None:
    assert issubclass(InvalidClientId, ValueError)


@pytest.mark.parametrize(
    ("ip", "port", "conn_id"),
    [
        ("::1", 1, 1),
        ("localhost", 1, 1),
        ("127.0.0.1", 0, 1),
        ("127.0.0.1", 70000, 1),
        ("127.0.0.1", 1, 0),
        ("127.0.0.1", 1, 2**32),
    ],
)
def test_encode_rejects_bad_parts(ip: str, port: int, conn_id: int) -> None:
    with pytest.raises(ValueError):
        encode_client_id(ip, port, conn_id)
