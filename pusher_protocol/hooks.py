"""What the Python hooks of a Pusher app receive, and how they answer.

Override these methods in your ``Events`` class (a subclass of
:class:`~pygatewayworker.pusher.events.PusherEvents`); each may be a plain function
or a coroutine, and runs in the business worker with the usual ``api`` and
``context`` (``context.client_id`` is the connection's client_id):

- ``on_subscribe(sub)``: before a subscription is accepted (after its auth was
  checked). Return ``False`` or raise :class:`Refuse` to refuse it: the client gets
  ``pusher:subscription_error``.
- ``on_unsubscribe(sub, reason)``: after the connection left the channel;
  ``reason`` is ``"unsubscribe"``, ``"close"`` (the connection ended, for any
  reason: the client went away, was terminated, or its gateway died, in which case
  this runs once the worker has found the gateway gone) or ``"refused"`` (your
  ``on_subscribe`` accepted, but the subscription was refused after it: a presence
  channel filled up meanwhile). Runs once for every ``on_subscribe`` that accepted,
  so what ``on_subscribe`` takes (a lock, a counter) is always given back here.
- ``on_client_event(sub, event)``: before a client event is relayed. Return
  ``False`` to drop it; change ``event.name`` or ``event.data`` to rewrite it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Protocol

from pygatewayworker.pusher.presence import PusherState
from pygatewayworker.pusher.protocol import kind_of, socket_id_of

__all__ = ["Subscription", "ClientEvent", "Refuse", "Hooks", "settle", "subscription_of"]


@dataclass(slots=True, frozen=True)
class Subscription:
    """One connection in one channel.

    ``user_id``/``user_info``: the presence member (``None`` on other channels,
    unless the connection signed in: then ``user_id`` is that user).
    """

    app_id: str
    channel: str
    client_id: str
    socket_id: str
    user_id: str | None = None
    user_info: Any = None

    @property
    def kind(self) -> str:
        """``"public"``, ``"private"``, ``"encrypted"`` or ``"presence"``."""
        return kind_of(self.channel)


@dataclass(slots=True)
class ClientEvent:
    """A client event on its way to the channel's other members (mutable)."""

    name: str
    data: Any


class Refuse(Exception):
    """Raise in ``on_subscribe`` to refuse a subscription with this message;
    ``status`` goes into the ``pusher:subscription_error`` (403 by default)."""

    def __init__(self, message: str = "Subscription refused", status: int = 403) -> None:
        super().__init__(message)
        self.status = status


class Hooks(Protocol):
    """The hook methods the Pusher app calls (the user's Events class)."""

    def on_subscribe(self, sub: Subscription) -> Any: ...

    def on_unsubscribe(self, sub: Subscription, reason: str) -> Any: ...

    def on_client_event(self, sub: Subscription, event: ClientEvent) -> Any: ...


async def settle(result: Any) -> Any:
    """The value of a hook that may be plain or a coroutine."""
    return await result if inspect.isawaitable(result) else result


def subscription_of(
    app_id: str, client_id: str, state: PusherState, channel: str, record: Any
) -> Subscription:
    """What the hooks get about ``client_id`` in ``channel`` (``record``: its
    presence record, if any)."""
    presence = record if isinstance(record, dict) else {}
    return Subscription(
        app_id,
        channel,
        client_id,
        socket_id_of(client_id),
        presence.get("user_id") or state.user_id,
        presence.get("user_info"),
    )
