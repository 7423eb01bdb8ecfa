"""``python -m bench worker-path``: the CPU a business worker spends per client event
in its own Python code, without sockets, wake-ups or other processes.

One process, one loop (uvloop): a real gateway (``GatewayServer``, port 0) only for
the link's handshake, and a real worker link (``GatewayLink``) to it with the real
``Dispatcher``, ``WorkerAPI`` and an app's ``Events``. Once linked, the link's
transport is swapped for a sink that drops what the worker writes, and ``EV_MESSAGE``
packets encoded beforehand (a chat ``say`` to the sender's room, the session the
gateway would send with it) are handed to the link's ``data_received`` one per turn
of the loop, as a quiet worker gets them. The figure is the loop thread's CPU time
per event: the reader, the decoding, the dispatcher (a task per event for an
``async`` callback on Python 3.11), the app's callback, the API's checks and the
encoding of what it sends, and the loop's own turns.

It isolates what changes in our Python code from what the machine adds: in a real
cluster a worker's CPU per event is two to three times this figure (the system
calls, and the caches a process finds cold after each wake-up). Two apps: the
shipped chat (``apps/chat``, ``async def on_message``) and ``inline``, a plain
function that sends the message back to its sender (run inline, no task).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import socket
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from pygatewayworker import api
from pygatewayworker.businessworker.dispatch import Dispatcher
from pygatewayworker.businessworker.handle import WorkerAPI, bind_process_api
from pygatewayworker.gateway.config import Gateway
from pygatewayworker.gateway.protocol import Cmd, encode, pack_session
from pygatewayworker.gateway.server import GatewayServer
from pygatewayworker.gatewayclient.link import GatewayLink

__all__ = ["measure_worker_path", "lone_gateway", "APPS"]

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-worker-path"
SESSION = {"room_id": "1", "client_name": "guest 1"}
SAY = json.dumps({"type": "say", "to_client_id": "all", "content": "hello, room"})
CLIENTS = 100
WARMUP = 2000


class InlineEvents:
    """A plain ``on_message`` that sends the message back to its sender (and an
    ``on_connect`` that tells a client its id, as the chat's does)."""

    @staticmethod
    def on_connect(client_id: str) -> None:
        api.send_to_current_client(json.dumps({"type": "init", "client_id": client_id}))

    @staticmethod
    def on_message(client_id: str, message: str | bytes) -> None:
        api.send_to_current_client(message)


def _chat_events() -> type:
    spec = importlib.util.spec_from_file_location("bench_chat_events", ROOT / "apps/chat/Events.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Events  # type: ignore[no-any-return]


APPS: dict[str, Callable[[], type]] = {"chat": _chat_events, "inline": lambda: InlineEvents}


class _Sink:
    """The link's transport once linked: drops what the worker writes (counted)."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_reading(self) -> bool:
        return True


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def lone_gateway(secret: str) -> GatewayServer:
    """A started gateway of one process on free loopback ports, without a register
    (nobody listens where it announces itself: it retries quietly) or heartbeat."""
    config = Gateway(
        listen="127.0.0.1:0",
        start_port=0,
        count=1,
        lan_ip="127.0.0.1",
        register=f"127.0.0.1:{_unused_port()}",
        secret=secret,
        ping_interval=0,
    )
    server = GatewayServer(config)
    await server.start()
    return server


async def _one_run(events: type, count: int) -> tuple[float, int, int]:
    """(µs of loop-thread CPU per event, packets the app sent, bytes the worker
    wrote) for ``count`` events (after the warm-up's)."""
    server = await lone_gateway(SECRET)
    links: dict[str, GatewayLink] = {}
    worker_api = WorkerAPI(links)
    bind_process_api(worker_api)
    dispatcher = Dispatcher(events(), worker_api)
    link = GatewayLink(
        server.internal_address, role="worker", secret=SECRET, on_event=dispatcher.on_event
    )
    member = None
    real = None
    try:
        await link.connect()
        links[server.internal_address] = link
        dispatcher.open()
        # A real member of room 1 on the gateway, so that the gateway's route reports
        # tell the worker the room has members there and the chat's sends go out.
        member = await connect(f"ws://127.0.0.1:{server.public_port}/", ping_interval=None)
        init = json.loads(await member.recv())  # the chat's on_connect; inline: none
        worker_api.join_group(init["client_id"], SESSION["room_id"])
        deadline = time.monotonic() + 5
        while not (link.groups and SESSION["room_id"] in link.groups):
            if time.monotonic() > deadline:
                raise RuntimeError("the gateway never reported room 1")
            await asyncio.sleep(0.01)
        sink = _Sink()
        real, link._transport = link._transport, sink  # type: ignore[assignment]
        session = pack_session(SESSION)
        packets = [
            encode(Cmd.EV_MESSAGE, 1 + i % CLIENTS, session, "127.0.0.1", 40000 + i % CLIENTS, SAY)
            for i in range(count)
        ]
        for packet in packets[:WARMUP]:
            link.data_received(packet)
            await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        feed = iter(packets)

        def next_event() -> None:
            packet = next(feed, None)
            if packet is None:
                done.set_result(None)
                return
            try:
                link.data_received(packet)
            except Exception as exc:  # end the run with it rather than hang
                done.set_exception(exc)
                return
            loop.call_soon(next_event)

        sent, written = worker_api.sent, sink.written
        started = time.thread_time()
        loop.call_soon(next_event)
        await done
        await asyncio.sleep(0)  # the last event's task
        spent = time.thread_time() - started
        if dispatcher.callback_errors:
            raise RuntimeError(f"{dispatcher.callback_errors} callbacks raised")
        return spent * 1e6 / count, worker_api.sent - sent, sink.written - written
    finally:
        if real is not None:
            link._transport = real
        if member is not None:
            await member.close()
        link.close()
        await server.stop(graceful=False)


async def measure_worker_path(
    apps: list[str], events: int, rounds: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """Each app's µs per event, ``rounds`` runs of ``events`` events, alternating."""
    logging.getLogger("register").setLevel(logging.ERROR)  # no register: on purpose
    runs: dict[str, list[float]] = {app: [] for app in apps}
    for index in range(rounds):
        for app in apps:
            per_event, sent, written = await _one_run(APPS[app](), events)
            if sent != events or not written:  # each event answered with one send
                raise RuntimeError(f"{app}: {sent} sends for {events} events, {written} B out")
            runs[app].append(round(per_event, 2))
            log(f"worker-path round {index + 1}: {app} {per_event:.2f} us CPU per event")
    return {
        app: {
            "us_cpu_per_event_median": round(statistics.median(values), 2),
            "us_cpu_per_event_runs": values,
            "events_per_run": events,
        }
        for app, values in runs.items()
    }
