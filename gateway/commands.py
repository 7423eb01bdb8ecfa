"""The Gateway API commands and queries a gateway executes for workers and push
clients: sends, uid/group/session changes and lookups.

How this works
--------------
The core (``gateway.core``) dispatches every packet by command name: ``SEND_TO_GROUP``
is handled by ``cmd_send_to_group(link, packet)``, ``Q_UIDS`` by ``query_uids(*args)``
whose result goes back in one ``REPLY``. :class:`Commands` holds those handlers for
the Gateway API; the link upkeep (``HELLO``, ``PING``, ``WORKER_LEAVE``, ``RELEASE``)
and the operator queries are the core's own.

A malformed packet raises ``ValueError``/``TypeError``/``KeyError`` (wrong field
count, wrong types, a message that is neither ``str`` nor ``bytes``); the core
answers ``ERROR`` and closes that link only.

Sends are the hot path: a broadcast encodes its WebSocket frame once
(:func:`data_frame`) and writes the same bytes object to every open recipient
(:meth:`Commands.deliver`), with no per-recipient allocation; consecutive broadcasts
to the same recipients that arrive in one batch of link input are merged first
(:func:`coalesce`), so each recipient gets one write for all of them. The broadcasts
count their deliveries (``Counters.broadcast_deliveries``, metrics).

Every write to clients goes through the gateway's :class:`~gateway.pacing.Pacer`:
a broadcast to more recipients than the loop turn has budget for is cut into
slices (``pacing.Delivery``), and while one is unfinished the writes of later
commands (unicasts, closes, broadcasts) queue behind it, so each client gets its
frames in command order.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from types import GeneratorType
from typing import Any, cast

from pygatewayworker.gateway.client_id import MAX_CONN_ID
from pygatewayworker.gateway.decider import DecisionTable, check_members
from pygatewayworker.gateway.directory import Directory
from pygatewayworker.gateway.frames import binary_frame, text_frame
from pygatewayworker.gateway.pacing import Call, Delivery, Pacer
from pygatewayworker.gateway.protocol import Cmd, check_close
from pygatewayworker.gateway.records import Client, Counters, Link
from pygatewayworker.gateway.websocket import State

__all__ = ["Commands", "Frames", "coalesce", "data_frame", "check_conn_id"]

_text_frame = text_frame
_binary_frame = binary_frame
_OPEN = State.OPEN


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


def check_conn_id(value: object) -> int:
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
    """The Gateway API handlers: ``cmd_*(link, packet)`` for commands (no answer),
    ``query_*(*args)`` for queries (the result is the ``REPLY``)."""

    def __init__(
        self,
        directory: Directory[Client],
        counters: Counters,
        clock: Callable[[], float],
        pacer: Pacer | None = None,
    ) -> None:
        self.directory = directory
        self.counters = counters
        self.clock = clock
        self.decisions = DecisionTable()
        """The keys this gateway decides (``Q_DECIDE_*``, see ``gateway.decider``)."""
        self.pacer = pacer if pacer is not None else Pacer(None)
        """Cuts large broadcasts into slices and keeps later writes behind them."""

    # ---- send commands ------------------------------------------------------------
    def deliver(self, recipients: Iterable[Client], frame: bytes) -> int:
        """Write one encoded frame (or :class:`Frames`) to every open recipient.
        Returns the messages delivered (recipients times messages in ``frame``)."""
        size = len(frame)
        count = frame.messages if type(frame) is Frames else 1
        sent = 0
        is_open = _OPEN
        for client in recipients:
            if client.ws.state is is_open:
                client.writer.write(frame)
                client.bytes_out += size
                sent += 1
        counters = self.counters
        counters.messages_out += sent * count
        counters.bytes_out += sent * size
        return sent * count

    def broadcast(self, recipients: Iterable[Client], frame: bytes) -> None:
        """Deliver ``frame`` to ``recipients`` (taken now) and count the deliveries:
        at once when the turn's budget allows and nothing is queued, else as a
        sliced :class:`~gateway.pacing.Delivery`."""
        pacer = self.pacer
        found = (  # the directory gives dict views, lists, or generators (filtered)
            list(recipients)
            if type(recipients) is GeneratorType
            else cast(Collection[Client], recipients)
        )
        if not pacer.jobs and len(found) <= pacer.budget:
            pacer.budget -= len(found)
            self.counters.broadcast_deliveries += self.deliver(found, frame)
            return
        snapshot = found if type(found) is list else list(found)  # views change
        pacer.add(Delivery(snapshot, frame, self._deliver_counted))

    def _deliver_counted(self, recipients: Collection[Client], frame: bytes) -> None:
        self.counters.broadcast_deliveries += self.deliver(recipients, frame)

    def cmd_send_to_client(self, link: Link, packet: list[Any]) -> None:
        _, conn_id, data = packet
        frame = data_frame(data)
        if type(conn_id) is not int or not 0 < conn_id <= MAX_CONN_ID:
            check_conn_id(conn_id)  # raises: a malformed command
        client = self.directory.get(conn_id)
        if client is None:
            return
        pacer = self.pacer
        if pacer.jobs:  # behind an unfinished broadcast
            pacer.add(Delivery([client], frame, self.deliver))
            return
        pacer.budget -= 1
        if client.ws.state is _OPEN:
            client.writer.write(frame)
            size = len(frame)
            client.bytes_out += size
            counters = self.counters
            counters.messages_out += 1
            counters.bytes_out += size

    def cmd_send_to_all(self, link: Link, packet: list[Any]) -> None:
        _, data, conn_ids, exclude = packet
        frame = data_frame(data)
        if conn_ids is not None:
            _int_list(conn_ids, "conn_ids")
        if exclude is not None:
            _int_list(exclude, "exclude")
        self.broadcast(self.directory.recipients_all(conn_ids, exclude), frame)

    def cmd_send_to_uid(self, link: Link, packet: list[Any]) -> None:
        _, uids, data = packet
        frame = data_frame(data)
        self.broadcast(self.directory.recipients_uids(_str_list(uids, "uids")), frame)

    def cmd_send_to_group(self, link: Link, packet: list[Any]) -> None:
        _, groups, data, exclude = packet
        frame = data_frame(data)
        if exclude is not None:
            _int_list(exclude, "exclude")
        self.broadcast(
            self.directory.recipients_groups(_str_list(groups, "groups"), exclude), frame
        )

    def cmd_close_client(self, link: Link, packet: list[Any]) -> None:
        if len(packet) == 3:
            (_, conn_id, data), code, reason = packet, 1000, ""
        else:
            _, conn_id, data, code, reason = packet
            code, reason = check_close(code, reason)
        frame = None if data is None else data_frame(data)
        client = self.directory.get(check_conn_id(conn_id))
        if client is not None:
            self.pacer.add(Call(self._close, client, frame, code, reason))

    def _close(self, client: Client, frame: bytes | None, code: int, reason: str) -> None:
        if frame is not None:
            self.deliver((client,), frame)  # not a broadcast: not counted as one
        client.close_reason = client.close_reason or "app_close"
        client.writer.close(code, reason)

    def cmd_destroy_client(self, link: Link, packet: list[Any]) -> None:
        _, conn_id = packet
        client = self.directory.get(check_conn_id(conn_id))
        if client is not None:
            self.pacer.add(Call(self._abort, client))

    def _abort(self, client: Client) -> None:
        client.close_reason = client.close_reason or "app_close"
        client.writer.abort()

    # ---- state commands -----------------------------------------------------------
    def cmd_bind_uid(self, link: Link, packet: list[Any]) -> None:
        _, conn_id, uid = packet
        self.directory.bind_uid(check_conn_id(conn_id), uid)

    def cmd_unbind_uid(self, link: Link, packet: list[Any]) -> None:
        _, conn_id, uid = packet
        self.directory.unbind_uid(check_conn_id(conn_id), uid)

    def cmd_join_group(self, link: Link, packet: list[Any]) -> None:
        _, conn_id, group = packet
        self.directory.join_group(check_conn_id(conn_id), group)

    def cmd_leave_group(self, link: Link, packet: list[Any]) -> None:
        _, conn_id, group = packet
        self.directory.leave_group(check_conn_id(conn_id), group)

    def cmd_ungroup(self, link: Link, packet: list[Any]) -> None:
        _, group = packet
        self.directory.ungroup(group)

    def cmd_set_session(self, link: Link, packet: list[Any]) -> None:
        _, conn_id, session = packet
        self.directory.set_session(check_conn_id(conn_id), session)

    def cmd_update_session(self, link: Link, packet: list[Any]) -> None:
        _, conn_id, partial = packet
        self.directory.update_session(check_conn_id(conn_id), partial)

    # ---- queries (arguments after req) --------------------------------------------
    def query_client_info(self, conn_id: int) -> Any:
        return self.directory.client_info(check_conn_id(conn_id))

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

    # ---- the decider table (internal; see gateway.decider) ------------------------
    def query_decide_join(self, epoch: int, key: str, member: str, conn: str) -> Any:
        return self.decisions.join(*_decision_args(epoch, key, member, conn))

    def query_decide_leave(self, epoch: int, key: str, member: str, conn: str) -> Any:
        return self.decisions.leave(*_decision_args(epoch, key, member, conn))

    def query_decide_seed(self, epoch: int, key: str, members: dict[str, list[str]]) -> Any:
        epoch, key = _decision_args(epoch, key)
        return self.decisions.seed(epoch, key, check_members(members), self.clock())


def _decision_args(epoch: object, *names: object) -> tuple[Any, ...]:
    """``(epoch, *names)`` checked: an int and strs (``TypeError`` otherwise)."""
    if type(epoch) is not int or not all(type(n) is str for n in names):
        raise TypeError("a decision takes an int epoch and str key, member and conn")
    return (epoch, *names)
