"""Gateways of the push-only demo: the page's WebSocket connects to port 7273."""

from pygatewayworker import Gateway

gateway = Gateway(
    listen="127.0.0.1:7273",
    name="PushDemoGateway",
    count=2,
    lan_ip="127.0.0.1",
    start_port=2400,
    register="127.0.0.1:1239",
    ping_interval=10,
    ping_data='{"type":"ping"}',
)
