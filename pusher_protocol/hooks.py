"""What the Python hooks of a Pusher app receive, and how they answer.

Override these methods in your ``Events`` class (a subclass of
:class:`~pygatewayworker.pusher.events.PusherEvents`); each may be a plain function
or a coroutine, and runs in the business worker with the usual ``api`` and
``context`` (``context.client_id`` is the connection's client_id):

- ``on_subscribe(sub)``: before a subscription is accepted (after its auth was
  checked). Return ``False`` or raise :class:`Refuse` to refuse it: the client gets
  ``pusher:subscription_error``.
- ``on_unsubscribe(sub, reason)``: after the connection left the channel;
  ``reason`` is ``"unsubscribe"`` or ``"close"`` (the connection ended, for any
  reason: the client went away, was terminated, or its gateway died, in which case
  this runs once the worker has found the gateway gone). Runs once per channel.
- ``on_client_event(sub, event)``: before a client event is relayed. Return
  ``False`` to drop it; change ``event.name`` or ``event.data`` to rewrite it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Subscription", "ClientEvent", "Refuse"]


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
        from pygatewayworker.pusher.protocol import kind_of

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
