"""The commands and queries a gateway executes for workers and push clients.

How this works
--------------
``GatewayServer`` builds its dispatch table by name from the :class:`Cmd` enum:
``SEND_TO_GROUP`` is handled by ``cmd_send_to_group(link, packet)``, ``Q_UIDS`` by
``query_uids(*args)`` whose result goes back in one ``REPLY``. :class:`Commands`
holds those methods and is mixed into ``GatewayServer``.

A malformed packet raises ``ValueError``/``TypeError``/``KeyError`` (wrong field
count, wrong types, a message that is neither ``str`` nor ``bytes``); the link
handling answers ``ERROR`` and closes that link only.

Sends are the hot path: a broadcast encodes its WebSocket frame once
(:func:`data_frame`) and writes the same bytes object to every recipient's
transport (:meth:`Commands.deliver`), with no per-recipient allocation.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pygatewayworker.gateway import wsproto
from pygatewayworker.gateway.client_id import MAX_CONN_ID, encode_client_id
from pygatewayworker.gateway.config import Gateway
from pygatewayworker.gateway.connection import S_OPEN, ClientConnection
from pygatewayworker.gateway.directory import Directory
from pygatewayworker.gateway.protocol import Cmd

if TYPE_CHECKING:
    from pygatewayworker.gateway.links import InternalLink

__all__ = ["Commands", "Frames", "coalesce", "data_frame"]

_monotonic = time.monotonic
_text_frame = wsproto.text_frame
_binary_frame = wsproto.binary_frame


class Frames(bytes):
    """The encoded frames of ``messages`` messages for the same recipients, written with
    one ``write`` per recipient (see :func:`coalesce`)."""

    messages: int


def data_frame(data: object) -> bytes:
    """The frame for a message from a link: ``str`` -> text, ``bytes`` -> binary
    (:class:`Frames` are already encoded). Raises ``TypeError`` for anything else (a
    malformed command)."""
    if type(data) is str:
        return _text_frame(data)
    if type(data) is bytes:
        return _binary_frame(data)
    if type(data) is Frames:
        return data
    raise TypeError(f"message must be str or bytes, got {type(data).__name__}")


def _conn_id(value: object) -> int:
    """``value`` as a connection id; ``TypeError``/``ValueError`` (a malformed
    command: ``ERROR`` and the link is closed) unless it is an int in 1..2**32-1."""
    if type(value) is not int:
        raise TypeError(f"conn_id must be an int, got {type(value).__name__}")
    if not 0 < value <= MAX_CONN_ID:
        raise ValueError(f"conn_id {value} is outside 1..{MAX_CONN_ID}")
    return value


def _int_list(value: object, what: str) -> list[int]:
    if type(value) is not list or not all(type(v) is int and 0 < v <= MAX_CONN_ID for v in value):
        raise TypeError(f"{what} must be a list of conn_ids (ints in 1..{MAX_CONN_ID})")
    return value


def _str_list(value: object, what: str) -> list[str]:
    if type(value) is not list or not all(type(v) is str for v in value):
        raise TypeError(f"{what} must be a list of str")
    return value


# command -> (index of the data field, indexes of the recipient fields, packet length)
_MERGEABLE: dict[Cmd, tuple[int, tuple[int, ...], int]] = {
    Cmd.SEND_TO_GROUP: (2, (1, 3), 4),
    Cmd.SEND_TO_ALL: (1, (2, 3), 4),
    Cmd.SEND_TO_UID: (2, (1,), 3),
}


def coalesce(packets: list[list[Any]]) -> list[list[Any]]:
    """Write coalescing: merge each run of consecutive broadcasts with the same
    recipients (same command, groups/uids/ids and exclude) into one packet whose data
    is :class:`Frames`, so every recipient gets one ``write`` for the whole run. Each
    message stays its own WebSocket frame, in order. A run holding a malformed
    message is left alone (the normal path rejects it)."""
    if len(packets) < 2:
        return packets
    out: list[list[Any]] = []
    i, n = 0, len(packets)
    while i < n:
        packet = packets[i]
        spec = _MERGEABLE.get(packet[0])
        j = i + 1
        if spec is not None and len(packet) == spec[2]:
            at, keys, size = spec
            while (
                j < n
                and packets[j][0] is packet[0]
                and len(packets[j]) == size
                and all(packets[j][k] == packet[k] for k in keys)
            ):
                j += 1
            if j - i > 1:
                try:
                    frames = Frames(b"".join([data_frame(p[at]) for p in packets[i:j]]))
                except TypeError:
                    out.extend(packets[i:j])
                else:
                    frames.messages = j - i
                    merged = list(packet)
                    merged[at] = frames
                    out.append(merged)
                i = j
                continue
        out.append(packet)
        i = j
    return out


class Commands:
    """``cmd_*`` and ``query_*`` handlers; mixed into ``GatewayServer`` (which sets
    the attributes declared here)."""

    config: Gateway
    directory: Directory[ClientConnection]
    internal_port: int
    messages_out: int
    bytes_out: int
    broadcast_deliveries: int

    def stats(self) -> dict[str, Any]:  # provided by GatewayServer
        raise NotImplementedError

    # ---- send commands ------------------------------------------------------------
    def deliver(self, recipients: Iterable[ClientConnection], frame: bytes) -> None:
        """Write one encoded frame (or :class:`Frames`) to every open recipient."""
        size = len(frame)
        count = frame.messages if type(frame) is Frames else 1
        sent = 0
        is_open = S_OPEN
        for conn in recipients:
            if conn.state == is_open:
                conn.transport.write(frame)
                conn.bytes_out += size
                sent += 1
        self.messages_out += sent * count
        self.bytes_out += sent * size
        self.broadcast_deliveries += sent * count  # metrics

    def cmd_send_to_client(self, link: InternalLink, packet: list[Any]) -> None:
        _, conn_id, data = packet
        frame = data_frame(data)
        if type(conn_id) is not int or not 0 < conn_id <= MAX_CONN_ID:
            _conn_id(conn_id)  # raises: a malformed command
        conn = self.directory.get(conn_id)
        if conn is not None:
            conn.send_frame(frame)

    def cmd_send_to_all(self, link: InternalLink, packet: list[Any]) -> None:
        _, data, conn_ids, exclude = packet
        frame = data_frame(data)
        if conn_ids is not None:
            _int_list(conn_ids, "conn_ids")
        if exclude is not None:
            _int_list(exclude, "exclude")
        self.deliver(self.directory.recipients_all(conn_ids, exclude), frame)

    def cmd_send_to_uid(self, link: InternalLink, packet: list[Any]) -> None:
        _, uids, data = packet
        frame = data_frame(data)
        self.deliver(self.directory.recipients_uids(_str_list(uids, "uids")), frame)

    def cmd_send_to_group(self, link: InternalLink, packet: list[Any]) -> None:
        _, groups, data, exclude = packet
        frame = data_frame(data)
        if exclude is not None:
            _int_list(exclude, "exclude")
        recipients = self.directory.recipients_groups(_str_list(groups, "groups"), exclude)
        self.deliver(recipients, frame)

    def cmd_close_client(self, link: InternalLink, packet: list[Any]) -> None:
        _, conn_id, data = packet
        frame = None if data is None else data_frame(data)
        conn = self.directory.get(_conn_id(conn_id))
        if conn is not None:
            if frame is not None:
                conn.send_frame(frame)
            conn.close_reason = conn.close_reason or "app_close"  # metrics
            conn.close_ws(1000)

    def cmd_destroy_client(self, link: InternalLink, packet: list[Any]) -> None:
        _, conn_id = packet
        conn = self.directory.get(_conn_id(conn_id))
        if conn is not None:
            conn.close_reason = conn.close_reason or "app_close"  # metrics
            conn.abort()

    # ---- state commands -----------------------------------------------------------
    def cmd_bind_uid(self, link: InternalLink, packet: list[Any]) -> None:
        _, conn_id, uid = packet
        self.directory.bind_uid(_conn_id(conn_id), uid)

    def cmd_unbind_uid(self, link: InternalLink, packet: list[Any]) -> None:
        _, conn_id, uid = packet
        self.directory.unbind_uid(_conn_id(conn_id), uid)

    def cmd_join_group(self, link: InternalLink, packet: list[Any]) -> None:
        _, conn_id, group = packet
        self.directory.join_group(_conn_id(conn_id), group)

    def cmd_leave_group(self, link: InternalLink, packet: list[Any]) -> None:
        _, conn_id, group = packet
        self.directory.leave_group(_conn_id(conn_id), group)

    def cmd_ungroup(self, link: InternalLink, packet: list[Any]) -> None:
        _, group = packet
        self.directory.ungroup(group)

    def cmd_set_session(self, link: InternalLink, packet: list[Any]) -> None:
        _, conn_id, session = packet
        self.directory.set_session(_conn_id(conn_id), session)

    def cmd_update_session(self, link: InternalLink, packet: list[Any]) -> None:
        _, conn_id, partial = packet
        self.directory.update_session(_conn_id(conn_id), partial)

    # ---- queries (arguments after req) --------------------------------------------
    def query_client_info(self, conn_id: int) -> Any:
        return self.directory.client_info(_conn_id(conn_id))

    def query_uids(self, uids: list[str]) -> Any:
        return self.directory.uids_info(_str_list(uids, "uids"))

    def query_groups(self, groups: list[str] | None, what: str) -> Any:
        if groups is not None:
            _str_list(groups, "groups")
        return self.directory.groups_info(groups, what)

    def query_all_groups(self, what: str) -> Any:
        return self.directory.all_groups_info(what)

    def query_all_uids(self) -> Any:
        return self.directory.all_uids()

    def query_connections(self) -> Any:
        now = _monotonic()
        ip, port = self.config.lan_ip, self.internal_port
        return [
            {
                "client_id": encode_client_id(ip, port, conn.conn_id),
                "remote": f"{conn.remote_ip}:{conn.remote_port}",
                "uid": conn.uid,
                "groups": sorted(conn.groups) if conn.groups else [],
                "age": round(now - conn.since, 3),
                "bytes_in": conn.bytes_in,
                "bytes_out": conn.bytes_out,
            }
            for conn in self.directory.entries()
        ]

    def query_stats(self) -> Any:
        return self.stats()
