"""gateway.fdwatch: one warning per interval at the file-descriptor limit, from the
loop's accept failures (asyncio) or from counting descriptors (uvloop says nothing);
and with a real asyncio server in a process whose limit is nearly reached."""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
from typing import Any

import pytest

from pygatewayworker.gateway import fdwatch
from pygatewayworker.gateway.fdwatch import LOG_INTERVAL, FdWatch


def test_accept_failures_are_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.new_event_loop()
    try:
        watch = FdWatch()
        emfile = {"message": "accept", "exception": OSError(errno.EMFILE, "Too many open files")}
        for _ in range(50):
            watch.exception_handler(loop, emfile)
        assert watch.reached == 50
        assert caplog.text.count("file-descriptor limit reached") == 1
        assert f"of {fdwatch.fd_limit()} (RLIMIT_NOFILE)" in caplog.text
        watch.note(loop.time() + LOG_INTERVAL + 1)
        assert caplog.text.count("file-descriptor limit reached") == 2
        other: dict[str, Any] = {"message": "something else", "exception": ValueError("x")}
        with caplog.at_level(logging.ERROR, "asyncio"):
            watch.exception_handler(loop, other)  # goes to the default handler
        assert "something else" in caplog.text and watch.reached == 51
    finally:
        loop.close()


def test_counting_sees_the_limit(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    watch = FdWatch()
    watch.check(0.0)
    assert watch.reached == 0
    monkeypatch.setattr(fdwatch, "fd_limit", lambda: fdwatch.open_fds() + 2)
    watch.check(1.0)  # within the check interval: not counted yet
    assert watch.reached == 0
    watch.check(fdwatch.CHECK_INTERVAL + 1)
    assert watch.reached == 1 and "file-descriptor limit reached" in caplog.text


def test_no_count_while_the_known_sockets_are_far_below_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fdwatch, "fd_limit", lambda: 1000)
    monkeypatch.setattr(fdwatch, "open_fds", lambda: 995)  # what a count would find
    watch = FdWatch()
    watch.check(0.0, known=100)  # far below: not counted
    assert watch.reached == 0
    watch.check(fdwatch.CHECK_INTERVAL + 1, known=900)  # near: counted, at the limit
    assert watch.reached == 1


async def test_a_server_at_its_limit_logs_it(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    watch = FdWatch()
    old_handler = loop.get_exception_handler()
    loop.set_exception_handler(watch.exception_handler)
    server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    spare = [socket.socket() for _ in range(8)]  # made before the limit drops
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (fdwatch.open_fds() + 1, hard))
    try:
        for sock in spare:
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", port))
        for _ in range(100):
            if watch.reached:
                break
            await asyncio.sleep(0.02)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        loop.set_exception_handler(old_handler)
        server.close()
        for sock in spare:
            sock.close()
    assert watch.reached and caplog.text.count("file-descriptor limit reached") == 1
