"""The HTTP push API: the Gateway API as JSON POSTs, for web backends in any language.

Declare it in a start file (the master runs it like the other roles)::

    from pygatewayworker.pushapi import PushAPI

    push_api = PushAPI(listen="127.0.0.1:7373", register="127.0.0.1:1238", token="s3cret")

then ``curl -H 'Authorization: Bearer s3cret' -H 'Content-Type: application/json'
-d '{"uid":"42","message":"paid"}' http://127.0.0.1:7373/send_to_uid``. The token is
required; requests from web pages (with an ``Origin`` header) and bodies that are not
``application/json`` are refused. The runtime is :mod:`pushapi.server`.
"""

from pygatewayworker.pushapi.config import PushAPI

__all__ = ["PushAPI"]
