"""``python -m bench gateway-path``: the CPU a gateway spends per client connection in
its own Python code, without sockets, wake-ups or other processes.

One process, one loop (uvloop): a real gateway (``GatewayServer``, port 0) and a real
worker link (``GatewayLink``) to it that announces what the chat's workers announce
(no ``on_websocket_connect``). Once linked, the gateway's side of that link writes
into a sink. Then each connection goes through the gateway's real objects, one per
turn of the loop, as a gateway under a stream of connects gets them:

1. ``ClientConnection.connection_made`` with a stand-in transport (it records what
   the gateway writes and names a peer address);
2. ``data_received`` of a browser's upgrade request head (Chromium's headers): the
   head is parsed and checked, the ``101`` written, a client_id given and
   ``EV_CONNECT`` queued for the worker;
3. the worker's answer, the chat's ``init`` (``SEND_TO_CLIENT``, encoded beforehand
   for the client_id the gateway will give), read from the link: decoded, framed and
   written to the client;
4. the client goes (``eof_received``, ``connection_lost``): ``EV_CLOSE`` queued and
   the client forgotten; the link's queue is written once per turn, as in a cluster.

The figure is the loop thread's CPU time per connection. The run fails unless every
connection got its ``101`` and its ``init`` frame and the worker's side was written
to. It isolates what changes in our Python code from what the machine adds: in a
running cluster the gateway's CPU per connect is several times this (the kernel's
``accept``, ``recv``, ``send`` and ``close``, the event loop's transports, and the
caches a process finds cold after each wake-up); ``python -m bench php-compare`` and
M3 measure that.
"""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import time
from collections.abc import Callable
from typing import Any

from bench.workerpath import lone_gateway
from pygatewayworker.gateway.client_id import encode_client_id
from pygatewayworker.gateway.connection import ClientConnection
from pygatewayworker.gateway.protocol import NO_WS_CONNECT, Cmd, encode
from pygatewayworker.gateway.server import GatewayServer
from pygatewayworker.gatewayclient.link import GatewayLink

__all__ = ["measure_gateway_path", "REQUEST"]

SECRET = "bench-gateway-path"
WARMUP = 2000
REQUEST = (
    b"GET / HTTP/1.1\r\n"
    b"Host: 127.0.0.1:7272\r\n"
    b"Connection: Upgrade\r\n"
    b"Pragma: no-cache\r\n"
    b"Cache-Control: no-cache\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    b"Chrome/120.0.0.0 Safari/537.36\r\n"
    b"Upgrade: websocket\r\n"
    b"Origin: http://127.0.0.1:7272\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Accept-Language: en-US,en;q=0.9\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    b"\r\n"
)
"""What Chromium sends to open ``ws://127.0.0.1:7272/`` (its header order)."""


class _Transport:
    """A client connection's transport: counts what the gateway writes."""

    __slots__ = ("peer", "writes", "written", "closing")

    def __init__(self, peer: tuple[str, int]) -> None:
        self.peer = peer
        self.writes = 0
        self.written = 0
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.written += len(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class _Sink(_Transport):
    """The gateway's side of the worker link once linked."""


async def _one_run(count: int) -> float:
    """µs of loop-thread CPU per connection for ``count`` connections (after the
    warm-up's)."""
    server = await lone_gateway(SECRET)
    worker = GatewayLink(
        server.internal_address,
        role="worker",
        secret=SECRET,
        on_event=lambda link, packet: None,
        hooks=(NO_WS_CONNECT,),
    )
    link = real = None
    try:
        await worker.connect()
        deadline = time.monotonic() + 5
        while not server.core.links or NO_WS_CONNECT not in next(iter(server.core.links)).hooks:
            if time.monotonic() > deadline:
                raise RuntimeError("the worker link never became the gateway's worker")
            await asyncio.sleep(0.01)
        link = next(iter(server.core.links))
        sink = _Sink(("127.0.0.1", 0))
        real, link.writer.transport = link.writer.transport, sink  # type: ignore[attr-defined]
        await _Connects(server, link, WARMUP).run()
        timed = _Connects(server, link, count)
        written = sink.written
        started = time.thread_time()
        await timed.run()
        spent = time.thread_time() - started
        if sink.written <= written:
            raise RuntimeError("nothing reached the worker link")
        return spent * 1e6 / count
    finally:
        if link is not None and real is not None:
            link.writer.transport = real  # type: ignore[attr-defined]
        worker.close()
        await server.stop(graceful=False)


class _Connects:
    """``count`` connections through the gateway, one per loop turn (see the module
    docstring), their inputs made beforehand (:meth:`run` is the timed part)."""

    def __init__(self, server: GatewayServer, link: Any, count: int) -> None:
        self.core, self.port, self.link = server.core, server.client_port, link
        # ids count up one by one from here (nothing else connects meanwhile)
        self.first = first = self.port.clients._next_conn_id + 1
        ip, internal_port = server.internal_address.rsplit(":", 1)
        ids = [encode_client_id(ip, int(internal_port), first + i) for i in range(count)]
        self.inits = [
            encode(Cmd.SEND_TO_CLIENT, first + i, json.dumps({"type": "init", "client_id": cid}))
            for i, cid in enumerate(ids)
        ]
        self.transports = [_Transport(("127.0.0.1", 40000 + i % 20000)) for i in range(count)]

    async def run(self) -> None:
        """Raises unless each connection got its ``101`` and ``init``."""
        core, port, link, first = self.core, self.port, self.link, self.first
        inits, transports = self.inits, self.transports
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        feed = iter(range(len(inits)))

        def next_connect() -> None:
            i = next(feed, None)
            if i is None:
                done.set_result(None)
                return
            try:
                conn = ClientConnection(port)
                conn.connection_made(transports[i])  # type: ignore[arg-type]
                conn.data_received(REQUEST)
                if conn.client.conn_id != first + i:
                    raise RuntimeError(f"conn_id {conn.client.conn_id}, not {first + i}")
                core.link_data(link, inits[i])
                conn.eof_received()
                conn.connection_lost(None)
            except Exception as exc:  # end the run with it rather than hang
                done.set_exception(exc)
                return
            loop.call_soon(next_connect)

        loop.call_soon(next_connect)
        await done
        await asyncio.sleep(0)  # the last turn's link write
        short = [t for t in transports if t.writes != 2]  # the 101, the init frame
        if short:
            raise RuntimeError(
                f"{len(short)} of {len(inits)} connections got {short[0].writes} writes"
            )


async def measure_gateway_path(
    connects: int, rounds: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """µs of CPU per connection, ``rounds`` runs of ``connects`` connections."""
    logging.getLogger("register").setLevel(logging.ERROR)  # no register: on purpose
    logging.getLogger("gatewayclient").setLevel(logging.ERROR)  # the link's goodbye
    values: list[float] = []
    for index in range(rounds):
        values.append(round(await _one_run(connects), 2))
        log(f"gateway-path round {index + 1}: {values[-1]:.2f} us CPU per connect")
    return {
        "us_cpu_per_connect_median": round(statistics.median(values), 2),
        "us_cpu_per_connect_runs": values,
        "connects_per_run": connects,
        "request_head_bytes": len(REQUEST),
    }
