"""Client events (``client-*``) of Pusher connections, in a business worker.

A client event is checked (the sender is in the channel, a private or presence one;
the data fits ``max_event_size``), rate-limited per connection
(``client_event_rate``), given to the ``on_client_event`` hook (which may drop or
rewrite it), then sent to the channel's group without the sender (one
``send_to_group``), with the sender's ``user_id`` on presence channels, and to the
``client_event`` webhook. Refusals are ``pusher:error`` 4301 to the sender.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from pygatewayworker.businessworker.handle import api
from pygatewayworker.pusher import protocol as p
from pygatewayworker.pusher.config import PusherApp
from pygatewayworker.pusher.hooks import ClientEvent, Hooks, settle, subscription_of
from pygatewayworker.pusher.presence import PusherState
from pygatewayworker.pusher.ratelimit import RateLimiter
from pygatewayworker.pusher.webhooks import WebhookSender

__all__ = ["ClientEvents"]

log = logging.getLogger("pusher")


class ClientEvents:
    """The client events of the connections a worker runs."""

    def __init__(self, hooks: Hooks, webhooks: WebhookSender) -> None:
        self.hooks = hooks
        self.webhooks = webhooks
        self.limiter = RateLimiter()

    def forget(self, client_id: str) -> None:
        """The connection is gone: drop its rate-limit bucket."""
        self.limiter.forget(client_id)

    async def relay(
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
        sub = subscription_of(app.id, client_id, state, channel, record)
        event = ClientEvent(msg.event, msg.data)
        try:
            if await settle(self.hooks.on_client_event(sub, event)) is False:
                return
        except Exception:
            log.exception("pusher: on_client_event failed for %s on %s", client_id, channel)
            return
        extra = {"user_id": user_id} if user_id is not None else {}
        frame = p.message(event.name, event.data, channel, **extra)
        api.send_to_group(p.group_of(app.id, channel), frame, [client_id])
        if self.webhooks.wants(app, "client_event"):
            self._webhook(app, channel, event, sub.socket_id, user_id)

    def _webhook(
        self, app: PusherApp, channel: str, event: ClientEvent, socket_id: str, user_id: Any
    ) -> None:
        data = event.data if isinstance(event.data, str) else json.dumps(event.data)
        fields: dict[str, Any] = {
            "channel": channel,
            "event": event.name,
            "data": data,
            "socket_id": socket_id,
        }
        if user_id is not None:
            fields["user_id"] = user_id
        self.webhooks.emit(app, "client_event", **fields)
