"""Subscriptions, client events and closes of Pusher connections, in a business worker.

How this works
--------------
:class:`Channels` is the glue between the pure protocol (:mod:`.protocol`,
:mod:`.presence`) and the Gateway API: a channel is the group
``pusher:<app id>:<channel>`` (:func:`~.protocol.group_of`), a subscription is a
``join_group`` plus a record in the connection's session, an event to a channel is
one ``send_to_group``. It runs inside the client's own events (one client's events
run in order), so a connection's state never changes under its feet.

Who announces ``member_added`` / ``member_removed`` and sends the
``channel_occupied`` / ``channel_vacated`` webhooks is decided by the channel's
decider gateway (:mod:`.decide`, ``gateway.decider``), exactly once: a subscriber
writes its record as *pending*, joins the group, answers the client, asks the
decider (``join``: is the user new to the channel? is the channel new?), announces
what the answer says, then marks its record decided. A leaver is removed from its
gateway first (an unsubscribe waits for that gateway's answer; a closed connection
is gone already), then asks the decider (``leave``: was that the user's last
connection? the channel's?). The decider is asked for presence channels, and for the
other channels only when the app has a ``channel_occupied`` or ``channel_vacated``
webhook.

When the decider cannot decide (not reachable, see :mod:`.decide`), the read rules
of :mod:`.presence` decide instead (never lost, possibly twice): a subscriber that
sees no other decided connection of its user (of the channel) announces; a leaver
that sees no other connection of its user left (the channel empty) announces.
The guarantee, and what remains not exactly once, is in ``docs/pusher.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any

from pygatewayworker.businessworker.handle import api
from pygatewayworker.gatewayclient.decider import DeciderLink
from pygatewayworker.gatewayclient.errors import GatewayError, QueryTimeout
from pygatewayworker.pusher import protocol as p
from pygatewayworker.pusher.config import PusherApp
from pygatewayworker.pusher.decide import Decide
from pygatewayworker.pusher.hooks import Hooks, Refuse, Subscription, settle, subscription_of
from pygatewayworker.pusher.presence import (
    PusherState,
    announces_first,
    announces_join,
    decided_members,
    is_full,
    members,
    presence_payload,
    still_present,
)
from pygatewayworker.pusher.webhooks import WebhookSender

__all__ = ["Channels"]

log = logging.getLogger("pusher")


def _full_frame(app: PusherApp, channel: str) -> str:
    """The refusal of a subscription to a full presence channel."""
    text = f"presence channel {channel} is full ({app.max_presence_members} members)"
    return p.subscription_error(channel, text, 403, "LimitReached")


class Channels:
    """Channel operations of the connections a worker runs."""

    def __init__(self, hooks: Hooks, webhooks: WebhookSender, decide: Decide | None = None) -> None:
        self.hooks = hooks
        self.webhooks = webhooks
        self.decide = decide if decide is not None else Decide(DeciderLink(api))
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
        """``pusher:subscribe``: check, make room, ask the hook, join, answer, announce."""
        state = PusherState.of(session)
        assert state is not None
        wanted = self._checked(app, client_id, state, data)
        if wanted is None:
            return
        channel, user_id, user_info = wanted
        if channel in state.channels:  # already in: answer again, change nothing
            await self._succeeded(app, client_id, channel)
            return
        socket_id = p.socket_id_of(client_id)
        sub = Subscription(
            app.id, channel, client_id, socket_id, user_id or state.user_id, user_info
        )
        if user_id is not None and await self._full(app, client_id, channel, user_id):
            return  # refused before the hook: it took nothing
        if not await self._allowed(sub):
            return
        decided = self._decided(app, channel)
        state.add(channel, user_id, user_info, pending=decided)
        bound = self._join(app, client_id, session, state, channel, user_id)
        if user_id is None:
            await self._barrier(client_id)
            frame = p.message("pusher_internal:subscription_succeeded", {}, channel)
            api.send_to_client(client_id, frame)
            if decided:
                await self._announce_join(app, session, state, sub, None)
            return
        if not await self._join_presence(app, session, state, sub):
            await self._undo_join(app, session, state, sub, bound)

    def _decided(self, app: PusherApp, channel: str) -> bool:
        """Whether joins and leaves of ``channel`` go through its decider: presence
        channels (member events), and others when the app wants channel webhooks."""
        return (
            p.kind_of(channel) == "presence"
            or self.webhooks.wants(app, "channel_occupied")
            or self.webhooks.wants(app, "channel_vacated")
        )

    def _checked(
        self, app: PusherApp, client_id: str, state: PusherState, data: dict[str, Any]
    ) -> tuple[str, str | None, Any] | None:
        """``(channel, presence user_id, user_info)`` of a valid, authorised request;
        ``None`` once the client got the error."""
        try:
            channel = p.check_channel(data.get("channel"))
        except p.ProtocolError as exc:
            named = data.get("channel")
            if isinstance(named, str) and named:
                bad = p.subscription_error(named[:200], str(exc), 400, "InvalidChannel")
            else:
                bad = p.error(str(exc))
            api.send_to_client(client_id, bad)
            return None
        kind = p.kind_of(channel)
        if kind == "public":
            return channel, None, None
        try:
            channel_data = data.get("channel_data") if kind == "presence" else None
            if channel_data is not None and not isinstance(channel_data, str):
                raise p.ProtocolError("channel_data must be a JSON string")
            socket_id = p.socket_id_of(client_id)
            auth = data.get("auth")
            p.check_channel_auth(app.key, app.secret, socket_id, channel, auth, channel_data)
            if kind != "presence":
                return channel, None, None
            user_id, user_info = p.parse_channel_data(channel_data, app.max_user_info)
            if state.user_id is not None and state.user_id != user_id:
                raise p.ProtocolError(
                    f"this connection is user {state.user_id}; one connection "
                    f"cannot join {channel} as user {user_id}"
                )
        except p.ProtocolError as exc:
            api.send_to_client(client_id, p.subscription_error(channel, str(exc), 401))
            return None
        return channel, user_id, user_info

    async def _full(self, app: PusherApp, client_id: str, channel: str, user_id: str) -> bool:
        """Refuse (``LimitReached``) when the presence channel has no room for
        ``user_id``; checked before the hook, and again after joining (two users may
        take the last place at once)."""
        sessions = await self._sessions(p.group_of(app.id, channel))
        if not is_full(sessions, client_id, channel, user_id, app.max_presence_members):
            return False
        api.send_to_client(client_id, _full_frame(app, channel))
        return True

    async def _allowed(self, sub: Subscription) -> bool:
        """Ask ``on_subscribe``; on a refusal, tell the client and return ``False``."""
        try:
            allowed = await settle(self.hooks.on_subscribe(sub))
        except Refuse as exc:
            frame = p.subscription_error(sub.channel, str(exc), exc.status)
            api.send_to_client(sub.client_id, frame)
            return False
        except Exception:
            log.exception("pusher: on_subscribe failed for %s on %s", sub.client_id, sub.channel)
            frame = p.subscription_error(sub.channel, "Server error", 500)
            api.send_to_client(sub.client_id, frame)
            return False
        if allowed is False:
            frame = p.subscription_error(sub.channel, "Subscription refused", 403)
            api.send_to_client(sub.client_id, frame)
            return False
        return True

    def _join(
        self,
        app: PusherApp,
        client_id: str,
        session: dict[str, Any],
        state: PusherState,
        channel: str,
        user_id: str | None,
    ) -> bool:
        """With the subscription recorded in ``state``: bind the presence user (first
        presence channel: returns ``True``), write the session and join the group, in
        that order."""
        bound = user_id is not None and state.user_id is None
        if bound:
            state.user_id = user_id
            api.bind_uid(client_id, f"{app.id}:{user_id}")
        self.store(client_id, session, state)
        api.join_group(client_id, p.group_of(app.id, channel))
        return bound

    async def _join_presence(
        self, app: PusherApp, session: dict[str, Any], state: PusherState, sub: Subscription
    ) -> bool:
        """Read the members (our record is in), answer with them, announce the user
        if the decider says it is new. ``False``: the channel turned out full (two
        users took the last place at once)."""
        client_id, channel, user_id = sub.client_id, sub.channel, str(sub.user_id)
        sessions = await self._sessions(p.group_of(app.id, channel))
        if is_full(sessions, client_id, channel, user_id, app.max_presence_members):
            return False
        found = members(sessions, channel)
        if found.get(user_id) is None:
            found[user_id] = sub.user_info
        api.send_to_client(
            client_id,
            p.message("pusher_internal:subscription_succeeded", presence_payload(found), channel),
        )
        await self._announce_join(app, session, state, sub, sessions)
        return True

    async def _live(self, group: str, channel: str) -> dict[str, list[str]] | None:
        """The decided members of ``channel`` on every gateway (a decider's seed);
        ``None`` when a gateway did not answer (a seed must see them all)."""
        try:
            sessions = await api.get_client_sessions_by_group(group)
        except GatewayError as exc:
            log.warning("pusher: cannot rebuild %s: %s", group, exc)
            return None
        return decided_members(sessions, channel)

    async def _announce_join(
        self,
        app: PusherApp,
        session: dict[str, Any],
        state: PusherState,
        sub: Subscription,
        sessions: dict[str, Any] | None,
    ) -> None:
        """Ask the decider whether the user (the channel) is new, announce what it
        says, then mark the subscription decided. ``sessions``: the group as read
        after joining, for the read rule if the decider cannot decide."""
        client_id, channel = sub.client_id, sub.channel
        group = p.group_of(app.id, channel)
        member = "" if sub.kind != "presence" else str(sub.user_id)
        answer = await self.decide.join(
            group, member, client_id, lambda: self._live(group, channel)
        )
        if answer is None:
            if sessions is None:
                sessions = await self._sessions(group)
            answer = (
                bool(member) and announces_join(sessions, client_id, channel, member),
                announces_first(sessions, client_id, channel),
            )
        member_new, channel_new = answer
        if member and member_new:
            added = {"user_id": member, "user_info": sub.user_info}
            frame = p.message("pusher_internal:member_added", added, channel)
            api.send_to_group(group, frame, [client_id])
            self.webhooks.emit(app, "member_added", channel=channel, user_id=member)
        if channel_new:
            self.webhooks.emit(app, "channel_occupied", channel=channel)
        state.mark_joined(channel)
        self.store(client_id, session, state)

    async def _undo_join(
        self,
        app: PusherApp,
        session: dict[str, Any],
        state: PusherState,
        sub: Subscription,
        bound: bool,
    ) -> None:
        """Refuse a presence join that found the channel full after the hook accepted
        it: leave, unbind the user if this subscription bound it, tell the client, and
        give the hook its ``on_unsubscribe(sub, "refused")`` to release what it took."""
        state.remove(sub.channel)
        if bound:
            state.user_id = None
            api.unbind_uid(sub.client_id, f"{app.id}:{sub.user_id}")
        self.store(sub.client_id, session, state)
        api.leave_group(sub.client_id, p.group_of(app.id, sub.channel))
        api.send_to_client(sub.client_id, _full_frame(app, sub.channel))
        await self._unsubscribed(sub, "refused")

    async def _succeeded(self, app: PusherApp, client_id: str, channel: str) -> None:
        data: dict[str, Any] = {}
        if p.kind_of(channel) == "presence":
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
        if self._decided(app, channel):
            user_id = record.get("user_id") if isinstance(record, dict) else None
            await self._announce_leave(app, client_id, channel, user_id)
        await self._unsubscribed(subscription_of(app.id, client_id, state, channel, record), reason)

    async def _announce_leave(
        self, app: PusherApp, client_id: str, channel: str, user_id: str | None
    ) -> None:
        """Ask the decider whether that was the user's (the channel's) last
        connection, and announce what it says."""
        group = p.group_of(app.id, channel)
        member = "" if user_id is None else str(user_id)
        rebuild = lambda: self._live(group, channel)  # noqa: E731
        answer = await self.decide.leave(group, member, client_id, rebuild)
        if answer is None:  # the read rule: our leave is applied on our gateway
            sessions = await self._sessions(group)
            user_gone = bool(member) and not still_present(sessions, client_id, channel, member)
            answer = (user_gone, not sessions)
        member_last, channel_last = answer
        if member and member_last:
            gone = p.message("pusher_internal:member_removed", {"user_id": member}, channel)
            api.send_to_group(group, gone)
            self.webhooks.emit(app, "member_removed", channel=channel, user_id=member)
        if channel_last:
            self.webhooks.emit(app, "channel_vacated", channel=channel)

    async def _unsubscribed(self, sub: Subscription, reason: str) -> None:
        """Run ``on_unsubscribe``; its errors are logged, never raised."""
        try:
            await settle(self.hooks.on_unsubscribe(sub, reason))
        except Exception:
            log.exception("pusher: on_unsubscribe failed for %s on %s", sub.client_id, sub.channel)
