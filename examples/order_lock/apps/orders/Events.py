"""Order locking over the Pusher protocol: the Laravel Websockets custom-handler setup.

A back-office page (Laravel Echo) opens an order and subscribes to
``private-order.{id}``; while it is subscribed the order row is locked for that
connection, and a second page is refused (``pusher:subscription_error``, status 409).
The lock is released when the page unsubscribes (leaves the order) or its connection
ends for any reason: the tab closed, the network dropped, or the gateway holding the
connection died (the workers run ``on_unsubscribe(sub, "close")`` for its clients once
they notice, within the BusinessWorker's ``gateway_lost_timeout``).

The hooks run on the business worker's event loop, and a sqlite call can wait up to
its busy timeout (5 s) for another process's write: so they are coroutines that run
the sqlite calls in a thread (``asyncio.to_thread``), and the worker keeps serving
its other connections meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import re

from apps.orders import orders
from pygatewayworker.pusher import PusherApp, PusherEvents, Refuse, Subscription

_ORDER = re.compile(r"\Aprivate-order\.(\d{1,18})\Z")


def order_of(channel: str) -> int | None:
    """The order id of an order channel, else ``None``."""
    match = _ORDER.match(channel)
    return int(match.group(1)) if match else None


class Events(PusherEvents):
    apps = [
        PusherApp(
            id=os.environ.get("PUSHER_APP_ID", "1"),
            key=os.environ.get("PUSHER_APP_KEY", "order-key"),
            secret=os.environ.get("PUSHER_APP_SECRET", "order-secret-change-me"),
        )
    ]

    async def on_subscribe(self, sub: Subscription) -> None:
        order = order_of(sub.channel)
        if order is None:
            return
        if not await asyncio.to_thread(orders.lock, order, sub.socket_id):
            raise Refuse(f"order {order} is being edited by someone else", status=409)

    async def on_unsubscribe(self, sub: Subscription, reason: str) -> None:
        # reason: "unsubscribe", "close" (tab closed, network, gateway died) or
        # "refused" (accepted here, refused after): the lock goes back in every case
        order = order_of(sub.channel)
        if order is not None:
            await asyncio.to_thread(orders.unlock, order, sub.socket_id)
