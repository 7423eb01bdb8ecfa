"""The keep-alive of ``gatewayclient/link.py`` when the link's own loop stalls.

A callback that blocks inside the link's reader (a plain callback run inline; on
Python 3.12+ also a coroutine callback, whose task starts eagerly there) keeps the
loop from reading what the gateway sends meanwhile. On uvloop the keep-alive timer
that fell due during the block runs before the next poll reads those bytes: the
link must not take its own stall for the gateway's silence and drop the link (and
with it the client events waiting in the socket). Run on asyncio's loop and on
uvloop (what worker processes run on).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import uvloop

from pygatewayworker.gateway.protocol import Cmd
from pygatewayworker.gatewayclient.link import GatewayLink
from tests.fakegateway import UNIT, FakeGateway, wait_until

LINK_TIMEOUT = 0.2
BLOCK = 3 * LINK_TIMEOUT


async def a_stall_inside_the_reader_is_not_the_gateways_silence() -> None:
    gw = await FakeGateway().start()
    seen: list[Any] = []

    def on_event(link: GatewayLink, packet: list[Any]) -> None:
        seen.append(packet[5])
        if packet[5] == "block":
            gw.emit(Cmd.EV_MESSAGE, 2, "sent during the block")  # in our socket now
            time.sleep(BLOCK)  # the loop stalls past link_timeout, inside the reader

    link = GatewayLink(
        gw.address,
        role="worker",
        on_event=on_event,
        keepalive_interval=LINK_TIMEOUT / 4,
        link_timeout=LINK_TIMEOUT,
    )
    try:
        await link.connect()
        gw.emit(Cmd.EV_MESSAGE, 1, "block")
        await wait_until(lambda: len(seen) == 2 or not link.is_open)
        assert link.is_open, link.close_reason
        assert seen == ["block", "sent during the block"]
        await asyncio.sleep(2 * LINK_TIMEOUT)  # the gateway answers pings: kept
        assert link.is_open, link.close_reason
    finally:
        link.close()
        await gw.stop()


async def a_silent_gateway_is_still_dropped() -> None:
    gw = await FakeGateway().start()
    link = GatewayLink(
        gw.address, role="worker", keepalive_interval=LINK_TIMEOUT / 4, link_timeout=LINK_TIMEOUT
    )
    try:
        await link.connect()
        gw.answer_pings = False
        started = time.monotonic()
        await asyncio.wait_for(link.wait_closed(), UNIT)
        assert time.monotonic() - started < 4 * LINK_TIMEOUT
        assert "silent" in (link.close_reason or "")
    finally:
        link.close()
        await gw.stop()


@pytest.mark.parametrize(
    "scenario",
    [a_stall_inside_the_reader_is_not_the_gateways_silence, a_silent_gateway_is_still_dropped],
    ids=lambda s: s.__name__,
)
@pytest.mark.parametrize(
    "factory", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"]
)
def test_keepalive(scenario: Any, factory: Any) -> None:
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(asyncio.wait_for(scenario(), 30))
