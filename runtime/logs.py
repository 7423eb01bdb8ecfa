"""A child's logging: every record becomes one line on the master's log pipe.

Every line has the form ``time pid role level logger: message`` where ``role`` is
``master`` or the child's name (``chat.gateway.1``). With ``--log-format json``
(``GW_LOG_FORMAT``) every line is one JSON object instead (:class:`JsonFormatter`):
``time`` (ISO 8601, UTC), ``level``, ``process`` (``master`` or the child's name),
``pid``, ``logger``, ``message``, the structured fields ``client_id``, ``gateway`` and
``worker`` when the log call passes them (``log.info(..., extra={"client_id": cid})``)
and ``exception`` (the traceback) when there is one.

A child's stdout and stderr are a shared pipe whose read end the master drains
(``cluster.logs``). A child's logging handler (:class:`FdHandler`) writes each
formatted record with one ``write`` call, which the kernel keeps whole on a pipe for
records up to ``PIPE_BUF`` (4 KiB), so lines from different children never
interleave. A child's ``sys.stdout`` and ``sys.stderr`` are :class:`LogStream`
objects: each line that user code prints becomes a log record (logger ``stdout`` at
INFO, ``stderr`` at WARNING), so it gets the time, pid and process name like any
other line. What bypasses Python's streams (a C library writing to fd 1 or 2) still
lands in the log, as it was written. When the master dies, a child's next write
fails (EPIPE); the child's watchdog stops it anyway.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import time
from datetime import UTC, datetime

__all__ = [
    "LOG_FORMAT",
    "LOG_FORMATS",
    "JsonFormatter",
    "raw_line_json",
    "MAX_LINE",
    "FdHandler",
    "LogStream",
    "formatter_for",
    "configure_child_logging",
]

LOG_FORMAT = "%(asctime)s %(process)d {role} %(levelname)s %(name)s: %(message)s"
MAX_LINE = 64 * 1024
LOG_FORMATS = ("text", "json")
STRUCTURED_FIELDS = ("client_id", "gateway", "worker")
"""Record attributes (``extra=``) a JSON line carries when a log call sets them."""


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
    """A line that bypassed ``logging`` (a C library writing to fd 2), as a JSON
    object of logger ``raw`` (the master wraps such lines in JSON mode)."""
    doc = {
        "time": _iso_time(time.time()),
        "level": "WARNING",
        "process": "?",
        "pid": None,
        "logger": "raw",
        "message": line,
    }
    return json.dumps(doc, ensure_ascii=False)


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


def configure_child_logging(
    role: str, fd: int = 2, level: int = logging.INFO, fmt: str = "text"
) -> None:
    """Route every logger of a child to ``fd`` (inherited stderr, the master's log pipe).

    Handlers inherited from the master through the fork are removed and closed
    (closing them in the child does not affect the master's file: the master's
    handler closes its copy of the file descriptor).
    """
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        if not isinstance(old, FdHandler):
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
