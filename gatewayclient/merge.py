"""Merging the answers of several gateways into one result (pure: no I/O).

An S-class query (see ``gatewayclient.api``) asks every gateway and gets one answer
per gateway, each in the shape documented on its ``Cmd`` in ``gateway.protocol``
(connection ids, packed sessions). The functions here turn a list of ``(origin,
answer)`` pairs into what the API returns: client_ids built from each origin's
address, sessions unpacked, uids de-duplicated across gateways (a uid may have
connections on several gateways).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from pygatewayworker.gateway.protocol import unpack_session

__all__ = [
    "Origin",
    "Answers",
    "uids_online",
    "client_ids_by_uid",
    "group_counts",
    "group_client_ids",
    "group_sessions",
    "group_uids",
    "all_uids",
    "tagged",
    "tagged_rows",
]


class Origin(Protocol):
    """Where an answer came from: a gateway link, or a stand-in in tests."""

    @property
    def gateway_address(self) -> str:
        """The gateway's internal ``"ip:port"``."""
        ...

    def client_id(self, conn_id: int) -> str:
        """The client_id of ``conn_id`` on that gateway."""
        ...


Answers = Sequence[tuple[Origin, Any]]


def _keys(answers: Answers, keys: Iterable[str] | None) -> list[str]:
    """The requested keys, or (``None``) the union of every answer's keys in order."""
    if keys is not None:
        return list(keys)
    seen: dict[str, None] = {}
    for _, answer in answers:
        seen.update(dict.fromkeys(answer))
    return list(seen)


def uids_online(answers: Answers, uids: Iterable[str]) -> dict[str, bool]:
    """``Q_UIDS`` answers -> ``{uid: True if any gateway has a connection for it}``."""
    online = {uid: False for uid in uids}
    for _, answer in answers:
        for uid, conn_ids in answer.items():
            if conn_ids and uid in online:
                online[uid] = True
    return online


def client_ids_by_uid(answers: Answers, uids: Iterable[str]) -> dict[str, list[str]]:
    """``Q_UIDS`` answers -> ``{uid: [client_id, ...]}`` for every requested uid."""
    merged: dict[str, list[str]] = {uid: [] for uid in uids}
    for origin, answer in answers:
        for uid, conn_ids in answer.items():
            bucket = merged.get(uid)
            if bucket is not None:
                bucket.extend(origin.client_id(conn_id) for conn_id in conn_ids)
    return merged


def group_counts(answers: Answers, keys: Iterable[str] | None = None) -> dict[str, int]:
    """``"count"`` answers -> ``{group: total}`` (``keys=None``: every group seen)."""
    merged = dict.fromkeys(_keys(answers, keys), 0)
    for _, answer in answers:
        for group, count in answer.items():
            if group in merged:
                merged[group] += int(count)
    return merged


def group_client_ids(answers: Answers, keys: Iterable[str] | None = None) -> dict[str, list[str]]:
    """``"ids"`` answers -> ``{group: [client_id, ...]}``."""
    merged: dict[str, list[str]] = {key: [] for key in _keys(answers, keys)}
    for origin, answer in answers:
        for group, conn_ids in answer.items():
            bucket = merged.get(group)
            if bucket is not None:
                bucket.extend(origin.client_id(conn_id) for conn_id in conn_ids)
    return merged


def group_sessions(
    answers: Answers, keys: Iterable[str] | None = None
) -> dict[str, dict[str, dict[str, Any]]]:
    """``"sessions"`` answers -> ``{group: {client_id: session dict}}``."""
    merged: dict[str, dict[str, dict[str, Any]]] = {key: {} for key in _keys(answers, keys)}
    for origin, answer in answers:
        for group, sessions in answer.items():
            bucket = merged.get(group)
            if bucket is None:
                continue
            for conn_id, blob in sessions.items():
                bucket[origin.client_id(conn_id)] = unpack_session(blob)
    return merged


def group_uids(answers: Answers, keys: Iterable[str] | None = None) -> dict[str, list[str]]:
    """``"uids"`` answers -> ``{group: [uid, ...]}``, each uid listed once."""
    merged: dict[str, dict[str, None]] = {key: {} for key in _keys(answers, keys)}
    for _, answer in answers:
        for group, uids in answer.items():
            bucket = merged.get(group)
            if bucket is not None:
                bucket.update(dict.fromkeys(uids))
    return {group: list(uids) for group, uids in merged.items()}


def all_uids(answers: Answers) -> list[str]:
    """``Q_ALL_UIDS`` answers -> every bound uid, once."""
    seen: dict[str, None] = {}
    for _, answer in answers:
        seen.update(dict.fromkeys(answer))
    return list(seen)


def tagged(answers: Answers) -> dict[str, Any]:
    """Answers as ``{gateway address: answer}`` (operator queries such as stats)."""
    return {origin.gateway_address: answer for origin, answer in answers}


def tagged_rows(answers: Answers) -> list[dict[str, Any]]:
    """List answers flattened into one list, each row given a ``"gateway"`` key."""
    return [
        {**row, "gateway": origin.gateway_address} for origin, answer in answers for row in answer
    ]
