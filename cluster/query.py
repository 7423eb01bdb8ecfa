"""Operator queries to gateways over their internal port (``start.py connections``).

A short-lived link: ``HELLO`` as a ``client`` with the app's secret, wait for
``WELCOME``, send one query, wait for its ``REPLY``, close. The rules are the link
protocol object's (``gateway.linkproto.LinkClient``, as for workers and push
clients); this module only moves the bytes. Every gateway is asked at once, each
bounded by a timeout; a gateway that does not answer is reported, not waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from typing import Any

from pygatewayworker.gateway.linkproto import (
    Answer,
    Failed,
    LinkClient,
    Notice,
    Refused,
    Replied,
    Welcomed,
)
from pygatewayworker.gateway.protocol import Cmd, Decoder, ProtocolError
from pygatewayworker.register.config import parse_address

__all__ = ["GatewayTarget", "QueryError", "query_gateway", "query_all"]


class QueryError(Exception):
    """A gateway refused or did not answer."""


@dataclass(slots=True, frozen=True)
class GatewayTarget:
    """One gateway process to ask: its name, internal address and secret."""

    name: str
    address: str
    secret: str


async def _read_packet(reader: asyncio.StreamReader, decoder: Decoder) -> list[list[Any]]:
    data = await reader.read(65536)
    if not data:
        raise QueryError("closed the connection")
    return decoder.feed(data)


async def query_gateway(target: GatewayTarget, cmd: Cmd, *args: Any, timeout: float = 3.0) -> Any:
    """Ask one gateway ``[cmd, req, *args]``; return the ``REPLY``'s result."""
    host, port = parse_address(target.address)
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                return await _exchange(reader, writer, target, cmd, args)
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
    except TimeoutError:
        raise QueryError(f"no answer within {timeout:g} s") from None
    except OSError as exc:
        raise QueryError(exc.strerror or str(exc)) from None
    except ProtocolError as exc:
        raise QueryError(f"sent garbage: {exc}") from None


async def _exchange(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    target: GatewayTarget,
    cmd: Cmd,
    args: tuple[Any, ...],
) -> Any:
    loop = asyncio.get_running_loop()
    decoder = Decoder()
    proto = LinkClient("client", "start.py", target.secret, os.getpid())
    writer.write(proto.hello(loop.time()))
    while True:
        for packet in await _read_packet(reader, decoder):
            event = proto.receive(packet)
            if isinstance(event, Welcomed):
                # the deadline is the caller's asyncio.timeout, around the whole exchange
                writer.write(proto.request(cmd, args, float("inf"))[1])
            elif isinstance(event, Replied):
                return event.result
            elif isinstance(event, Refused | Failed | Notice):
                raise QueryError(event.message)
            elif isinstance(event, Answer):
                writer.write(event.data)


async def query_all(
    targets: list[GatewayTarget], cmd: Cmd, *args: Any, timeout: float = 3.0
) -> tuple[dict[str, Any], list[str]]:
    """Ask every target at once: ``({name: result}, [error lines])``."""
    results = await asyncio.gather(
        *(query_gateway(t, cmd, *args, timeout=timeout) for t in targets),
        return_exceptions=True,
    )
    answers: dict[str, Any] = {}
    errors: list[str] = []
    for target, result in zip(targets, results, strict=True):
        if isinstance(result, BaseException):
            errors.append(f"{target.name} ({target.address}): {result}")
        else:
            answers[target.name] = result
    return answers, errors
