"""A small Python stand-in for PHP's GatewayClient, for tests.

``packet()`` builds GatewayProtocol packets by hand from the protocol description
(``struct`` format ``>IBIHIHIBHI``: pack_len counting the whole packet, cmd,
local_ip, local_port, client_ip, client_port, connection_id, flag, gateway_port,
ext_len; then ext_data, then the body), independently of
``gateway.gatewayprotocol``. :class:`PhpClient` makes the calls the way GatewayClient
makes them: it asks the register for the gateways, prefixes every call with the
``GATEWAY_CLIENT_CONNECT`` packet when it has a secret, opens one connection per call,
sends to every gateway for cluster-wide calls, and reads replies as a 4-byte length
and a serialized value.
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

from pygatewayworker.gateway.phpserialize import dumps, loads

__all__ = ["PhpClient", "PhpError", "packet", "split_client_id", "ext_json"]

HEAD = struct.Struct(">IBIHIHIBHI")
SCALAR = 0x01
RAW = 0x02

# GatewayProtocol::CMD_* numbers
SEND_TO_ONE, SEND_TO_ALL, KICK, DESTROY, UPDATE_SESSION = 5, 6, 7, 8, 9
GET_ALL_CLIENT_SESSIONS, IS_ONLINE, BIND_UID, UNBIND_UID, SEND_TO_UID = 10, 11, 12, 13, 14
GET_CLIENT_ID_BY_UID, BATCH_GET_CLIENT_ID_BY_UID = 15, 16
JOIN_GROUP, LEAVE_GROUP, SEND_TO_GROUP, GET_CLIENT_SESSIONS_BY_GROUP = 20, 21, 22, 23
GET_CLIENT_COUNT_BY_GROUP, SELECT, GET_GROUP_ID_LIST, UNGROUP = 24, 25, 26, 27
BATCH_GET_CLIENT_COUNT_BY_GROUP = 28
WORKER_CONNECT, GATEWAY_CLIENT_CONNECT, GET_SESSION_BY_CLIENT_ID, SET_SESSION = 200, 202, 203, 204


class PhpError(Exception):
    """The gateway answered with an error reply (PHP's unserialize() would fail)."""


def ext_json(value: Any) -> bytes:
    """ext_data as PHP's json_encode writes it."""
    return json.dumps(value, separators=(",", ":")).replace("/", "\\/").encode()


def packet(
    cmd: int, conn_id: int = 0, ext: bytes | str = b"", body: Any = b"", flag: int = 0
) -> bytes:
    """One packet as ``GatewayProtocol::encode`` builds it: a str/bytes body is sent
    as it is with the scalar flag, anything else is serialize()d."""
    if isinstance(body, str):
        body = body.encode()
    if isinstance(body, bytes):
        flag |= SCALAR
    else:
        body = dumps(body)
    if isinstance(ext, str):
        ext = ext.encode()
    length = HEAD.size + len(ext) + len(body)
    return HEAD.pack(length, cmd, 0, 0, 0, 0, conn_id, flag, 0, len(ext)) + ext + body


def split_client_id(client_id: str) -> tuple[str, int]:
    """``("ip:port", connection_id)`` of a client_id, as ``Context::clientIdToAddress``."""
    raw = bytes.fromhex(client_id)
    ip = ".".join(str(b) for b in raw[:4])
    port, conn_id = struct.unpack(">HI", raw[4:])
    return f"{ip}:{port}", conn_id


class PhpClient:
    """GatewayClient's calls, made over GatewayProtocol like the PHP library."""

    def __init__(self, register: str, secret: str = "", timeout: float = 5.0) -> None:
        self.register = register
        self.secret = secret
        self.timeout = timeout

    # ---- transport ---------------------------------------------------------------
    def auth(self) -> bytes:
        if not self.secret:
            return b""
        body = ext_json({"secret_key": self.secret})
        return packet(GATEWAY_CLIENT_CONNECT, body=body)

    async def addresses(self) -> list[str]:
        host, port = self.register.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            line = {"event": "worker_connect", "secret_key": self.secret}
            writer.write(json.dumps(line).encode() + b"\n")
            answer = json.loads(await asyncio.wait_for(reader.readline(), self.timeout))
            return sorted(answer["addresses"])
        finally:
            writer.close()

    async def send_raw(self, address: str, data: bytes) -> None:
        """Write ``data`` on a new connection (with the auth prefix) and close."""
        host, port = address.rsplit(":", 1)
        _, writer = await asyncio.open_connection(host, int(port))
        writer.write(self.auth() + data)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def ask_raw(self, address: str, data: bytes) -> bytes:
        """The reply payload to ``data`` (with the auth prefix), serialized."""
        host, port = address.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(self.auth() + data)
            head = await asyncio.wait_for(reader.readexactly(4), self.timeout)
            return await asyncio.wait_for(
                reader.readexactly(struct.unpack(">I", head)[0]), self.timeout
            )
        finally:
            writer.close()

    async def ask(self, address: str, data: bytes) -> Any:
        payload = await self.ask_raw(address, data)
        if payload.startswith(b"#"):
            raise PhpError(payload.decode(errors="replace"))
        return loads(payload, text=True)

    async def send_all(self, data: bytes) -> None:
        for address in await self.addresses():
            await self.send_raw(address, data)

    async def ask_all(self, data: bytes) -> dict[str, Any]:
        return {address: await self.ask(address, data) for address in await self.addresses()}

    async def to_client(self, cmd: int, client_id: str, ext: Any = b"", body: Any = b"") -> None:
        address, conn_id = split_client_id(client_id)
        await self.send_raw(address, packet(cmd, conn_id, ext, body))

    # ---- GatewayClient's API -------------------------------------------------------
    async def send_to_client(self, client_id: str, message: Any, raw: bool = False) -> None:
        address, conn_id = split_client_id(client_id)
        await self.send_raw(address, packet(SEND_TO_ONE, conn_id, b"", message, RAW if raw else 0))

    async def send_to_all(
        self, message: Any, client_ids: list[str] | None = None, exclude: list[str] | None = None
    ) -> None:
        if client_ids is not None:
            by_address: dict[str, dict[int, int]] = {}
            for cid in client_ids:
                if exclude and cid in exclude:
                    continue
                address, conn_id = split_client_id(cid)
                by_address.setdefault(address, {})[conn_id] = conn_id
            for address, conns in by_address.items():
                ext = ext_json({"connections": conns})
                await self.send_raw(address, packet(SEND_TO_ALL, 0, ext, message))
            return
        excluded = self._by_address(exclude or [])
        for address in await self.addresses():
            ext = ext_json({"exclude": excluded[address]}) if address in excluded else b""
            await self.send_raw(address, packet(SEND_TO_ALL, 0, ext, message))

    async def send_to_uid(self, uids: Any, message: Any) -> None:
        uids = uids if isinstance(uids, list) else [uids]
        await self.send_all(packet(SEND_TO_UID, 0, ext_json(uids), message))

    async def send_to_group(
        self, groups: Any, message: Any, exclude: list[str] | None = None, raw: bool = False
    ) -> None:
        groups = groups if isinstance(groups, list) else [groups]
        excluded = self._by_address(exclude or [])
        flag = RAW if raw else 0
        for address in await self.addresses():
            ext = ext_json({"group": groups, "exclude": excluded.get(address)})
            await self.send_raw(address, packet(SEND_TO_GROUP, 0, ext, message, flag))

    @staticmethod
    def _by_address(client_ids: list[str]) -> dict[str, dict[int, int]]:
        out: dict[str, dict[int, int]] = {}
        for cid in client_ids:
            address, conn_id = split_client_id(cid)
            out.setdefault(address, {})[conn_id] = conn_id
        return out

    async def close_client(self, client_id: str, message: Any = None) -> None:
        await self.to_client(KICK, client_id, b"", message)

    async def destroy_client(self, client_id: str) -> None:
        await self.to_client(DESTROY, client_id)

    async def bind_uid(self, client_id: str, uid: Any) -> None:
        await self.to_client(BIND_UID, client_id, str(uid))

    async def unbind_uid(self, client_id: str, uid: Any) -> None:
        await self.to_client(UNBIND_UID, client_id, str(uid))

    async def join_group(self, client_id: str, group: Any) -> None:
        await self.to_client(JOIN_GROUP, client_id, str(group))

    async def leave_group(self, client_id: str, group: Any) -> None:
        await self.to_client(LEAVE_GROUP, client_id, str(group))

    async def ungroup(self, group: Any) -> None:
        await self.send_all(packet(UNGROUP, 0, str(group)))

    async def set_session(self, client_id: str, session: dict[Any, Any]) -> None:
        await self.to_client(SET_SESSION, client_id, dumps(session))

    async def update_session(self, client_id: str, session: dict[Any, Any]) -> None:
        await self.to_client(UPDATE_SESSION, client_id, dumps(session))

    async def get_session(self, client_id: str) -> Any:
        address, conn_id = split_client_id(client_id)
        return await self.ask(address, packet(GET_SESSION_BY_CLIENT_ID, conn_id))

    async def is_online(self, client_id: str) -> int:
        address, conn_id = split_client_id(client_id)
        return int(await self.ask(address, packet(IS_ONLINE, conn_id)))

    async def get_client_count_by_group(self, group: str = "") -> int:
        answers = await self.ask_all(packet(GET_CLIENT_COUNT_BY_GROUP, 0, group))
        return sum(answers.values())

    async def get_all_client_sessions(self, group: str = "") -> dict[str, Any]:
        if group:
            data = packet(GET_CLIENT_SESSIONS_BY_GROUP, 0, group)
        else:
            data = packet(GET_ALL_CLIENT_SESSIONS)
        out: dict[str, Any] = {}
        for address, rows in (await self.ask_all(data)).items():
            for conn_id, blob in _items(rows):
                raw = blob.encode() if isinstance(blob, str) else blob
                out[_client_id(address, conn_id)] = loads(raw, text=True) if raw else []
        return out

    async def get_client_id_by_uid(self, uid: Any) -> list[str]:
        answers = await self.ask_all(packet(GET_CLIENT_ID_BY_UID, 0, str(uid)))
        return [_client_id(a, c) for a, ids in answers.items() for _, c in _items(ids)]

    async def batch_get_client_id_by_uid(self, uids: list[Any]) -> dict[Any, list[str]]:
        answers = await self.ask_all(packet(BATCH_GET_CLIENT_ID_BY_UID, 0, ext_json(uids)))
        out: dict[Any, list[str]] = {}
        for address, found in answers.items():
            for uid, ids in _items(found):
                out.setdefault(uid, []).extend(_client_id(address, c) for _, c in _items(ids))
        return out

    async def batch_get_client_count_by_group(self, groups: list[Any]) -> dict[Any, int]:
        answers = await self.ask_all(packet(BATCH_GET_CLIENT_COUNT_BY_GROUP, 0, ext_json(groups)))
        out: dict[Any, int] = {}
        for counts in answers.values():
            for group, count in _items(counts):
                out[group] = out.get(group, 0) + count
        return out

    async def get_all_group_id_list(self) -> list[Any]:
        answers = await self.ask_all(packet(GET_GROUP_ID_LIST))
        return list(dict.fromkeys(g for groups in answers.values() for _, g in _items(groups)))

    async def select(
        self, fields: list[str], where: dict[str, Any] | None = None
    ) -> dict[str, dict[str, Any]]:
        """``Gateway::select``: rows by client_id (in each gateway's order)."""
        where = dict(where or {})
        rows: dict[str, dict[str, Any]] = {}
        if "client_id" in where:
            targets = self._by_address(where.pop("client_id"))
            for address, conns in targets.items():
                spec = {"fields": fields, "where": {**where, "connection_id": conns}}
                answer = await self.ask(address, packet(SELECT, 0, ext_json(spec)))
                rows.update({_client_id(address, c): r for c, r in _items(answer)})
            return rows
        spec = {"fields": fields, "where": where or []}
        for address, answer in (await self.ask_all(packet(SELECT, 0, ext_json(spec)))).items():
            rows.update({_client_id(address, c): r for c, r in _items(answer)})
        return rows


def _items(value: Any) -> list[tuple[Any, Any]]:
    """A PHP array's (key, value) pairs, whether it came back as a list or a dict."""
    if isinstance(value, list):
        return list(enumerate(value))
    return list(value.items()) if value else []


def _client_id(address: str, conn_id: int) -> str:
    ip, port = address.rsplit(":", 1)
    packed = bytes(int(x) for x in ip.split(".")) + struct.pack(">HI", int(port), conn_id)
    return packed.hex()
