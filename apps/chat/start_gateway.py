"""Gateways of the chat app: two processes sharing the public WebSocket port 7272.

The same port answers plain HTTP GETs with the chat page from ``web/``, so the
running cluster serves its own client: open http://127.0.0.1:7272/?room_id=1.
"""

from pathlib import Path

from pygatewayworker import Gateway

gateway = Gateway(
    listen="0.0.0.0:7272",
    name="ChatGateway",
    count=2,
    lan_ip="127.0.0.1",
    start_port=2300,
    register="127.0.0.1:1238",
    ping_interval=10,
    ping_not_response_limit=2,
    ping_data='{"type":"ping"}',
    static_dir=str(Path(__file__).with_name("web")),
)
