"""The shipped chat app's protocol (``apps/chat``) for the load generator's clients.

A generator connected with ``protocol="chat"`` (``loadgen.Generator.op_connect``)
hands every JSON frame (first byte ``{``) to :class:`ChatProtocol`, which behaves like
the chat page (``apps/chat/web/index.html``):

- on the WebSocket handshake it logs in to its OWN room (``r<index>``, as the client
  index is unique over the generators), so a ``say`` to ``"all"`` comes back to the
  sender only: one round trip through the worker's ``async on_message``;
- the ``login`` reply (the one with the member list) makes the client ready;
- the heartbeat ``{"type":"ping"}`` is answered the way the page does, with a
  ``{"type":"pong"}`` text message (which the worker handles like any request);
- a ``say`` reply is timed: the request's ``content`` is ``E<19-digit monotonic ns>``
  (:data:`SAY_PREFIX` + that + :data:`SAY_SUFFIX`, sent by ``op_echo``), which the
  app copies, HTML-escaped (digits and letters are unchanged), into the reply;
- ``init`` needs no answer, except with ``protocol="chat-connect"``
  (``ChatProtocol(login=False)``, M3's chat series): there the client does not log
  in, and ``init`` makes it ready (a plain connect: handshake plus the worker's
  ``on_connect`` and its ``init`` send); with ``protocol="chat-upgrade"``
  (``ChatProtocol(login=False, ready_on_upgrade=True)``, ``python -m bench
  php-compare``'s connects) the client is ready at its ``101``, as the PHP original's
  chat sends nothing on connect; anything else (an ``error``...) is counted in
  ``ChatProtocol.other`` and kept as the generator's ``last_error``.

The server's JSON is compact with ``type`` first (``apps/chat/Events.py``'s
``dumps``), so messages are told apart by a prefix test, and the timestamp is found
with one ``bytes.find``: nothing is JSON-decoded on the hot path.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from bench.loadgen import client_frame

if TYPE_CHECKING:
    from bench.loadgen import Client

__all__ = ["ChatProtocol", "SAY_PREFIX", "SAY_SUFFIX"]

SAY_PREFIX = b'{"type":"say","to_client_id":"all","content":"'
SAY_SUFFIX = b'"}'
_SAY = b'{"type":"say"'
_CONTENT = b'"content":"E'
_PING = b'{"type":"ping"'
_LOGIN = b'{"type":"login"'
_INIT = b'{"type":"init"'
_now_ns = time.monotonic_ns
_PONG_TEXT = client_frame(b'{"type":"pong"}')


class ChatProtocol:
    """The chat page's side of the conversation, for every client of a generator."""

    __slots__ = ("other", "login", "ready_on_upgrade")

    def __init__(self, login: bool = True, ready_on_upgrade: bool = False) -> None:
        self.other = 0
        self.login = login
        """Log in on the handshake (else the client is ready on ``init``)."""
        self.ready_on_upgrade = ready_on_upgrade
        """Without ``login``: the client is ready at its ``101`` (not on ``init``)."""

    def opened(self, client: Client) -> None:
        """The handshake is done: log in to the client's own room (if ``login``),
        or be ready now (if ``ready_on_upgrade``)."""
        if not self.login:
            if self.ready_on_upgrade:
                client.ready = True
                client.gen.on_ready(client)
            return
        login = {"type": "login", "client_name": f"c{client.index}", "room_id": f"r{client.index}"}
        client.transport.write(client_frame(json.dumps(login, separators=(",", ":")).encode()))

    def received(self, client: Client, data: bytes, start: int, end: int) -> None:
        """One JSON text frame, ``data[start:end]``."""
        gen = client.gen
        if data.startswith(_SAY, start, end):
            at = data.find(_CONTENT, start, end)
            if at >= 0:
                at += len(_CONTENT)
                stamp = data[at : at + 19]
                if len(stamp) == 19 and stamp.isdigit():
                    now = _now_ns()
                    gen.lat.append((now - int(stamp)) // 1000)
                    gen.echo_recv += 1
                    gen.last_ns = now
                    return
        elif data.startswith(_PING, start, end):
            client.transport.write(_PONG_TEXT)
            return
        elif data.startswith(_LOGIN, start, end):
            if not client.ready:
                client.ready = True
                gen.on_ready(client)
            return
        elif data.startswith(_INIT, start, end):
            if not self.login and not client.ready:
                client.ready = True
                gen.on_ready(client)
            return
        self.other += 1
        gen.last_error = data[start : min(end, start + 200)].decode("utf-8", "replace")
