"""The benchmark app: as little business logic as a real app can have.

- ``on_websocket_connect``: the query string may name a group (``g``) and a uid
  (``u``) to join/bind; then the client gets ``"I<client_id>"``, its ready signal
  (the join/bind packets precede it on the same link, so the gateway applied them).
- ``on_message``: echo the message back to the sender (round-trip benchmark).

The callbacks are plain functions that never block: the benchmark's start files
(``bench/cluster.py``) run them inline, except M6's thread-mode series, which
measures the same ``on_message`` in the worker's callback threads.
"""

from __future__ import annotations

from typing import Any

from pygatewayworker import api


class Events:
    @staticmethod
    def on_websocket_connect(client_id: str, request: dict[str, Any]) -> None:
        query = request.get("query") or ""
        if query:
            for pair in query.split("&"):
                key, _, value = pair.partition("=")
                if not value:
                    continue
                if key == "g":
                    api.join_group(client_id, value)
                elif key == "u":
                    api.bind_uid(client_id, value)
        api.send_to_current_client("I" + client_id)

    @staticmethod
    def on_message(client_id: str, message: str | bytes) -> None:
        api.send_to_current_client(message)
