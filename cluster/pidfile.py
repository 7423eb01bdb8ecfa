"""The master's pid file: written atomically, refuses to start over a live master.

The file holds two lines: the master's pid and that process's start time in clock
ticks since boot (field 22 of ``/proc/<pid>/stat``). The start time makes a stale
file safe to recognise even when the pid has since been reused by an unrelated
process (a reboot leaves ``run/`` behind, and pids are small numbers). A file with
only a pid (older format, written by hand) is trusted as long as the pid lives.

"Alive" means a process that exists and is not a zombie: a zombie holds no ports and
will never act again (on some hosts pid 1 never reaps orphans, so a dead master can
stay a zombie forever).
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile

__all__ = ["AlreadyRunning", "PidFile", "pid_alive", "process_start_time"]


class AlreadyRunning(Exception):
    """Another master owns the pid file."""

    def __init__(self, pid: int) -> None:
        super().__init__(f"already running (pid {pid})")
        self.pid = pid


def _read_stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            text = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name is in parentheses and may itself contain spaces or ')'.
    return text.rpartition(")")[2].split()


def process_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if unknown."""
    fields = _read_stat(pid)
    if fields is None or len(fields) < 20:
        return None
    try:
        return int(fields[19])  # field 22 overall; fields[0] is field 3 (state)
    except ValueError:
        return None


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    fields = _read_stat(pid)
    return not (fields and fields[0] in ("Z", "X"))


class PidFile:
    """The pid file at ``path``.

    :meth:`create` writes the current pid atomically and raises
    :class:`AlreadyRunning` if a live master already owns the file; a stale file
    (dead pid, zombie, or a pid reused by another process) is replaced.
    :meth:`remove` deletes the file only if it still holds our pid.
    """

    __slots__ = ("path", "_pid")

    def __init__(self, path: str) -> None:
        self.path = path
        self._pid = 0

    def read(self) -> tuple[int, int | None] | None:
        """``(pid, start_time)`` from the file, or None if missing or unreadable."""
        try:
            with open(self.path, encoding="ascii") as fh:
                lines = fh.read().split()
        except (OSError, UnicodeDecodeError):
            return None
        try:
            pid = int(lines[0])
            started = int(lines[1]) if len(lines) > 1 else None
        except (IndexError, ValueError):
            return None
        return pid, started

    def running_pid(self) -> int | None:
        """The pid of the live master that owns the file, or None."""
        content = self.read()
        if content is None:
            return None
        pid, started = content
        if not pid_alive(pid):
            return None
        if started is not None and process_start_time(pid) not in (None, started):
            return None  # the pid now belongs to another process
        return pid

    def create(self, pid: int | None = None) -> None:
        """Write ``pid`` (default: ours). Raise :class:`AlreadyRunning` if taken."""
        pid = os.getpid() if pid is None else pid
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        started = process_start_time(pid)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".pid-")
        try:
            with os.fdopen(fd, "w", encoding="ascii") as fh:
                fh.write(f"{pid}\n{started if started is not None else ''}\n")
            os.chmod(tmp, 0o644)
            self._install(tmp)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        self._pid = pid

    def _install(self, tmp: str) -> None:
        """Put ``tmp`` in place: exclusively when no file exists (two masters starting
        at once: exactly one ``link`` wins), by replacement over a stale file."""
        try:
            os.link(tmp, self.path)
            return
        except FileExistsError:
            pass
        except OSError as exc:  # filesystems without hard links
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
                raise
        owner = self.running_pid()
        if owner is not None and owner != os.getpid():
            raise AlreadyRunning(owner)
        os.replace(tmp, self.path)

    def remove(self) -> None:
        """Delete the file if it still names the pid we wrote."""
        content = self.read()
        if content is not None and content[0] == (self._pid or os.getpid()):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
