"""Reload: replace the business workers one slot at a time, losing no event.

:class:`Reloader` is a small state machine the master advances from its loop. For
each worker slot in turn:

1. **boot**: fork the new generation beside the old process (it imports the app's
   current Events code, since the master never imported it) and wait until it
   reports ready. It is forked with :data:`REPLACEMENT_ENV` set, which makes ready
   mean "linked to every gateway": a replacement that is only partly linked fails
   its start (``businessworker.worker``) instead of reporting ready;
2. **retire**: make it the slot's current process and SIGQUIT the old one: its
   graceful stop sends ``WORKER_LEAVE`` to every gateway (which route nothing new
   to it and hand its clients to the others, the new worker included), then runs
   the events it already received, running and queued, for up to its
   ``BusinessWorker.drain_timeout``, so no event is lost even when a callback takes
   seconds. Wait for it to exit; kill it :data:`RETIRE_MARGIN` seconds past its
   drain bound.

A new worker that fails to boot (reports an error, exits, or is not ready in time)
ends the reload: it is killed, the old worker of its slot and of the remaining
slots keep running, and the outcome says why. Register and gateways are never
touched, so no client drops.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from pygatewayworker.cluster.slots import Child, Slot
from pygatewayworker.runtime.spec import REPLACEMENT_ENV

__all__ = ["Reloader", "ChildControl", "ReloadJob", "RETIRE_MARGIN"]

log = logging.getLogger("cluster")

RETIRE_MARGIN = 20.0
"""Seconds an old worker may take beyond its ``drain_timeout`` (leaving the
gateways, ``on_worker_stop``, closing) before it is killed."""


class ChildControl(Protocol):
    """What the reloader needs from the master."""

    def spawn_child(self, slot: Slot, generation: int) -> Child: ...

    def signal_child(self, child: Child, sig: int) -> None: ...

    def child_alive(self, child: Child) -> bool: ...


@dataclass(slots=True)
class ReloadJob:
    """A reload in progress: worker slots still to replace, and the current step."""

    id: int
    generation: int
    queue: list[Slot]
    slot: Slot | None = None
    new: Child | None = None
    old: Child | None = None
    deadline: float = 0.0
    replaced: list[str] = field(default_factory=list)


class Reloader:
    """Runs one reload at a time; ``status`` is what ``state.json`` shows."""

    def __init__(self, control: ChildControl, timeout: float) -> None:
        self.control = control
        self.timeout = timeout
        self.job: ReloadJob | None = None
        self.pending = False
        """A reload was asked for while busy: run another one afterwards."""
        self.status: dict[str, Any] = {"id": 0, "state": "none", "message": ""}
        self.outcomes = {"done": 0, "failed": 0}
        """Finished reloads by outcome (metrics)."""

    @property
    def busy(self) -> bool:
        return self.job is not None

    def begin(self, slots: list[Slot], generation: int) -> None:
        """Start replacing the processes of ``slots`` with ``generation``."""
        self.pending = False
        job = ReloadJob(int(self.status["id"]) + 1, generation, list(slots))
        self.job = job
        self.status = {"id": job.id, "state": "running", "message": "", "replaced": []}
        log.info("reload %d: replacing %d business worker(s) one at a time", job.id, len(slots))

    def cancel(self) -> None:
        """Forget the job (the master is stopping every process anyway)."""
        self.job = None

    def advance(self) -> bool:
        """Move the job as far as it can go now; True if anything changed."""
        moved = False
        while self.job is not None and self._step(self.job):
            moved = True
        return moved

    def _step(self, job: ReloadJob) -> bool:
        if job.old is not None:
            return self._retire(job)
        if job.new is not None:
            return self._boot(job)
        if not job.queue:
            self._finish(True, f"replaced {len(job.replaced)} business worker(s)")
            return True
        slot = job.slot = job.queue.pop(0)
        job.new = slot.replacement = self._spawn_replacement(slot, job.generation)
        job.deadline = time.monotonic() + self.timeout
        return True

    def _spawn_replacement(self, slot: Slot, generation: int) -> Child:
        """Fork the new worker of ``slot`` with :data:`REPLACEMENT_ENV` set (the
        master's environment is restored right after the fork)."""
        os.environ[REPLACEMENT_ENV] = "1"
        try:
            return self.control.spawn_child(slot, generation)
        finally:
            os.environ.pop(REPLACEMENT_ENV, None)

    def _boot(self, job: ReloadJob) -> bool:
        slot, new = job.slot, job.new
        assert slot is not None and new is not None
        if new.error:
            self._abort(job, f"{slot.name}: the new worker could not start: {new.error}")
            return True
        if slot.replacement is not new:
            self._abort(job, f"{slot.name}: the new worker {new.exit_reason}")
            return True
        if not new.ready:
            if time.monotonic() > job.deadline:
                self._abort(
                    job, f"{slot.name}: the new worker was not ready within {self.timeout:g} s"
                )
                return True
            return False
        old, slot.current = slot.current, new
        slot.replacement, slot.respawn_at, slot.failures = None, None, 0
        job.replaced.append(f"{slot.name}: {old.pid if old else '-'} -> {new.pid}")
        job.new = None
        if old is not None:
            self._retire_begin(job, slot, old)
        return True

    def _retire_begin(self, job: ReloadJob, slot: Slot, old: Child) -> None:
        """Ask the old worker to leave gracefully: SIGQUIT (SIGTERM when it never
        reported ready, as its SIGQUIT handler may not be installed yet)."""
        drain = float(getattr(slot.decl.config, "drain_timeout", self.timeout))
        old.stopping = True
        slot.retiring = job.old = old
        job.deadline = time.monotonic() + drain + RETIRE_MARGIN
        log.info(
            "reload %d: %s (pid %s) leaves the gateways and finishes its events (up to %g s)",
            job.id,
            slot.name,
            old.pid,
            drain,
        )
        self.control.signal_child(old, signal.SIGQUIT if old.ready else signal.SIGTERM)

    def _retire(self, job: ReloadJob) -> bool:
        old = job.old
        assert old is not None
        if not self.control.child_alive(old):
            job.old = job.slot = None
            return True
        if time.monotonic() > job.deadline:
            log.warning(
                "pid %s did not leave within its drain_timeout + %g s: killing it",
                old.pid,
                RETIRE_MARGIN,
            )
            self.control.signal_child(old, signal.SIGKILL)
            job.deadline = float("inf")
        return False

    def _abort(self, job: ReloadJob, reason: str) -> None:
        if job.new is not None and self.control.child_alive(job.new):
            job.new.stopping = True
            self.control.signal_child(job.new, signal.SIGKILL)
        self._finish(False, f"{reason}; the old workers keep running")

    def _finish(self, ok: bool, message: str) -> None:
        job = self.job
        assert job is not None
        self.job = None
        state = "done" if ok else "failed"
        self.outcomes[state] += 1
        self.status = {"id": job.id, "state": state, "message": message, "replaced": job.replaced}
        (log.info if ok else log.error)("reload %d %s: %s", job.id, state, message)
