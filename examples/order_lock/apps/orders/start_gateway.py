from pygatewayworker import Gateway
from pygatewayworker.pusher import PING_DATA

# Echo / pusher-js connect here: wsHost 127.0.0.1, wsPort 7272.
gateway = Gateway(
    listen="0.0.0.0:7272",
    count=2,
    start_port=2300,
    register="127.0.0.1:1238",
    ping_interval=120,  # the app's activity_timeout
    ping_not_response_limit=2,
    ping_data=PING_DATA,
)
