"""The Gateway API and the push clients.

- :class:`GatewayClient` (synchronous, thread-safe) and :class:`AsyncGatewayClient`
  (asyncio) let a web application push to WebSocket clients: ``send_to_uid``,
  ``send_to_group``, ``bind_uid``, ``get_session``... with the same names as in a
  business worker's Events.
- :class:`GatewayAPI` is that API over a set of :class:`GatewayLink` (used by the
  business worker and the push clients).
- Errors: :class:`GatewayError` and its subclasses; invalid client_ids raise
  :class:`InvalidClientId` (a ``ValueError``); a message, session or batch over the
  internal link limit raises :class:`PacketTooLarge` and a ``str`` with a lone
  surrogate :class:`InvalidText` (both ``ValueError``).
"""

from pygatewayworker.gateway.client_id import InvalidClientId
from pygatewayworker.gateway.protocol import InvalidText, PacketTooLarge
from pygatewayworker.gatewayclient.api import GatewayAPI
from pygatewayworker.gatewayclient.client import AsyncGatewayClient
from pygatewayworker.gatewayclient.errors import (
    GatewayError,
    GatewayUnavailable,
    LinkClosed,
    LinkError,
    NoRegister,
    QueryTimeout,
    RemoteError,
)
from pygatewayworker.gatewayclient.link import GatewayLink
from pygatewayworker.gatewayclient.sync import GatewayClient

__all__ = [
    "AsyncGatewayClient",
    "GatewayAPI",
    "GatewayClient",
    "GatewayError",
    "GatewayLink",
    "GatewayUnavailable",
    "InvalidClientId",
    "InvalidText",
    "LinkClosed",
    "LinkError",
    "NoRegister",
    "PacketTooLarge",
    "QueryTimeout",
    "RemoteError",
]
