"""An internal port or a register reachable beyond this host without a secret is
logged as a warning at start; a gateway can bind its internal port on another
address than the one it advertises (containers, NAT)."""

from __future__ import annotations

import logging
import os

import pytest

from pygatewayworker.gateway.protocol import Cmd
from pygatewayworker.gateway.server import GatewayServer
from pygatewayworker.register.config import Register, is_loopback
from pygatewayworker.register.server import RegisterServer
from tests.gatewayharness import FakeLink, make_config


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.8.9.10") and is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1") and not is_loopback("::")


async def _gateway_warnings(caplog: pytest.LogCaptureFixture, **options: object) -> list[str]:
    caplog.clear()
    server = GatewayServer(make_config(**options))
    with caplog.at_level(logging.WARNING, logger="gateway"):
        await server.start()
    try:
        if options.get("internal_bind") == "0.0.0.0":
            # bound on every address, advertised (and reached) as lan_ip
            assert server.internal_address == f"127.0.0.1:{server.internal_port}"
            link = await FakeLink.open(server)
            link.send(Cmd.HELLO, "worker", "w", options.get("secret", ""), os.getpid())
            welcome = await link.expect(Cmd.WELCOME)
            assert welcome[1]["lan_ip"] == "127.0.0.1"
            await link.close()
    finally:
        await server.stop(graceful=False)
    return [r.getMessage() for r in caplog.records if "no secret" in r.getMessage()]


async def test_gateway_warns_about_an_open_internal_port_without_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    open_port = await _gateway_warnings(caplog, secret="", internal_bind="0.0.0.0")
    assert len(open_port) == 1 and "listens beyond this host" in open_port[0]
    assert await _gateway_warnings(caplog, secret="", internal_bind="127.0.0.1") == []
    assert await _gateway_warnings(caplog, secret="k", internal_bind="0.0.0.0") == []


@pytest.mark.parametrize(
    ("listen", "secret", "warned"),
    [("0.0.0.0:0", "", True), ("127.0.0.1:0", "", False), ("0.0.0.0:0", "k", False)],
)
async def test_register_warns_when_open_without_secret(
    listen: str, secret: str, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    register = RegisterServer(Register(listen=listen, secret=secret))
    with caplog.at_level(logging.WARNING, logger="register"):
        await register.start()
    await register.stop(False)
    messages = [r.getMessage() for r in caplog.records if "no secret" in r.getMessage()]
    assert bool(messages) is warned
