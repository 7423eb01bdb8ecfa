"""The Pusher benchmark app (M9): the Pusher protocol app as shipped, no hooks.

The load generators connect as Pusher clients (``/app/bench-key?protocol=7``) and
subscribe to the public channel ``bench``; the runner triggers events through the
Pusher HTTP API role (``POST /apps/1/events``) and, for comparison, sends the same
frames with the native ``send_to_group`` to the channel's group ``pusher:1:bench``.
"""

from __future__ import annotations

from pygatewayworker.pusher import PusherApp, PusherEvents

APP_ID, KEY, SECRET = "1", "bench-key", "bench-secret-not-secret"


class Events(PusherEvents):
    apps = [PusherApp(id=APP_ID, key=KEY, secret=SECRET, max_event_size=1024)]
