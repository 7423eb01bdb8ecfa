"""Gateways of the FastAPI example: the page's WebSocket connects to port 7282.

On another machine or in tests, override the addresses instead of editing this file:
``gatewayworker start --gateway-listen 0.0.0.0:7282 --register 10.0.0.2:1282 ...`` or
the GW_* variables (see ``gatewayworker start --help``)."""

import os

from pygatewayworker import Gateway

# The connect-token key, shared with the web app (fastapishop Settings.token_key):
# set GW_TOKEN_KEY (python -c "import secrets; print(secrets.token_urlsafe(32))"). The
# published development key is used only with SHOP_DEV=1: with it, anyone could mint
# a token for any user.
TOKEN_KEY = os.environ.get("GW_TOKEN_KEY") or (
    "dev-only-connect-token-key-change-me" if os.environ.get("SHOP_DEV") == "1" else ""
)
if not TOKEN_KEY:
    raise RuntimeError(
        "GW_TOKEN_KEY not set: set it to a long random secret (the web app's too). "
        "(For a development machine only, SHOP_DEV=1 uses the published development key.)"
    )

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
    token_key=TOKEN_KEY,  # pages from POST /ws-token connect already bound to their user
    token_required=False,  # ... and the bind flow (POST /bind) keeps working too
)
