"""Logging in the master: the log file, and the pipe the children write to.

Every line has the form ``time pid role level logger: message`` where ``role`` is
``master`` or the child's name (``chat.gateway.1``), or with ``--log-format json`` one
JSON object (``runtime.logs.JsonFormatter``). In JSON mode a line that reaches the
pipe without going through ``logging`` (a C library writing to fd 2) is wrapped in
such an object (logger ``raw``), so every line of the file parses as JSON.

Who writes the log file
-----------------------
Only the master writes the log file, so size-based rotation
(:class:`logging.handlers.RotatingFileHandler`, 10 MB x 5 by default) has a single
writer and can never race. Each child's stdout and stderr are a shared pipe whose
read end the master drains in its main loop (:class:`LogPipe`); how a child writes
whole lines into it is ``runtime.logs``.

In the foreground the master also echoes every line to its stderr.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import logging.handlers
import os
from typing import TextIO

from pygatewayworker.runtime.logs import MAX_LINE, formatter_for, raw_line_json

__all__ = [
    "LogSink",
    "SinkHandler",
    "LineBuffer",
    "LogPipe",
    "configure_master_logging",
]

MAX_BYTES = 10 * 1024 * 1024
BACKUP_COUNT = 5
PIPE_SIZE = 1024 * 1024


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

    def close(self) -> None:
        """Close the sink's file too (a child closes the copy it inherited)."""
        self.sink.close()
        super().close()


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
        self._json = fmt == "json"
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        if hasattr(fcntl, "F_SETPIPE_SZ"):
            # A roomy pipe absorbs bursts (a crash traceback from every child at
            # once) without making children wait for the master's file writes.
            with contextlib.suppress(OSError):
                fcntl.fcntl(self.write_fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        self._lines = LineBuffer()
        self._sink = sink

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


def configure_master_logging(sink: LogSink, level: int = logging.INFO, fmt: str = "text") -> None:
    """Route every logger of the master process to ``sink`` (``fmt``: text or json)."""
    handler = SinkHandler(sink)
    handler.setFormatter(formatter_for("master", fmt))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
