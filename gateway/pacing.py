"""Bounded work per event-loop turn: broadcasts cut into slices, link input in
batches. Pure: no sockets, no event loop.

How this works
--------------
A gateway's loop must never be busy for long in one go: a broadcast to 10,000
members is 10,000 ``send()`` calls (about 100 ms), and a push client's read of
256 KiB holds a few thousand packets. While one callback runs, every other client
waits (and the loop-lag probe of ``runtime.service`` reports the stall).

A :class:`Pacer` gives each loop turn a budget of :data:`TURN_BUDGET` units (one
unit: one write to a client, or one packet handled) and of :data:`TURN_TIME`
seconds, whichever runs out first (the clock is read between slices of at most
:data:`CHUNK` writes, and between input batches: a unit costs more on a slower or
busier machine, with larger frames, or when a garbage collection falls into the
turn), and keeps, in order:

- **jobs**: client writes that did not fit the turn. A broadcast to more recipients
  than the budget left becomes a :class:`Delivery`: its recipients are taken (a
  list) when the command is handled, the first slice is written at once, the rest
  one slice per turn. While any job is queued, every later write to a client made
  by a command (a unicast, a close, the next broadcast) is queued behind it, so no
  client ever gets a frame ahead of one sent before it; a client closed meanwhile
  is skipped (only ``OPEN`` clients are written to).
- **waiting input**: callables that handle some more of a link's buffered input and
  say whether it is all done (``GatewayCore`` pauses the link's reading meanwhile,
  so TCP back-pressure reaches the sender instead of an unbounded queue here).
  Input is handled only while no job is queued: a command behind an unfinished
  broadcast waits for it.

The pacer asks for a new turn (``defer(next_turn)``, the shell's ``call_soon``)
only when work is left over; an idle gateway pays nothing for it. Without a
``defer`` (``per_turn=0``) nothing is cut: every write happens at once.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Collection
from typing import Any, Protocol

__all__ = ["Pacer", "Job", "Delivery", "Call", "TURN_BUDGET", "TURN_TIME", "CHUNK"]

log = logging.getLogger("gateway")

TURN_BUDGET = 256
"""Units of work (client writes, packets handled) per loop turn: a few hundred
``send()`` calls of about 7-10 us each, a few milliseconds."""

TURN_TIME = 0.002
"""Seconds of paced work per loop turn: a turn ends early once they have passed."""

CHUNK = 64
"""Client writes between two readings of the clock (a fraction of a millisecond)."""


class Delivery:
    """One frame to a fixed list of clients, written a slice at a time.

    ``write(clients, frame)`` writes to the open ones and does the counting (the
    ``Commands``' method); ``clients`` is the list taken when the command was
    handled."""

    __slots__ = ("clients", "frame", "write", "pos")

    def __init__(
        self,
        clients: list[Any],
        frame: bytes,
        write: Callable[[Collection[Any], bytes], object],
    ) -> None:
        self.clients = clients
        self.frame = frame
        self.write = write
        self.pos = 0

    def step(self, pacer: Pacer) -> bool:
        """Write the next slice (at least one client, at most the budget left, in
        chunks of :data:`CHUNK` until the turn's time is up); True when every client
        had its turn."""
        clients = self.clients
        total = len(clients)
        pos = self.pos
        if not pos and total <= pacer.budget and total <= CHUNK:
            self.write(clients, self.frame)  # the whole of a small delivery
            pacer.budget -= total
            self.pos = total
            return True
        while True:
            end = min(total, pos + max(1, min(pacer.budget, CHUNK)))
            self.write(clients[pos:end], self.frame)
            pacer.budget -= end - pos
            pos = end
            if pos >= total or pacer.budget <= 0 or pacer.late():
                break
        self.pos = pos
        return pos >= total


class Call:
    """A deferred client action (a close, an abort) queued behind the writes before
    it; it costs one unit."""

    __slots__ = ("fn", "args")

    def __init__(self, fn: Callable[..., object], *args: Any) -> None:
        self.fn = fn
        self.args = args

    def step(self, pacer: Pacer) -> bool:
        self.fn(*self.args)
        pacer.budget -= 1
        return True


class Job(Protocol):
    """Work done a slice per loop turn."""

    def step(self, pacer: Pacer) -> bool:
        """Do the next slice (at most about ``pacer.budget`` units; take them off
        it); True when done."""
        ...


class Pacer:
    """The per-turn budget and the queues of work left over (see the module
    docstring). ``defer(fn)`` runs ``fn`` on a later loop turn."""

    __slots__ = (
        "per_turn",
        "budget",
        "defer",
        "jobs",
        "waiting",
        "turn_due",
        "turn_time",
        "deadline",
        "clock",
    )

    def __init__(
        self,
        defer: Callable[[Callable[[], None]], object] | None,
        per_turn: int = TURN_BUDGET,
        turn_time: float = TURN_TIME,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.defer = defer
        self.per_turn = per_turn if defer is not None else 0
        """Units per turn; 0: unbounded (no ``defer``: everything at once)."""
        self.budget = self.per_turn or 1 << 62
        self.turn_time = turn_time
        self.clock = clock
        self.deadline = clock() + turn_time
        """When the current turn's time is up (see :meth:`late`)."""
        self.jobs: deque[Job] = deque()
        self.waiting: deque[Callable[[], bool]] = deque()
        self.turn_due = False
        """A turn was asked for (``defer(next_turn)``) and has not run yet."""

    def use(self, defer: Callable[[Callable[[], None]], object]) -> None:
        """Pace with ``defer`` from now on (the shell's ``loop.call_soon``)."""
        self.defer = defer
        self.per_turn = self.per_turn or TURN_BUDGET
        self.budget = self.per_turn

    @property
    def idle(self) -> bool:
        """Nothing queued and no turn asked for: input may be handled at once."""
        return not self.turn_due and not self.jobs and not self.waiting

    def fresh(self) -> None:
        """Start a new budget (an idle pacer, new input: a new loop turn)."""
        if self.per_turn:
            self.budget = self.per_turn
            self.deadline = self.clock() + self.turn_time

    def late(self) -> bool:
        """The turn's time is up: its budget is spent (0) and True. Never for an
        unbounded pacer."""
        if self.per_turn and self.clock() >= self.deadline:
            self.budget = 0
            return True
        return False

    def add(self, job: Job) -> None:
        """Run ``job`` now as far as the budget goes, unless jobs are queued before
        it; queue what is left."""
        jobs = self.jobs
        if not jobs and self.budget > 0 and job.step(self):
            return
        jobs.append(job)
        self._ask_turn()

    def start(self, job: Job) -> None:
        """:meth:`add` for a job that begins a loop turn (a timer's): an idle pacer
        gives it a fresh budget."""
        if self.idle:
            self.fresh()
        self.add(job)

    def wait(self, resume: Callable[[], bool]) -> None:
        """Call ``resume()`` on later turns, once no job is queued, until it returns
        True (its input is all handled)."""
        self.waiting.append(resume)
        self._ask_turn()

    def next_turn(self) -> None:
        """One loop turn of left-over work: jobs first, then waiting input."""
        self.turn_due = False
        self.fresh()
        jobs, waiting = self.jobs, self.waiting
        while jobs and self.budget > 0:
            try:
                done = jobs[0].step(self)
            except Exception:  # one failed job must not stall the others
                log.exception("%r failed", jobs[0])
                done = True
            if done:
                jobs.popleft()
            if self.late():
                break
        while not jobs and waiting and self.budget > 0 and not self.late():
            try:
                if not waiting[0]():
                    break  # its next batch needs a new turn; the others stay behind it
            except Exception:
                log.exception("%r failed", waiting[0])
            waiting.popleft()
        if jobs or waiting:
            self._ask_turn()

    def _ask_turn(self) -> None:
        if not self.turn_due and self.defer is not None:
            self.turn_due = True
            self.defer(self.next_turn)
