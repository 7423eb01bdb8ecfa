"""PHP GatewayClient links on the internal port: the asyncio glue.

How this works
--------------
Every connection to a gateway's internal port starts with a :class:`LinkSniffer`.
It creates our usual :class:`~gateway.links.InternalLink` at once (so the link's
hello timeout runs as always, in the core) and looks at the first bytes
(:func:`~gateway.gatewayprotocol.sniff`): a msgpack link gets the transport handed
to its ``InternalLink`` (``transport.set_protocol``: the sniffer is out of the path
from then on); a PHP link ends that ``InternalLink`` quietly (it never linked) and
gets a :class:`PhpLink` instead.

A :class:`PhpLink` decodes GatewayProtocol packets, translates each with
``gateway.phpcommands.translate`` and carries the result out on the gateway:
internal command packets go to the core's ``cmd_*`` handlers, queries to its
``query_*`` handlers (:class:`PhpLinks` is the one place that touches the gateway),
and replies are written back at once.

Secrets: with ``Gateway(secret=...)`` a link must start with a correct
``GATEWAY_CLIENT_CONNECT`` (GatewayClient sends it before every call when
``Gateway::$secretKey`` is set). A wrong or missing key is logged once per link;
the queries that came with it get an error reply, and the link is closed.

Errors: garbage, oversized packets and links that stop in the middle of a packet
close that link only, with one (rate-limited) log line. A command we do not support,
or cannot carry out, is logged with its name; queries then get an error reply that
GatewayClient reports (``unserialize()`` fails loudly), never an empty-looking
answer. Unsupported commands also close the link.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable
from typing import Any, cast

from pygatewayworker.gateway.commands import Frames, coalesce
from pygatewayworker.gateway.gatewayprotocol import (
    LINK_PHP,
    QUERIES,
    GatewayProtocolError,
    PacketDecoder,
    PhpCmd,
    PhpPacket,
    encode_error_reply,
    encode_reply,
    sniff,
)
from pygatewayworker.gateway.links import InternalLink
from pygatewayworker.gateway.phpcommands import (
    Answer,
    Authenticate,
    CommandError,
    Execute,
    RawFrames,
    translate,
)
from pygatewayworker.gateway.protocol import DEFAULT_MAX_PACKET, Cmd, ProtocolError
from pygatewayworker.gateway.records import Link
from pygatewayworker.runtime.ratelog import RateLimitedLog

__all__ = ["LinkSniffer", "PhpLink", "PhpLinks", "STALL_TIMEOUT"]

log = logging.getLogger("gateway")

STALL_TIMEOUT = 10.0
"""Seconds a PHP link may stay in the middle of a packet before it is closed."""

_FAILURES = (ValueError, TypeError, KeyError, ProtocolError)
"""What the gateway's handlers raise for an argument they refuse."""


class PhpLinks:
    """The PHP links of one gateway process, and their narrow access to the gateway:
    its ``secret``, its command and query handlers by :class:`Cmd` (``cmd_*(link,
    packet)`` and ``query_*(*args)``), and a factory of its own internal links."""

    def __init__(
        self,
        secret: str,
        commands: dict[Cmd, Callable[[Link, list[Any]], None]],
        queries: dict[Cmd, Callable[..., Any]],
        internal_link: Callable[[], InternalLink],
        max_packet: int = DEFAULT_MAX_PACKET,
    ) -> None:
        self.secret = secret
        self.commands = commands
        self.queries = queries
        self.internal_link = internal_link
        self.max_packet = max_packet
        self.links: set[PhpLink] = set()
        self.log = RateLimitedLog()

    def accept(self) -> asyncio.Protocol:
        """The protocol factory of the internal port."""
        return LinkSniffer(self, self.internal_link())

    def close_all(self) -> None:
        """Close every PHP link (the gateway is stopping)."""
        for link in list(self.links):
            link.close()

    def execute(self, link: PhpLink, packet: list[Any]) -> None:
        """Execute one internal command packet, as from a push client."""
        self.commands[packet[0]](cast(Any, link), packet)

    def ask(self, cmd: Cmd, *args: Any) -> Any:
        """The result of one internal query (the arguments after ``req``)."""
        return self.queries[cmd](*args)


class LinkSniffer(asyncio.Protocol):
    """A new internal connection until its first bytes tell what it speaks."""

    __slots__ = ("php", "internal", "transport", "head")

    def __init__(self, php: PhpLinks, internal: InternalLink) -> None:
        self.php = php
        self.internal = internal
        self.transport: asyncio.Transport | None = None
        self.head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.internal.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        head = self.head + data if self.head else data
        kind = sniff(head, self.php.max_packet)
        if kind is None:
            self.head = head
            return
        transport = self.transport
        assert transport is not None
        link = self.internal.link
        if kind == LINK_PHP and not link.rejected and not link.closed:
            php = PhpLink(self.php, link.peer)
            self.internal.connection_lost(None)  # it never linked: ends quietly
            transport.set_protocol(php)
            php.connection_made(transport)
            php.data_received(head)
        else:
            transport.set_protocol(self.internal)
            self.internal.data_received(head)

    def connection_lost(self, exc: Exception | None) -> None:
        self.internal.connection_lost(exc)

    def pause_writing(self) -> None:
        self.internal.pause_writing()

    def resume_writing(self) -> None:
        self.internal.resume_writing()


class PhpLink(asyncio.Protocol):
    """One connection from PHP's GatewayClient."""

    __slots__ = (
        "php",
        "transport",
        "decoder",
        "peer",
        "authorized",
        "refused",
        "closed",
        "stall",
        "run",
    )

    def __init__(self, php: PhpLinks, peer: str) -> None:
        self.php = php
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.decoder = PacketDecoder(php.max_packet)
        self.peer = peer
        self.authorized = not php.secret
        self.refused = ""  # why this link is refused (it closes after this read)
        self.closed = False
        self.stall: asyncio.TimerHandle | None = None
        self.run: list[tuple[str, list[Any]]] = []
        """Internal commands read but not yet executed: (GatewayClient command, packet)."""

    def __repr__(self) -> str:
        return f"<PHP GatewayClient link from {self.peer}>"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.php.links.add(self)
        log.debug("%r opened", self)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            packets = self.decoder.feed(data)
        except GatewayProtocolError as exc:
            self.php.log(logging.WARNING, "%r: %s; closing the link", self, exc)
            self.close()
            return
        for packet in packets:
            self.on_packet(packet)
            if self.closed:
                break
        self.flush()
        if self.refused:
            self.close()
        elif not self.closed:
            self._watch_stall()

    def connection_lost(self, exc: Exception | None) -> None:
        closed_by_us, self.closed = self.closed, True
        self.php.links.discard(self)
        if self.stall is not None:
            self.stall.cancel()
        if self.decoder.buffered and not closed_by_us:
            self.php.log(
                logging.WARNING,
                "%r closed in the middle of a packet (%d of %s bytes)",
                self,
                self.decoder.buffered,
                self.decoder.expected or "?",
            )

    def close(self) -> None:
        """Flush the replies and close."""
        if not self.closed:
            self.closed = True
            self.transport.close()

    def _watch_stall(self) -> None:
        if self.decoder.buffered and self.stall is None:
            self.stall = asyncio.get_running_loop().call_later(STALL_TIMEOUT, self._stalled)
        elif not self.decoder.buffered and self.stall is not None:
            self.stall.cancel()
            self.stall = None

    def _stalled(self) -> None:
        self.php.log(
            logging.WARNING,
            "%r stopped in the middle of a packet (%d of %s bytes) for %g s; closing it",
            self,
            self.decoder.buffered,
            self.decoder.expected or "?",
            STALL_TIMEOUT,
        )
        self.closed = True
        self.transport.abort()

    # ---- one packet -------------------------------------------------------------------
    def on_packet(self, packet: PhpPacket) -> None:
        """Carry out one GatewayClient packet."""
        if not self.refused and not self.authorized and packet.cmd != PhpCmd.GATEWAY_CLIENT_CONNECT:
            self.refuse(
                f"{packet.name} without GATEWAY_CLIENT_CONNECT: this gateway has a "
                "secret; set Gateway::$secretKey"
            )
        if self.refused:
            if packet.cmd in QUERIES:
                self.reply_error(packet, self.refused)
            return
        try:
            action = translate(packet)
        except CommandError as exc:
            self.php.log(logging.WARNING, "%r: %s", self, exc)
            if exc.unsupported:
                self.refused = str(exc)
            if exc.unsupported or packet.cmd in QUERIES:
                self.reply_error(packet, str(exc))
            return
        except _FAILURES as exc:  # e.g. a session too large to store (PacketTooLarge)
            self.php.log(logging.WARNING, "%r: %s failed: %s", self, packet.name, exc)
            if packet.cmd in QUERIES:
                self.reply_error(packet, f"{packet.name} failed: {exc}")
            return
        if isinstance(action, Execute):
            for internal in action.packets:
                if action.raw:
                    internal = [_frames(f) if type(f) is RawFrames else f for f in internal]
                self.run.append((packet.name, internal))
            return
        self.flush()  # what came before a query is done before it is answered
        if isinstance(action, Answer):
            self.answer(packet, action)
        elif isinstance(action, Authenticate):
            self.authenticate(action.secret)

    def flush(self) -> None:
        """Execute the internal commands read so far, in order. Consecutive
        broadcasts to the same recipients are merged as on our own links
        (``gateway.commands.coalesce``): one write per recipient for the run."""
        run, self.run = self.run, []
        if not run:
            return
        names = {id(internal): name for name, internal in run}
        internals = [internal for _, internal in run]
        for internal in coalesce(internals) if len(internals) > 1 else internals:
            try:
                self.php.execute(self, internal)
            except _FAILURES as exc:
                name = names.get(id(internal)) or f"merged {internal[0].name}"
                self.php.log(logging.WARNING, "%r: %s failed: %s", self, name, exc)

    def answer(self, packet: PhpPacket, action: Answer) -> None:
        try:
            reply = encode_reply(action.compute(self.php.ask))
        except (CommandError, *_FAILURES) as exc:
            self.php.log(logging.WARNING, "%r: %s failed: %s", self, packet.name, exc)
            self.reply_error(packet, f"{packet.name} failed: {exc}")
            return
        self.transport.write(reply)

    def authenticate(self, secret: str) -> None:
        if hmac.compare_digest(secret.encode(), self.php.secret.encode()):
            self.authorized = True
        else:
            self.refuse("wrong secret key (Gateway::$secretKey)")

    def refuse(self, reason: str) -> None:
        """Refuse this link: answer the queries read with it, then close it."""
        self.php.log(logging.WARNING, "%r: %s; closing the link", self, reason)
        self.refused = reason

    def reply_error(self, packet: PhpPacket, message: str) -> None:
        self.transport.write(encode_error_reply(message))


def _frames(raw: RawFrames) -> Frames:
    frames = Frames(raw)
    frames.messages = raw.frames
    return frames
