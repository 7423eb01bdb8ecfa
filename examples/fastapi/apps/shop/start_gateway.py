"""Gateways of the FastAPI example: the page's WebSocket connects to port 7282.

On another machine or in tests, override the addresses instead of editing this file:
``gatewayworker start --gateway-listen 0.0.0.0:7282 --register 10.0.0.2:1282 ...`` or
the GW_* variables (see ``gatewayworker start --help``)."""

from pygatewayworker import Gateway

gateway = Gateway(
    listen="127.0.0.1:7282",  # the public WebSocket address (0.0.0.0: every interface)
    name="FastAPIShopGateway",
    count=2,
    lan_ip="127.0.0.1",
    start_port=2410,  # internal ports 2410-2411
    register="127.0.0.1:1282",
    ping_interval=10,  # ping a page silent for 10 s ...
    ping_not_response_limit=2,  # ... and close it after 2 unanswered pings
    ping_data='{"type":"ping"}',  # gatewayworker.js answers {"type":"pong"}
)
