"""The internal port's asyncio glue: one :class:`InternalLink` per business worker or
push client connection.

How this works
--------------
An :class:`InternalLink` is a thin ``asyncio.Protocol``: it hands what it reads to
the core (``GatewayCore.link_data``), which decodes and handles it in bounded
batches and pauses the link's reading (:meth:`~InternalLink.pause_reading`) while
some of it waits for a later loop turn (``gateway.pacing``). It is
the link's :class:`~gateway.records.LinkWriter`: :meth:`~InternalLink.send` queues
and one write at the end of the loop turn carries everything queued (events of many
clients in one syscall). The handshake, dispatch, keep-alive decisions and routing
are the core's (with the link's protocol object, ``gateway.linkproto.LinkServer``);
this module only moves bytes and notes when they moved (``link.proto.last_recv`` and
``last_send``, which the keep-alive rule reads).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from typing import cast

from pygatewayworker.gateway.core import GatewayCore
from pygatewayworker.gateway.records import Link

__all__ = ["InternalLink"]

log = logging.getLogger("gateway")

_monotonic = time.monotonic
_TCP_INFO_SIZE = 104
_LAST_ACK_RECV = struct.Struct("=I")
"""``tcpi_last_ack_recv`` (ms), at offset 56 of Linux's ``struct tcp_info``."""
_UNACKED = struct.Struct("=I")
"""``tcpi_unacked`` (segments in flight), at offset 24; byte 2 is
``tcpi_retransmits``."""


def _peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return ":0"


class InternalLink(asyncio.Protocol):
    """One business worker or push client connected to the internal port."""

    __slots__ = ("core", "loop", "transport", "link", "_out", "_writable")

    def __init__(self, core: GatewayCore, loop: asyncio.AbstractEventLoop) -> None:
        self.core = core
        self.loop = loop
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.link = Link(self, now=_monotonic())
        self._out: list[bytes] = []
        self._writable = True  # False once closed, rejected or lost

    def __repr__(self) -> str:
        return repr(self.link)

    # ---- asyncio callbacks -----------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.link.peer = _peer(transport)
        self.core.link_opened(self.link)

    def data_received(self, data: bytes) -> None:
        link = self.link
        if link.rejected:
            return  # discard until the peer closes (see reject)
        link.proto.last_recv = _monotonic()
        self.core.link_data(link, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._writable = False
        self._out.clear()
        self.core.link_closed(self.link)

    def pause_writing(self) -> None:
        log.warning("%r: its send buffer is full; it is not reading fast enough", self.link)

    def resume_writing(self) -> None:
        log.info("%r: its send buffer drained", self.link)

    # ---- LinkWriter (the core's calls) --------------------------------------------
    def send(self, packet: bytes) -> None:
        """Queue one encoded packet; it is written at the end of this loop turn."""
        if not self._writable:
            return
        out = self._out
        if not out:
            self.loop.call_soon(self.flush)
        out.append(packet)

    def flush(self) -> None:
        """Write everything queued in one call."""
        out = self._out
        if not out or not self._writable:
            return
        self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()
        self.link.proto.last_send = _monotonic()

    def reject(self) -> None:
        """Flush (the ERROR), half-close and discard input until the peer closes."""
        self.flush()
        self._writable = False
        if self.transport.can_write_eof():
            self.transport.write_eof()
        else:
            self.transport.close()

    def close(self) -> None:
        """Flush, then close the link."""
        self.flush()
        self._writable = False
        self.transport.close()

    def abort(self) -> None:
        """Drop the link now."""
        self.transport.abort()

    def pause_reading(self) -> None:
        """Stop reading while the core has this link's input waiting."""
        if not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        """Read again: the core handled the input it had."""
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def peer_acked(self, within: float) -> bool:
        """From ``TCP_INFO`` (Linux): the time since the last ACK from the peer's
        kernel, which answers our keep-alive pings even while the process is stopped
        or its loop blocked, and not when its host vanished; and whether data of
        ours is being retransmitted unanswered (then the host is gone)."""
        sock = self.transport.get_extra_info("socket")
        option = getattr(socket, "TCP_INFO", None)
        if sock is None or option is None:
            return False
        try:
            info = sock.getsockopt(socket.IPPROTO_TCP, option, _TCP_INFO_SIZE)
        except (OSError, AttributeError):
            return False
        if len(info) < _TCP_INFO_SIZE:
            return False
        if info[2] and _UNACKED.unpack_from(info, 24)[0]:
            # tcpi_retransmits: data of ours is unanswered past a retransmission
            # timeout (200 ms at least, and we ping a silent peer every keep-alive
            # interval): its host is gone, however recent its last ACK (a data
            # packet sent after the peer's own last one is acknowledged later)
            return False
        (last_ack_recv_ms,) = _LAST_ACK_RECV.unpack_from(info, 56)
        return bool(last_ack_recv_ms <= within * 1000)
