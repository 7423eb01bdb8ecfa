"""Logging for the master and its children.

Every line has the form ``time pid role level logger: message`` where ``role`` is
``master`` or the child's name (``chat.gateway.1``). With ``--log-format json``
(``GW_LOG_FORMAT``) every line is one JSON object instead (:class:`JsonFormatter`):
``time`` (ISO 8601, UTC), ``level``, ``process`` (``master`` or the child's name),
``pid``, ``logger``, ``message``, the structured fields ``client_id``, ``gateway`` and
``worker`` when the log call passes them (``log.info(..., extra={"client_id": cid})``)
and ``exception`` (the traceback) when there is one. A line that reaches the log
pipe without going through ``logging`` (a C library writing to fd 2) is wrapped in
such an object too (logger ``raw``), so every line of the file parses as JSON.

Who writes the log file
-----------------------
Only the master writes the log file, so size-based rotation
(:class:`logging.handlers.RotatingFileHandler`, 10 MB x 5 by default) has a single
writer and can never race. Each child's stdout and stderr are a shared pipe whose
read end the master drains in its main loop (:class:`LogPipe`); a child's logging
handler (:class:`FdHandler`) writes each formatted record with one ``write`` call,
which the kernel keeps whole on a pipe for records up to ``PIPE_BUF`` (4 KiB), so
lines from different children never interleave. A child's ``sys.stdout`` and
``sys.stderr`` are :class:`LogStream` objects: each line that user code prints
becomes a log record (logger ``stdout`` at INFO, ``stderr`` at WARNING), so it gets
the time, pid and process name like any other line. What bypasses Python's streams
(a C library writing to fd 1 or 2) still lands in the log, as it was written.

In the foreground the master also echoes every line to its stderr. When the master
dies, a child's next write fails (EPIPE); the child's watchdog stops it anyway.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import logging.handlers
import os
import sys
import time
from datetime import UTC, datetime
from typing import TextIO

__all__ = [
    "LOG_FORMAT",
    "LOG_FORMATS",
    "JsonFormatter",
    "LogSink",
    "SinkHandler",
    "FdHandler",
    "LineBuffer",
    "LogPipe",
    "LogStream",
    "formatter_for",
    "configure_master_logging",
    "configure_child_logging",
]

LOG_FORMAT = "%(asctime)s %(process)d {role} %(levelname)s %(name)s: %(message)s"
LOG_FORMATS = ("text", "json")
STRUCTURED_FIELDS = ("client_id", "gateway", "worker")
"""Record attributes (``extra=``) a JSON line carries when a log call sets them."""
MAX_BYTES = 10 * 1024 * 1024
BACKUP_COUNT = 5
MAX_LINE = 64 * 1024
PIPE_SIZE = 1024 * 1024


def formatter_for(role: str, fmt: str = "text") -> logging.Formatter:
    """The formatter of every log line written by ``role`` (``fmt``: text or json)."""
    if fmt == "json":
        return JsonFormatter(role)
    return logging.Formatter(LOG_FORMAT.format(role=role.replace("%", "%%")))


def _iso_time(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (see the module docstring)."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": _iso_time(record.created),
            "level": record.levelname,
            "process": self.process,
            "pid": record.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in STRUCTURED_FIELDS:
            value = record.__dict__.get(key)
            if value is not None:
                doc[key] = value if isinstance(value, str | int | float | bool) else str(value)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def raw_line_json(line: str) -> str:
    """A line that bypassed ``logging`` (written straight to a child's fd 2), as JSON."""
    doc = {
        "time": _iso_time(time.time()),
        "level": "WARNING",
        "process": "?",
        "pid": None,
        "logger": "raw",
        "message": line,
    }
    return json.dumps(doc, ensure_ascii=False)


class LogSink:
    """The master's log destination: the rotating file, plus stderr when ``echo``."""

    __slots__ = ("_file", "_echo")

    def __init__(
        self,
        path: str,
        echo: TextIO | None = None,
        max_bytes: int = MAX_BYTES,
        backup_count: int = BACKUP_COUNT,
    ) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8"
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
        self._file = handler
        self._echo = echo

    def write_line(self, line: str) -> None:
        """Append one line (without its newline) to the file and the echo stream."""
        self._file.handle(logging.makeLogRecord({"msg": line, "args": None}))
        if self._echo is not None:
            try:
                self._echo.write(line + "\n")
                self._echo.flush()
            except (OSError, ValueError):
                self._echo = None  # the terminal went away; keep the file

    def close(self) -> None:
        """Close the file (in the master at exit, in a child right after fork)."""
        self._file.close()


class SinkHandler(logging.Handler):
    """A logging handler of the master that writes formatted records to a sink."""

    def __init__(self, sink: LogSink) -> None:
        super().__init__()
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sink.write_line(self.format(record))
        except Exception:
            self.handleError(record)


class FdHandler(logging.Handler):
    """A child's logging handler: one ``os.write`` per record to ``fd`` (stderr)."""

    def __init__(self, fd: int = 2) -> None:
        super().__init__()
        self.fd = fd

    def emit(self, record: logging.LogRecord) -> None:
        try:
            os.write(self.fd, (self.format(record) + "\n").encode("utf-8", "replace"))
        except BrokenPipeError:
            pass  # the master is gone; the watchdog stops this process
        except Exception:
            self.handleError(record)


class LineBuffer:
    """Split a byte stream into text lines; a line longer than ``limit`` is cut."""

    __slots__ = ("_buf", "_limit")

    def __init__(self, limit: int = MAX_LINE) -> None:
        self._buf = bytearray()
        self._limit = limit

    def feed(self, data: bytes) -> list[str]:
        """Add ``data``; return the complete lines (decoded, without newline)."""
        buf = self._buf
        buf += data
        lines: list[str] = []
        start = 0
        while True:
            end = buf.find(b"\n", start)
            if end < 0:
                break
            lines.append(buf[start:end].decode("utf-8", "replace"))
            start = end + 1
        del buf[:start]
        if len(buf) > self._limit:
            lines.append(buf.decode("utf-8", "replace"))
            buf.clear()
        return lines

    def read_from(self, fd: int, max_reads: int = 32) -> list[str]:
        """Read what non-blocking ``fd`` holds now (at most ``max_reads`` chunks of
        64 KiB, so a flood cannot starve the master's loop); return complete lines."""
        lines: list[str] = []
        for _ in range(max_reads):
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                break
            if not data:
                break
            lines.extend(self.feed(data))
        return lines


class LogPipe:
    """The pipe children write their output to, drained by the master."""

    __slots__ = ("read_fd", "write_fd", "_lines", "_sink", "_json")

    def __init__(self, sink: LogSink, fmt: str = "text") -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        if hasattr(fcntl, "F_SETPIPE_SZ"):
            # A roomy pipe absorbs bursts (a crash traceback from every child at
            # once) without making children wait for the master's file writes.
            with contextlib.suppress(OSError):
                fcntl.fcntl(self.write_fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        self._lines = LineBuffer()
        self._sink = sink
        self._json = fmt == "json"

    def drain(self) -> None:
        """Copy what the children wrote so far to the sink (in JSON mode, a line that
        is not a JSON object is wrapped in one)."""
        for line in self._lines.read_from(self.read_fd):
            if line:
                if self._json and not (line.startswith("{") and line.endswith("}")):
                    line = raw_line_json(line)
                self._sink.write_line(line)

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


class LogStream(io.TextIOBase):
    """A text stream whose lines become log records of ``logger`` at ``level``.

    A partial line waits for its newline (or :meth:`flush`); a line longer than
    :data:`MAX_LINE` is cut into records of that size."""

    def __init__(self, logger: str, level: int, fd: int) -> None:
        super().__init__()
        self._logger = logging.getLogger(logger)
        self._level = level
        self._fd = fd
        self._partial = ""

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        """The underlying descriptor (the log pipe), for code that hands it on."""
        return self._fd

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        data = self._partial + text
        *lines, self._partial = data.split("\n")
        for line in lines:
            self._emit(line)
        while len(self._partial) > MAX_LINE:
            self._emit(self._partial[:MAX_LINE])
            self._partial = self._partial[MAX_LINE:]
        return len(text)

    def flush(self) -> None:
        if self._partial:
            line, self._partial = self._partial, ""
            self._emit(line)

    def _emit(self, line: str) -> None:
        line = line.rstrip("\r")
        if line:
            self._logger.log(self._level, "%s", line)


def configure_master_logging(sink: LogSink, level: int = logging.INFO, fmt: str = "text") -> None:
    """Route every logger of the master process to ``sink`` (``fmt``: text or json)."""
    handler = SinkHandler(sink)
    handler.setFormatter(formatter_for("master", fmt))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def configure_child_logging(
    role: str, fd: int = 2, level: int = logging.INFO, fmt: str = "text"
) -> None:
    """Route every logger of a child to ``fd`` (inherited stderr, the master's log pipe).

    Handlers inherited from the master through the fork are removed and closed
    (closing them in the child does not affect the master's file).
    """
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        if isinstance(old, SinkHandler):
            old.sink.close()
        elif not isinstance(old, FdHandler):
            old.close()
    handler = FdHandler(fd)
    handler.setFormatter(formatter_for(role, fmt))
    root.addHandler(handler)
    root.setLevel(level)
    logging.raiseExceptions = False  # never print logging errors into a dead pipe
    sys.stderr.flush()
    sys.stdout.flush()
    sys.stdout = LogStream("stdout", logging.INFO, 1)
    sys.stderr = LogStream("stderr", logging.WARNING, 2)
