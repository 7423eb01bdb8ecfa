"""The shop's views: a page, a login, the bind endpoint, orders and the payment callback.

The flow (``examples/README.md`` draws it):

1. ``GET /``: the page. Its script (``static/gatewayworker.js``) opens a WebSocket
   to the gateway and receives ``{"type": "init", "client_id": ...}``.
2. ``POST /bind``: the script posts that client_id; the view binds it to the
   logged-in user's uid. From now on ``send_to_uid(uid, ...)`` reaches every page
   the user has open.
3. ``POST /orders``: the user starts a payment (an order in memory here).
4. ``POST /payment/callback``: the payment provider's server tells us the order is
   paid; the view pushes ``{"type": "payment", ...}`` to the buyer's uid and the page
   shows it at once, without polling.

CSRF, the choice made here
--------------------------
Every view that acts for the logged-in user (login, bind, orders) is protected by
Django's ``CsrfViewMiddleware`` as usual: none is exempt. The page view renders the
token (``get_token``, which also sets the CSRF cookie) into
``<meta name="csrf-token">`` and the login form; the script sends it back in the
``X-CSRFToken`` header of each JSON POST. A page of another site can make the
browser send our cookies, but it cannot read our page to learn the token.

Only the payment callback is ``csrf_exempt``: the provider's server has no session
and no CSRF token, so the view authenticates it by the HMAC signature of its body
instead (``X-Signature: sha256=<hex>``, key ``PAYMENT_WEBHOOK_SECRET``), and it acts
for nobody's session.

Replays
-------
A signed callback can be captured and sent again. So the signed body carries the
provider's ``timestamp`` (Unix seconds), and one further than
``PAYMENT_CALLBACK_WINDOW`` (5 minutes) from our clock is refused (403); and an
order's state only moves forward, once: ``pending`` -> ``paid`` or ``failed``. The
same callback again is answered 200 with nothing done (providers retry until they
get a 2xx), a different outcome for a settled order 409: a replayed ``failed`` can
never turn a paid order into a failed one.

The Events of the gateway app (``apps/shop/Events.py``) only send ``init``;
everything else happens here, in ordinary Django views.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.middleware.csrf import get_token, rotate_token
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from djangoshop import push
from pygatewayworker import GatewayError, InvalidClientId, decode_client_id

MAX_NAME = 32
AMOUNT = "9.90"

View = Callable[[HttpRequest], HttpResponse]


class Refused(Exception):
    """A request the view turns down with ``status`` and a message for the page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def json_errors(view: View) -> View:
    """Answer ``{"error": ...}`` with a meaningful status instead of a 500 page:
    400 for a malformed client_id, 503 when the gateway cluster cannot be reached."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest) -> HttpResponse:
        try:
            return view(request)
        except Refused as exc:
            return JsonResponse({"error": str(exc)}, status=exc.status)
        except InvalidClientId as exc:
            return JsonResponse({"error": str(exc)}, status=400)
        except GatewayError as exc:
            return JsonResponse({"error": f"the gateway cluster is unavailable: {exc}"}, status=503)

    return wrapper


# ---- orders (in memory; a real shop uses a model) ---------------------------------------


@dataclass(slots=True)
class Order:
    order_id: str
    uid: str
    amount: str
    status: str = "pending"


# One dict per process; each request does a single get or set on it, which is atomic
# in CPython. Settling an order reads, then writes: that takes SETTLING.
ORDERS: dict[str, Order] = {}
ORDER_NUMBERS = itertools.count(1001)
OUTCOMES = ("paid", "failed")
SETTLING = threading.Lock()


def settle(order: Order, status: str) -> bool:
    """Move a pending order to ``status``: ``True``. ``False`` when it already has
    that status (a repeated callback: nothing to do); :class:`Refused` (409) when it
    was settled otherwise: a settled order never changes."""
    with SETTLING:
        if order.status == "pending":
            order.status = status
            return True
    if order.status != status:
        raise Refused(409, f"order {order.order_id} is already {order.status}")
    return False


# ---- helpers ----------------------------------------------------------------------------


def current_uid(request: HttpRequest) -> str:
    """The logged-in user's uid (here: the name in the session)."""
    uid = request.session.get("uid")
    if not isinstance(uid, str):
        raise Refused(401, "log in first")
    return uid


def json_body(request: HttpRequest) -> dict[str, Any]:
    try:
        body = json.loads(request.body)
    except ValueError:
        raise Refused(400, "the body must be JSON") from None
    if not isinstance(body, dict):
        raise Refused(400, "the body must be a JSON object")
    return body


def check_bindable(client_id: object, uid: str) -> str:
    """The client_id, once known to be well-formed, online and not bound to another
    user; else :class:`Refused` (400, 404, 409) or :class:`InvalidClientId`."""
    if not isinstance(client_id, str):
        raise Refused(400, "client_id (a string) is required")
    decode_client_id(client_id)  # the format, before any network round trip
    gateway = push.client()
    if not gateway.is_online(client_id):
        raise Refused(404, f"connection {client_id} is not online (reconnect and bind again)")
    owner = gateway.get_uid_by_client_id(client_id)
    if owner not in (None, uid):
        # Knowing someone's client_id must not let you take their connection over.
        raise Refused(409, f"connection {client_id} is bound to another user")
    return client_id


def signature_ok(body: bytes, header: str) -> bool:
    """Whether ``header`` is ``sha256=<hex HMAC of body>`` under the webhook secret."""
    key = settings.PAYMENT_WEBHOOK_SECRET.encode()
    expected = "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(header.encode(), expected.encode())


def check_fresh(body: dict[str, Any]) -> None:
    """Refuse (403) a callback whose signed ``timestamp`` is missing or further than
    ``PAYMENT_CALLBACK_WINDOW`` seconds from now: a replay, or a clock far off."""
    stamp = body.get("timestamp")
    window = settings.PAYMENT_CALLBACK_WINDOW
    if not isinstance(stamp, int | float) or isinstance(stamp, bool):
        raise Refused(403, "the signed body has no timestamp")
    if abs(time.time() - stamp) > window:
        raise Refused(403, f"stale callback: its timestamp is over {window} s from now")


# ---- views ------------------------------------------------------------------------------


@require_GET
def index(request: HttpRequest) -> HttpResponse:
    """The page: a login form, or the shop with its push connection."""
    context = {
        "framework": "Django",
        "uid": request.session.get("uid"),
        "ws_url": settings.GATEWAY_WS_URL,
        "csrf_token": get_token(request),
        "csrf_header": "X-CSRFToken",
        "csrf_field": "csrfmiddlewaretoken",
    }
    return render(request, "shop.html", context)


@require_POST
def login(request: HttpRequest) -> HttpResponse:
    """A stand-in for real authentication: any name of 1 to 32 printable characters."""
    name = " ".join(request.POST.get("name", "").split())[:MAX_NAME]
    if not name or not name.isprintable():
        return HttpResponse("a name of 1 to 32 printable characters is required", status=400)
    request.session.cycle_key()  # a new session for a new identity
    request.session["uid"] = name
    rotate_token(request)  # and a new CSRF token, as django.contrib.auth.login does
    return HttpResponseRedirect("/")


@require_POST
@json_errors
def bind(request: HttpRequest) -> HttpResponse:
    """Bind the page's connection to the logged-in user (CSRF-checked: see above)."""
    uid = current_uid(request)
    client_id = check_bindable(json_body(request).get("client_id"), uid)
    push.client().bind_uid(client_id, uid)
    return JsonResponse({"uid": uid, "client_id": client_id})


@require_POST
@json_errors
def create_order(request: HttpRequest) -> HttpResponse:
    """Start a payment; the provider calls back when it is done."""
    order = Order(f"order-{next(ORDER_NUMBERS)}", current_uid(request), AMOUNT)
    ORDERS[order.order_id] = order
    return JsonResponse({"order_id": order.order_id, "amount": order.amount})


@csrf_exempt  # called by the provider's server, which signs the body instead
@require_POST
@json_errors
def payment_callback(request: HttpRequest) -> HttpResponse:
    """The provider's notification: settle the order, push the news to the buyer."""
    if not signature_ok(request.body, request.headers.get("X-Signature", "")):
        raise Refused(403, "bad or missing X-Signature")
    body = json_body(request)
    check_fresh(body)
    status = body.get("status")
    if status not in OUTCOMES:
        raise Refused(400, f"status must be one of {', '.join(OUTCOMES)}")
    order = ORDERS.get(str(body.get("order_id")))
    if order is None:
        raise Refused(404, "no such order")
    if settle(order, status):
        message = {"type": "payment", "order_id": order.order_id, "status": order.status}
        push.client().send_to_uid(order.uid, json.dumps(message))
    return JsonResponse({"order_id": order.order_id, "status": order.status})
