"""The Pusher Channels protocol on the cluster: pusher-js / Laravel Echo clients and
the Pusher server SDKs work against it unchanged.

What you import::

    from pygatewayworker.pusher import PusherApp, PusherEvents, PusherAPI, Webhook
    from pygatewayworker.pusher import Refuse, Subscription, ClientEvent, PING_DATA

- :class:`PusherEvents` (subclass it in ``Events.py``, set ``apps``; hooks:
  ``on_subscribe``, ``on_unsubscribe``, ``on_client_event``),
- :class:`PusherApp` / :class:`Webhook` (the apps' credentials, limits, webhooks),
- :class:`PusherAPI` (start file: the HTTP API role for the server SDKs),
- :data:`PING_DATA` (``Gateway(ping_data=PING_DATA)``: heartbeats are pusher:ping).

Names load on first use, so a start file importing ``PusherAPI`` loads no runtime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "PusherApp": "pygatewayworker.pusher.config",
    "Webhook": "pygatewayworker.pusher.config",
    "PusherAPI": "pygatewayworker.pusher.config",
    "PusherEvents": "pygatewayworker.pusher.events",
    "Refuse": "pygatewayworker.pusher.hooks",
    "Subscription": "pygatewayworker.pusher.hooks",
    "ClientEvent": "pygatewayworker.pusher.hooks",
    "PING_DATA": "pygatewayworker.pusher.protocol",
}

__all__ = [
    "PING_DATA",
    "ClientEvent",
    "PusherAPI",
    "PusherApp",
    "PusherEvents",
    "Refuse",
    "Subscription",
    "Webhook",
]

if TYPE_CHECKING:
    from pygatewayworker.pusher.config import PusherAPI, PusherApp, Webhook
    from pygatewayworker.pusher.events import PusherEvents
    from pygatewayworker.pusher.hooks import ClientEvent, Refuse, Subscription
    from pygatewayworker.pusher.protocol import PING_DATA


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
