"""The current event's context: which client, from where, through which gateway, and
its session.

How this works
--------------
While a business worker runs a callback of the app's Events, the per-event facts
(the original's ``$_SERVER`` and ``$_SESSION``) live in one ``contextvars.ContextVar``
holding an :class:`EventContext`. Every event runs in a context of its own (a
coroutine callback in its client's task, a plain-function callback in a fresh copy
of the context), so two clients never see each other's context, and tasks the
callback starts inherit it.

Application code reads it through the one documented handle, :data:`context`::

    from pygatewayworker import context

    def on_message(client_id, message):
        context.client_ip        # "203.0.113.7"
        context.session["n"] = context.session.get("n", 0) + 1   # written back after

``context.session`` is a dict, assignable (``context.session = {...}``); changing it
in place counts too. After ``on_connect``, ``on_websocket_connect`` and ``on_message``
the worker sends it back to the gateway if it changed (not after ``on_close``, where
it holds the last value). Outside an event every property is ``None``.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any

__all__ = ["EventContext", "Context", "context", "current_event", "enter_event", "exit_event"]


@dataclass(slots=True)
class EventContext:
    """What the worker knows about the event being handled."""

    client_id: str
    client_ip: str
    client_port: int
    gateway_ip: str
    """The gateway's lan ip (its internal address)."""
    gateway_port: int
    """The gateway's *public* port (from its ``WELCOME``)."""
    gateway_address: str
    """The gateway's internal ``"ip:port"``."""
    session: dict[str, Any]
    kind: str = ""
    """The event: ``connect``, ``websocket_connect``, ``message`` or ``close``."""


_event: ContextVar[EventContext | None] = ContextVar(
    "pygatewayworker.businessworker.event", default=None
)


def current_event() -> EventContext | None:
    """The event being handled in this task, or ``None``."""
    return _event.get()


def enter_event(event: EventContext) -> Token[EventContext | None]:
    """Make ``event`` the current one (worker internals); undo with :func:`exit_event`."""
    return _event.set(event)


def exit_event(token: Token[EventContext | None]) -> None:
    """Restore the context that was current before :func:`enter_event`."""
    _event.reset(token)


class Context:
    """Read-only view of the current event (``session`` is also assignable).

    Use the module-level instance :data:`context`; it holds no state of its own.
    """

    __slots__ = ()

    @property
    def client_id(self) -> str | None:
        """The current client's id, ``None`` outside an event."""
        event = _event.get()
        return None if event is None else event.client_id

    @property
    def client_ip(self) -> str | None:
        """The client's IP address as the gateway saw it."""
        event = _event.get()
        return None if event is None else event.client_ip

    @property
    def client_port(self) -> int | None:
        """The client's TCP port."""
        event = _event.get()
        return None if event is None else event.client_port

    @property
    def gateway_ip(self) -> str | None:
        """The gateway's lan ip."""
        event = _event.get()
        return None if event is None else event.gateway_ip

    @property
    def gateway_port(self) -> int | None:
        """The gateway's public (WebSocket) port."""
        event = _event.get()
        return None if event is None else event.gateway_port

    @property
    def gateway_address(self) -> str | None:
        """The gateway's internal ``"ip:port"``."""
        event = _event.get()
        return None if event is None else event.gateway_address

    @property
    def session(self) -> dict[str, Any] | None:
        """The client's session dict (``{}`` when never set), ``None`` outside an event."""
        event = _event.get()
        return None if event is None else event.session

    @session.setter
    def session(self, value: dict[str, Any]) -> None:
        event = _event.get()
        if event is None:
            raise RuntimeError(
                "context.session can only be set while handling a client event; "
                "use api.set_session(client_id, session) elsewhere"
            )
        if not isinstance(value, dict):
            raise TypeError(f"context.session must be a dict, not {type(value).__name__}")
        event.session = value

    def __repr__(self) -> str:
        return f"<businessworker.context {_event.get()!r}>"


context = Context()
"""The one handle on the current event (see the module docstring)."""
