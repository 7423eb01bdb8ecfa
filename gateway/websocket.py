"""The WebSocket server connection (RFC 6455), sans I/O: bytes in, events and bytes out.

How this works
--------------
One :class:`ServerConnection` per client TCP connection. The asyncio shell
(``gateway.connection``) hands it every byte it reads (:meth:`~ServerConnection.
receive_data`), writes whatever :meth:`~ServerConnection.data_to_send` returns, and
follows :attr:`~ServerConnection.state`; this module never touches a socket, a clock
or an event loop, so its tests feed bytes and look at bytes.

``state`` walks ``CONNECTING -> OPEN -> CLOSING -> CLOSED`` (:class:`State`):

- ``CONNECTING``: the HTTP request head is collected (at most :data:`MAX_HEAD`
  bytes). A complete head gives one ``(REQUEST, Request)`` event. A WebSocket upgrade
  is validated first: an invalid one queues the ``400``/``426`` answer and ends in
  ``CLOSED`` with a ``(FAILED, (status, reason))`` event. The caller then either
  :meth:`~ServerConnection.accept`\\ s the upgrade (``101``, ``OPEN``; frames that
  arrived behind the head are parsed by the next ``receive_data`` call) or, for a
  plain HTTP request, :meth:`~ServerConnection.respond`\\ s with a whole response
  (``CLOSED``).
- ``OPEN``: frames are parsed into events, tuples ``(kind, value)``; for frames the
  kind is the opcode:

  - ``(OP_TEXT, str)`` a whole text message (fragments joined, UTF-8 checked)
  - ``(OP_BINARY, bytes)`` a whole binary message
  - ``(OP_PING, bytes)`` the pong is already queued (auto-pong)
  - ``(OP_PONG, bytes)``
  - ``(OP_CLOSE, (code, reason))`` the peer's close frame (``code`` 1005 when it
    carried none); the echo is queued and the state is ``CLOSED``: the server closes
    the TCP connection first (RFC 6455 7.1.1) once the echo is written.

  Tuples rather than objects because this is the path of every message.
- ``CLOSING``: we started the close (:meth:`~ServerConnection.close`) and wait for
  the peer's close frame, which moves us to ``CLOSED``. Data frames still arrive
  and are checked, but are dropped: we have said goodbye. How long to wait is the
  shell's decision (it owns the clocks).
- ``CLOSED``: input is discarded. The shell closes the TCP connection once the
  queued bytes are written, or only half-closes it when :attr:`~ServerConnection.
  half_close` is set (we failed the connection and the peer may still be sending:
  closing with unread input would reset the connection and could destroy our close
  frame before the peer reads it).

Failing the connection: a peer that breaks the protocol gets a close frame with the
code that says why (1002 protocol error: unmasked frame, reserved bits or opcodes,
bad fragmentation, oversized or fragmented control frame, bad close frame; 1007
invalid UTF-8 in a text message or close reason; 1009 a message over
``max_message_size``, judged from the frame header before the payload is buffered),
a ``(FAILED, (code, reason))`` event, and ``CLOSED`` with ``half_close`` set. Events
completed before the error in the same call are returned before it.

Data frames are not sent through this object: a server frame is a pure function of
``(opcode, payload)`` (``gateway.frames``), so a broadcast encodes once and writes the
same bytes to every recipient whose connection is ``OPEN``. The head is parsed by
``gateway.http11``.

Errors split as in h11: a peer that sends garbage never raises here (it gets its
answer, and a ``FAILED`` event); calling a method in a state where it makes no sense
raises :class:`InvalidState` (a bug in the caller). There are no extensions (no
permessage-deflate) and no subprotocols.
"""

from __future__ import annotations

import codecs
import struct
from enum import IntEnum
from typing import Any

from pygatewayworker.gateway.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    apply_mask,
    close_frame,
    encode_frame,
    parse_close_payload,
)
from pygatewayworker.gateway.http11 import (
    MAX_HEAD,
    Request,
    accept_response,
    check_upgrade,
    http_response,
    parse_request_head,
)

__all__ = [
    "REQUEST",
    "FAILED",
    "State",
    "Event",
    "InvalidState",
    "ServerConnection",
]

REQUEST = 0x10
"""Event kind: the HTTP request head is complete; the value is a
:class:`~gateway.http11.Request`."""
FAILED = 0x11
"""Event kind: the peer broke the protocol; the value is ``(code, reason)``, a close
code or (during the handshake) an HTTP status. The answer is queued; ``CLOSED``."""

Event = tuple[int, Any]
"""``(kind, value)``: see the module docstring. For frames the kind is the opcode
(``gateway.frames.OP_*``)."""


class State(IntEnum):
    """The state of a client connection, from its first byte to its last."""

    CONNECTING = 0
    """Reading the HTTP request head."""
    OPEN = 1
    """The WebSocket is open: messages flow both ways."""
    CLOSING = 2
    """We sent a close frame and wait for the peer's."""
    CLOSED = 3
    """Nothing more is read or sent: the TCP connection is (being) closed."""


CONNECTING, OPEN, CLOSING, CLOSED = State

_H = struct.Struct("!H")
_Q = struct.Struct("!Q")
_FIN_BINARY = 0x80 | OP_BINARY
_utf8_decoder = codecs.getincrementaldecoder("utf-8")


class InvalidState(Exception):
    """A method was called in a state where it makes no sense (a bug in the caller,
    never the peer's doing)."""


class _Fail(Exception):
    """Internal: the peer broke the protocol; fail with ``code`` (an HTTP status
    during the handshake, a close code after it)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


class ServerConnection:
    """The protocol state of one client connection (see the module docstring).

    ``max_message_size`` bounds a whole message (fragments included); ``max_head``
    bounds the HTTP request head.
    """

    __slots__ = ("state", "half_close", "_max", "_head_limit", "_buf", "_out", "_frag")

    def __init__(self, max_message_size: int, max_head: int = MAX_HEAD) -> None:
        self.state = CONNECTING
        self.half_close = False
        """Set when we failed the connection: half-close the TCP connection rather
        than close it (see the module docstring)."""
        self._max = max_message_size
        self._head_limit = max_head  # 0 once the head is read
        self._buf: bytearray | None = bytearray()  # the head, then an incomplete frame
        self._out = b""  # bytes for the peer, until data_to_send()
        self._frag: _Fragments | None = None  # the fragmented message in progress

    @property
    def buffered(self) -> int:
        """Bytes held: an incomplete head or frame, plus fragments of an unfinished
        message."""
        return (len(self._buf) if self._buf else 0) + (self._frag.size if self._frag else 0)

    def data_to_send(self) -> bytes:
        """Every byte queued for the peer since the last call (``b""``: none)."""
        out = self._out
        self._out = b""
        return out

    # ---- input ------------------------------------------------------------------
    def receive_data(self, data: bytes) -> list[Event]:
        """Add ``data`` from the peer; return the events it completes, in order."""
        state = self.state
        if state is OPEN or state is CLOSING:
            return self._receive_frames(data)
        if state is CONNECTING:
            return self._receive_head(data)
        return []  # CLOSED: discard

    def _receive_head(self, data: bytes) -> list[Event]:
        buf = self._buf
        limit = self._head_limit
        if not limit or buf is None:
            raise InvalidState("answer the REQUEST (accept or respond) before more data")
        start = max(0, len(buf) - 3)  # "\r\n\r\n" may straddle two chunks
        buf += data
        end = buf.find(b"\r\n\r\n", start)
        if end < 0:  # refuse an endless head without waiting for its end
            if len(buf) > limit:
                return [self._refuse(431, "request head too large")]
            if buf.find(b"\n\n", max(0, start - 1)) >= 0:  # never inside CRLF lines
                return [self._refuse(400, "request head lines must end with CRLF")]
            return []
        if end + 4 > limit:
            return [self._refuse(431, "request head too large")]
        head = bytes(buf[:end])
        # what follows the head waits for the frame parser; no buffer is kept for
        # the (many) clients that send nothing after their handshake
        self._buf = bytearray(buf[end + 4 :]) if len(buf) > end + 4 else None
        self._head_limit = 0  # the head is done: the next step is the caller's
        try:
            request = parse_request_head(head)
        except ValueError as exc:
            return [self._refuse(400, str(exc))]
        if request.wants_upgrade:
            try:
                check_upgrade(request)
            except ValueError as exc:
                status, reason = exc.args
                return [self._refuse(status, reason)]
        return [(REQUEST, request)]

    def _refuse(self, status: int, reason: str) -> Event:
        """Answer a bad request head with ``status`` and end."""
        headers = (("Sec-WebSocket-Version", "13"),) if status == 426 else ()
        self._out += http_response(status, reason.encode() + b"\n", headers=headers)
        self._end()
        return FAILED, (status, reason)

    def _receive_frames(self, data: bytes) -> list[Event]:
        buf = self._buf
        if buf:
            buf += data
            view: bytes | bytearray = buf
        else:
            view = data
        events: list[Event] = []
        closing = self.state is CLOSING
        try:
            pos = self._parse(view, events)
        except _Fail as exc:
            events.append(self.fail(exc.code, exc.reason))
            pos = -1
        if closing:  # we said goodbye: data is still checked, but dropped
            events = [event for event in events if event[0] > OP_BINARY]
        if self.state is CLOSED or pos < 0:
            return events
        if pos >= len(view):
            self._buf = None
        elif view is buf:
            del buf[:pos]
        else:
            self._buf = bytearray(view[pos:])
        return events

    def _parse(self, buf: bytes | bytearray, events: list[Event]) -> int:
        """Parse whole frames from ``buf`` into ``events``; return the offset of the
        first byte not consumed. The common frame (final, unfragmented text or
        binary, within the size limit) takes the straight path."""
        pos = 0
        size = len(buf)
        while size - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            head = pos + 2
            if length >= 126:
                if length == 126:
                    if size - pos < 4:
                        break
                    (length,) = _H.unpack_from(buf, head)
                    head += 2
                else:
                    if size - pos < 10:
                        break
                    (length,) = _Q.unpack_from(buf, head)
                    head += 8
                    if length >> 63:  # RFC 6455 5.2: the most significant bit must be 0
                        raise _Fail(1002, "64-bit frame length with the top bit set")
            plain = b0 in (0x81, 0x82) and b1 & 0x80 and not self._frag  # FIN + text/binary
            if not plain or length > self._max:
                self._check_header(b0, b1, length)
            end = head + 4 + length
            if end > size:
                break
            mask = bytes(buf[head : head + 4])
            payload = apply_mask(memoryview(buf)[head + 4 : end], mask) if length else b""
            pos = end
            if plain:
                if b0 == _FIN_BINARY:
                    events.append((OP_BINARY, payload))
                    continue
                try:
                    events.append((OP_TEXT, payload.decode("utf-8")))
                except UnicodeDecodeError:
                    raise _Fail(1007, "invalid UTF-8 in a text message") from None
                continue
            event = self._frame(b0 & 0x80, b0 & 0x0F, payload)
            if event is not None:
                events.append(event)
                if event[0] == OP_CLOSE:
                    break  # nothing is read after a close frame
        return pos

    def _check_header(self, b0: int, b1: int, length: int) -> None:
        """Reject a frame from its header alone (before its payload arrives)."""
        opcode = b0 & 0x0F
        if b0 & 0x70:
            raise _Fail(1002, "reserved bits set (no extension was negotiated)")
        if not b1 & 0x80:
            raise _Fail(1002, "client frames must be masked")
        if opcode >= 8:
            if opcode > OP_PONG:
                raise _Fail(1002, f"reserved opcode {opcode:#x}")
            if not b0 & 0x80:
                raise _Fail(1002, "fragmented control frame")
            if length > 125:
                raise _Fail(1002, "control frame payload over 125 bytes")
            return
        if opcode > OP_BINARY:
            raise _Fail(1002, f"reserved opcode {opcode:#x}")
        frag = self._frag
        if opcode == OP_CONT:
            if frag is None:
                raise _Fail(1002, "continuation frame without a message to continue")
        elif frag is not None:
            raise _Fail(1002, "new message before the fragmented one finished")
        if (frag.size if frag else 0) + length > self._max:
            raise _Fail(1009, f"message larger than {self._max} bytes")

    def _frame(self, fin: int, opcode: int, payload: bytes) -> Event | None:
        """Act on one complete, checked frame other than the plain one; return its
        event, or ``None`` in the middle of a fragmented message."""
        if opcode == OP_PING:
            self._out += encode_frame(OP_PONG, payload)
            return OP_PING, payload
        if opcode == OP_PONG:
            return OP_PONG, payload
        if opcode == OP_CLOSE:
            return self._peer_closed(payload)
        frag = self._frag
        if frag is None:  # the first fragment of a message
            frag = self._frag = _Fragments(opcode)
        if not frag.add(payload, fin):
            return None
        self._frag = None
        return frag.message()

    def _peer_closed(self, payload: bytes) -> Event:
        try:
            code, reason = parse_close_payload(payload)
        except ValueError as exc:
            raise _Fail(*exc.args) from None
        if self.state is OPEN:  # the peer started: echo its code, then we are done
            self._out += close_frame(code)
        self._end()
        return OP_CLOSE, (code, reason)

    # ---- the caller's decisions -------------------------------------------------
    def accept(self, request: Request) -> None:
        """Accept the WebSocket upgrade ``request`` (a ``REQUEST`` event whose
        ``wants_upgrade`` is true, already validated): queue the ``101`` answer and
        open. Bytes that followed the head are parsed by the next
        :meth:`receive_data` call (``receive_data(b"")`` parses them at once)."""
        if self.state is not CONNECTING:
            raise InvalidState(f"accept() in state {self.state.name}")
        if not request.wants_upgrade:
            raise InvalidState("accept() of a request that does not ask for a WebSocket")
        # receive_data validated it (check_upgrade), once: this runs for every client
        self._out += accept_response(request.headers["sec-websocket-key"].strip())
        self.state = OPEN

    def respond(self, response: bytes) -> None:
        """Answer a plain HTTP request (a ``REQUEST`` event that does not ask for a
        WebSocket) with a whole ``response`` and end."""
        if self.state is not CONNECTING:
            raise InvalidState(f"respond() in state {self.state.name}")
        self._out += response
        self._end()

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake: queue a close frame and wait for the peer's
        (``CLOSING``). Does nothing unless ``OPEN`` (closing twice is harmless)."""
        if self.state is not OPEN:
            return
        self._out += close_frame(code, reason)
        self.state = CLOSING

    def fail(self, code: int, reason: str) -> Event:
        """Fail the connection (RFC 6455 7.1.7): queue a close frame with ``code``
        unless ours is already out, and end with ``half_close``. Returns the
        ``FAILED`` event (the parser calls this for a peer's protocol error)."""
        if self.state is OPEN:
            self._out += close_frame(code, reason)
            self.half_close = True
        elif self.state is CONNECTING:
            raise InvalidState("fail() before the handshake; answer with respond()")
        self._end()
        return FAILED, (code, reason)

    def connection_lost(self) -> None:
        """The TCP connection is gone."""
        self._end()

    def _end(self) -> None:
        self.state = CLOSED
        self._buf = None
        self._frag = None


class _Fragments:
    """The fragments of one message so far. A text message is decoded fragment by
    fragment, so invalid UTF-8 fails at the fragment that carries it (not when the
    message ends)."""

    __slots__ = ("opcode", "parts", "size", "decoder")

    def __init__(self, opcode: int) -> None:
        self.opcode = opcode
        self.parts: list[Any] = []  # str pieces for text, bytes for binary
        self.size = 0
        self.decoder = _utf8_decoder() if opcode == OP_TEXT else None

    def add(self, payload: bytes, fin: int) -> bool:
        """Add a fragment; True when it was the last one."""
        self.size += len(payload)
        if self.decoder is None:
            self.parts.append(payload)
        else:
            try:
                self.parts.append(self.decoder.decode(payload, bool(fin)))
            except UnicodeDecodeError:
                raise _Fail(1007, "invalid UTF-8 in a text message") from None
        return bool(fin)

    def message(self) -> Event:
        """The whole message, once :meth:`add` returned True."""
        if self.decoder is not None:
            return OP_TEXT, "".join(self.parts)
        return OP_BINARY, b"".join(self.parts)
