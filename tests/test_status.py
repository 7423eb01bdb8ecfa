"""The pure parts of the supervisor: respawn delays, exit descriptions, status and
summary rendering, the log line splitter."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from pygatewayworker.cluster.logs import LineBuffer
from pygatewayworker.cluster.slots import describe_exit, respawn_delay
from pygatewayworker.cluster.status import (
    human_bytes,
    human_duration,
    process_rows,
    render_connections,
    render_status,
    render_summary,
    totals,
)
from pygatewayworker.runtime.logs import formatter_for


def test_respawn_delay_grows_and_is_capped() -> None:
    assert [respawn_delay(n) for n in range(1, 9)] == [0, 1, 2, 4, 8, 16, 30, 30]


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (0, "exited with code 0 (OK)"),
        (1, "exited with code 1 (ERROR)"),
        (3, "exited with code 3 (BOOT_ERROR)"),
        (42, "exited with code 42"),
        (-signal.SIGKILL, "killed by signal 9 (SIGKILL)"),
    ],
)
def test_describe_exit(code: int, text: str) -> None:
    assert describe_exit(code) == text


def test_human_formats() -> None:
    assert human_bytes(512) == "512B"
    assert human_bytes(3 * 1024 * 1024) == "3.0M"
    assert human_bytes(None) == "-"
    assert human_duration(5) == "5s"
    assert human_duration(125) == "2m05s"
    assert human_duration(7300) == "2h01m"
    assert human_duration(90000) == "1d01h"
    assert human_duration(None) == "-"


STATE: dict[str, Any] = {
    "master": {"pid": 10, "started_at": 1000.0, "phase": "running", "log_file": "/r/x.log"},
    "processes": [
        {
            "name": "chat.register.0",
            "app": "chat",
            "role": "register",
            "decl": "register",
            "pid": 11,
            "started_at": 1000.0,
            "status": "running",
            "restarts": 0,
            "addresses": {"listen": "127.0.0.1:1238"},
        },
        {
            "name": "chat.gateway.0",
            "app": "chat",
            "role": "gateway",
            "decl": "gateway",
            "pid": 12,
            "started_at": 1050.0,
            "status": "running",
            "restarts": 2,
            "last_exit": "killed by signal 9 (SIGKILL)",
            "addresses": {
                "url": "ws://0.0.0.0:7272",
                "internal": "127.0.0.1:2300",
                "page": "http://127.0.0.1:7272/",
            },
        },
        {
            "name": "chat.businessworker.0",
            "app": "chat",
            "role": "businessworker",
            "decl": "businessworker",
            "pid": None,
            "started_at": None,
            "status": "respawning",
            "restarts": 5,
            "last_exit": "exited with code 1 (ERROR)",
            "addresses": {"events": "apps.chat.Events:Events"},
        },
    ],
}
STATS: dict[str, dict[str, Any]] = {
    "chat.gateway.0": {
        "pid": 12,
        "rss": 2048,
        "connections": 7,
        "messages_in": 100,
        "messages_out": 50,
        "send_failures": 1,
        "messages_in_per_s": 3.0,
        "messages_out_per_s": 1.5,
    },
    "chat.register.0": {"pid": 99, "rss": 1},  # stale: another pid
}


def test_rows_and_totals() -> None:
    rows = process_rows(STATE, STATS, now=1100.0, master_rss=4096)
    by_name = {r["name"]: r for r in rows}
    assert by_name["master"]["uptime"] == 100.0 and by_name["master"]["memory"] == 4096
    gateway = by_name["chat.gateway.0"]
    assert gateway["connections"] == 7 and gateway["msg_per_s"] == 4.5
    assert gateway["uptime"] == 50.0 and gateway["restarts"] == 2
    assert by_name["chat.register.0"]["memory"] is None  # stale file ignored
    assert by_name["chat.businessworker.0"]["uptime"] is None
    sums = totals(rows)
    assert sums == {
        "processes": 3,
        "memory": 4096 + 2048,
        "connections": 7,
        "messages_in": 100,
        "messages_out": 50,
        "send_failures": 1,
        "msg_per_s": 4.5,
        "restarts": 7,
    }
    text = render_status(rows, sums)
    header, *lines = text.splitlines()
    assert header.split()[:4] == ["PID", "ROLE", "NAME", "STATUS"]
    assert any(line.split()[:3] == ["12", "gateway", "chat.gateway.0"] for line in lines)
    assert "3 processes" in text and "7 connections" in text
    assert "chat.businessworker.0: last exit: exited with code 1 (ERROR)" in text


def test_summary_names_every_process_and_the_page() -> None:
    text = render_summary(STATE, foreground=True)
    assert "master pid 10" in text
    assert "chat.register.0" in text and "listen 127.0.0.1:1238" in text
    assert "public ws://0.0.0.0:7272  internal 127.0.0.1:2300" in text
    assert "events apps.chat.Events:Events" in text
    assert "page: http://127.0.0.1:7272/" in text
    assert text.endswith("Press Ctrl-C to stop.")


def test_connections_listing() -> None:
    rows = [
        {
            "client_id": "7f00000108fc00000001",
            "remote": "127.0.0.1:5000",
            "gateway": "chat.gateway.0",
            "uid": "alice",
            "groups": ["a", "b"],
            "age": 61,
            "bytes_in": 10,
            "bytes_out": 20,
        }
    ]
    text = render_connections(rows, ["chat.gateway.1 (127.0.0.1:2301): no answer"])
    assert "7f00000108fc00000001  127.0.0.1:5000  chat.gateway.0  alice  a,b" in text
    assert "1 connections" in text and "warning: chat.gateway.1" in text


def test_line_buffer_splits_and_bounds() -> None:
    buffer = LineBuffer(limit=10)
    assert buffer.feed(b"one\ntw") == ["one"]
    assert buffer.feed(b"o\n\xff\n") == ["two", "\ufffd"]
    assert buffer.feed(b"x" * 11) == ["x" * 11]  # an endless line is cut, not hoarded
    assert buffer.feed(b"\n") == [""]


def test_line_buffer_reads_what_a_pipe_holds() -> None:
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    try:
        buffer = LineBuffer()
        assert buffer.read_from(read_fd) == []
        os.write(write_fd, b"a\nb\nc")
        assert buffer.read_from(read_fd) == ["a", "b"]
        os.write(write_fd, b"\n")
        os.close(write_fd)
        assert buffer.read_from(read_fd) == ["c"]  # then EOF: nothing more, no error
    finally:
        os.close(read_fd)


def test_log_format_names_pid_and_role() -> None:
    import logging

    record = logging.makeLogRecord({"msg": "hello %s", "args": ("50%",), "levelname": "INFO"})
    record.name = "gateway"
    line = formatter_for("chat.gateway.1").format(record)
    assert line.endswith(f" {record.process} chat.gateway.1 INFO gateway: hello 50%")


_ANSWERING_MASTER = r"""
import json, os, signal, sys, time
stats_dir, names = sys.argv[1], sys.argv[2:]
def write(*_):
    for name in names:  # what a child's writer does: a temp file, then a rename
        tmp = os.path.join(stats_dir, "." + name + ".tmp")
        with open(tmp, "w") as f:
            json.dump({"pid": 4242, "name": name, "updated_at": time.time()}, f)
        os.replace(tmp, os.path.join(stats_dir, name + ".json"))
signal.signal(signal.SIGUSR2, write)
print("ready", flush=True)
time.sleep(30)
"""


def _fake_run_dir(tmp_path: Any, names: list[str]) -> Any:
    from pygatewayworker.cluster.state import RunPaths, write_json_atomic

    paths = RunPaths.at(str(tmp_path))
    os.makedirs(paths.stats_dir)
    procs = [{"name": name, "pid": 4242, "status": "running"} for name in names]
    procs.append({"name": "a.Gone.0", "pid": 4243, "status": "stopped"})
    write_json_atomic(paths.state_file, {"master": {}, "processes": procs})
    for name in names:  # stale files, as left by the last tick
        write_json_atomic(
            os.path.join(paths.stats_dir, f"{name}.json"), {"pid": 4242, "updated_at": 1.0}
        )
    return paths


@pytest.mark.parametrize("answering", [["a.Gateway.0", "a.Worker.0"], ["a.Gateway.0"]])
def test_status_waits_for_the_stats_it_asked_for(tmp_path: Any, answering: list[str]) -> None:
    """``status`` asks the master (``SIGUSR2``) and reads the stats once every running
    child wrote them after the question; a child that does not answer is shown with
    its last file after ``STATS_SETTLE``, and a stopped one is not waited for."""
    import subprocess
    import sys
    import time

    from pygatewayworker.cluster import cli
    from pygatewayworker.cluster.state import read_stats

    names = ["a.Gateway.0", "a.Worker.0"]
    paths = _fake_run_dir(tmp_path, names)
    master = subprocess.Popen(
        [sys.executable, "-c", _ANSWERING_MASTER, paths.stats_dir, *answering],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert master.stdout is not None and master.stdout.readline() == "ready\n"
        asked = time.time()
        cli._ask_stats(paths, master.pid)
        stats = read_stats(paths.stats_dir)
    finally:
        master.kill()
        master.wait()
    for name in names:
        fresh = stats[name]["updated_at"] >= asked
        assert fresh == (name in answering), (name, stats[name])
