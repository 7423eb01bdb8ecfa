"""Say so, once per interval, when a gateway process runs out of file descriptors.

At its ``RLIMIT_NOFILE`` a process cannot accept: new connections wait in the
listen backlog and nothing else happens. asyncio reports the failed ``accept`` to
the loop's exception handler (over and over); uvloop reports nothing at all. So
:class:`FdWatch` does both: it takes the loop's reports of that one kind
(:meth:`FdWatch.exception_handler`; every other report goes on to the default
handler) and it counts the open descriptors every :data:`CHECK_INTERVAL` seconds
(:meth:`FdWatch.check`, from the server's housekeeping). Either way at most one
WARNING per :data:`LOG_INTERVAL`, with the limit and the current count.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
from typing import Any

__all__ = ["FdWatch", "CHECK_INTERVAL", "LOG_INTERVAL", "RESERVE", "NEAR"]

log = logging.getLogger("gateway")

CHECK_INTERVAL = 5.0
"""Seconds between two counts of the open descriptors."""
LOG_INTERVAL = 60.0
"""At most one warning per this many seconds."""
RESERVE = 8
"""Descriptors under the limit that already count as reaching it (a few are needed
for links, the stats file, logging)."""
NEAR = 512
"""How close to the limit the known sockets must come before the descriptors are
counted (the rest: listeners, logs, files, the loop's own, a few dozen)."""

_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE})


def open_fds() -> int:
    """Open descriptors of this process (-1 when ``/proc`` is not there)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # the listing's own descriptor
    except OSError:
        return -1


def fd_limit() -> int:
    """The soft ``RLIMIT_NOFILE``."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class FdWatch:
    """See the module docstring."""

    def __init__(self) -> None:
        self._next_check = 0.0
        self._next_log = 0.0
        self.reached = 0
        """How many times the limit was seen reached (reports and counts)."""

    def exception_handler(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """The loop's exception handler: a failed ``accept`` at the limit is noted
        here, anything else goes to the default handler."""
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in _EXHAUSTED:
            self.note(loop.time())
            return
        loop.default_exception_handler(context)

    def check(self, now: float, known: int = -1) -> None:
        """Count the open descriptors (every :data:`CHECK_INTERVAL` seconds), unless
        the ``known`` sockets (the server's clients and links; -1: unknown) are
        more than :data:`NEAR` under the limit: listing ``/proc/self/fd`` walks
        every descriptor, 12-18 ms of the loop's time with 16,700 clients (a
        stall measured in M4 at 50k members)."""
        if now < self._next_check:
            return
        self._next_check = now + CHECK_INTERVAL
        if 0 <= known < fd_limit() - RESERVE - NEAR:
            return
        count = open_fds()
        if count >= 0 and count >= fd_limit() - RESERVE:
            self.note(now, count)

    def note(self, now: float, count: int | None = None) -> None:
        """The limit was reached: warn, unless a warning went out within
        :data:`LOG_INTERVAL`."""
        self.reached += 1
        if now < self._next_log:
            return
        self._next_log = now + LOG_INTERVAL
        log.warning(
            "file-descriptor limit reached: %d open of %d (RLIMIT_NOFILE); new "
            "connections wait unaccepted. Raise the limit (ulimit -n, LimitNOFILE=) or "
            "spread clients over more gateway processes",
            open_fds() if count is None else count,
            fd_limit(),
        )
