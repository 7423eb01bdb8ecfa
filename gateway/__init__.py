"""Gateway: holds client WebSocket connections and all per-client state. Importing
this package imports only the declaration; the runtime is ``gateway.server``."""

from pygatewayworker.gateway.config import Gateway

__all__ = ["Gateway"]
