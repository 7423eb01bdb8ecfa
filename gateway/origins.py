"""Which web pages may open a WebSocket: ``Origin`` header patterns. Pure.

Browsers send the page's origin with every WebSocket handshake and let any page
connect anywhere; a gateway that accepts every origin lets any site a user visits
open connections that carry the user's cookies (cross-site WebSocket hijacking).
``Gateway(allowed_origins=[...])`` names the pages that may; the others get 403.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

__all__ = ["OriginPolicy"]

_DEFAULT_PORTS = {"http": 80, "https": 443}


class OriginPolicy:
    """Which ``Origin`` headers may open a WebSocket. Patterns:

    - ``"https://chat.example.com"``: that scheme, host and (default) port;
    - ``"https://chat.example.com:8443"``: an explicit port; ``":*"`` any port;
    - ``"https://*.example.com"``: any subdomain (not ``example.com`` itself);
    - without a scheme (``"chat.example.com"``, ``"*.example.com"``): http or https;
    - ``"*"``: any origin.

    A request without an ``Origin`` header (not a browser) is not judged here:
    browsers always send one, and non-browser clients can forge any header, so the
    token is what proves who they are.
    """

    __slots__ = ("_any", "_patterns")

    def __init__(self, patterns: Iterable[str]) -> None:
        self._any = False
        self._patterns: list[tuple[str, str, str]] = []  # scheme, host, port
        for pattern in patterns:
            if pattern == "*":
                self._any = True
                continue
            self._patterns.append(self.parse(pattern))

    @staticmethod
    def parse(pattern: str) -> tuple[str, str, str]:
        """``(scheme or "", host pattern, port or "" or "*")``; ``ValueError`` when
        ``pattern`` is not an origin pattern."""
        text = pattern.strip().lower()
        scheme, sep, rest = text.partition("://")
        if not sep:
            scheme, rest = "", text
        elif scheme not in _DEFAULT_PORTS:
            raise ValueError(f"allowed_origins: {pattern!r}: scheme must be http or https")
        host, _, port = rest.rstrip("/").partition(":")
        if "/" in rest.rstrip("/") or not host or "*" in host.lstrip("*."):
            raise ValueError(
                f"allowed_origins: {pattern!r} is not an origin "
                "(scheme://host[:port], '*.' only as the first label)"
            )
        if host.startswith("*") and not host.startswith("*."):
            raise ValueError(f"allowed_origins: {pattern!r}: write '*.example.com'")
        if port and port != "*" and not port.isdigit():
            raise ValueError(f"allowed_origins: {pattern!r}: bad port")
        if scheme and port and port != "*" and int(port) == _DEFAULT_PORTS[scheme]:
            port = ""
        return scheme, host, port

    def allows(self, origin: str | None) -> bool:
        """Whether a request with this ``Origin`` header (``None``: none) may upgrade."""
        if origin is None or self._any:
            return True
        try:
            parts = urlsplit(origin.strip().lower())
            scheme, host, port_number = parts.scheme, parts.hostname or "", parts.port
        except ValueError:
            return False
        if scheme not in ("http", "https") or not host:
            return False
        port = "" if port_number in (None, _DEFAULT_PORTS[scheme]) else str(port_number)
        for want_scheme, want_host, want_port in self._patterns:
            if want_scheme and want_scheme != scheme:
                continue
            if want_port != "*" and want_port != port:
                continue
            if want_host.startswith("*."):
                if host.endswith(want_host[1:]):
                    return True
            elif host == want_host:
                return True
        return False
