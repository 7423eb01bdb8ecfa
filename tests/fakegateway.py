"""A fake gateway for the gatewayclient / businessworker tests (no tests here).

:class:`FakeGateway` listens on 127.0.0.1 port 0 and speaks ``gateway/protocol.py``
like the real gateway's internal port: HELLO/WELCOME (checking the secret),
PING/PONG, WORKER_LEAVE/LEAVE_ACK, state commands applied to an in-memory directory
and queries answered from it. Every packet it receives is recorded, so tests can
check exactly what reached which gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from pygatewayworker.gateway.client_id import encode_client_id
from pygatewayworker.gateway.linkproto import LinkRefused, LinkServer
from pygatewayworker.gateway.protocol import (
    Cmd,
    Decoder,
    ProtocolError,
    encode,
    pack_session,
    unpack_session,
)

UNIT = 5.0  # generous bound for every wait in these tests


async def wait_until(predicate: Callable[[], bool], timeout: float = UNIT) -> None:
    """Poll ``predicate`` until true; fail the test after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def announced_register(addresses: list[str], secret: str) -> AsyncIterator[str]:
    """A real register (port 0) listing ``addresses``, announced by the real
    ``GatewayAnnouncer``; yields the register's address."""
    from pygatewayworker.register.config import Register
    from pygatewayworker.register.discovery import GatewayAnnouncer
    from pygatewayworker.register.server import RegisterServer

    register = RegisterServer(Register(listen="127.0.0.1:0", secret=secret))
    await register.start()
    where = f"127.0.0.1:{register.port}"
    announcers = [GatewayAnnouncer((where,), secret, address) for address in addresses]
    try:
        for announcer in announcers:
            await announcer.start()
            assert await announcer.wait_announced(UNIT)
        yield where
    finally:
        for announcer in announcers:
            await announcer.close()
        await register.stop(graceful=False)


@dataclass
class FakeConn:
    """One client connection in the fake directory."""

    uid: str | None = None
    groups: set[str] = field(default_factory=set)
    session: bytes | None = None


class FakeLink:
    """One worker/client link as the fake gateway sees it."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.role = ""
        self.name = ""
        self.welcomed = False

    def write(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)


class FakeGateway:
    """See the module docstring. ``answer_queries=False`` makes it silent to queries;
    ``events_before_ack`` are sent to a leaving worker before its LEAVE_ACK."""

    def __init__(self, secret: str = "", public_port: int = 7000) -> None:
        self.secret = secret
        self.public_port = public_port
        self.answer_queries = True
        self.answer_pings = True
        self.send_leave_ack = True
        self.events_before_ack: list[list[Any]] = []
        self.received: list[list[Any]] = []
        self.links: list[FakeLink] = []
        self.conns: dict[int, FakeConn] = {}
        self.port = 0
        self._server: asyncio.Server | None = None

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self, port: int = 0) -> FakeGateway:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Close the listener and every link (like a gateway that exits)."""
        if self._server is not None:
            self._server.close()
        for link in self.links:
            link.writer.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), UNIT)
        self.links.clear()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # ---- helpers for tests -----------------------------------------------------------

    def client_id(self, conn_id: int) -> str:
        return encode_client_id("127.0.0.1", self.port, conn_id)

    def add_client(
        self,
        conn_id: int,
        uid: str | None = None,
        groups: tuple[str, ...] = (),
        session: dict[str, Any] | None = None,
    ) -> str:
        self.conns[conn_id] = FakeConn(
            uid, set(groups), None if session is None else pack_session(session)
        )
        return self.client_id(conn_id)

    def packets(self, *cmds: Cmd) -> list[list[Any]]:
        """Received packets of those commands (all non-upkeep packets without args)."""
        upkeep = {Cmd.HELLO, Cmd.PING, Cmd.PONG}
        return [p for p in self.received if (p[0] in cmds if cmds else p[0] not in upkeep)]

    def routes(
        self,
        kind: int,
        uids: tuple[list[str], list[str]] = ([], []),
        groups: tuple[list[str], list[str]] = ([], []),
    ) -> None:
        """Send ``ROUTES`` (``kind``; uids and groups as (added, removed)) to every
        welcomed link, as a real gateway reports where its members are."""
        packet = encode(Cmd.ROUTES, kind, uids[0], uids[1], groups[0], groups[1])
        for link in self.links:
            if link.welcomed:
                link.write(packet)

    def worker_links(self) -> list[FakeLink]:
        return [link for link in self.links if link.role == "worker" and link.welcomed]

    def emit(
        self,
        cmd: Cmd,
        conn_id: int,
        payload: Any = None,
        session: dict[str, Any] | bytes | None = None,
        remote: tuple[str, int] = ("203.0.113.7", 50000),
    ) -> None:
        """Send one client event to the (first) linked worker."""
        blob = pack_session(session) if isinstance(session, dict) else session
        packet = encode(cmd, conn_id, blob, remote[0], remote[1], payload)
        self.worker_links()[0].write(packet)

    # ---- protocol --------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = FakeLink(writer)
        self.links.append(link)
        decoder = Decoder()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                for packet in decoder.feed(data):
                    self.received.append(packet)
                    if not self._handle(link, packet):
                        return
                await writer.drain()
        except (ConnectionError, ProtocolError):
            pass
        finally:
            writer.close()
            if link in self.links:
                self.links.remove(link)

    def _handle(self, link: FakeLink, packet: list[Any]) -> bool:
        cmd = packet[0]
        if cmd is Cmd.HELLO:
            proto = LinkServer(self.secret, 10.0, 30.0, now=0.0)  # the gateway's rules
            try:
                hello = proto.receive_hello(packet)
            except LinkRefused as exc:
                link.write(proto.refuse(0, str(exc), now=0.0))
                return False
            link.role, link.name, link.welcomed = hello.role, hello.name, True
            info = {
                "lan_ip": "127.0.0.1",
                "port": self.port,
                "public_host": "127.0.0.1",
                "public_port": self.public_port,
                "name": "fake",
                "pid": os.getpid(),
            }
            link.write(proto.welcome(info))
        elif cmd is Cmd.PING:
            if self.answer_pings:
                link.write(encode(Cmd.PONG))
        elif cmd is Cmd.WORKER_LEAVE:
            for event in self.events_before_ack:
                link.write(encode(*event))
            if self.send_leave_ack:
                link.write(encode(Cmd.LEAVE_ACK))
        elif Cmd.Q_CLIENT_INFO <= cmd <= Cmd.Q_STATS:
            if self.answer_queries:
                link.write(LinkServer.reply(packet[1], self._answer(cmd, packet[2:])))
        else:
            self._apply(cmd, packet[1:])
        return True

    def _apply(self, cmd: Cmd, args: list[Any]) -> None:
        if cmd in (Cmd.BIND_UID, Cmd.UNBIND_UID, Cmd.JOIN_GROUP, Cmd.LEAVE_GROUP):
            conn = self.conns.get(args[0])
            if conn is None:
                return
            if cmd is Cmd.BIND_UID:
                conn.uid = args[1]
            elif cmd is Cmd.UNBIND_UID and conn.uid == args[1]:
                conn.uid = None
            elif cmd is Cmd.JOIN_GROUP:
                conn.groups.add(args[1])
            elif cmd is Cmd.LEAVE_GROUP:
                conn.groups.discard(args[1])
        elif cmd is Cmd.SET_SESSION and args[0] in self.conns:
            self.conns[args[0]].session = args[1]
        elif cmd is Cmd.UPDATE_SESSION and args[0] in self.conns:
            conn = self.conns[args[0]]
            conn.session = pack_session({**unpack_session(conn.session), **args[1]})
        elif cmd is Cmd.DESTROY_CLIENT:
            self.conns.pop(args[0], None)

    def _members(self, group: str) -> list[int]:
        if group == "":
            return list(self.conns)
        return [cid for cid, conn in self.conns.items() if group in conn.groups]

    def _group_value(self, conn_ids: list[int], what: str) -> Any:
        if what == "count":
            return len(conn_ids)
        if what == "ids":
            return conn_ids
        if what == "sessions":
            return {cid: self.conns[cid].session for cid in conn_ids}
        uids = [self.conns[cid].uid for cid in conn_ids]
        return sorted({uid for uid in uids if uid is not None})

    def _answer(self, cmd: Cmd, args: list[Any]) -> Any:
        if cmd is Cmd.Q_CLIENT_INFO:
            conn = self.conns.get(args[0])
            if conn is None:
                return None
            return {"uid": conn.uid, "session": conn.session, "groups": sorted(conn.groups)}
        if cmd is Cmd.Q_UIDS:
            found = {
                uid: [c for c, conn in self.conns.items() if conn.uid == uid] for uid in args[0]
            }
            return {uid: ids for uid, ids in found.items() if ids}
        if cmd is Cmd.Q_GROUPS:
            groups, what = args
            keys = [""] if groups is None else groups
            return {g: self._group_value(self._members(g), what) for g in keys}
        if cmd is Cmd.Q_ALL_GROUPS:
            names = sorted({g for conn in self.conns.values() for g in conn.groups})
            return {g: self._group_value(self._members(g), args[0]) for g in names}
        if cmd is Cmd.Q_ALL_UIDS:
            return sorted({conn.uid for conn in self.conns.values() if conn.uid is not None})
        if cmd is Cmd.Q_CONNECTIONS:
            return [
                {"client_id": self.client_id(cid), "uid": c.uid} for cid, c in self.conns.items()
            ]
        return {"connections": len(self.conns), "links": len(self.links)}


class FakeWatcher:
    """Stands in for ``GatewayDirectoryWatcher``: the test sets the list."""

    def __init__(self, addresses: list[str], ok: bool = True, error: str | None = None) -> None:
        self._addresses = frozenset(addresses)
        self.ok = ok
        self.last_error = error
        self.on_change: Callable[[frozenset[str]], None] | None = None
        self.closed = False

    def factory(
        self, registers: tuple[str, ...], secret: str, on_change: Callable[[frozenset[str]], None]
    ) -> FakeWatcher:
        self.on_change = on_change
        return self

    @property
    def addresses(self) -> frozenset[str]:
        return self._addresses

    def set(self, addresses: list[str]) -> None:
        self._addresses = frozenset(addresses)
        if self.on_change is not None:
            self.on_change(self._addresses)

    async def start(self) -> None:
        return None

    async def wait_first_list(self, timeout: float) -> bool:
        return self.ok

    async def close(self) -> None:
        self.closed = True
