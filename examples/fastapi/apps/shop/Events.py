"""Events of the FastAPI example's gateway app: only the client_id handshake.

Each new connection is told its client_id (``init``); the page posts it to the
FastAPI app's ``/bind``, and from then on the app pushes through its
``AsyncGatewayClient``. The page's requests go to the app over HTTP, so there is
nothing else to handle here.
"""

import json

from pygatewayworker import api


class Events:
    @staticmethod
    def on_connect(client_id):
        api.send_to_current_client(json.dumps({"type": "init", "client_id": client_id}))

    @staticmethod
    def on_message(client_id, message):
        """Pages send only pongs: gatewayworker.js answers the gateway's pings, which
        keeps the connection alive (the gateway closes pages that stay silent)."""
