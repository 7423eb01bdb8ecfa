"""The log file (cluster.logs, runtime.logs): size-based rotation with a tiny limit,
and the line format ``time pid role level logger: message`` of the master's own
records and of a real child process writing through the log pipe; through a real
cluster, the log level (``--log-level`` / ``GW_LOG_LEVEL``) and an Events'
``print()``."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from pygatewayworker.cluster.logs import LogPipe, LogSink, SinkHandler
from pygatewayworker.runtime.logs import formatter_for
from tests.cluster import cli, make_app
from tests.rc import RC

ROOT = Path(__file__).resolve().parent.parent
LINE = re.compile(
    r"^(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (?P<pid>\d+) (?P<role>\S+) "
    r"(?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL) (?P<logger>[\w.]+): (?P<message>.*)$"
)
MAX_BYTES = 400
BACKUPS = 2


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[LogSink]:
    path = str(tmp_path / "run" / "gatewayworker.log")
    sink = LogSink(path, echo=None, max_bytes=MAX_BYTES, backup_count=BACKUPS)
    yield sink
    sink.close()


def log_files(tmp_path: Path) -> list[Path]:
    """The current file first, then ``.1``, ``.2`` ... (newest to oldest)."""
    base = tmp_path / "run" / "gatewayworker.log"
    return [base] + sorted(base.parent.glob("gatewayworker.log.*"), key=lambda p: p.suffix)


def parsed_lines(files: list[Path]) -> list[re.Match[str]]:
    """Every line of ``files``, oldest first; a line that breaks the format fails."""
    lines = []
    for path in reversed(files):
        for text in path.read_text().splitlines():
            match = LINE.match(text)
            assert match, f"{path.name}: {text!r} is not 'time pid role level logger: message'"
            lines.append(match)
    return lines


def check_time(match: re.Match[str], since: float, until: float) -> None:
    stamp = datetime.strptime(match["time"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    assert since - 1 <= stamp <= until + 1, match.group(0)


def test_the_master_log_rotates_at_the_size_limit_and_keeps_the_format(
    tmp_path: Path, sink: LogSink
) -> None:
    logger = logging.getLogger("tests.logs.master")
    logger.propagate = False
    handler = SinkHandler(sink)
    handler.setFormatter(formatter_for("master"))
    logger.addHandler(handler)
    since = time.time()
    try:
        for i in range(60):
            logger.warning("record %03d %s", i, "x" * 20)
    finally:
        logger.removeHandler(handler)
    until = time.time()

    files = log_files(tmp_path)
    assert [p.name for p in files] == [
        "gatewayworker.log",
        "gatewayworker.log.1",
        "gatewayworker.log.2",
    ]  # rotated, and only BACKUPS old files are kept
    for path in files:
        assert 0 < path.stat().st_size <= MAX_BYTES, path
    lines = parsed_lines(files)
    numbers = [int(m["message"].split()[1]) for m in lines]
    assert numbers == list(range(numbers[0], 60))  # in order, newest kept, none cut
    assert numbers[0] > 0  # the oldest records went with the dropped files
    for match in lines:
        assert (match["pid"], match["role"]) == (str(os.getpid()), "master")
        assert (match["level"], match["logger"]) == ("WARNING", "tests.logs.master")
        check_time(match, since, until)


def test_a_child_writes_through_the_pipe_into_the_rotating_file(
    tmp_path: Path, sink: LogSink
) -> None:
    """A real process logs through ``configure_child_logging`` into the master's pipe;
    the master's drain writes its lines, rotating the file like its own."""
    pipe = LogPipe(sink)
    child_code = textwrap.dedent(
        f"""
        import logging
        from pygatewayworker.runtime.logs import configure_child_logging
        configure_child_logging("chat.gateway.1", fd={pipe.write_fd})
        log = logging.getLogger("gateway")
        for i in range(40):
            log.info("client %03d connected", i)
        log.error("the last one")
        """
    )
    since = time.time()
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", child_code],
            cwd=ROOT,
            pass_fds=(pipe.write_fd,),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _, errors = child.communicate(timeout=60)
        assert child.returncode == 0, errors
        pipe.drain()  # the child has exited: everything it wrote is in the pipe
    finally:
        pipe.close()
    until = time.time()

    files = log_files(tmp_path)
    assert len(files) == 1 + BACKUPS
    lines = parsed_lines(files)
    assert {(m["role"], m["logger"]) for m in lines} == {("chat.gateway.1", "gateway")}
    assert {m["pid"] for m in lines} == {str(child.pid)}
    assert lines[-1]["level"] == "ERROR" and lines[-1]["message"] == "the last one"
    assert all(m["level"] == "INFO" for m in lines[:-1])
    numbers = [int(m["message"].split()[1]) for m in lines[:-1]]
    assert numbers == list(range(numbers[0], 40))
    for match in lines:
        check_time(match, since, until)


def test_a_childs_print_and_stderr_lines_become_log_lines(tmp_path: Path, sink: LogSink) -> None:
    """``print()`` in user code (and writes to ``sys.stderr``) reach the log with the
    time, pid and process name; the level filter applies to them like to any record."""
    pipe = LogPipe(sink)
    child_code = textwrap.dedent(
        f"""
        import logging, os, sys
        os.dup2({pipe.write_fd}, 1)
        os.dup2({pipe.write_fd}, 2)
        from pygatewayworker.runtime.logs import configure_child_logging
        configure_child_logging("chat.businessworker.0", level=logging.INFO)
        print("hello from print", 42)
        print("two", "lines", sep="\\n")
        sys.stdout.write("no newline yet")
        sys.stdout.flush()
        print("oops on stderr", file=sys.stderr)
        logging.getLogger("stdout").setLevel(logging.WARNING)
        print("filtered out")
        """
    )
    since = time.time()
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", child_code], cwd=ROOT, pass_fds=(pipe.write_fd,)
        )
        assert child.wait(timeout=60) == 0
        pipe.drain()
    finally:
        pipe.close()
    until = time.time()
    lines = parsed_lines(log_files(tmp_path))
    got = [(m["role"], m["level"], m["logger"], m["message"]) for m in lines]
    role = "chat.businessworker.0"
    assert got == [
        (role, "INFO", "stdout", "hello from print 42"),
        (role, "INFO", "stdout", "two"),
        (role, "INFO", "stdout", "lines"),
        (role, "INFO", "stdout", "no newline yet"),
        (role, "WARNING", "stderr", "oops on stderr"),
    ]
    assert {m["pid"] for m in lines} == {str(child.pid)}
    for match in lines:
        check_time(match, since, until)


# ---- through a real cluster -------------------------------------------------------


@pytest.mark.parametrize("how", ["default", "--log-level", "GW_LOG_LEVEL"])
async def test_log_level_and_an_events_print_through_a_real_cluster(
    tmp_path: Path, how: str
) -> None:
    """``start -d`` of the rc app; its Events prints to stdout and stderr. At the
    default level both reach the log file as records of the worker process (time, pid,
    name); at ``warning`` (option or env) no INFO line is written at all."""
    spec = make_app(tmp_path, "rc", gateways=1, workers=1, gateway_options="ping_interval=0")
    args = ["--log-level", "warning"] if how == "--log-level" else []
    env = {"GW_LOG_LEVEL": "WARNING"} if how == "GW_LOG_LEVEL" else {}
    since = time.time()
    started = cli(spec, "start", "-d", *args, env=env)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        worker_pid = next(
            p["pid"]
            for p in json.loads((spec.run_dir / "state.json").read_text())["processes"]
            if p["role"] == "businessworker"
        )
        client = await RC.open(spec.ws_url)
        assert await client.call("print", "printed to stdout", "printed to stderr") is None
        await client.close()
    finally:
        stopped = cli(spec, "stop")
    assert stopped.returncode == 0, stopped.stderr
    until = time.time()

    lines = parsed_lines([spec.run_dir / "gatewayworker.log"])
    for match in lines:
        check_time(match, since, until)
    got = {(m["pid"], m["role"], m["level"], m["logger"], m["message"]) for m in lines}
    worker = (str(worker_pid), "rc.businessworker.0")
    assert (*worker, "WARNING", "stderr", "printed to stderr") in got
    levels = {m["level"] for m in lines}
    if how == "default":
        assert (*worker, "INFO", "stdout", "printed to stdout") in got
        assert "INFO" in levels and {m["role"] for m in lines} >= {"master", "rc.gateway.0"}
        assert any(m["message"] == "master stopped" for m in lines)
    else:
        assert "INFO" not in levels and "DEBUG" not in levels, sorted(got)


def test_restart_keeps_the_running_clusters_log_level(tmp_path: Path) -> None:
    """``restart`` without ``--log-level`` keeps the level the cluster was started with;
    an explicit option replaces it."""
    spec = make_app(tmp_path, "rc", gateways=1, workers=1, gateway_options="ping_interval=0")
    try:
        assert cli(spec, "start", "-d", "--log-level", "warning").returncode == 0

        def level() -> str:
            return json.loads((spec.run_dir / "state.json").read_text())["master"]["log_level"]

        assert level() == "warning"
        restarted = cli(spec, "restart", "-d")
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        assert level() == "warning"
        restarted = cli(spec, "restart", "-d", "--log-level", "debug")
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        assert level() == "debug"
    finally:
        assert cli(spec, "stop").returncode == 0
