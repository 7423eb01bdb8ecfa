"""BusinessWorker: runs an app's Events class.

Importing this package imports only the declaration (``BusinessWorker``), so start
files (which the master reads) load no asyncio and no push client. Events code takes
its two handles from the top-level package: ``from pygatewayworker import api,
context`` (:mod:`pygatewayworker.businessworker.handle` and
:mod:`pygatewayworker.businessworker.context`). The runtime is
:mod:`pygatewayworker.businessworker.worker`.
"""

from pygatewayworker.businessworker.config import BusinessWorker

__all__ = ["BusinessWorker"]
