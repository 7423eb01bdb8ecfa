"""Events of the push-only demo. The page sends nothing over the WebSocket: the
gateway tells it its client_id (``init``), the web backend does everything else
over HTTP and pushes through a push client. Only the departure of a connection is
known here first, so ``on_close`` tells the room, and the pages reload the member
list from the backend."""

from __future__ import annotations

import json

from pygatewayworker import api, context


class Events:
    @staticmethod
    def on_connect(client_id: str) -> None:
        api.send_to_current_client(json.dumps({"type": "init", "client_id": client_id}))

    @staticmethod
    def on_message(client_id: str, message: str | bytes) -> None:
        """Pages only answer heartbeats; business requests go over HTTP."""

    @staticmethod
    def on_close(client_id: str) -> None:
        session = context.session or {}
        room = session.get("room")
        if room:
            leave = {"type": "leave", "name": session.get("name", ""), "client_id": client_id}
            api.send_to_group(room, json.dumps(leave))
