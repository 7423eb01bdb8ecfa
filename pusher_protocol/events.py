"""``PusherEvents``: the Events class that makes the cluster a Pusher Channels server.

Use it by subclassing it in your app's ``Events.py`` and naming your apps::

    from pygatewayworker.pusher import PusherApp, PusherEvents

    class Events(PusherEvents):
        apps = [PusherApp(id="1", key="app-key", secret="app-secret")]

        def on_subscribe(self, sub):            # optional hooks, plain or async
            ...

and ``BusinessWorker(events=".Events:Events")`` in the start file (the HTTP API role,
:class:`~pygatewayworker.pusher.config.PusherAPI`, names the same class to find the
apps' secrets).

How this works
--------------
- ``on_websocket_connect``: the handshake path is ``/app/<key>?protocol=7...``; an
  unknown key, a missing/unsupported protocol or a refused ``Origin`` is answered
  with ``pusher:error`` (4001, 4008/4006/4007, 4009) and the connection is closed
  with that code;
  otherwise ``pusher:connection_established`` with the connection's ``socket_id``
  (see :func:`~.protocol.socket_id_of`) and the app's ``activity_timeout``.
- ``on_message``: each event name has its handler (``pusher:subscribe`` ->
  :meth:`Channels.subscribe`...); ``client-*`` events are relayed; anything else is
  answered with ``pusher:error``. Malformed JSON gets ``pusher:error`` and changes
  nothing.
- ``on_close``: every channel the connection was in is left (presence members and
  ``channel_vacated`` are announced, ``on_unsubscribe(sub, "close")`` runs).

The Python hooks are described in :mod:`.hooks`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from pygatewayworker.businessworker.context import context
from pygatewayworker.businessworker.handle import api
from pygatewayworker.businessworker.request import ConnectRequest
from pygatewayworker.pusher import protocol as p
from pygatewayworker.pusher.channels import Channels
from pygatewayworker.pusher.clientevents import ClientEvents
from pygatewayworker.pusher.config import PusherApp, check_apps
from pygatewayworker.pusher.hooks import ClientEvent, Subscription
from pygatewayworker.pusher.presence import PusherState
from pygatewayworker.pusher.webhooks import WebhookSender

__all__ = ["PusherEvents"]

log = logging.getLogger("pusher")

_PATH = re.compile(r"\A/app/([^/?]+)/?\Z")
STOP_FLUSH = 3.0
"""Seconds a stopping worker gives its queued webhooks."""

Handler = Callable[[PusherApp, str, dict[str, Any], p.ClientMessage], Coroutine[Any, Any, None]]


class PusherEvents:
    """The Events of a Pusher app cluster; subclass it and set :attr:`apps`."""

    apps: Sequence[PusherApp] = ()
    """Your apps (one or several :class:`~.config.PusherApp`)."""

    def __init__(self) -> None:
        found = check_apps(type(self).apps, f"{type(self).__qualname__}.apps")
        self._by_key = {app.key: app for app in found}
        self._by_id = {app.id: app for app in found}
        self.webhooks = WebhookSender()
        self.channels = Channels(self, self.webhooks)
        self.client_events = ClientEvents(self, self.webhooks)
        self._handlers: dict[str, Handler] = {
            "pusher:ping": self._ping,
            "pusher:pong": self._ignore,
            "pusher:subscribe": self._subscribe,
            "pusher:unsubscribe": self._unsubscribe,
        }

    # ---- hooks: override these ------------------------------------------------------

    def on_subscribe(self, sub: Subscription) -> Any:
        """Before a subscription is accepted; ``False`` or ``raise Refuse(...)`` refuses."""
        return None

    def on_unsubscribe(self, sub: Subscription, reason: str) -> Any:
        """After the connection left ``sub.channel``; ``reason``: ``"unsubscribe"``,
        ``"close"`` or ``"refused"`` (see :mod:`.hooks`): once for every accepting
        :meth:`on_subscribe`."""
        return None

    def on_client_event(self, sub: Subscription, event: ClientEvent) -> Any:
        """Before a client event is relayed; ``False`` drops it, changing ``event``
        rewrites it."""
        return None

    # ---- Events callbacks -----------------------------------------------------------

    def app_by_id(self, app_id: str) -> PusherApp | None:
        """The declared app with this id."""
        return self._by_id.get(app_id)

    def on_websocket_connect(self, client_id: str, request: ConnectRequest) -> None:
        """The Pusher handshake: ``connection_established``, or an error and close."""
        match = _PATH.match(request.path)
        if match is None:
            self._refuse(client_id, p.ErrorCode.PATH_NOT_FOUND, f"Path not found: {request.path}")
            return
        app = self._by_key.get(match.group(1))
        if app is None:
            text = f"App key {match.group(1)[:64]} not in this cluster"
            self._refuse(client_id, p.ErrorCode.APP_NOT_FOUND, text)
            return
        version = request.query.get("protocol")
        if not version:
            self._refuse(client_id, p.ErrorCode.NO_PROTOCOL, "No protocol version supplied")
            return
        if not version.isdigit():
            self._refuse(client_id, p.ErrorCode.INVALID_VERSION, "Invalid version string format")
            return
        if not p.MIN_PROTOCOL <= int(version) <= p.MAX_PROTOCOL:
            text = f"Unsupported protocol version {version[:8]}; this server speaks 5 to 7"
            self._refuse(client_id, p.ErrorCode.UNSUPPORTED_PROTOCOL, text)
            return
        if not app.origin_allowed(request.headers.get("origin")):
            origin = request.headers.get("origin", "")[:100]
            self._refuse(client_id, p.ErrorCode.UNAUTHORIZED, f"Origin not allowed: {origin}")
            return
        session = context.session
        assert session is not None
        self.channels.fresh[client_id] = PusherState.new(session, app.id).doc
        established = {
            "socket_id": p.socket_id_of(client_id),
            "activity_timeout": app.activity_timeout,
        }
        api.send_to_client(client_id, p.message("pusher:connection_established", established))

    def _refuse(self, client_id: str, code: int, text: str) -> None:
        # The pusher:error, then a close with the same code, as Pusher's servers do:
        # pusher-js acts on the close code (4000-4099 give up, 4100-4199 back off,
        # 4200-4299 reconnect at once).
        api.close_client(client_id, p.error(text, code), code, p.close_reason(text))

    async def on_message(self, client_id: str, message: str | bytes) -> None:
        """One client frame: parse it and run its handler."""
        session = context.session
        state = None if session is None else self.channels.refresh(client_id, session)
        if state is None or session is None:
            return  # no completed handshake (refused, and being closed)
        app = self._by_id.get(state.app_id)
        if app is None:  # the app was removed by a reload
            self._refuse(client_id, p.ErrorCode.APP_NOT_FOUND, "App no longer in this cluster")
            return
        try:
            msg = p.parse_client_message(message)
        except p.ProtocolError as exc:
            api.send_to_client(client_id, p.error(str(exc), exc.code))
            return
        handler = self._handlers.get(msg.event)
        if handler is None:
            if msg.event.startswith("client-"):
                handler = self._client_event
            else:
                text = f"Unsupported event received on socket: {msg.event[:64]}"
                api.send_to_client(client_id, p.error(text))
                return
        await handler(app, client_id, session, msg)

    async def on_close(self, client_id: str) -> None:
        """The connection ended (also when its gateway died): leave its channels."""
        self.client_events.forget(client_id)
        session = context.session
        state = None if session is None else self.channels.refresh(client_id, session)
        app = None if state is None else self._by_id.get(state.app_id)
        if app is None or session is None:
            self.channels.fresh.pop(client_id, None)
            return
        await self.channels.close(app, client_id, session)

    async def on_worker_stop(self, worker: Any) -> None:
        """Give queued webhooks a moment, then stop sending."""
        await self.webhooks.flush(STOP_FLUSH)
        self.webhooks.close()

    # ---- handlers -------------------------------------------------------------------

    async def _ping(
        self, app: PusherApp, client_id: str, session: dict[str, Any], msg: Any
    ) -> None:
        api.send_to_client(client_id, p.message("pusher:pong", {}))

    async def _ignore(self, *args: Any) -> None:
        return None

    async def _subscribe(
        self, app: PusherApp, client_id: str, session: dict[str, Any], msg: p.ClientMessage
    ) -> None:
        await self.channels.subscribe(app, client_id, session, msg.data)

    async def _unsubscribe(
        self, app: PusherApp, client_id: str, session: dict[str, Any], msg: p.ClientMessage
    ) -> None:
        await self.channels.unsubscribe(app, client_id, session, msg.data.get("channel"))

    async def _client_event(
        self, app: PusherApp, client_id: str, session: dict[str, Any], msg: p.ClientMessage
    ) -> None:
        await self.client_events.relay(app, client_id, session, msg)
