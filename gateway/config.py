"""The Gateway declaration: plain, validated at construction, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field

from pygatewayworker.register.config import (
    ConfigError,
    check_ipv4,
    check_link_timing,
    normalize_addresses,
    parse_address,
)

__all__ = ["Gateway"]


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

    ``max_message_size``: larger client messages close the client with 1009.
    ``send_buffer_limit``: a client whose unsent data exceeds it is closed with 1008
    ("slow consumer") and counted as a send failure.
    ``static_dir``: plain HTTP GET requests (not WebSocket upgrades) are answered with
    files from this directory (the chat page), or 404 when it is empty.
    ``pending_event_limit`` / ``pending_event_seconds``: events that arrive while no
    business worker is linked are held (up to that many, for that long) and handed
    to the first worker that links, instead of being lost.
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
    static_dir: str = ""
    pending_event_limit: int = 10000
    pending_event_seconds: float = 10.0
    keepalive_interval: float = 10.0
    link_timeout: float = 30.0
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
        check_link_timing(self.keepalive_interval, self.link_timeout, "Gateway")

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
