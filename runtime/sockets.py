"""Binding a listening socket, and explaining "address in use".

The master binds every socket of the declarations before any child exists
(``cluster.sockets``), so a port conflict is reported at once with nothing running;
a role started on its own (tests, a config that binds in the child) binds here too,
with the same messages. ``SO_REUSEPORT`` would also let *another* program sharing
our uid join a group of listeners silently (two clusters on one port), so before
binding a public group the master probes the address with a plain socket
(:func:`probe_free`): a listener held by anyone makes that probe fail with "address
in use".
"""

from __future__ import annotations

import errno
import os
import socket

__all__ = ["BindError", "bind_listener", "explain_bind_error", "probe_free", "holder_of_port"]

BACKLOG = socket.SOMAXCONN


class BindError(Exception):
    """A listening address cannot be bound; the message says which and why."""


def _family(host: str, port: int) -> tuple[socket.AddressFamily, tuple[object, ...]]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def _new_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    try:
        family, sockaddr = _family(host, port)
    except socket.gaierror as exc:
        raise OSError(errno.EADDRNOTAVAIL, f"cannot resolve {host!r}: {exc}") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


def probe_free(host: str, port: int) -> None:
    """Raise ``OSError`` (EADDRINUSE) if anyone listens on ``host:port``."""
    if port:
        _new_socket(host, port, reuse_port=False).close()


def bind_listener(host: str, port: int, what: str, reuse_port: bool = False) -> socket.socket:
    """Bind and listen on ``host:port``; raise :class:`BindError` explaining ``what``
    could not be bound (e.g. ``"app chat gateway 'gateway' public port"``)."""
    try:
        sock = _new_socket(host, port, reuse_port)
        sock.listen(BACKLOG)
    except OSError as exc:
        raise BindError(explain_bind_error(host, port, what, exc)) from None
    sock.set_inheritable(False)
    return sock


def explain_bind_error(host: str, port: int, what: str, exc: OSError) -> str:
    """A message that says what happened and what to do."""
    where = f"{host}:{port} ({what})"
    if exc.errno == errno.EADDRINUSE:
        holder = holder_of_port(port)
        if holder is None:
            by = " by another process"
        elif holder[0] == os.getpid():
            by = " by another declaration of these apps"
        else:
            by = f" by pid {holder[0]} ({holder[1]})"
        return f"cannot listen on {where}: address in use{by}; stop it or change the port"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {where}: {host} is not an address of this host"
    if exc.errno == errno.EACCES:
        return f"cannot listen on {where}: permission denied (ports below 1024 need privileges)"
    return f"cannot listen on {where}: {exc.strerror or exc}"


def holder_of_port(port: int) -> tuple[int, str] | None:
    """``(pid, command line)`` of a process listening on TCP ``port``, if visible."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{entry}/fd/{fd}") in targets:
                    return int(entry), _cmdline(int(entry))
            except OSError:
                continue
    return None


def _listening_inodes(port: int) -> set[str]:
    """Inodes of sockets in state LISTEN on ``port`` (from /proc/net/tcp{,6})."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as fh:
                rows = fh.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) < 10 or fields[3] != "0A":  # 0A: LISTEN
                continue
            if int(fields[1].rpartition(":")[2], 16) == port:
                inodes.add(fields[9])
    return inodes


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            text = " ".join(fh.read().decode("utf-8", "replace").replace("\0", " ").split())
    except OSError:
        return "?"
    return text[:120] or "?"
