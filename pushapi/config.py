"""The PushAPI declaration: plain, validated at construction, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field

from pygatewayworker.register.config import ConfigError, normalize_addresses, parse_address

__all__ = ["PushAPI"]


@dataclass(slots=True)
class PushAPI:
    """An HTTP endpoint that exposes the Gateway API as JSON POSTs, for backends in any
    language (``POST /send_to_uid {"uid": "42", "message": "paid"}``).

    ``listen``: the ``host:port`` it binds (loopback by default). ``register``: the
    register address(es) it discovers gateways through; ``secret``: the cluster's
    secret (for the register and the gateways). ``token``: the bearer token every
    request must carry (``Authorization: Bearer <token>``); it is required whatever the
    address, because a loopback address does not keep out a web page open in a browser
    on the same machine (see :mod:`pushapi.server`). ``count``: processes sharing the port
    (``SO_REUSEPORT``). ``timeout``: seconds for discovery, links and each query.
    ``max_body``: larger request bodies are refused with 413. ``idle_timeout``: a
    connection that does not complete its next request within this many seconds is
    closed (answered 408 when part of a request had come). ``token_key``: the
    gateways' ``token_key``, for ``POST /create_token`` (connect tokens; empty: that
    verb answers 400).
    """

    listen: str = "127.0.0.1:7373"
    register: str | list[str] | tuple[str, ...] = "127.0.0.1:1238"
    secret: str = ""
    token: str = ""
    name: str = "pushapi"
    count: int = 1
    timeout: float = 5.0
    max_body: int = 1024 * 1024
    idle_timeout: float = 30.0
    token_key: str = field(default="", repr=False)
    app: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        parse_address(self.listen, "PushAPI listen")
        self.register = normalize_addresses(self.register, "PushAPI register")
        if not isinstance(self.secret, str) or not isinstance(self.token, str):
            raise ConfigError("PushAPI secret and token must be strings")
        if not self.token.strip():
            raise ConfigError(
                f"PushAPI listen={self.listen!r} has no token: set token= to a secret string "
                "(clients send 'Authorization: Bearer <token>'); it is required on loopback "
                "too, since any web page in a browser on this machine can reach loopback"
            )
        if not (self.token.isascii() and self.token.isprintable()) or " " in self.token:
            raise ConfigError(
                "PushAPI token must be printable ASCII without spaces (it travels in an "
                "'Authorization: Bearer <token>' header)"
            )
        if not isinstance(self.count, int) or self.count < 1:
            raise ConfigError(f"PushAPI count must be an int >= 1, got {self.count!r}")
        if self.timeout <= 0 or self.idle_timeout <= 0:
            raise ConfigError("PushAPI timeout and idle_timeout must be > 0")
        if not isinstance(self.max_body, int) or self.max_body < 1:
            raise ConfigError(f"PushAPI max_body must be an int >= 1, got {self.max_body!r}")

    @property
    def registers(self) -> tuple[str, ...]:
        """The register addresses, normalised."""
        return tuple(self.register)
