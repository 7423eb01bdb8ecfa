"""Subscriptions, client events and closes of Pusher connections, in a business worker.

How this works
--------------
:class:`Channels` is the glue between the pure protocol (:mod:`.protocol`,
:mod:`.presence`) and the Gateway API: a channel is the group
``pusher:<app id>:<channel>`` (:func:`~.protocol.group_of`), a subscription is a
``join_group`` plus a record in the connection's session, an event to a channel is
one ``send_to_group``. It runs inside the client's own events (one client's events
run in order), so a connection's state never changes under its feet.

The order of writes and reads matters for presence (see :mod:`.presence`): a
subscriber writes its record and joins before it reads the group; a leaver leaves
and waits for its own gateway's answer (a T-class query on the same link, which the
gateway answers after applying the leave) before it reads.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from collections.abc import Awaitable
from typing import Any, Protocol

from pygatewayworker.businessworker.handle import api
from pygatewayworker.gatewayclient.errors import GatewayError, QueryTimeout
from pygatewayworker.pusher import protocol as p
from pygatewayworker.pusher.config import PusherApp
from pygatewayworker.pusher.hooks import ClientEvent, Refuse, Subscription
from pygatewayworker.pusher.presence import (
    PusherState,
    announces_join,
    members,
    presence_payload,
    still_present,
)
from pygatewayworker.pusher.ratelimit import RateLimiter
from pygatewayworker.pusher.webhooks import WebhookSender

__all__ = ["Channels", "Hooks"]

log = logging.getLogger("pusher")


class Hooks(Protocol):
    """The hook methods :class:`Channels` calls (the user's Events class)."""

    def on_subscribe(self, sub: Subscription) -> Any: ...

    def on_unsubscribe(self, sub: Subscription, reason: str) -> Any: ...

    def on_client_event(self, sub: Subscription, event: ClientEvent) -> Any: ...


def _subscription(
    app: PusherApp, client_id: str, state: PusherState, channel: str, record: Any
) -> Subscription:
    """What the hooks get about ``client_id`` in ``channel`` (``record``: its
    presence record, if any)."""
    presence = record if isinstance(record, dict) else {}
    return Subscription(
        app.id,
        channel,
        client_id,
        p.socket_id_of(client_id),
        presence.get("user_id") or state.user_id,
        presence.get("user_info"),
    )


async def _settle(result: Any) -> Any:
    """The value of a hook that may be plain or a coroutine."""
    return await result if inspect.isawaitable(result) else result


class Channels:
    """Channel operations of the connections a worker runs."""

    def __init__(self, hooks: Hooks, webhooks: WebhookSender) -> None:
        self.hooks = hooks
        self.webhooks = webhooks
        self.limiter = RateLimiter()
        self.fresh: dict[str, dict[str, Any]] = {}
        """client_id -> the Pusher state this worker wrote last (see :meth:`refresh`)."""

    # ---- the connection's state -----------------------------------------------------

    def store(self, client_id: str, session: dict[str, Any], state: PusherState) -> None:
        """Write the session to the gateway now (others read it there) and remember
        the state as this worker's newest."""
        state.doc["v"] = int(state.doc.get("v", 0)) + 1
        self.fresh[client_id] = state.doc
        api.set_session(client_id, session)

    def refresh(self, client_id: str, session: dict[str, Any]) -> PusherState | None:
        """The connection's current state, put into ``session``.

        An event carries the session its gateway had when it forwarded the event,
        which predates what this worker wrote while running the client's earlier
        events (they were already queued here). The client's events all run on this
        worker, so the state it wrote last is the newest unless another worker
        wrote a later version (the client moved here and back): the version number
        ``v`` decides.
        """
        mine = self.fresh.get(client_id)
        state = PusherState.of(session)
        if mine is not None and (state is None or mine.get("v", 0) >= state.doc.get("v", 0)):
            session["pusher"] = mine
            return PusherState(mine)
        if state is not None:
            self.fresh[client_id] = state.doc
        return state

    # ---- reads ----------------------------------------------------------------------

    async def _read(self, what: str, query: Awaitable[Any], default: Any) -> Any:
        """A group query; a gateway that does not answer leaves its members out (logged)."""
        try:
            return await query
        except QueryTimeout as exc:
            log.warning("pusher: %s: %s; answering without it", what, exc)
            return exc.partial if exc.partial is not None else default
        except GatewayError as exc:
            log.warning("pusher: %s failed: %s", what, exc)
            return default

    async def _sessions(self, group: str) -> dict[str, Any]:
        sessions: dict[str, Any] = await self._read(
            f"sessions of {group}", api.get_client_sessions_by_group(group), {}
        )
        return sessions

    async def _count(self, group: str) -> int:
        count: int = await self._read(f"count of {group}", api.get_client_count_by_group(group), 0)
        return count

    async def _barrier(self, client_id: str) -> None:
        """Wait until the client's gateway has applied what we sent it so far.

        The gateway answers this query after the commands queued before it on the
        same link. Two things follow: a leave is applied before we read the group
        (presence), and a join has been applied, and the gateway has told every
        other worker and push client that it now holds the group (its route update
        goes out in its next loop turn, before it reads our next command), before we
        answer ``subscription_succeeded``: an event sent right after that answer
        reaches the new subscriber.
        """
        try:
            await api.is_online(client_id)
        except GatewayError as exc:
            log.debug("pusher: %s: no answer from its gateway: %s", client_id, exc)

    # ---- subscribe ------------------------------------------------------------------

    async def subscribe(
        self, app: PusherApp, client_id: str, session: dict[str, Any], data: dict[str, Any]
    ) -> None:
        """``pusher:subscribe``: check, ask the hook, join, answer, announce."""
        state = PusherState.of(session)
        assert state is not None
        socket_id = p.socket_id_of(client_id)
        try:
            channel = p.check_channel(data.get("channel"))
        except p.ProtocolError as exc:
            named = data.get("channel")
            if isinstance(named, str) and named:
                bad = p.subscription_error(named[:200], str(exc), 400, "InvalidChannel")
            else:
                bad = p.error(str(exc))
            api.send_to_client(client_id, bad)
            return
        kind = p.kind_of(channel)
        user_id: str | None = None
        user_info: Any = None
        try:
            if kind != "public":
                channel_data = data.get("channel_data") if kind == "presence" else None
                if channel_data is not None and not isinstance(channel_data, str):
                    raise p.ProtocolError("channel_data must be a JSON string")
                p.check_channel_auth(
                    app.key, app.secret, socket_id, channel, data.get("auth"), channel_data
                )
                if kind == "presence":
                    user_id, user_info = p.parse_channel_data(channel_data, app.max_user_info)
                    if state.user_id is not None and state.user_id != user_id:
                        raise p.ProtocolError(
                            f"this connection is user {state.user_id}; one connection "
                            f"cannot join {channel} as user {user_id}"
                        )
        except p.ProtocolError as exc:
            api.send_to_client(client_id, p.subscription_error(channel, str(exc), 401))
            return
        if channel in state.channels:  # already in: answer again, change nothing
            await self._succeeded(app, client_id, channel, kind)
            return
        sub = Subscription(
            app.id, channel, client_id, socket_id, user_id or state.user_id, user_info
        )
        try:
            allowed = await _settle(self.hooks.on_subscribe(sub))
        except Refuse as exc:
            api.send_to_client(client_id, p.subscription_error(channel, str(exc), exc.status))
            return
        except Exception:
            log.exception("pusher: on_subscribe failed for %s on %s", client_id, channel)
            api.send_to_client(client_id, p.subscription_error(channel, "Server error", 500))
            return
        if allowed is False:
            refused = p.subscription_error(channel, "Subscription refused", 403)
            api.send_to_client(client_id, refused)
            return
        group = p.group_of(app.id, channel)
        state.add(channel, user_id, user_info)
        if user_id is not None and state.user_id is None:
            state.user_id = user_id
            api.bind_uid(client_id, f"{app.id}:{user_id}")
        self.store(client_id, session, state)
        api.join_group(client_id, group)
        if user_id is None:
            await self._barrier(client_id)
            api.send_to_client(
                client_id, p.message("pusher_internal:subscription_succeeded", {}, channel)
            )
            if self.webhooks.wants(app, "channel_occupied") and await self._count(group) == 1:
                self.webhooks.emit(app, "channel_occupied", channel=channel)
            return
        await self._join_presence(app, client_id, session, state, sub)

    async def _join_presence(
        self,
        app: PusherApp,
        client_id: str,
        session: dict[str, Any],
        state: PusherState,
        sub: Subscription,
    ) -> None:
        channel, user_id = sub.channel, str(sub.user_id)
        group = p.group_of(app.id, channel)
        sessions = await self._sessions(group)
        found = members(sessions, channel)
        others = len(found) - (1 if user_id in found else 0)
        if user_id not in found or found.get(user_id) is None:
            found[user_id] = sub.user_info
        if others >= app.max_presence_members and not still_present(
            sessions, client_id, channel, user_id
        ):
            state.remove(channel)
            self.store(client_id, session, state)
            api.leave_group(client_id, group)
            text = f"presence channel {channel} is full ({app.max_presence_members} members)"
            api.send_to_client(client_id, p.subscription_error(channel, text, 403, "LimitReached"))
            return
        api.send_to_client(
            client_id,
            p.message("pusher_internal:subscription_succeeded", presence_payload(found), channel),
        )
        if announces_join(sessions, client_id, channel, user_id):
            added = {"user_id": user_id, "user_info": sub.user_info}
            api.send_to_group(
                group, p.message("pusher_internal:member_added", added, channel), [client_id]
            )
            self.webhooks.emit(app, "member_added", channel=channel, user_id=user_id)
        state.mark_joined(channel)
        self.store(client_id, session, state)
        if len(sessions) <= 1 and self.webhooks.wants(app, "channel_occupied"):
            self.webhooks.emit(app, "channel_occupied", channel=channel)

    async def _succeeded(self, app: PusherApp, client_id: str, channel: str, kind: str) -> None:
        data: dict[str, Any] = {}
        if kind == "presence":
            sessions = await self._sessions(p.group_of(app.id, channel))
            data = presence_payload(members(sessions, channel))
        frame = p.message("pusher_internal:subscription_succeeded", data, channel)
        api.send_to_client(client_id, frame)

    # ---- unsubscribe and close ------------------------------------------------------

    async def unsubscribe(
        self, app: PusherApp, client_id: str, session: dict[str, Any], channel: object
    ) -> None:
        """``pusher:unsubscribe``: leave, wait for our gateway, announce, run the hook."""
        state = PusherState.of(session)
        if state is None or not isinstance(channel, str) or channel not in state.channels:
            return  # Pusher ignores unsubscribing from a channel one is not in
        record = state.remove(channel)
        self.store(client_id, session, state)
        api.leave_group(client_id, p.group_of(app.id, channel))
        await self._barrier(client_id)
        await self._left(app, client_id, state, channel, record, "unsubscribe")

    async def close(self, app: PusherApp, client_id: str, session: dict[str, Any]) -> None:
        """The connection is gone: the leave side of every channel it was in."""
        self.limiter.forget(client_id)
        state = self.refresh(client_id, session)
        self.fresh.pop(client_id, None)
        if state is None:
            return
        for channel, record in list(state.channels.items()):
            try:
                await self._left(app, client_id, state, channel, record, "close")
            except Exception:
                log.exception("pusher: closing %s in %s failed", client_id, channel)

    async def _left(
        self,
        app: PusherApp,
        client_id: str,
        state: PusherState,
        channel: str,
        record: Any,
        reason: str,
    ) -> None:
        group = p.group_of(app.id, channel)
        user_id = record.get("user_id") if isinstance(record, dict) else None
        remaining: int | None = None
        if user_id is not None:
            sessions = await self._sessions(group)
            remaining = len(sessions)
            if not still_present(sessions, client_id, channel, user_id):
                gone = p.message("pusher_internal:member_removed", {"user_id": user_id}, channel)
                api.send_to_group(group, gone)
                self.webhooks.emit(app, "member_removed", channel=channel, user_id=user_id)
        if self.webhooks.wants(app, "channel_vacated"):
            if remaining is None:
                remaining = await self._count(group)
            if remaining == 0:
                self.webhooks.emit(app, "channel_vacated", channel=channel)
        sub = _subscription(app, client_id, state, channel, record)
        try:
            await _settle(self.hooks.on_unsubscribe(sub, reason))
        except Exception:
            log.exception("pusher: on_unsubscribe failed for %s on %s", client_id, channel)

    # ---- client events --------------------------------------------------------------

    async def client_event(
        self, app: PusherApp, client_id: str, session: dict[str, Any], msg: p.ClientMessage
    ) -> None:
        """A ``client-*`` event: check, rate-limit, ask the hook, relay to the others."""
        state = PusherState.of(session)
        assert state is not None
        channel = msg.channel
        try:
            channel = p.check_client_event(msg, state.channels, app.max_event_size)
            if not self.limiter.allow(client_id, app.client_event_rate, time.monotonic()):
                raise p.ProtocolError(
                    "Client event rejected due to rate limit", p.ErrorCode.CLIENT_EVENT_REJECTED
                )
        except p.ProtocolError as exc:
            api.send_to_client(client_id, p.error(str(exc), exc.code, channel))
            return
        record = state.channels.get(channel)
        user_id = record.get("user_id") if isinstance(record, dict) else None
        sub = _subscription(app, client_id, state, channel, record)
        event = ClientEvent(msg.event, msg.data)
        try:
            if await _settle(self.hooks.on_client_event(sub, event)) is False:
                return
        except Exception:
            log.exception("pusher: on_client_event failed for %s on %s", client_id, channel)
            return
        extra = {"user_id": user_id} if user_id is not None else {}
        frame = p.message(event.name, event.data, channel, **extra)
        api.send_to_group(p.group_of(app.id, channel), frame, [client_id])
        if self.webhooks.wants(app, "client_event"):
            data = event.data if isinstance(event.data, str) else json.dumps(event.data)
            fields: dict[str, Any] = {
                "channel": channel,
                "event": event.name,
                "data": data,
                "socket_id": sub.socket_id,
            }
            if user_id is not None:
                fields["user_id"] = user_id
            self.webhooks.emit(app, "client_event", **fields)
