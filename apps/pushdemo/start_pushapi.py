"""The HTTP push API of the demo, for backends in any language (see README):

    curl -H 'Authorization: Bearer demo-token' -H 'Content-Type: application/json' \
        -d '{"uid":"alice","message":"hi"}' http://127.0.0.1:7374/send_to_uid

The token is required (set PUSHDEMO_API_TOKEN to change it).
"""

import os

from pygatewayworker import PushAPI

push_api = PushAPI(
    listen="127.0.0.1:7374",
    register="127.0.0.1:1239",
    token=os.environ.get("PUSHDEMO_API_TOKEN", "demo-token"),
)
