"""The Register declaration, and address helpers every role uses.

A declaration is a plain object: validated at construction with a clear message, no
I/O. The runtime (``register.server``) is built from it inside the child process.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

__all__ = [
    "Register",
    "parse_address",
    "normalize_addresses",
    "ConfigError",
    "is_loopback",
    "check_link_timing",
]


class ConfigError(ValueError):
    """A declaration (start file, environment override) is invalid."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address a socket is bound to) is reachable only from here."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def parse_address(address: str, what: str = "address") -> tuple[str, int]:
    """Split ``"host:port"`` into ``(host, port)``; raise :class:`ConfigError` if bad.

    A ``scheme://`` prefix such as ``websocket://`` or ``text://`` (the original's
    style) is accepted and ignored.
    """
    if not isinstance(address, str) or not address:
        raise ConfigError(f"{what} must be a 'host:port' string, got {address!r}")
    text = address.split("://", 1)[-1]
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ConfigError(f"{what} {address!r} is not 'host:port'")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ConfigError(f"{what} {address!r}: port must be 0..65535")
    return host.strip("[]"), port


def normalize_addresses(value: str | list[str] | tuple[str, ...], what: str) -> tuple[str, ...]:
    """Accept one address, a comma-separated string or a list; return a tuple of
    validated ``"host:port"`` strings (at least one)."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        host, port = parse_address(item, what)
        if port == 0:
            raise ConfigError(f"{what} {item!r}: port 0 is not a reachable address")
        out.append(f"{host}:{port}")
    if not out:
        raise ConfigError(f"{what}: at least one 'host:port' is required")
    return tuple(dict.fromkeys(out))


def check_link_timing(keepalive_interval: float, link_timeout: float, what: str) -> None:
    """Refuse link timings under which an idle link would be dropped: a link is kept
    alive by a ping every ``keepalive_interval`` and dropped after ``link_timeout``
    of silence, so the ping must come well within the timeout."""
    for name, value in (("keepalive_interval", keepalive_interval), ("link_timeout", link_timeout)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ConfigError(f"{what} {name} must be a number > 0, got {value!r}")
    if not link_timeout >= 2 * keepalive_interval:
        raise ConfigError(
            f"{what} link_timeout ({link_timeout:g} s) must be at least twice "
            f"keepalive_interval ({keepalive_interval:g} s), or idle links are dropped "
            "and relinked over and over"
        )


def check_ipv4(value: str, what: str) -> str:
    """Return ``value`` if it is an IPv4 address, else raise :class:`ConfigError`."""
    try:
        ipaddress.IPv4Address(value)
    except ipaddress.AddressValueError:
        raise ConfigError(f"{what} {value!r} must be an IPv4 address") from None
    return value


@dataclass(slots=True)
class Register:
    """One register process: discovery only, never on the message path.

    ``listen`` is the ``host:port`` it binds; ``secret`` (optional) must be presented by
    every gateway, worker and push client; ``name`` appears in logs and ``status``.
    """

    listen: str = "127.0.0.1:1238"
    secret: str = ""
    name: str = "register"
    handshake_timeout: float = 10.0
    app: str = field(default="", compare=False)
    idle_timeout: float = 30.0
    """A connection silent this long after its handshake is dropped (peers ping every
    ``keepalive_interval``, 10 s by default, so keep this above that)."""

    def __post_init__(self) -> None:
        parse_address(self.listen, "Register listen")
        if not isinstance(self.secret, str):
            raise ConfigError("Register secret must be a str")
        if self.handshake_timeout <= 0:
            raise ConfigError("Register handshake_timeout must be > 0")
        if self.idle_timeout <= 0:
            raise ConfigError("Register idle_timeout must be > 0")

    @property
    def count(self) -> int:
        """A register is always one process."""
        return 1
