"""Pusher app declarations: plain, validated at construction, no I/O.

:class:`PusherApp` declares one Pusher app (id, key, secret and its limits); a
list of them is the ``apps`` attribute of your ``Events`` class (a subclass of
:class:`~pygatewayworker.pusher.events.PusherEvents`), the one place the business
workers and the HTTP API role read them from. :class:`Webhook` names a URL that
gets the app's webhooks. :class:`PusherAPI` declares the HTTP API role (the
server SDKs' endpoint) in a start file.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from pygatewayworker.register.config import ConfigError, normalize_addresses, parse_address

__all__ = ["PusherApp", "Webhook", "PusherAPI", "WEBHOOK_EVENTS"]

WEBHOOK_EVENTS = frozenset(
    {"channel_occupied", "channel_vacated", "member_added", "member_removed", "client_event"}
)
"""The webhook event names Pusher defines (and we send)."""

_APP_ID = re.compile(r"\A[0-9A-Za-z_-]{1,64}\Z")
_KEY = re.compile(r"\A[0-9A-Za-z_.-]{1,128}\Z")


@dataclass(slots=True, frozen=True)
class Webhook:
    """POST the app's webhooks to ``url`` (``http://`` or ``https://``).

    ``events``: which of :data:`WEBHOOK_EVENTS` go there (all by default).
    ``headers``: extra request headers (e.g. an ``Authorization`` for your endpoint).
    """

    url: str
    events: frozenset[str] | Sequence[str] = WEBHOOK_EVENTS
    headers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"Webhook url must start with http:// or https://, got {self.url!r}")
        try:
            parts = urlsplit(self.url)
            parts.port  # noqa: B018 - raises ValueError for a port out of range
        except ValueError as exc:
            raise ConfigError(f"Webhook url {self.url!r} is malformed: {exc}") from None
        if not parts.hostname:
            raise ConfigError(f"Webhook url {self.url!r} names no host")
        events = frozenset(self.events)
        unknown = events - WEBHOOK_EVENTS
        if unknown:
            raise ConfigError(
                f"Webhook events {sorted(unknown)} unknown; choose from {sorted(WEBHOOK_EVENTS)}"
            )
        object.__setattr__(self, "events", events)
        object.__setattr__(self, "headers", tuple((str(k), str(v)) for k, v in self.headers))


@dataclass(slots=True, frozen=True)
class PusherApp:
    """One Pusher app: what pusher-js and the server SDKs are configured with.

    - ``id``, ``key``, ``secret``: the app's credentials (``PUSHER_APP_ID``,
      ``PUSHER_APP_KEY``, ``PUSHER_APP_SECRET`` in Laravel's ``.env``). The Python
      server SDK wants a numeric id.
    - ``allowed_origins``: when not empty, a WebSocket handshake whose ``Origin``
      header is not listed is refused (``pusher:error`` 4009). ``"*"`` allows all;
      an entry ``"https://*.example.com"`` allows any sub-domain.
    - ``activity_timeout``: seconds announced in ``pusher:connection_established``;
      pusher-js pings after that much silence (use the same value as the gateway's
      ``ping_interval``, see :data:`~pygatewayworker.pusher.protocol.PING_DATA`).
    - ``client_event_rate``: client events (``client-*``) one connection may send
      per second (a burst of the same size is allowed); beyond, events are refused
      with ``pusher:error`` 4301. 0 disables client events.
    - ``max_event_size``: bytes of an event's ``data`` (client events and the HTTP
      API), Pusher's 10 KB by default.
    - ``max_presence_members``: distinct users in one presence channel (Pusher:
      100); a subscription beyond is refused.
    - ``max_user_info``: bytes of a presence member's ``user_info`` (JSON).
    - ``max_channels_per_event``: channels one HTTP API event may name (Pusher: 100).
    - ``max_batch``: events of one ``batch_events`` request (Pusher: 10).
    - ``webhooks``: where the app's webhooks go (see :class:`Webhook`).
    """

    id: str
    key: str
    secret: str
    allowed_origins: tuple[str, ...] = ()
    activity_timeout: int = 120
    client_event_rate: int = 10
    max_event_size: int = 10 * 1024
    max_presence_members: int = 100
    max_user_info: int = 1024
    max_channels_per_event: int = 100
    max_batch: int = 10
    webhooks: tuple[Webhook, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.id, int) and not isinstance(self.id, bool):
            object.__setattr__(self, "id", str(self.id))
        if not isinstance(self.id, str) or not _APP_ID.match(self.id):
            raise ConfigError(f"PusherApp id must be 1-64 of [0-9A-Za-z_-], got {self.id!r}")
        if not isinstance(self.key, str) or not _KEY.match(self.key):
            raise ConfigError(f"PusherApp {self.id}: key must be 1-128 of [0-9A-Za-z_.-]")
        if not isinstance(self.secret, str) or len(self.secret) < 8:
            raise ConfigError(f"PusherApp {self.id}: secret must be a string of 8+ characters")
        if isinstance(self.allowed_origins, str):
            object.__setattr__(self, "allowed_origins", (self.allowed_origins,))
        object.__setattr__(self, "allowed_origins", tuple(self.allowed_origins))
        object.__setattr__(self, "webhooks", tuple(self.webhooks))
        for name in (
            "activity_timeout",
            "max_event_size",
            "max_presence_members",
            "max_user_info",
            "max_channels_per_event",
            "max_batch",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"PusherApp {self.id}: {name} must be an int >= 1, got {value!r}")
        rate = self.client_event_rate
        if isinstance(rate, bool) or not isinstance(rate, int) or rate < 0:
            raise ConfigError(f"PusherApp {self.id}: client_event_rate must be an int >= 0")
        for hook in self.webhooks:
            if not isinstance(hook, Webhook):
                raise ConfigError(f"PusherApp {self.id}: webhooks must be Webhook(...) objects")

    def origin_allowed(self, origin: str | None) -> bool:
        """Whether a handshake with this ``Origin`` header may connect."""
        if not self.allowed_origins or "*" in self.allowed_origins:
            return True
        if not origin:
            return False
        for allowed in self.allowed_origins:
            if allowed == origin:
                return True
            scheme, sep, host = allowed.partition("://*.")
            if sep and origin.startswith(scheme + "://") and origin.endswith("." + host):
                return True
        return False

    def webhooks_for(self, event: str) -> list[Webhook]:
        """The webhooks that want ``event``."""
        return [hook for hook in self.webhooks if event in hook.events]


def check_apps(apps: object, where: str) -> tuple[PusherApp, ...]:
    """``apps`` as a tuple of :class:`PusherApp` with distinct ids and keys."""
    if isinstance(apps, PusherApp):
        apps = (apps,)
    if not isinstance(apps, Sequence) or not apps:
        raise ConfigError(f"{where}: apps must be a non-empty list of PusherApp(...)")
    out = tuple(apps)
    for app in out:
        if not isinstance(app, PusherApp):
            raise ConfigError(f"{where}: apps must hold PusherApp(...) objects, got {app!r}")
    for attr in ("id", "key"):
        values = [getattr(app, attr) for app in out]
        if len(set(values)) != len(values):
            raise ConfigError(f"{where}: two apps share the same {attr}")
    return out


@dataclass(slots=True)
class PusherAPI:
    """The Pusher HTTP API role: the endpoint the Pusher server SDKs (``pusher`` for
    Python, ``pusher/pusher-php-server`` behind Laravel's ``pusher`` broadcaster...)
    call to trigger events and query channels.

    ``events``: the import string of your Events class (``".Events:Events"``, as
    for the BusinessWorker), whose ``apps`` list holds the apps' credentials; it is
    imported only in this role's processes. ``listen``: ``host:port``;
    ``count`` processes share it (``SO_REUSEPORT``). ``register``/``secret``: the
    cluster's, as for the other roles. ``timeout``: seconds for discovery and each
    query. ``timestamp_window``: signed requests whose ``auth_timestamp`` is further
    from our clock are refused (Pusher: 600 s). ``max_body``: larger bodies get 413.
    ``idle_timeout``: seconds a keep-alive connection may wait for its next request.
    """

    events: str = ""
    listen: str = "127.0.0.1:6001"
    register: str | list[str] | tuple[str, ...] = "127.0.0.1:1238"
    secret: str = ""
    name: str = "pusherapi"
    count: int = 1
    timeout: float = 5.0
    timestamp_window: float = 600.0
    max_body: int = 1024 * 1024
    idle_timeout: float = 30.0
    app: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        module, sep, attr = self.events.partition(":")
        if not sep or not module or not attr.isidentifier():
            raise ConfigError(
                f"PusherAPI events must name your Events class, e.g. '.Events:Events', "
                f"got {self.events!r}"
            )
        parse_address(self.listen, "PusherAPI listen")
        self.register = normalize_addresses(self.register, "PusherAPI register")
        if not isinstance(self.count, int) or self.count < 1:
            raise ConfigError(f"PusherAPI count must be an int >= 1, got {self.count!r}")
        for name in ("timeout", "timestamp_window", "idle_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"PusherAPI {name} must be > 0")
        if not isinstance(self.max_body, int) or self.max_body < 1:
            raise ConfigError(f"PusherAPI max_body must be an int >= 1, got {self.max_body!r}")

    @property
    def registers(self) -> tuple[str, ...]:
        """The register addresses, normalised."""
        return tuple(self.register)
