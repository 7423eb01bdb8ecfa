"""Operator queries to gateways over their internal port (``start.py connections``).

A short-lived link: ``HELLO`` as a ``client`` with the app's secret, wait for
``WELCOME``, send a query, wait for its ``REPLY`` (and, for a list read page by
page, send the next page's query on the same link), close. The rules are the link
protocol object's (``gateway.linkproto.LinkClient``, as for workers and push
clients); this module only moves the bytes. Every gateway is asked at once, each
bounded by a timeout; a gateway that does not answer is reported, not waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
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

__all__ = [
    "GatewayTarget",
    "QueryError",
    "QueryRefused",
    "query_gateway",
    "query_pages",
    "connection_rows",
]


class QueryError(Exception):
    """A gateway refused or did not answer."""


class QueryRefused(QueryError):
    """A gateway answered the query with an error (an older gateway does not know
    the question's form, the secret is wrong...)."""


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
    (result,) = await query_pages(target, cmd, args, None, timeout=timeout)
    return result


async def query_pages(
    target: GatewayTarget,
    cmd: Cmd,
    args: tuple[Any, ...],
    follow: Callable[[Any], tuple[Any, ...] | None] | None,
    timeout: float = 3.0,
) -> list[Any]:
    """Ask one gateway ``[cmd, req, *args]``, then, over the same link, the
    arguments ``follow(result)`` gives for each result, until it gives ``None``
    (``follow`` ``None``: one request). Returns the results in order; ``timeout``
    bounds each answer."""
    host, port = parse_address(target.address)
    try:
        async with asyncio.timeout(timeout) as deadline:
            reader, writer = await asyncio.open_connection(host, port)
            try:
                return await _exchange(reader, writer, target, cmd, args, follow, deadline, timeout)
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
    follow: Callable[[Any], tuple[Any, ...] | None] | None,
    deadline: asyncio.Timeout,
    timeout: float,
) -> list[Any]:
    loop = asyncio.get_running_loop()
    decoder = Decoder()
    proto = LinkClient("client", "start.py", target.secret, os.getpid())
    writer.write(proto.hello(loop.time()))
    results: list[Any] = []
    while True:
        for packet in await _read_packet(reader, decoder):
            event = proto.receive(packet)
            if isinstance(event, Welcomed):
                # the deadline is the caller's asyncio.timeout, around each answer
                writer.write(proto.request(cmd, args, float("inf"))[1])
            elif isinstance(event, Replied):
                results.append(event.result)
                more = follow(event.result) if follow is not None else None
                if more is None:
                    return results
                deadline.reschedule(loop.time() + timeout)
                writer.write(proto.request(cmd, more, float("inf"))[1])
            elif isinstance(event, Refused | Failed | Notice):
                raise QueryRefused(event.message)
            elif isinstance(event, Answer):
                writer.write(event.data)


CONNECTION_PAGE = 1000
"""Rows asked per ``Q_CONNECTIONS`` page (some 2-4 ms of the gateway's loop)."""


async def connection_rows(
    targets: list[GatewayTarget], timeout: float = 3.0
) -> tuple[dict[str, list[Any]], list[str]]:
    """Every gateway's connections, page by page (``Q_CONNECTIONS``), all gateways
    at once: ``({name: rows}, [error lines])``. A client that comes or goes while
    its gateway is read may be missing; none is listed twice."""

    def follow(page: Any) -> tuple[int, int] | None:
        if not (isinstance(page, list) and len(page) == 2 and isinstance(page[0], list)):
            raise QueryError(f"answered Q_CONNECTIONS with {type(page).__name__}, not a page")
        after = page[1]
        return None if after is None else (after, CONNECTION_PAGE)

    async def read(target: GatewayTarget) -> list[Any]:
        try:
            pages = await query_pages(
                target, Cmd.Q_CONNECTIONS, (0, CONNECTION_PAGE), follow, timeout=timeout
            )
        except QueryRefused as refused:
            # A gateway of an older version answers only the one-list form (during a
            # rolling upgrade of several hosts); anything else it refuses again.
            try:
                rows = await query_gateway(target, Cmd.Q_CONNECTIONS, timeout=timeout)
            except QueryRefused:
                raise refused from None
            if not isinstance(rows, list):
                raise refused from None
            return rows
        return [row for page in pages for row in page[0]]

    results = await asyncio.gather(*(read(t) for t in targets), return_exceptions=True)
    answers: dict[str, list[Any]] = {}
    errors: list[str] = []
    for target, result in zip(targets, results, strict=True):
        if isinstance(result, BaseException):
            errors.append(f"{target.name} ({target.address}): {result}")
        else:
            answers[target.name] = result
    return answers, errors
