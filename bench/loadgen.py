"""A load generator process: thousands of raw WebSocket clients on one event loop.

How this works
--------------
The runner starts several of these processes (``multiprocessing``, spawn) and drives
each through a pipe: it sends a command dict, the process runs it on its own event
loop (uvloop when importable) and answers one result dict. Commands are named
``op_<name>`` (dispatch by name).

A client is :class:`Client`, an ``asyncio.Protocol`` with ``__slots__`` that speaks the
smallest WebSocket client the gateway accepts: one fixed request head, frames masked
with the all-zero key (legal, and it makes masking free), server frames parsed from
their headers only. Messages are recognised by their first byte:

- ``I...`` the bench app's ready message (sent by the worker after
  ``on_websocket_connect``, i.e. after the join/bind it did): the client is connected;
- ``B<19-digit monotonic ns>...`` a broadcast: counted, and timed when asked;
- ``E<19-digit monotonic ns>...`` an echo: timed (client -> worker -> client);
- ``{...`` JSON, when the clients speak an app's protocol (``op_connect``'s
  ``protocol``): ``"chat"``, handed to :mod:`bench.chatload`, which logs in, answers
  the heartbeat and times the ``say`` replies (``"chat-connect"``, ``"chat-upgrade"``:
  no login, ready on the worker's ``init`` or at the ``101``); ``"pusher"`` (with ``path``
  ``/app/<key>``), handed to :mod:`bench.pusherload`, which subscribes to one
  channel and counts its events as broadcasts;
- anything else (the heartbeat ``ping_data``): answered with a pong frame, which the
  gateway counts as activity.

A connect command may carry ``token_key``: each client ``i`` then connects with a
signed connect token for uid ``u<i>`` (``?token=``, created before the clock starts,
so the generator's signing is not in the timed phase), and ``origin``: an
``Origin`` header on every upgrade request (for ``allowed_origins``).

Every socket is bound to one of this process's source addresses (127.0.0.x) with
``IP_BIND_ADDRESS_NO_PORT`` before connecting, so 100k connections do not exhaust the
ephemeral ports of one address pair. Latencies are kept in ``array('q')`` (µs) and
sent back raw; percentiles are the runner's job. The process runs under
``SCHED_BATCH`` so that, on the cores it shares with the cluster, it does not preempt
the server it measures (see :func:`_yield_to_the_server`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import sys
import time
from array import array
from multiprocessing.connection import Connection
from typing import Any, Protocol

from pygatewayworker.gateway.tokens import create_token

__all__ = ["Client", "Generator", "main", "client_frame"]

_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
_MASK = b"\x00\x00\x00\x00"
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
_now_ns = time.monotonic_ns
_B, _E, _I, _J = ord("B"), ord("E"), ord("I"), ord("{")


def _tokens(key: str, indexes: range) -> dict[int, str]:
    """A connect token (uid ``u<i>``, valid for an hour) for each client index."""
    return {i: create_token(key, f"u{i}") for i in indexes}


def client_frame(payload: bytes, opcode: int = 1) -> bytes:
    """A final client frame masked with the zero key (payload unchanged)."""
    size = len(payload)
    if size < 126:
        head = bytes((0x80 | opcode, 0x80 | size))
    elif size < 0x10000:
        head = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + size.to_bytes(8, "big")
    return head + _MASK + payload


_PONG = client_frame(b"", 0xA)


class AppProtocol(Protocol):
    """The JSON side of an app's protocol (:mod:`bench.chatload`, :mod:`bench.pusherload`)."""

    def opened(self, client: Client) -> None: ...

    def received(self, client: Client, data: bytes, start: int, end: int) -> None: ...


def _app_protocol(name: str) -> AppProtocol | None:
    """The protocol the clients speak (imported in the generator process): ``None``
    for the bench app's."""
    if name in ("chat", "chat-connect", "chat-upgrade"):
        from bench.chatload import ChatProtocol

        return ChatProtocol(login=name == "chat", ready_on_upgrade=name == "chat-upgrade")
    if name == "pusher":
        from bench.pusherload import PusherProtocol

        return PusherProtocol()
    return None


class Client(asyncio.Protocol):
    """One WebSocket client connection (see the module docstring)."""

    __slots__ = ("gen", "index", "transport", "shaken", "ready", "buf", "closing")

    def __init__(self, gen: Generator, index: int) -> None:
        self.gen = gen
        self.index = index
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.shaken = False
        self.ready = False
        self.buf = b""
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.gen.request(self.index))  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.gen.on_lost(self)

    def data_received(self, data: bytes) -> None:
        if self.buf:
            data = self.buf + data
            self.buf = b""
        size = len(data)
        pos = 0
        if not self.shaken:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if size > 8192:
                    self.transport.abort()
                else:
                    self.buf = data
                return
            if data[:12] != b"HTTP/1.1 101":
                self.gen.last_error = data[: data.find(b"\r\n")].decode("latin-1")
                self.transport.abort()
                return
            self.shaken = True
            pos = end + 4
            if self.gen.app is not None:
                self.gen.app.opened(self)
        gen = self.gen
        now = 0
        while size - pos >= 2:
            length = data[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                head = 10
            start = pos + head
            end = start + length
            if end > size:
                break
            first = data[start] if length else 0
            if first == _B:
                gen.bcast += 1
                if gen.track:
                    if not now:
                        now = _now_ns()
                    gen.lat.append((now - int(data[start + 1 : start + 20])) // 1000)
            elif first == _E:
                if not now:
                    now = _now_ns()
                gen.lat.append((now - int(data[start + 1 : start + 20])) // 1000)
                gen.echo_recv += 1
            elif first == _I and not self.ready:
                self.ready = True
                gen.on_ready(self)
            elif first == _J and gen.app is not None:
                gen.app.received(self, data, start, end)
            elif data[pos] & 0x0F == 0x8:  # close frame from the server
                self.transport.close()
            elif gen.answer_pings:
                self.transport.write(_PONG)
            pos = end
        if now:
            gen.last_ns = now
        elif pos and gen.bcast:
            gen.last_ns = _now_ns()
        if pos < size:
            self.buf = data[pos:]


class Generator:
    """The state of one generator process and its commands (``op_<name>``)."""

    def __init__(self, host: str, port: int, sources: list[str]) -> None:
        self.host = host
        self.port = port
        self.sources = sources
        self.loop = asyncio.get_running_loop()
        self.clients: dict[int, Client] = {}  # ready clients by index
        self.handshaking: dict[int, Client] = {}
        self.query: dict[str, str] = {}
        self.tokens: dict[int, str] = {}  # connect tokens by client index (op_connect)
        self.origin = ""
        self.answer_pings = True
        self.app: AppProtocol | None = None  # an app's JSON protocol (op_connect)
        self.path = "/"
        self.reconnect = False
        self.track = False
        self.lat: array[int] = array("q")
        self.bcast = 0
        self.echo_recv = 0
        self.last_ns = 0
        self.failed = 0
        self.lost = 0
        self.reconnected = 0
        self.back_ns: array[int] = array("q")  # when each reconnected client was ready
        self.gave_up = 0  # clients whose reconnection attempts ran out
        self.last_error = ""
        self._slots: asyncio.Semaphore | None = None
        self._reopening: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()

    # ---- connections -----------------------------------------------------------------
    def request(self, index: int) -> bytes:
        """The upgrade request of client ``index`` (query from the connect command)."""
        query = "&".join(f"{k}={v.format(i=index)}" for k, v in self.query.items())
        if self.tokens:
            query = (
                f"{query}&token={self.tokens[index]}" if query else f"token={self.tokens[index]}"
            )
        origin = f"Origin: {self.origin}\r\n" if self.origin else ""
        return (
            f"GET {self.path}?{query} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"{origin}Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()

    async def _open(self, index: int) -> None:
        source = self.sources[index % len(self.sources)]
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
            sock.setblocking(False)
            await self.loop.sock_connect(sock, (self.host, self.port))
            client = Client(self, index)
            self.handshaking[index] = client
            await self.loop.create_connection(lambda: client, sock=sock)
        except OSError as exc:
            sock.close()
            self.handshaking.pop(index, None)
            self.failed += 1
            self.last_error = f"{exc.__class__.__name__}: {exc}"
            self._release()

    def _release(self) -> None:
        if self._slots is not None:
            self._slots.release()
        self._changed.set()

    def on_ready(self, client: Client) -> None:
        index = client.index
        self.handshaking.pop(index, None)
        if self.clients.get(index) is not None:
            self.reconnected += 1
            self.back_ns.append(_now_ns())
        self.clients[index] = client
        self._release()

    def on_lost(self, client: Client) -> None:
        index = client.index
        if self.handshaking.get(index) is client:
            del self.handshaking[index]
            if self.reconnect and index in self.clients and not client.closing:
                self._spawn_reopen(index, 0.05)  # lost while re-linking
                return
            self.failed += 1
            self._release()
            return
        if self.clients.get(index) is client and not client.closing:
            self.lost += 1
            self._changed.set()
            if self.reconnect:
                self._spawn_reopen(index, 0.0)

    def _spawn_reopen(self, index: int, delay: float) -> None:
        task = self.loop.create_task(self._reopen(index, delay))
        self._reopening.add(task)
        task.add_done_callback(self._reopening.discard)

    async def _reopen(self, index: int, delay: float) -> None:
        for attempt in range(200):
            if delay:
                await asyncio.sleep(delay)
            before = self.failed
            await self._open(index)
            if self.failed == before:
                return
            self.failed = before  # a retry, not a failure
            delay = min(1.0, 0.05 * (attempt + 1))
        self.gave_up += 1

    async def op_connect(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Open ``count`` clients (indexes from ``first``), at most ``concurrency``
        handshakes at a time; return when every one is ready or failed."""
        self.query = cmd.get("query", {})
        self.answer_pings = cmd.get("answer_pings", True)
        self.reconnect = cmd.get("reconnect", False)
        self.app = _app_protocol(cmd.get("protocol", "bench"))
        self.path = cmd.get("path", "/")
        count, first = cmd["count"], cmd.get("first", 0)
        self.origin = cmd.get("origin", "")
        if cmd.get("token_key"):
            self.tokens.update(_tokens(cmd["token_key"], range(first, first + count)))
        self._slots = asyncio.Semaphore(cmd.get("concurrency", 100))
        ready0, failed0 = len(self.clients), self.failed
        started = time.monotonic()
        deadline = started + cmd.get("timeout", 120.0)
        for index in range(first, first + count):
            await self._slots.acquire()
            self.loop.create_task(self._open(index))
            if time.monotonic() > deadline:
                break
        while len(self.clients) - ready0 + self.failed - failed0 < count:
            if time.monotonic() > deadline:
                break
            self._changed.clear()
            with _suppress_timeout():
                await asyncio.wait_for(self._changed.wait(), 0.5)
        elapsed = time.monotonic() - started
        return {
            "ready": len(self.clients) - ready0,
            "failed": self.failed - failed0,
            "elapsed": elapsed,
            "last_error": self.last_error,
        }

    async def op_status(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Counts of ready clients, losses and reconnections."""
        open_now = sum(1 for c in self.clients.values() if not c.transport.is_closing())
        return {
            "ready": len(self.clients),
            "open": open_now,
            "lost": self.lost,
            "reconnected": self.reconnected,
            "failed": self.failed,
        }

    async def op_wait_reconnected(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Wait until ``lost`` reaches ``min_lost`` and every lost client is back, at
        most ``timeout`` s and at most ``stall`` s without progress. Returns when each
        came back (``back_ns``, monotonic ns) and where the missing ones are."""
        now = time.monotonic()
        deadline = now + cmd["timeout"]
        stall = cmd.get("stall", 20.0)
        last, progress = -1, now
        while now < deadline and now - progress < stall:
            if self.lost >= cmd["min_lost"] and self.reconnected >= self.lost:
                break
            if self.reconnected != last:
                last, progress = self.reconnected, now
            await asyncio.sleep(0.01)
            now = time.monotonic()
        waiting = list(self.handshaking.values())
        no_ready = sum(1 for c in waiting if c.shaken)
        return {
            "lost": self.lost,
            "reconnected": self.reconnected,
            "at": time.monotonic(),
            "back_ns": self.back_ns.tobytes(),
            "missing": {
                # TCP connected and upgraded, but the app's ready message never came
                "upgraded_not_ready": no_ready,
                # TCP connected, request sent, no 101 yet
                "awaiting_101": len(waiting) - no_ready,
                "gave_up": self.gave_up,
                # still trying to connect (SYN retries, refused and retrying)
                "connecting": max(0, self.lost - self.reconnected - len(waiting) - self.gave_up),
            },
        }

    async def op_close_all(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Drop every client (no reconnection)."""
        self.reconnect = False
        for task in list(self._reopening):
            task.cancel()
        for client in list(self.clients.values()) + list(self.handshaking.values()):
            client.closing = True
            if client.transport is not None:
                client.transport.abort()
        self.clients.clear()
        self.handshaking.clear()
        await asyncio.sleep(0.2)
        self.lost = self.reconnected = self.failed = self.gave_up = 0
        self.back_ns = array("q")
        return {"closed": True}

    # ---- measurements -------------------------------------------------------------
    async def op_recv_reset(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Zero the broadcast counters; ``track``: time every broadcast."""
        self.bcast = 0
        self.last_ns = 0
        self.track = cmd.get("track", False)
        self.lat = array("q")
        return {}

    async def op_recv_stats(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Broadcasts received so far, when the last arrived, their latencies (µs)."""
        return {"count": self.bcast, "last_ns": self.last_ns, "lat": self.lat.tobytes()}

    async def op_echo(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Send ``rate`` echo requests/s for ``duration`` s spread over the clients
        (open loop: the schedule does not wait for answers), then wait up to ``grace``
        s for the answers. Each request is ``prefix + "E<ns>" + padding + suffix``
        (``size`` counts the timed part: a prefix/suffix wraps it in a protocol's
        message, e.g. the chat's ``say``)."""
        rate, duration, size = cmd["rate"], cmd["duration"], cmd.get("size", 32)
        clients = [c for c in self.clients.values() if not c.transport.is_closing()]
        self.lat = array("q")
        self.echo_recv = 0
        tail = b"x" * max(0, size - 20) + cmd.get("suffix", b"")
        prefix = cmd.get("prefix", b"")
        length = len(prefix) + 20 + len(tail)
        head = client_frame(bytes(length))[:-length] + prefix  # frame head, mask, prefix
        count = len(clients)
        sent = index = 0
        started = time.monotonic()
        while True:
            elapsed = time.monotonic() - started
            if elapsed >= duration:
                break
            due = int(elapsed * rate) - sent
            for _ in range(due):
                clients[index].transport.write(head + b"E%019d" % _now_ns() + tail)
                index = index + 1 if index + 1 < count else 0
            sent += max(due, 0)
            await asyncio.sleep(0.001)  # uvloop timers have 1 ms resolution
        deadline = time.monotonic() + cmd.get("grace", 2.0)
        while self.echo_recv < sent and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        return {"sent": sent, "received": self.echo_recv, "lat": self.lat.tobytes()}

    async def op_exit(self, cmd: dict[str, Any]) -> dict[str, Any]:
        await self.op_close_all(cmd)
        return {}


class _suppress_timeout:
    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: object, tb: object) -> bool:
        return exc_type is TimeoutError


async def _serve(pipe: Connection, host: str, port: int, sources: list[str]) -> None:
    gen = Generator(host, port, sources)
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    def readable() -> None:
        try:
            inbox.put_nowait(pipe.recv())
        except (EOFError, OSError):
            inbox.put_nowait(None)

    loop.add_reader(pipe.fileno(), readable)
    os.set_blocking(pipe.fileno(), True)  # results can be larger than the pipe buffer
    parent = os.getppid()
    while True:
        try:
            cmd = await asyncio.wait_for(inbox.get(), 1.0)
        except TimeoutError:
            if os.getppid() != parent:  # the runner died: do not linger as load
                cmd = None
            else:
                continue
        if cmd is None:
            await gen.op_close_all({})
            return
        op = cmd["op"]
        try:
            result = await getattr(gen, "op_" + op)(cmd)
        except Exception as exc:  # report, keep serving
            result = {"error": f"{op}: {exc.__class__.__name__}: {exc}"}
        os.set_blocking(pipe.fileno(), True)
        pipe.send(result)
        if op == "exit":
            return


def _yield_to_the_server() -> None:
    """Run this process under ``SCHED_BATCH``: a generator woken by incoming data
    does not preempt the server process on a shared core (it runs when the core is
    free or at the next tick). Without it a broadcast to 10k clients turns into a
    context-switch ping-pong between the gateway and the readers (measured: one
    message to 10k members, p50 101 ms with normal scheduling, 81-89 ms with this);
    on an idle core it changes nothing."""
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or not allowed
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))


def main(pipe: Connection, host: str, port: int, sources: list[str]) -> None:
    """Process entry point: serve commands from ``pipe`` until ``exit``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    _yield_to_the_server()
    loop: asyncio.AbstractEventLoop
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(_serve(pipe, host, port, sources))
    finally:
        loop.close()
    sys.exit(0)
