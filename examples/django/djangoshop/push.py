"""The push client of this Django process: one ``GatewayClient``, shared by every thread.

``client()`` creates it on first use (not at import: the settings may not be
configured yet, and tests change them), under a lock so that two request threads
arriving together still share one. It is thread-safe: each call is handed to the
client's own event-loop thread, which keeps one persistent link per gateway, so a
push costs no TCP connect. After a fork (gunicorn's workers) the child gets its own
links on its first call.

``close()`` closes it; it runs at interpreter exit, and the next ``client()`` makes a
new one (tests use that to point the process at another cluster).
"""

from __future__ import annotations

import atexit
import threading

from django.conf import settings

from pygatewayworker import GatewayClient

__all__ = ["client", "close"]

_lock = threading.Lock()
_client: GatewayClient | None = None


def client() -> GatewayClient:
    """The process's push client, created from the settings on first use."""
    global _client
    current = _client
    if current is not None:
        return current
    with _lock:
        if _client is None:
            _client = GatewayClient(
                register=settings.GATEWAY_REGISTER,
                secret=settings.GATEWAY_SECRET,
                timeout=5.0,
                name="djangoshop",
            )
        return _client


def close() -> None:
    """Close the push client (its links and thread); a later ``client()`` opens anew."""
    global _client
    with _lock:
        current, _client = _client, None
    if current is not None:
        current.close()


atexit.register(close)
