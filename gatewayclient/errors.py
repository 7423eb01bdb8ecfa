"""Exceptions of the Gateway API, its links and the push clients.

They split the way h11's do: ``ValueError``/``TypeError``/``InvalidClientId`` mean the
caller misused the API (bad uid, bad message type, malformed client_id) and are
raised before anything is sent; the classes below mean the cluster could not do what
was asked (a gateway is not linked, did not answer in time, refused the link).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "GatewayError",
    "GatewayUnavailable",
    "LinkError",
    "LinkClosed",
    "RemoteError",
    "QueryTimeout",
    "NoRegister",
]


class GatewayError(Exception):
    """Base class: the cluster could not do what was asked."""


class GatewayUnavailable(GatewayError):
    """The gateway a call needs is not linked (down, restarting, not yet discovered)."""


class LinkError(GatewayUnavailable):
    """A link to a gateway could not be established: connection refused, timeout,
    or the gateway answered the HELLO with an ERROR (e.g. a wrong secret)."""


class LinkClosed(GatewayUnavailable):
    """The link closed while a request was pending, or a send was tried on a closed
    link."""


class RemoteError(GatewayError):
    """The gateway answered a request with an ERROR packet; the message is its text."""


class QueryTimeout(GatewayError):
    """Some gateways did not answer a query within the query timeout (or their link
    was lost while asking).

    ``missing`` lists their addresses; ``partial`` holds the answer merged from the
    gateways that did answer (``None`` for a query that asks a single gateway).
    """

    def __init__(self, message: str, partial: Any = None, missing: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.partial = partial
        self.missing = missing


class NoRegister(GatewayError):
    """No register answered, so no gateway could be discovered. The message carries
    the register's last error (refused, wrong secret...)."""
