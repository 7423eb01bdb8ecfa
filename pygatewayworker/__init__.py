"""pygatewayworker: a GatewayWorker-style WebSocket gateway cluster.

What users import lives here, under one name::

    from pygatewayworker import Gateway, BusinessWorker, Register, PushAPI  # start files
    from pygatewayworker import api, context, Accept, Reject                # Events code
    from pygatewayworker import GatewayClient, AsyncGatewayClient           # web apps

Names are resolved on first use (PEP 562), so a start file that imports only the
declarations does not load the asyncio push client, and the master process stays lean.

The installed package maps the repository's role folders to subpackages:
``pygatewayworker.gateway``, ``.register``, ``.businessworker``, ``.gatewayclient``,
``.pushapi`` and ``.cluster`` (the supervisor and the command line).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

_EXPORTS: dict[str, str] = {
    "Gateway": "pygatewayworker.gateway.config",
    "Register": "pygatewayworker.register.config",
    "ConfigError": "pygatewayworker.register.config",
    "BusinessWorker": "pygatewayworker.businessworker.config",
    "PushAPI": "pygatewayworker.pushapi.config",
    "api": "pygatewayworker.businessworker.handle",
    "context": "pygatewayworker.businessworker.context",
    "ConnectRequest": "pygatewayworker.businessworker.request",
    "Accept": "pygatewayworker.businessworker.authenticate",
    "Reject": "pygatewayworker.businessworker.authenticate",
    "GatewayClient": "pygatewayworker.gatewayclient.sync",
    "AsyncGatewayClient": "pygatewayworker.gatewayclient.client",
    "GatewayError": "pygatewayworker.gatewayclient.errors",
    "GatewayUnavailable": "pygatewayworker.gatewayclient.errors",
    "NoRegister": "pygatewayworker.gatewayclient.errors",
    "QueryTimeout": "pygatewayworker.gatewayclient.errors",
    "RemoteError": "pygatewayworker.gatewayclient.errors",
    "LinkClosed": "pygatewayworker.gatewayclient.errors",
    "LinkError": "pygatewayworker.gatewayclient.errors",
    "InvalidClientId": "pygatewayworker.gateway.client_id",
    "decode_client_id": "pygatewayworker.gateway.client_id",
}

__all__ = [
    "Accept",
    "AsyncGatewayClient",
    "BusinessWorker",
    "ConfigError",
    "ConnectRequest",
    "Gateway",
    "GatewayClient",
    "GatewayError",
    "GatewayUnavailable",
    "InvalidClientId",
    "LinkClosed",
    "LinkError",
    "NoRegister",
    "PushAPI",
    "QueryTimeout",
    "Register",
    "Reject",
    "RemoteError",
    "__version__",
    "api",
    "context",
    "decode_client_id",
]

if TYPE_CHECKING:
    from pygatewayworker.businessworker.authenticate import Accept, Reject
    from pygatewayworker.businessworker.config import BusinessWorker
    from pygatewayworker.businessworker.context import context
    from pygatewayworker.businessworker.handle import api
    from pygatewayworker.businessworker.request import ConnectRequest
    from pygatewayworker.gateway.client_id import InvalidClientId, decode_client_id
    from pygatewayworker.gateway.config import Gateway
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
    from pygatewayworker.gatewayclient.sync import GatewayClient
    from pygatewayworker.pushapi.config import PushAPI
    from pygatewayworker.register.config import ConfigError, Register


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pygatewayworker' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
