"""Register: where gateways announce their internal address and workers and push
clients learn the list. Importing this package imports only the declaration."""

from pygatewayworker.register.config import ConfigError, Register

__all__ = ["Register", "ConfigError"]
