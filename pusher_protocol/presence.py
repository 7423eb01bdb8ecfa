"""A Pusher connection's state in its session, and presence computed from sessions.

How this works
--------------
A connection's Pusher state lives in its gateway session, under ``"pusher"``::

    {"app": "1", "user": "42" | None,
     "channels": {"public-x": None,
                  "presence-room": {"user_id": "42", "user_info": {...}}},
     "pending": ["presence-room"]}     # joins the decider has not answered yet

so it travels with every event to whichever worker runs it, survives worker reloads,
and is what ``on_close`` sees (also for the clients of a gateway that died).

Presence is read, never stored apart: the members of a presence channel are the
``user_id`` records in the sessions of its group's connections
(``get_client_sessions_by_group``), one member per distinct ``user_id``.

Who announces is decided by the channel's decider gateway (``gateway.decider``,
``pusher.decide``). A subscription is *pending* (its channel is listed under
``"pending"`` in the state) from the moment it is written until the decider has
answered for it; :func:`decided_members` (what a decider is seeded with) leaves
pending ones out, since their own join is still on its way to the decider.

When the decider cannot be asked, the read rules below decide instead (at least
once): a subscriber announces unless another connection of the same user is
already decided (:func:`announces_join`); a leaver, whose record is gone from its
gateway before it reads, announces when no other record of the user is left
(:func:`still_present`). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "SESSION_KEY",
    "PusherState",
    "members",
    "announces_join",
    "announces_first",
    "decided_members",
    "still_present",
    "is_full",
    "presence_payload",
]

SESSION_KEY = "pusher"

Sessions = Mapping[str, Mapping[str, Any]]


@dataclass(slots=True)
class PusherState:
    """A view of ``session["pusher"]``; changes go straight into the session dict."""

    doc: dict[str, Any]

    @classmethod
    def new(cls, session: dict[str, Any], app_id: str) -> PusherState:
        """Start the state of a connection that completed the handshake."""
        doc: dict[str, Any] = {"app": app_id, "user": None, "channels": {}}
        session[SESSION_KEY] = doc
        return cls(doc)

    @classmethod
    def of(cls, session: Mapping[str, Any] | None) -> PusherState | None:
        """The state in ``session``, or ``None`` (no handshake, or not ours)."""
        doc = session.get(SESSION_KEY) if session else None
        if isinstance(doc, dict) and isinstance(doc.get("channels"), dict):
            return cls(doc)
        return None

    @property
    def app_id(self) -> str:
        return str(self.doc.get("app"))

    @property
    def user_id(self) -> str | None:
        user = self.doc.get("user")
        return user if isinstance(user, str) else None

    @user_id.setter
    def user_id(self, value: str | None) -> None:
        self.doc["user"] = value

    @property
    def channels(self) -> dict[str, Any]:
        """``{channel: None | presence record}``."""
        channels: dict[str, Any] = self.doc["channels"]
        return channels

    @property
    def pending(self) -> list[str]:
        """Channels whose join the decider has not answered yet."""
        pending = self.doc.get("pending")
        if not isinstance(pending, list):
            pending = self.doc["pending"] = []
        return pending

    def add(
        self,
        channel: str,
        user_id: str | None = None,
        user_info: Any = None,
        pending: bool = True,
    ) -> None:
        """Record a subscription, pending (see :attr:`pending`) unless told not."""
        record = None
        if user_id is not None:
            record = {"user_id": user_id, "user_info": user_info}
        self.channels[channel] = record
        if pending and channel not in self.pending:
            self.pending.append(channel)

    def mark_joined(self, channel: str) -> None:
        """The join of ``channel`` is decided: no longer pending."""
        if channel in self.pending:
            self.pending.remove(channel)

    def is_pending(self, channel: str) -> bool:
        pending = self.doc.get("pending")
        return isinstance(pending, list) and channel in pending

    def remove(self, channel: str) -> Any:
        """Forget a subscription; return its record (``None`` when not presence)."""
        self.mark_joined(channel)
        return self.channels.pop(channel, None)


def _record(session: Mapping[str, Any], channel: str) -> dict[str, Any] | None:
    state = PusherState.of(session)
    if state is None:
        return None
    record = state.channels.get(channel)
    return record if isinstance(record, dict) and "user_id" in record else None


def members(sessions: Sessions, channel: str) -> dict[str, Any]:
    """``{user_id: user_info}`` of a presence channel's connections (one entry per
    user; with several connections, the info of the first one met)."""
    out: dict[str, Any] = {}
    for session in sessions.values():
        record = _record(session, channel)
        if record is not None:
            out.setdefault(str(record["user_id"]), record.get("user_info"))
    return out


def decided_members(sessions: Sessions, channel: str) -> dict[str, list[str]]:
    """``{member: [client_id, ...]}`` of the connections in ``channel`` whose join is
    decided (not pending): a presence channel's members are user ids, any other
    channel has the one member ``""``. What a decider is seeded with."""
    out: dict[str, list[str]] = {}
    for client_id, session in sessions.items():
        state = PusherState.of(session)
        if state is None or channel not in state.channels or state.is_pending(channel):
            continue
        record = state.channels[channel]
        member = str(record["user_id"]) if isinstance(record, dict) else ""
        out.setdefault(member, []).append(client_id)
    return out


def announces_join(sessions: Sessions, client_id: str, channel: str, user_id: str) -> bool:
    """The read rule (when the decider cannot be asked): ``client_id``'s
    subscription announces ``user_id`` unless *another* connection of that user is
    already decided."""
    others = decided_members(sessions, channel).get(user_id, [])
    return not any(other != client_id for other in others)


def announces_first(sessions: Sessions, client_id: str, channel: str) -> bool:
    """The read rule for ``channel_occupied``: no *other* connection of the channel
    is decided yet."""
    members = decided_members(sessions, channel).values()
    return not any(other != client_id for conns in members for other in conns)


def still_present(sessions: Sessions, client_id: str, channel: str, user_id: str) -> bool:
    """Whether another connection than ``client_id`` keeps ``user_id`` in the channel."""
    for other, session in sessions.items():
        if other == client_id:
            continue
        record = _record(session, channel)
        if record is not None and record["user_id"] == user_id:
            return True
    return False


def is_full(sessions: Sessions, client_id: str, channel: str, user_id: str, limit: int) -> bool:
    """Whether ``user_id`` (subscribing on ``client_id``) must be refused: ``limit``
    other users are in the channel and no other connection of ``user_id`` is (a user
    already in never counts twice). ``client_id``'s own record may be in
    ``sessions`` or not (the check runs before and after joining)."""
    others = set(members(sessions, channel)) - {user_id}
    return len(others) >= limit and not still_present(sessions, client_id, channel, user_id)


def presence_payload(found: Mapping[str, Any]) -> dict[str, Any]:
    """The ``data`` of a presence ``pusher_internal:subscription_succeeded``."""
    return {"presence": {"ids": list(found), "hash": dict(found), "count": len(found)}}
