"""Ports for tests, handed out without races.

Code under test that can bind port 0 itself should (``PushAPI(listen="...:0")``,
``RegisterServer``, ``GatewayServer``...): it reports the port it got, and no helper
is needed. The two other needs are met here:

- :func:`refused_port`: a loopback port where nothing listens, for "this register or
  gateway is unreachable". This process keeps a socket *bound* to it without
  listening, so a connection is refused at once and nothing else can bind the port
  while the tests run. (Binding port 0, closing, and returning the number would let
  any other process take the port before it is used.)
- :class:`HeldPort`: one port that servers can leave and come back to (a restart):
  kept bound with ``SO_REUSEPORT`` and never listening, it refuses connections
  while no server listens and stays ours in between.
- :func:`reserve_ports`: a block of consecutive ports for a cluster started as
  separate processes from start files, which name their ports in advance. Blocks
  come from below the kernel's ephemeral range, so no outgoing connection of any
  process is given one of them, and each port is locked (``flock`` on a file per
  port in a shared directory) for the life of this test process, so test runs side
  by side on one machine never hand out the same port. A port that some other
  program holds is skipped (probed by binding it).
"""

from __future__ import annotations

import fcntl
import os
import random
import socket
import tempfile
import time
from pathlib import Path
from typing import IO

__all__ = ["HeldPort", "port_is_free", "refused_port", "reserve_ports"]

LOWEST = 20000
LOCK_DIR = Path(tempfile.gettempdir()) / "pygatewayworker-test-ports"


class _Held:
    """What this process keeps open until it exits: the refusing socket and the
    lock files of its reserved ports."""

    refusing: socket.socket | None = None
    locks: list[IO[bytes]] = []


def refused_port() -> int:
    """A loopback port that refuses connections for as long as this process runs."""
    if _Held.refusing is None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        _Held.refusing = sock
    port: int = _Held.refusing.getsockname()[1]
    return port


class HeldPort:
    """A loopback port kept for a test while servers start and stop on it."""

    def __init__(self) -> None:
        self._hold = self._socket()
        self._hold.bind(("127.0.0.1", 0))
        self.port: int = self._hold.getsockname()[1]

    @staticmethod
    def _socket() -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        return sock

    def listener(self) -> socket.socket:
        """A new socket listening on the port, for a server to take over."""
        sock = self._socket()
        sock.bind(("127.0.0.1", self.port))
        sock.listen()
        return sock

    def close(self) -> None:
        self._hold.close()


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on ``host:port`` and we could bind it."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _lock(port: int) -> IO[bytes] | None:
    """The lock of ``port`` if no other test process holds it, else ``None``."""
    LOCK_DIR.mkdir(exist_ok=True)
    handle = open(LOCK_DIR / f"{port}.lock", "ab")  # noqa: SIM115 - held until exit
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def _reserve(base: int, count: int) -> list[IO[bytes]] | None:
    locks: list[IO[bytes]] = []
    for port in range(base, base + count):
        lock = _lock(port)
        if lock is not None:
            locks.append(lock)
        if lock is None or not (port_is_free(port) and port_is_free(port, "0.0.0.0")):
            for held in locks:
                held.close()
            return None
    return locks


def reserve_ports(count: int) -> int:
    """A base port such that ``base .. base+count-1`` are free and reserved for this
    test process (see the module docstring)."""
    top = _ephemeral_start()
    if top - LOWEST < 1000:  # an unusual kernel setting: no room below the range
        top = 45000
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(500):
        base = rng.randrange(LOWEST, top - count)
        locks = _reserve(base, count)
        if locks is not None:
            _Held.locks.extend(locks)
            return base
    raise RuntimeError(f"no block of {count} free ports found in {LOWEST}..{top}")
