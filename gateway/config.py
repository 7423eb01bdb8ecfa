"""The Gateway declaration: plain, validated at construction, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field

from pygatewayworker.gateway.limits import DEFAULT_MAX_PACKET, MAX_CLIENT_MESSAGE, MAX_SESSION
from pygatewayworker.gateway.origins import OriginPolicy
from pygatewayworker.gateway.tokens import check_token_key
from pygatewayworker.register.config import (
    ConfigError,
    check_ipv4,
    check_link_timing,
    normalize_addresses,
    parse_address,
)

__all__ = ["Gateway", "BACKLOG_MARK"]

BACKLOG_MARK = 64 * 1024
"""Unsent bytes from which a client counts as backlogged: ``send_timeout`` runs from
then until its output drains below half of it (or ``send_buffer_limit``, if
smaller)."""


@dataclass(slots=True)
class Gateway:
    """``count`` gateway processes sharing the public WebSocket address ``listen``.

    Process ``i`` (0-based) listens for business workers and push clients on
    ``lan_ip:start_port + i``; ``lan_ip`` is what other hosts use to reach it and is
    encoded in every client_id, so it must be a concrete IPv4 address (never 0.0.0.0).
    ``internal_bind`` binds the internal port on another address than the advertised
    one (containers, NAT); by default it is ``lan_ip``. ``start_port=0`` (tests) makes
    every process bind any free internal port; the real one is known after start.

    Heartbeat: every ``ping_interval`` seconds of client silence the gateway sends
    ``ping_data``; with ``ping_not_response_limit`` n > 0 a client silent for more
    than n intervals is dropped (its TCP connection is aborted: the client sees 1006,
    and ``on_close`` runs). Any client message counts as activity, and so does a
    WebSocket ping or pong when ``pong_is_activity`` is true.

    ``max_message_size``: larger client messages close the client with 1009; at most
    ``protocol.MAX_CLIENT_MESSAGE`` (about 5.9 MiB), so that a message and its session
    always fit in one internal packet (a larger value is refused here).
    ``send_buffer_limit``: a client whose unsent data exceeds it is closed with 1008
    ("slow consumer") and counted as a send failure; so is one whose unsent data
    (more than :data:`BACKLOG_MARK` bytes) has not drained for ``send_timeout``
    seconds (0: no time limit). ``send_socket_buffer``: the kernel send buffer of
    each client socket (``SO_SNDBUF``; 0: the kernel's default, which grows to
    megabytes): small, so that a client's backlog is held by the gateway, where the
    two limits see it, not hidden in the kernel.
    ``static_dir``: plain HTTP GET requests (not WebSocket upgrades) are answered with
    files from this directory (the chat page), or 404 when it is empty.
    ``pending_event_limit`` / ``pending_event_seconds``: events that arrive while no
    business worker is linked are held (up to that many, for that long) and handed
    to the first worker that links, instead of being lost.

    Connection security (README, "Authenticating connections"); every check runs
    before the ``101``, so a refused client never gets a client_id:

    - ``token_key``: the HMAC-SHA256 key of connect tokens (``gateway.tokens``; at
      least 32 bytes). With it, a client connects with ``?token=<jwt>`` (or
      ``Authorization: Bearer``), a bad token gets 401, and a good one binds its uid,
      groups and session at once. ``token_required`` (default true): refuse a
      connection without a token (false: such connections are anonymous).
    - ``allowed_origins``: ``Origin`` patterns that may connect
      (``"https://chat.example.com"``, ``"https://*.example.com"``,
      ``"http://localhost:*"``); others get 403. Empty (the default): any origin.
    - ``certfile`` / ``keyfile`` (PEM): serve ``wss://`` (and the static page over
      https) on the public port.
    - ``max_connections_per_ip`` (429 beyond it), ``handshake_rate`` /
      ``handshake_burst`` (handshakes per second of this process; 503 beyond),
      ``message_rate`` / ``message_burst`` and ``byte_rate`` / ``byte_burst`` (per
      connection; close 1008 beyond). 0 means no limit.
    - ``auth_timeout``: seconds the gateway holds a handshake for the app's
      ``authenticate`` hook (run by a business worker whose Events define it);
      without an answer by then, or with no worker to ask, the client gets
      ``auth_failure_status`` (503 by default, or 500..599 / 401 / 403 / 429).
    """

    listen: str = "0.0.0.0:7272"
    name: str = "gateway"
    count: int = 2
    lan_ip: str = "127.0.0.1"
    start_port: int = 2300
    internal_bind: str = ""
    register: str | list[str] | tuple[str, ...] = "127.0.0.1:1238"
    secret: str = ""
    ping_interval: float = 10.0
    ping_not_response_limit: int = 0
    ping_data: str | bytes = ""
    pong_is_activity: bool = True
    max_message_size: int = 1024 * 1024
    send_buffer_limit: int = 1024 * 1024
    send_timeout: float = 10.0
    send_socket_buffer: int = 64 * 1024
    static_dir: str = ""
    pending_event_limit: int = 10000
    pending_event_seconds: float = 10.0
    keepalive_interval: float = 10.0
    link_timeout: float = 30.0
    token_key: str = field(default="", repr=False)
    token_required: bool = True
    allowed_origins: list[str] | tuple[str, ...] = ()
    certfile: str = ""
    keyfile: str = ""
    max_connections_per_ip: int = 0
    handshake_rate: float = 0.0
    handshake_burst: int = 0
    message_rate: float = 0.0
    message_burst: int = 0
    byte_rate: float = 0.0
    byte_burst: int = 0
    auth_timeout: float = 5.0
    auth_failure_status: int = 503
    app: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        parse_address(self.listen, "Gateway listen")
        if not isinstance(self.count, int) or self.count < 1:
            raise ConfigError(f"Gateway count must be an int >= 1, got {self.count!r}")
        if self.lan_ip in ("0.0.0.0", ""):
            raise ConfigError(
                "Gateway lan_ip must be the address other hosts use to reach this "
                "gateway (e.g. 127.0.0.1 or 10.0.0.5), not 0.0.0.0; to listen on every "
                "interface set internal_bind='0.0.0.0' and keep lan_ip concrete"
            )
        check_ipv4(self.lan_ip, "Gateway lan_ip")
        if self.internal_bind:
            check_ipv4(self.internal_bind, "Gateway internal_bind")
        if not 0 <= self.start_port <= 65535 - self.count + 1:
            raise ConfigError(
                f"Gateway start_port {self.start_port} with count {self.count} leaves 1..65535"
            )
        self.register = normalize_addresses(self.register, "Gateway register")
        if self.ping_interval < 0 or self.ping_not_response_limit < 0:
            raise ConfigError("Gateway ping_interval and ping_not_response_limit must be >= 0")
        if self.max_message_size < 1 or self.send_buffer_limit < 1:
            raise ConfigError("Gateway max_message_size and send_buffer_limit must be >= 1")
        if self.send_timeout < 0 or self.send_socket_buffer < 0:
            raise ConfigError("Gateway send_timeout and send_socket_buffer must be >= 0")
        if self.max_message_size > MAX_CLIENT_MESSAGE:
            raise ConfigError(
                f"Gateway max_message_size {self.max_message_size} is over "
                f"{MAX_CLIENT_MESSAGE} bytes, the largest message an internal link carries "
                f"to a worker with its session (a {DEFAULT_MAX_PACKET}-byte packet holds the "
                f"message, a session of up to {MAX_SESSION} bytes and the event's fields); "
                f"send larger data another way (an upload URL)"
            )
        self._check_security()
        check_link_timing(self.keepalive_interval, self.link_timeout, "Gateway")

    def _check_security(self) -> None:
        if self.token_key:
            try:
                check_token_key(self.token_key, "Gateway")
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        if isinstance(self.allowed_origins, str):
            self.allowed_origins = [self.allowed_origins]
        self.allowed_origins = tuple(self.allowed_origins)
        for pattern in self.allowed_origins:
            try:
                OriginPolicy.parse(pattern) if pattern != "*" else None
            except ValueError as exc:
                raise ConfigError(f"Gateway {exc}") from None
        if bool(self.certfile) != bool(self.keyfile):
            raise ConfigError("Gateway certfile and keyfile go together (PEM files)")
        for name in ("max_connections_per_ip", "handshake_burst", "message_burst", "byte_burst"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ConfigError(f"Gateway {name} must be an int >= 0 (0: no limit)")
        for rate, burst in (
            ("handshake_rate", "handshake_burst"),
            ("message_rate", "message_burst"),
            ("byte_rate", "byte_burst"),
        ):
            value = getattr(self, rate)
            if value < 0:
                raise ConfigError(f"Gateway {rate} must be >= 0 (0: no limit)")
            if value and not getattr(self, burst):  # one second's worth by default
                least = self.max_message_size if rate == "byte_rate" else 1
                setattr(self, burst, max(least, int(value)))
        if not isinstance(self.auth_timeout, (int, float)) or not 0 < self.auth_timeout <= 60:
            raise ConfigError(
                f"Gateway auth_timeout must be in (0, 60] seconds, got {self.auth_timeout!r}"
            )
        status = self.auth_failure_status
        if type(status) is not int or not (500 <= status <= 599 or status in (401, 403, 429)):
            raise ConfigError(
                f"Gateway auth_failure_status must be 500..599, 401, 403 or 429, got {status!r}"
            )
        if self.byte_rate and self.byte_burst < self.max_message_size:
            raise ConfigError(
                f"Gateway byte_burst {self.byte_burst} is below max_message_size "
                f"{self.max_message_size}: a client could never send its largest message"
            )

    @property
    def registers(self) -> tuple[str, ...]:
        """The register addresses, normalised."""
        return tuple(self.register)

    def internal_port(self, index: int) -> int:
        """Internal port of process ``index``."""
        return self.start_port + index

    def internal_address(self, index: int) -> str:
        """Advertised internal address (``lan_ip:port``) of process ``index``."""
        return f"{self.lan_ip}:{self.start_port + index}"

    def internal_bind_address(self, index: int) -> tuple[str, int]:
        """Where process ``index`` binds its internal port."""
        return (self.internal_bind or self.lan_ip, self.start_port + index)
