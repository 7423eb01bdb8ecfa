"""The gateway's periodic sweeps: client heartbeat and housekeeping.

How this works
--------------
A gateway has no per-connection tasks or timers. Two tasks, started by
``GatewayServer.start`` and cancelled by ``stop``, walk the shared tables instead:

- the **heartbeat** (when ``ping_interval`` > 0) counts every open client's silent
  intervals, sends ``ping_data`` (if set) to those silent for a whole interval and
  drops those silent for more than ``ping_not_response_limit`` intervals (if set).
  It runs in :data:`HEARTBEAT_SLICES`
  steps per interval so that a large gateway never writes all its pings at once.
- the **housekeeping** tick (about a second, shorter for tight link timings) drops
  clients that did not finish their HTTP handshake or their close in time, expires
  held events, and looks after the internal links (``HELLO`` deadline, keep-alive
  pings, dropping silent links: ``LinkHandling._link_upkeep``).

The deadline tables (``_handshaking``, ``_closing``) are dicts in insertion order
with one fixed timeout each, so deadlines are in order too and a sweep stops at the
first one still in the future. :class:`Sweeps` holds these methods and is mixed into
``GatewayServer``; ``sweep_heartbeat`` and ``sweep_housekeeping`` are plain calls,
which tests drive without waiting for the tasks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from pygatewayworker.gateway.config import Gateway
from pygatewayworker.gateway.connection import S_OPEN, ClientConnection
from pygatewayworker.gateway.directory import Directory

__all__ = ["HEARTBEAT_SLICES", "Sweeps"]

log = logging.getLogger("gateway")

_monotonic = time.monotonic

HEARTBEAT_SLICES = 10
"""The heartbeat sweeps a tenth of the clients every tenth of ``ping_interval``."""


class Sweeps:
    """The heartbeat and housekeeping sweeps; mixed into ``GatewayServer`` (which
    sets the attributes declared here in its ``__init__``)."""

    config: Gateway
    directory: Directory[ClientConnection]
    _ping_frame: bytes
    _handshaking: dict[ClientConnection, float]  # accept order
    _closing: dict[ClientConnection, float]  # close order

    if TYPE_CHECKING:  # provided by GatewayServer and LinkHandling

        def count_out(self, messages: int, size: int) -> None: ...
        def _expire_pending(self, now: float) -> None: ...
        def _link_upkeep(self, now: float) -> None: ...

    # ---- heartbeat --------------------------------------------------------------
    async def _heartbeat(self) -> None:
        """Ping clients silent for a whole ``ping_interval``, drop those silent for
        more than ``ping_not_response_limit`` intervals.

        Each client is swept once per interval, but not all at once: the interval is
        cut into :data:`HEARTBEAT_SLICES` steps and each step sweeps the clients
        whose ``conn_id % HEARTBEAT_SLICES`` is that step's number. A gateway with
        100k idle clients thus writes 10k pings every tenth of an interval instead of
        100k at once (about a second of stalled deliveries on a small machine), and a
        client's sweeps stay exactly one interval apart."""
        step = self.config.ping_interval / HEARTBEAT_SLICES
        part = 0
        while True:
            await asyncio.sleep(step)
            try:
                self.sweep_heartbeat(part, HEARTBEAT_SLICES)
            except Exception:  # never let one bad sweep stop the heartbeat
                log.exception("heartbeat sweep failed")
            part = (part + 1) % HEARTBEAT_SLICES

    def sweep_heartbeat(self, part: int = 0, parts: int = 1) -> None:
        """Sweep the clients whose ``conn_id % parts == part`` (default: all); see
        :meth:`_heartbeat`."""
        limit = self.config.ping_not_response_limit
        ping = self._ping_frame
        size = len(ping)
        pinged = 0
        dead: list[ClientConnection] = []
        for conn in self.directory.entries():
            if conn.state != S_OPEN or (parts > 1 and conn.conn_id % parts != part):
                continue
            silent = conn.silent + 1
            conn.silent = silent
            if silent <= 0:
                continue
            if limit and silent > limit:
                dead.append(conn)
            elif size:
                conn.transport.write(ping)
                conn.bytes_out += size
                pinged += 1
        self.count_out(pinged, size)
        for conn in dead:
            conn.close_reason = conn.close_reason or "heartbeat_timeout"  # metrics
            conn.abort()
        if dead:
            log.info("closed %d clients silent for more than %d ping intervals", len(dead), limit)

    # ---- housekeeping -----------------------------------------------------------
    async def _housekeeping(self) -> None:
        cfg = self.config
        tick = max(0.02, min(1.0, cfg.keepalive_interval / 2, cfg.link_timeout / 4))
        while True:
            await asyncio.sleep(tick)
            try:
                self.sweep_housekeeping(_monotonic())
            except Exception:
                log.exception("housekeeping sweep failed")

    def sweep_housekeeping(self, now: float) -> None:
        """Deadlines of handshakes and closes, link keep-alives, held events."""
        self._expire_pending(now)
        for table, closer in ((self._handshaking, _abort), (self._closing, _finish_close)):
            expired = []
            for conn, deadline in table.items():
                if deadline > now:
                    break
                expired.append(conn)
            for conn in expired:
                del table[conn]
                closer(conn)
        self._link_upkeep(now)


def _abort(conn: ClientConnection) -> None:
    conn.abort()


def _finish_close(conn: ClientConnection) -> None:
    """A closing client did not finish in time: close if flushed, else drop."""
    transport = conn.transport
    if transport.is_closing() or transport.get_write_buffer_size():
        transport.abort()
    else:
        transport.close()
