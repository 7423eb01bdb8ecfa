"""BusinessWorker: runs an app's Events class.

Importing this package imports the declaration plus the two documented handles used
from Events code: ``api`` (the Gateway API) and ``context`` (the current event's
client_id, addresses and session).
"""

from businessworker.config import BusinessWorker

__all__ = ["BusinessWorker"]
