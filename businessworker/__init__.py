"""BusinessWorker: runs an app's Events class.

Importing this package imports the declaration plus the two documented handles used
from Events code: ``api`` (the Gateway API, see ``businessworker.handle``) and
``context`` (the current event's client_id, addresses and session, see
``businessworker.context``). The runtime is ``businessworker.worker``.
"""

from pygatewayworker.businessworker.config import BusinessWorker
from pygatewayworker.businessworker.context import context
from pygatewayworker.businessworker.handle import api

__all__ = ["BusinessWorker", "api", "context"]
