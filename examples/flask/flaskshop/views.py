"""The Flask shop's views: the page, a login, bind, orders and the payment callback.

The flow (the same in the three examples):

1. ``GET /``: the page; ``gatewayworker.js`` opens a WebSocket to the gateway and
   receives ``{"type": "init", "client_id": ...}``.
2. ``POST /bind``: the page posts that client_id; it is checked (well-formed, online,
   not another user's) and bound to the logged-in user's uid.
3. ``POST /orders``: the user starts a payment.
4. ``POST /payment/callback``: the provider's server says the order is paid (body
   signed with HMAC-SHA256 in ``X-Signature``); the view pushes
   ``{"type": "payment", ...}`` to the buyer's uid, and the page shows it at once.
   Replays are harmless: the signed body's ``timestamp`` must be within
   ``PAYMENT_CALLBACK_WINDOW`` of our clock (403), and an order is settled once,
   ``pending`` -> ``paid`` or ``failed`` (the same outcome again: 200, nothing done;
   another one: 409).

Every POST but the callback needs the session's CSRF token (:mod:`flaskshop.csrf`).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, current_app, redirect, render_template, request, session
from werkzeug.wrappers import Response

from flaskshop.csrf import CSRF_HEADER, csrf_token
from pygatewayworker import GatewayClient, decode_client_id

__all__ = ["CSRF_EXEMPT", "Refused", "push", "shop"]

MAX_NAME = 32
AMOUNT = "9.90"

shop = Blueprint("shop", __name__)
CSRF_EXEMPT = frozenset({"shop.payment_callback"})


class Refused(Exception):
    """A request turned down with ``status`` and a message for the page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class Order:
    order_id: str
    uid: str
    amount: str
    status: str = "pending"


# In memory, one dict per process (a real shop has a database). Each request does a
# single get or set, atomic in CPython; a transition (read, then write) holds the lock.
ORDERS: dict[str, Order] = {}
ORDER_NUMBERS = itertools.count(1001)
TRANSITIONS = {"pending": ("paid", "failed")}
"""The only moves an order's status makes: a settled order stays as it is."""
_moving = threading.Lock()


def move(order: Order, status: str) -> bool:
    """Apply a callback's ``status``: ``True`` when the order moved, ``False`` when it
    was already there (the same callback again); 409 for any other move."""
    with _moving:
        current = order.status
        if status in TRANSITIONS.get(current, ()):
            order.status = status
            return True
    if current == status:
        return False
    raise Refused(409, f"order {order.order_id} is already {current}; it cannot become {status}")


def push() -> GatewayClient:
    """The app's push client (made by ``create_app``)."""
    client: GatewayClient = current_app.extensions["gatewayworker"]
    return client


def current_uid() -> str:
    """The logged-in user's uid (here: the name in the session)."""
    uid = session.get("uid")
    if not isinstance(uid, str):
        raise Refused(401, "log in first")
    return uid


def json_body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise Refused(400, "the body must be a JSON object")
    return body


def check_bindable(client_id: object, uid: str) -> str:
    """The client_id, once known to be well-formed, online and not bound to another
    user; else :class:`Refused` (400, 404, 409) or ``InvalidClientId`` (400)."""
    if not isinstance(client_id, str):
        raise Refused(400, "client_id (a string) is required")
    decode_client_id(client_id)  # the format, before any network round trip
    if not push().is_online(client_id):
        raise Refused(404, f"connection {client_id} is not online (reconnect and bind again)")
    if push().get_uid_by_client_id(client_id) not in (None, uid):
        # Knowing someone's client_id must not let you take their connection over.
        raise Refused(409, f"connection {client_id} is bound to another user")
    return client_id


def signature_ok(body: bytes, header: str) -> bool:
    """Whether ``header`` is ``sha256=<hex HMAC of body>`` under the webhook secret."""
    key = current_app.config["PAYMENT_WEBHOOK_SECRET"].encode()
    expected = "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(header.encode(), expected.encode())


def check_timestamp(body: dict[str, Any]) -> None:
    """The signed ``timestamp`` must be within ``PAYMENT_CALLBACK_WINDOW`` seconds of
    now: else 403 (a replayed callback, or a missing stamp)."""
    window = current_app.config["PAYMENT_CALLBACK_WINDOW"]
    stamp = body.get("timestamp")
    fresh = isinstance(stamp, int | float) and not isinstance(stamp, bool)
    if not fresh or abs(time.time() - stamp) > window:
        raise Refused(403, f"stale callback: timestamp missing or over {window} s from now")


@shop.get("/")
def index() -> str:
    """The page: a login form, or the shop with its push connection."""
    return render_template(
        "shop.html",
        framework="Flask",
        uid=session.get("uid"),
        ws_url=current_app.config["GATEWAY_WS_URL"],
        csrf_token=csrf_token(),
        csrf_header=CSRF_HEADER,
        csrf_field="csrf_token",
    )


@shop.post("/login")
def login() -> Response:
    """A stand-in for real authentication: any name of 1 to 32 printable characters."""
    name = " ".join(request.form.get("name", "").split())[:MAX_NAME]
    if not name or not name.isprintable():
        raise Refused(400, "a name of 1 to 32 printable characters is required")
    session.clear()  # a new identity gets a new session and a new CSRF token
    session["uid"] = name
    return redirect("/", 303)


@shop.post("/bind")
def bind() -> dict[str, str]:
    """Bind the page's connection to the logged-in user."""
    uid = current_uid()
    client_id = check_bindable(json_body().get("client_id"), uid)
    push().bind_uid(client_id, uid)
    return {"uid": uid, "client_id": client_id}


@shop.post("/orders")
def create_order() -> dict[str, str]:
    """Start a payment; the provider calls back when it is done."""
    order = Order(f"order-{next(ORDER_NUMBERS)}", current_uid(), AMOUNT)
    ORDERS[order.order_id] = order
    return {"order_id": order.order_id, "amount": order.amount}


@shop.post("/payment/callback")
def payment_callback() -> dict[str, str]:
    """The provider's notification (no CSRF token: signed instead): settle the order
    and push the news to the buyer."""
    if not signature_ok(request.get_data(), request.headers.get("X-Signature", "")):
        raise Refused(403, "bad or missing X-Signature")
    body = json_body()
    check_timestamp(body)
    status = body.get("status")
    if status not in TRANSITIONS["pending"]:
        raise Refused(400, "status must be paid or failed")
    order = ORDERS.get(str(body.get("order_id")))
    if order is None:
        raise Refused(404, "no such order")
    if move(order, status):
        message = {"type": "payment", "order_id": order.order_id, "status": order.status}
        push().send_to_uid(order.uid, json.dumps(message))
    return {"order_id": order.order_id, "status": order.status}
