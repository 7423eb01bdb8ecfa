"""One asyncio connection to one gateway's internal port.

How this works
--------------
:class:`GatewayLink` is the asyncio protocol of the connection. :meth:`~GatewayLink.
connect` opens TCP, writes ``HELLO(role, name, secret, pid)`` and waits for
``WELCOME``; after that the link is *open* and :attr:`~GatewayLink.info` holds what the
gateway said about itself (lan ip, internal and public port...).

Writes are coalesced: :meth:`~GatewayLink.send` appends the packet to a list and one
``call_soon`` writes the whole batch with a single ``transport.write``. A batch that
grows past :data:`FLUSH_BYTES` is written at once, so a caller that never yields to
the loop does not pile up an unbounded private buffer (the transport's own buffer and
its high-water mark take over from there; :meth:`~GatewayLink.drain` waits on it).

The link's protocol rules are not written here: a
:class:`~gateway.linkproto.LinkClient` (sans-I/O, shared with the command line's
queries) makes ``HELLO``, checks ``WELCOME``, numbers requests and matches their
replies, decides the keep-alive and keeps the ``ROUTES``. This class moves bytes,
turns what the protocol object says into futures and callbacks, and owns the timers.

The reader (``data_received``) decodes packets; client events (``EV_*``, the hot
path) go straight to ``on_event``, every other packet to the protocol object, whose
answer it carries out: replies resolve request futures, ``PING`` is answered,
``LEAVE_ACK`` goes to its callback. Those
callbacks must not block or wait: they enqueue, or run a plain function that
returns at once (the business worker runs plain-function callbacks inline); nothing
that awaits a reply on this very link may run in the reader, or it would deadlock.

The reader is paced like the gateway's side (``gateway.pacing``): one read can hold
thousands of packets (uvloop reads up to 256 KiB), and handling them all in one
callback would stall the loop for every other task. A loop turn handles at most
:data:`TURN_PACKETS` packets and stops early once :data:`TURN_SECONDS` have passed
(the clock is read every :data:`CHECK_EVERY` packets). What is left is *kept*: the
packets already decoded in a list, the rest as bytes in the decoder. Reading is
paused meanwhile (TCP back-pressure reaches the gateway) and the next turn
(``call_soon``) goes on where this one stopped; reading resumes once nothing is
kept. Nothing is reordered: a read that arrives while packets are kept (a transport
may deliver one more after the pause) goes behind them in the decoder.

When the link closes while packets are kept: :meth:`~GatewayLink.close` (graceful)
and a close by the gateway (``connection_lost``) first handle every kept packet at
once, in order (they were received; a worker that leaves gracefully must not lose
events the gateway already handed it); :meth:`~GatewayLink.abort` and a protocol
violation drop them (the link is being torn down; whatever they carried is as lost
as the bytes still in the socket).

Keep-alive is one timer per link (there is one link per gateway, so a handful) that
asks the protocol object (``LinkClient.keepalive``): it sends ``PING`` when nothing
was written for ``keepalive_interval`` (or nothing heard for that long), and drops the
link when nothing was heard for ``link_timeout``. A request's timeout is a timer at
its deadline that asks ``LinkClient.expire``.

Silence counts only while this loop could listen. A timer that fires late (by
``late`` seconds) means the loop was stalled that long (a blocking callback, a stopped
process), and what the gateway sent meanwhile may still sit unread in the socket:
on uvloop (libuv) a timer that fell due during a callback that blocked inside
``data_received`` (a plain callback run inline, or on Python 3.12+ an eagerly
started task) runs after that poll and before the next one, so ``last_recv`` is not
yet refreshed. The tick therefore moves ``last_recv`` on by its lateness before it
asks the protocol object: our stall is not the gateway's silence (dropping the link
then would also drop the client events waiting in the socket). A gateway that is
really silent is still dropped after ``link_timeout`` of time on which the loop ran.

``ROUTES`` packets keep :attr:`~GatewayLink.uids` and :attr:`~GatewayLink.groups`:
the uids and groups that have members on this gateway (``None`` until the first
``ROUTES``: unknown, so callers send everything there). :meth:`~GatewayLink.note_uid`
and :meth:`~GatewayLink.note_group` add a key at once when we ourselves bind or join
(the gateway's confirmation follows), so a send right after our own join is routed.

A gateway that sends garbage (bad length prefix, bad msgpack, a command that has no
business on this side, wrong field shapes) gets its link closed with a log line;
pending requests then fail with :class:`~gatewayclient.errors.LinkClosed`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, cast

from pygatewayworker.gateway.client_id import MAX_CONN_ID
from pygatewayworker.gateway.linkproto import (
    Answer,
    Failed,
    LeaveAcked,
    LinkClient,
    Notice,
    Refused,
    Replied,
    RoutesUpdated,
    Upkeep,
    Welcomed,
)
from pygatewayworker.gateway.protocol import DEFAULT_MAX_PACKET, Cmd, Decoder, ProtocolError
from pygatewayworker.gatewayclient.errors import LinkClosed, LinkError, QueryTimeout, RemoteError
from pygatewayworker.register.config import parse_address

__all__ = ["GatewayLink", "FLUSH_BYTES", "EVENT_COMMANDS", "TURN_PACKETS", "TURN_SECONDS"]

logger = logging.getLogger("gatewayclient")

FLUSH_BYTES = 64 * 1024
"""A coalesced batch this large is written at once instead of at the next loop turn."""


class _Held(threading.local):
    """While a reader handles input (``GatewayLink._take``): the links that got
    packets to write meanwhile (``links``; ``None`` outside). They are flushed when
    that turn of input ends, in the same iteration of the loop, instead of by a
    callback in the next one: the reply of a callback run inline (and on Python 3.12
    of a task started eagerly) leaves without an extra iteration, its
    ``epoll_wait`` and its handle. Sends made elsewhere (tasks, timers) are flushed
    at the next iteration as before. Per thread, as each loop runs in one thread
    (a process may run a worker's loop and a sync push client's)."""

    links: list[GatewayLink] | None = None


_HELD = _Held()

TURN_PACKETS = 128
"""Packets handled per loop turn at most. Half the gateway's budget
(``gateway.pacing.TURN_BUDGET``): an async callback (the shipped chat's
``on_message``) becomes a task that runs in the loop's next iteration together with
the reader's next turn, so an iteration does about twice the reader's own work (with
256, a worker of the chat app under overload still stalled 7 ms; with 128, 3-4 ms)."""

TURN_SECONDS = 0.002
"""A loop turn of the reader ends once it has run this long (checked every
:data:`CHECK_EVERY` packets), so slow callbacks run inline make shorter turns. On a
fresh read the clock starts once its batch is decoded (most reads hold a packet or
two and never look at the clock); a later turn's starts with the turn."""

CHECK_EVERY = 32
"""Packets handled between two readings of the clock."""

_NEVER = float("inf")  # the deadline of turns that handle everything kept (a close)
_clock = time.perf_counter

EVENT_COMMANDS = frozenset({Cmd.EV_CONNECT, Cmd.EV_WS_CONNECT, Cmd.EV_MESSAGE, Cmd.EV_CLOSE})
"""Client events, delivered to the ``on_event`` callback."""

_NEW, _CONNECTING, _OPEN, _CLOSED = "new", "connecting", "open", "closed"

EventCallback = Callable[["GatewayLink", list[Any]], None]
LinkCallback = Callable[["GatewayLink"], None]
FlowCallback = Callable[["GatewayLink", bool], None]


class GatewayLink(asyncio.Protocol):
    """One link to the gateway at ``address`` (its internal ``"ip:port"``).

    ``role`` is ``"worker"`` (the gateway routes client events here) or ``"client"``
    (push client). Callbacks, all optional and all called from the reader, so they
    must be quick and must never wait for this link (see the module docstring):

    - ``on_event(link, packet)``: an ``EV_*`` packet
      ``[cmd, conn_id, session, remote_ip, remote_port, payload]``;
    - ``on_leave_ack(link)``: the gateway acknowledged ``WORKER_LEAVE``;
    - ``on_open(link)``: ``WELCOME`` arrived (before :meth:`connect` returns);
    - ``on_close(link)``: the link is closed, for whatever reason;
    - ``on_flow(link, paused)``: the transport crossed its write high-water mark;
    - ``on_authenticate(link, packet)``: an ``AUTHENTICATE`` packet
      ``[AUTHENTICATE, req, info]`` (a worker that announced ``hooks``: its
      features, e.g. the app hooks it runs, sent as the optional last field of
      ``HELLO``).
    """

    def __init__(
        self,
        address: str,
        *,
        role: str = "client",
        name: str = "",
        secret: str = "",
        on_event: EventCallback | None = None,
        on_leave_ack: LinkCallback | None = None,
        on_open: LinkCallback | None = None,
        on_close: LinkCallback | None = None,
        on_flow: FlowCallback | None = None,
        hooks: tuple[str, ...] = (),
        on_authenticate: EventCallback | None = None,
        keepalive_interval: float = 10.0,
        link_timeout: float = 30.0,
        connect_timeout: float = 5.0,
        max_packet: int = DEFAULT_MAX_PACKET,
    ) -> None:
        self.address = address
        self.host, self.port = parse_address(address, "gateway address")
        self.role = role
        self.name = name
        self._proto = LinkClient(
            role, name, secret, os.getpid(), keepalive_interval, link_timeout, hooks=hooks
        )
        self._on_event = on_event
        self._on_leave_ack = on_leave_ack
        self._on_open = on_open
        self._on_close = on_close
        self._on_flow = on_flow
        self.hooks = hooks
        self._on_authenticate = on_authenticate
        self.connect_timeout = connect_timeout
        self.uids: set[str] | None = None
        """uids with connections on this gateway (``ROUTES``); ``None``: not known yet.
        The protocol object's set, mirrored here after each ``ROUTES`` so the send
        path reads a plain attribute."""
        self.groups: set[str] | None = None
        """groups with members on this gateway (``ROUTES``); ``None``: not known yet."""
        self.info: dict[str, Any] = {}
        """What ``WELCOME`` said: ``lan_ip``, ``port``, ``public_host``, ``public_port``,
        ``name``, ``pid``."""
        self.gateway_address = address
        """``lan_ip:port`` from ``WELCOME`` (the address client_ids encode)."""
        self.lan_ip = self.host
        self.public_port = 0
        self.close_reason = ""
        self._by_us = False
        self._prefix = ""
        self._state = _NEW
        self._decoder = Decoder(max_packet)
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._flush_scheduled = False
        self._paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._welcome: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tick_at = 0.0
        """When the keep-alive timer is due (loop time): how late it fires is how long
        the loop was stalled."""
        self._kept: list[list[Any]] = []
        """Decoded packets left for a later turn (more may wait in the decoder)."""
        self._turn_due = False
        """Input is kept and the next turn (``_next_turn``) is scheduled."""
        self._reading_paused = False
        self._handling = False
        self._halted = False
        """Aborted or closed: no packet is handled any more."""

    def __repr__(self) -> str:
        return f"<GatewayLink {self.address} {self.role} {self._state}>"

    # ---- public API ----------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """True between ``WELCOME`` and the close."""
        return self._state is _OPEN

    @property
    def keepalive_interval(self) -> float:
        """Seconds of quiet after which a ``PING`` goes out."""
        return self._proto.keepalive_interval

    @property
    def link_timeout(self) -> float:
        """Seconds of silence from the gateway after which the link is dropped."""
        return self._proto.link_timeout

    @property
    def paused(self) -> bool:
        """True while the transport's buffer is above its high-water mark."""
        return self._paused

    def client_id(self, conn_id: int) -> str:
        """The client_id of connection ``conn_id`` on this gateway (after ``WELCOME``).

        Same result as ``encode_client_id(lan_ip, port, conn_id)``, without the
        address parsing. Raises ``ValueError`` for a connection id out of range.
        """
        if conn_id.__class__ is not int or not 0 < conn_id <= MAX_CONN_ID:
            raise ValueError(f"connection id {conn_id!r} is outside 1..{MAX_CONN_ID}")
        return self._prefix + format(conn_id, "08x")

    async def connect(self) -> dict[str, Any]:
        """Open the link: TCP connect, ``HELLO``, wait for ``WELCOME``; return the info.

        Raises :class:`LinkError` naming the gateway and the reason: connection
        refused, no ``WELCOME`` within ``connect_timeout``, or the gateway's ``ERROR``
        text (e.g. a wrong secret).
        """
        if self._state is not _NEW:
            raise RuntimeError("a GatewayLink connects only once; make a new one")
        loop = self._loop = asyncio.get_running_loop()
        self._state = _CONNECTING
        self._welcome = loop.create_future()
        self._closed = loop.create_future()
        try:
            async with asyncio.timeout(self.connect_timeout):
                await loop.create_connection(lambda: self, self.host, self.port)
                await self._welcome
        except TimeoutError:
            self.abort("handshake timeout")
            raise LinkError(
                f"gateway {self.address} did not complete the link handshake within "
                f"{self.connect_timeout:g} s"
            ) from None
        except OSError as exc:
            self._welcome.cancel()
            self._by_us = True
            self._set_closed()
            reason = exc.strerror or str(exc) or exc.__class__.__name__
            raise LinkError(f"cannot link to gateway {self.address}: {reason}") from None
        except BaseException:
            # cancelled (or worse) while waiting: the link is dropped unless its
            # handshake is already done (a keeper task cancelled by stop_relinking
            # between WELCOME and its own wake-up: the open link is kept, as asked)
            if self._state is not _OPEN:
                self.abort("handshake failed")
            raise
        return self.info

    def send(self, data: bytes) -> None:
        """Queue one encoded packet; it is written at the next loop turn (or at once
        when the batch is large). Never blocks. Raises :class:`LinkClosed` when the
        link is not open."""
        if self._state is not _OPEN:
            raise LinkClosed(f"link to gateway {self.address} is {self._state}")
        self._out.append(data)
        self._out_bytes += len(data)
        if self._out_bytes >= FLUSH_BYTES:
            self.flush()
        elif not self._flush_scheduled:
            self._schedule_flush()

    def flush(self) -> None:
        """Hand every queued packet to the transport now."""
        self._flush_scheduled = False
        out = self._out
        if self._proto.pin_pending and self._state is _OPEN:
            out.append(self._proto.ping())
        if not out or self._transport is None or self._state is _CLOSED:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self._out_bytes = 0
        self._proto.last_send = self._loop.time()  # type: ignore[union-attr]
        self._transport.write(data)

    async def drain(self) -> None:
        """Flush, then wait while the transport is above its high-water mark."""
        self.flush()
        if not self._paused:
            return
        if self._drain_waiter is None or self._drain_waiter.done():
            self._drain_waiter = self._loop.create_future()  # type: ignore[union-attr]
        await asyncio.shield(self._drain_waiter)

    def request_future(self, cmd: Cmd, *args: Any, timeout: float) -> asyncio.Future[Any]:
        """Send query ``[cmd, req, *args]`` and return the future of its ``REPLY``.

        The future fails with :class:`QueryTimeout` after ``timeout`` seconds, with
        :class:`RemoteError` on an ``ERROR`` reply and with :class:`LinkClosed` when
        the link closes first. Raises :class:`LinkClosed` at once when not open.
        """
        if self._state is not _OPEN:
            raise LinkClosed(f"link to gateway {self.address} is {self._state}")
        loop = self._loop
        assert loop is not None
        future: asyncio.Future[Any] = loop.create_future()
        proto = self._proto
        deadline = loop.time() + timeout
        req, data = proto.request(cmd, args, deadline, (future, timeout))
        timer = loop.call_at(deadline, self._expire, deadline)

        def settle(_: asyncio.Future[Any]) -> None:
            timer.cancel()
            proto.forget(req)

        future.add_done_callback(settle)
        self.send(data)
        return future

    async def request(self, cmd: Cmd, *args: Any, timeout: float) -> Any:
        """Send a query and return the gateway's answer (see :meth:`request_future`)."""
        return await self.request_future(cmd, *args, timeout=timeout)

    def close(self, reason: str = "closed by us") -> None:
        """Handle every packet kept for a later turn (see the module docstring),
        flush what is queued and close the connection."""
        if self._state is _CLOSED:
            return
        self._handle_kept()
        if self._halted:  # a kept packet was garbage, or a callback aborted
            return
        self.flush()
        self._by_us = True
        self.close_reason = self.close_reason or reason
        if self._transport is not None:
            self._transport.close()
        else:
            self._set_closed()

    def abort(self, reason: str) -> None:
        """Drop the connection at once (queued data and kept input are discarded)."""
        if self._state is _CLOSED:
            return
        self._halted = True
        self._kept = []
        self._by_us = True
        self.close_reason = self.close_reason or reason
        if self._transport is not None:
            self._transport.abort()
        else:
            self._set_closed()

    async def wait_closed(self) -> None:
        """Return once the link is closed."""
        if self._closed is not None:
            await asyncio.shield(self._closed)

    # ---- asyncio protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence a cast
        self._transport = cast(asyncio.Transport, transport)
        loop = self._loop
        assert loop is not None
        self._transport.write(self._proto.hello(loop.time()))
        self._schedule_tick()

    def data_received(self, data: bytes) -> None:
        self._proto.last_recv = self._loop.time()  # type: ignore[union-attr]
        if self._turn_due:
            self._decoder.feed(data, 0)  # behind the kept input (limit 0: only buffer)
        elif not self._take(data, None):
            self._defer()

    def _next_turn(self) -> None:
        """A later loop turn for the kept input."""
        self._turn_due = False
        if self._halted:
            return
        self._proto.last_recv = self._loop.time()  # type: ignore[union-attr]  # news from it
        if self._take(b"", _clock() + TURN_SECONDS):
            self._resume_reading()
        else:
            self._defer()

    def _take(self, data: bytes, deadline: float | None) -> bool:
        """One turn of input: the kept packets, then those the decoder completes
        (with ``data``), :data:`TURN_PACKETS` at most, until ``deadline`` (``None``:
        :data:`TURN_SECONDS` from now; the clock is read every :data:`CHECK_EVERY`
        packets). True when no input is left (or the link is done); False when some
        is kept (in :attr:`_kept` or in the decoder) for the next turn.

        One function on purpose: it is the reader's hot path (most reads hold one
        packet), and every call saved there is measurable."""
        kept = self._kept
        wanted = TURN_PACKETS - len(kept)
        try:
            packets = self._decoder.feed(data, wanted)
        except ProtocolError as exc:
            self._violation(str(exc))  # drops the kept packets too (an abort)
            return True
        more = len(packets) == wanted  # the decoder may hold more whole packets
        if kept:
            packets = kept + packets
            self._kept = []
        count = len(packets)
        if deadline is None:  # the clock matters only past CHECK_EVERY packets
            deadline = _clock() + TURN_SECONDS if count > CHECK_EVERY else 0.0
        receive = self._proto.receive
        done = 0
        outermost = _HELD.links is None
        if outermost:
            _HELD.links = []
        self._handling = True
        try:
            while True:
                # CHECK_EVERY packets between two readings of the clock
                for packet in (
                    packets if count <= CHECK_EVERY else packets[done : done + CHECK_EVERY]
                ):
                    if self._halted:
                        return True
                    try:
                        if packet[0] in EVENT_COMMANDS:
                            self._packet_event(packet)
                        elif packet[0] == Cmd.AUTHENTICATE:
                            self._packet_authenticate(packet)
                        else:
                            event = receive(packet)
                            if event is not None:
                                _REACTIONS[event.__class__](self, event)
                    except ProtocolError as exc:
                        self._violation(str(exc))
                        return True
                    done += 1
                if done >= count:
                    return not more or self._halted
                if _clock() > deadline:
                    if self._halted:
                        return True
                    self._kept = packets[done:]
                    return False
        finally:
            self._handling = False
            if outermost:
                held: list[GatewayLink] = _HELD.links  # type: ignore[assignment]
                _HELD.links = None
                for link in held:
                    if link._flush_scheduled:
                        try:
                            link.flush()
                        except Exception:  # as a call_soon flush's would: logged, alone
                            logger.exception("flushing the link to %s failed", link.address)

    def _defer(self) -> None:
        """Some input is kept: pause reading and ask for the next turn."""
        if not self._reading_paused:
            self._reading_paused = True
            if not self._transport.is_closing():  # type: ignore[union-attr]
                self._transport.pause_reading()  # type: ignore[union-attr]
        self._turn_due = True
        self._loop.call_soon(self._next_turn)  # type: ignore[union-attr]

    def _resume_reading(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            transport = self._transport
            if transport is not None and not transport.is_closing():
                transport.resume_reading()

    def _handle_kept(self) -> None:
        """Handle every kept packet now, without a bound (a graceful close, or the
        gateway closed the link: they were received before, so they count). Not
        from inside the reader (a callback that closes the link): that turn goes on
        in order and ``connection_lost`` handles what it kept."""
        if self._handling or self._halted or not (self._turn_due or self._kept):
            return
        while not self._take(b"", _NEVER):
            pass

    def eof_received(self) -> bool | None:
        self.close_reason = self.close_reason or "closed by the gateway"
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and not self.close_reason:
            self.close_reason = str(exc) or exc.__class__.__name__
        # input kept for a later turn was received before the close: handle it now
        # (unless we aborted); the transport is gone, so nothing is written meanwhile
        self._transport = None
        self._handle_kept()
        was_open = self._state is _OPEN
        self._set_closed()
        if was_open and not self._by_us:
            logger.warning("link to gateway %s lost: %s", self.address, self.close_reason)

    def pause_writing(self) -> None:
        self._paused = True
        if self._on_flow is not None:
            self._on_flow(self, True)

    def resume_writing(self) -> None:
        self._paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._on_flow is not None:
            self._on_flow(self, False)

    # ---- what the protocol object reports (see _REACTIONS) --------------------------

    def _on_welcomed(self, event: Welcomed) -> None:
        info = event.info
        self._prefix = self._proto.client_id_prefix
        self.info = info
        self.lan_ip = info["lan_ip"]
        self.public_port = info.get("public_port") or 0
        self.gateway_address = self._proto.gateway_address
        self._state = _OPEN
        if self._on_open is not None:
            self._on_open(self)
        if self._welcome is not None and not self._welcome.done():
            self._welcome.set_result(None)

    def _on_refused(self, event: Refused) -> None:
        message = event.message
        self._fail_welcome(LinkError(f"gateway {self.address} refused the link: {message}"))
        self.abort(f"refused: {message}")

    def _on_failed(self, event: Failed) -> None:
        future = event.token[0]
        if not future.done():
            future.set_exception(RemoteError(f"gateway {self.address}: {event.message}"))

    def _on_notice(self, event: Notice) -> None:
        logger.warning("gateway %s reports: %s", self.address, event.message)

    def _on_replied(self, event: Replied) -> None:
        future = event.token[0]
        if not future.done():
            future.set_result(event.result)

    def _on_answer(self, event: Answer) -> None:
        if self._transport is not None:
            self.flush()  # keep order: queued packets before the answer
            self._transport.write(event.data)

    def _on_leave_acked(self, event: LeaveAcked) -> None:
        if self._on_leave_ack is not None:
            self._on_leave_ack(self)

    def _on_routes(self, event: RoutesUpdated) -> None:
        self.uids, self.groups = self._proto.uids, self._proto.groups

    def note_uid(self, uid: str) -> None:
        """We bound a connection of this gateway to ``uid`` (the ``BIND_UID`` is
        queued): route ``uid`` here from now on (``LinkClient.note_uid``: the key is
        pinned until a ``PING`` written behind the command is answered)."""
        self._proto.note_uid(uid)
        self._schedule_flush()

    def note_group(self, group: str) -> None:
        """We added a connection of this gateway to ``group``: as :meth:`note_uid`."""
        self._proto.note_group(group)
        self._schedule_flush()

    def mark(self) -> int:
        """Have one ``PING`` written behind everything queued now; return the
        :attr:`pongs_seen` count from which on the gateway has handled all of it
        (and whatever it sends from then on reflects it)."""
        number = self._proto.mark()
        self._schedule_flush()
        return number

    @property
    def pongs_seen(self) -> int:
        """``PONG`` packets received so far (every ``PING`` is answered, in order)."""
        return self._proto.pongs_seen

    def _schedule_flush(self) -> None:
        """Flush at the end of the reader's turn in progress, or in the next
        iteration of the loop."""
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            held = _HELD.links
            if held is not None:  # a reader is handling input: flushed when it ends
                held.append(self)
            else:
                self._loop.call_soon(self.flush)

    def _packet_event(self, packet: list[Any]) -> None:
        if (
            self._state is not _OPEN
            or len(packet) != 6
            or packet[1].__class__ is not int
            or not 0 < packet[1] <= MAX_CONN_ID
        ):
            raise ProtocolError(
                f"malformed {packet[0].name}: expected [cmd, conn_id, session, ip, port, "
                "payload] on an open link"
            )
        if self._on_event is None:
            return
        try:
            self._on_event(self, packet)
        except Exception:  # our owner's bug: log it, keep the link
            logger.exception("event callback failed for %s from %s", packet[0].name, self.address)

    def _packet_authenticate(self, packet: list[Any]) -> None:
        if self._state is not _OPEN or len(packet) != 3 or packet[1].__class__ is not int:
            raise ProtocolError("AUTHENTICATE must be [AUTHENTICATE, req, info] on an open link")
        if self._on_authenticate is None:
            raise ProtocolError("AUTHENTICATE to a link that announced no hook")
        try:
            self._on_authenticate(self, packet)
        except Exception:  # our owner's bug: log it, keep the link
            logger.exception("authenticate callback failed for %s", self.address)

    # ---- internals -----------------------------------------------------------------

    def _violation(self, reason: str) -> None:
        logger.error("gateway %s sent garbage, closing the link: %s", self.address, reason)
        self._fail_welcome(LinkError(f"gateway {self.address} sent garbage: {reason}"))
        self.abort(f"protocol error: {reason}")

    def _fail_welcome(self, exc: Exception) -> None:
        if self._welcome is not None and not self._welcome.done():
            self._welcome.set_exception(exc)

    def _expire(self, now: float) -> None:
        """A request's deadline: fail every request whose time is up."""
        for _, (future, timeout), cmd in self._proto.expire(now):
            if not future.done():
                future.set_exception(
                    QueryTimeout(
                        f"gateway {self.gateway_address} did not answer {cmd.name} within "
                        f"{timeout:g} s",
                        None,
                        (self.gateway_address,),
                    )
                )

    def _schedule_tick(self) -> None:
        loop = self._loop
        assert loop is not None
        period = self._proto.period
        self._tick_at = loop.time() + period
        self._timer = loop.call_later(period, self._tick)

    def _tick(self) -> None:
        if self._state is _CLOSED or self._transport is None:
            return
        proto = self._proto
        now = self._loop.time()  # type: ignore[union-attr]
        proto.stalled(now - self._tick_at, now)  # not the gateway's silence (module doc)
        upkeep = proto.keepalive(now)
        if upkeep is Upkeep.SILENT:
            silence = proto.silence(now)
            logger.warning("gateway %s silent for %.1f s, dropping the link", self.address, silence)
            self.abort(f"silent for more than {proto.link_timeout:g} s")
            return
        if upkeep is Upkeep.PING:
            self.flush()
            self._transport.write(proto.ping())
        self._schedule_tick()

    def _set_closed(self) -> None:
        if self._state is _CLOSED:
            return
        self._state = _CLOSED
        self._halted = True
        self._kept = []
        reason = self.close_reason or "closed"
        if self._timer is not None:
            self._timer.cancel()
        self._out.clear()
        self._out_bytes = 0
        self._fail_welcome(LinkError(f"gateway {self.address} closed the link: {reason}"))
        for future, _ in self._proto.close():
            if not future.done():
                future.set_exception(
                    LinkClosed(f"link to gateway {self.gateway_address} closed: {reason}")
                )
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)  # the next send raises LinkClosed
        self._paused = False
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        if self._on_close is not None:
            try:
                self._on_close(self)
            except Exception:
                logger.exception("close callback failed for %s", self.address)


_REACTIONS: dict[type, Callable[[GatewayLink, Any], None]] = {
    Welcomed: GatewayLink._on_welcomed,
    Refused: GatewayLink._on_refused,
    Failed: GatewayLink._on_failed,
    Notice: GatewayLink._on_notice,
    Replied: GatewayLink._on_replied,
    Answer: GatewayLink._on_answer,
    LeaveAcked: GatewayLink._on_leave_acked,
    RoutesUpdated: GatewayLink._on_routes,
}
"""What to do with each event of the protocol object."""
