"""A minimal FastAPI shop that pushes to the browser through pygatewayworker.

Run it with ``uvicorn fastapishop:app`` in this folder; the cluster with
``gatewayworker start`` in this folder too.

The page gets its client_id from the gateway (``init``) and posts it to ``/bind``;
``/orders`` starts a payment; the provider's signed ``/payment/callback`` makes the
app push ``{"type": "payment", ...}`` to the buyer's uid (the flow in full:
``examples/README.md``).

The push client
---------------
An :class:`~pygatewayworker.AsyncGatewayClient` belongs to the event loop that
serves the app: its links are that loop's sockets. So :func:`lifespan` creates it
when the app starts, keeps it in ``app.state.push`` and closes it when the app
stops; an app started again (another ``with TestClient(app)``, a server restart in
the same process) gets a new one. A client created at import would be closed by
the first shutdown and refuse every call after it.

CSRF
----
The session (Starlette's signed cookie, ``SameSite=Lax``) holds a random token that
the page carries in ``<meta name="csrf-token">`` and the login form in a hidden
field; every POST for the user must send it back (``X-CSRF-Token`` header or
``csrf_token`` field). Another site cannot read our page, so it cannot learn the
token. The payment callback has no session: it is authenticated by its signature.

Settings come from the environment (:meth:`Settings.from_env`): ``GW_REGISTER``
(``127.0.0.1:1282``), ``GW_SECRET``, ``GATEWAY_WS_URL`` (``ws://127.0.0.1:7282/``),
``PAYMENT_WEBHOOK_SECRET``, ``SESSION_SECRET`` and ``GW_TOKEN_KEY`` (the gateways'
connect-token key). The last three are keys: :func:`create_app` refuses to make an
app without them, unless ``SHOP_DEV=1`` says this is a development machine, where
the published development values stand in (with a published key, anyone could sign
a session cookie, a payment callback or a connect token for any user).
``app`` (what ``uvicorn fastapishop:app`` serves) is made on first use, so importing
the module needs no keys.

Replays: the provider signs a ``timestamp`` into the callback's body; one further
than ``callback_window`` (5 minutes) from our clock is refused (403). An order is
settled once, ``pending`` -> ``paid`` or ``failed``; the same callback again gets 200
and changes nothing, another outcome 409.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import os
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware

from pygatewayworker import AsyncGatewayClient, GatewayError, InvalidClientId, decode_client_id

__all__ = ["Settings", "create_app", "lifespan"]

EXAMPLES = Path(__file__).resolve().parents[2]  # static/ and templates/ are shared
TEMPLATES = Jinja2Templates(directory=EXAMPLES / "templates")
CSRF_HEADER = "X-CSRF-Token"
MAX_NAME = 32
AMOUNT = "9.90"


DEV_KEYS = {
    "webhook_secret": "dev-webhook-secret",
    "session_secret": "dev-only-not-secret-change-me",
    "token_key": "dev-only-connect-token-key-change-me",
}
"""The keys' published development values (used only with ``SHOP_DEV=1``)."""
KEY_VARIABLES = {
    "webhook_secret": "PAYMENT_WEBHOOK_SECRET",
    "session_secret": "SESSION_SECRET",
    "token_key": "GW_TOKEN_KEY",
}


@dataclass(slots=True, frozen=True)
class Settings:
    """Where the cluster is, and the app's keys (required: see :meth:`check`)."""

    register: str = "127.0.0.1:1282"
    secret: str = ""
    ws_url: str = "ws://127.0.0.1:7282/"
    webhook_secret: str = ""
    session_secret: str = ""
    token_key: str = ""
    """The gateways' ``token_key`` (connect tokens, ``POST /ws-token``)."""
    callback_window: float = 300.0

    @classmethod
    def from_env(cls) -> Settings:
        env, default = os.environ.get, cls()
        dev = env("SHOP_DEV") == "1"
        keys = {
            name: env(variable) or (DEV_KEYS[name] if dev else "")
            for name, variable in KEY_VARIABLES.items()
        }
        return cls(
            register=env("GW_REGISTER", default.register),
            secret=env("GW_SECRET", default.secret),
            ws_url=env("GATEWAY_WS_URL", default.ws_url),
            **keys,
        )

    def check(self) -> None:
        """Refuse to run without the keys (``RuntimeError`` naming the variables)."""
        unset = [variable for name, variable in KEY_VARIABLES.items() if not getattr(self, name)]
        if unset:
            raise RuntimeError(
                f"{' and '.join(unset)} not set: set each to a long random secret. (For "
                "a development machine only, SHOP_DEV=1 uses the published values.)"
            )


@dataclass(slots=True)
class Order:
    order_id: str
    uid: str
    amount: str
    status: str = "pending"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """One push client per run of the app, on the loop that serves it."""
    settings: Settings = app.state.settings
    app.state.push = AsyncGatewayClient(
        register=settings.register,
        secret=settings.secret,
        timeout=5.0,
        name="fastapishop",
        token_key=settings.token_key,
    )
    try:
        yield
    finally:
        await app.state.push.close()


# ---- dependencies ---------------------------------------------------------------------------


def get_push(request: Request) -> AsyncGatewayClient:
    client: AsyncGatewayClient = request.app.state.push
    return client


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def current_uid(request: Request) -> str:
    """The logged-in user's uid (here: the name in the session)."""
    uid = request.session.get("uid")
    if not isinstance(uid, str):
        raise HTTPException(401, "log in first")
    return uid


def csrf_token(request: Request) -> str:
    """This session's CSRF token (made on first use)."""
    token = request.session.get("csrf")
    if not isinstance(token, str):
        token = request.session["csrf"] = secrets.token_urlsafe(32)
    return token


def verify_csrf(request: Request, sent: str) -> None:
    expected = request.session.get("csrf")
    if not isinstance(expected, str) or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise HTTPException(403, f"missing or wrong CSRF token (send the {CSRF_HEADER} header)")


def csrf_header(request: Request) -> None:
    """The dependency of every JSON POST made by the page."""
    verify_csrf(request, request.headers.get(CSRF_HEADER, ""))


async def json_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise HTTPException(400, "the body must be a JSON object")
    return body


Push = Annotated[AsyncGatewayClient, Depends(get_push)]
Uid = Annotated[str, Depends(current_uid)]
Body = Annotated[dict[str, Any], Depends(json_body)]
CsrfChecked = [Depends(csrf_header)]


async def check_bindable(push: AsyncGatewayClient, client_id: object, uid: str) -> str:
    """The client_id, once known to be well-formed, online and not bound to another
    user; else HTTP 400, 404 or 409."""
    if not isinstance(client_id, str):
        raise HTTPException(400, "client_id (a string) is required")
    decode_client_id(client_id)  # the format, before any network round trip
    if not await push.is_online(client_id):
        raise HTTPException(404, f"connection {client_id} is not online (reconnect, bind again)")
    if await push.get_uid_by_client_id(client_id) not in (None, uid):
        # Knowing someone's client_id must not let you take their connection over.
        raise HTTPException(409, f"connection {client_id} is bound to another user")
    return client_id


def signature_ok(settings: Settings, body: bytes, header: str) -> bool:
    """Whether ``header`` is ``sha256=<hex HMAC of body>`` under the webhook secret."""
    key = settings.webhook_secret.encode()
    expected = "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(header.encode(), expected.encode())


def is_stale(settings: Settings, stamp: object) -> bool:
    """Whether a callback's signed ``timestamp`` is missing or outside the window
    (a replay, or a clock far off)."""
    if isinstance(stamp, bool) or not isinstance(stamp, int | float):
        return True
    return abs(time.time() - stamp) > settings.callback_window


def settle(order: Order, status: str) -> bool:
    """``pending`` -> ``status``: ``True``; already ``status``: ``False`` (a repeated
    callback); else 409. No await in here: nothing runs between the read and the
    write on the event loop."""
    if order.status == "pending":
        order.status = status
        return True
    if order.status == status:
        return False
    raise HTTPException(409, f"order {order.order_id} is already {order.status}")


# ---- routes -------------------------------------------------------------------------------

router = APIRouter()


@router.get("/")
async def index(request: Request, settings: Annotated[Settings, Depends(get_settings)]) -> Response:
    """The page: a login form, or the shop with its push connection."""
    context = {
        "framework": "FastAPI",
        "uid": request.session.get("uid"),
        "ws_url": settings.ws_url,
        "csrf_token": csrf_token(request),
        "csrf_header": CSRF_HEADER,
        "csrf_field": "csrf_token",
    }
    return TEMPLATES.TemplateResponse(request, "shop.html", context)


@router.post("/login")
async def login(request: Request) -> Response:
    """A stand-in for real authentication: any name of 1 to 32 printable characters."""
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    verify_csrf(request, (form.get("csrf_token") or [""])[0])
    name = " ".join((form.get("name") or [""])[0].split())[:MAX_NAME]
    if not name or not name.isprintable():
        raise HTTPException(400, "a name of 1 to 32 printable characters is required")
    request.session.clear()  # a new identity gets a new session and a new CSRF token
    request.session["uid"] = name
    return RedirectResponse("/", status_code=303)


@router.post("/bind", dependencies=CsrfChecked)
async def bind(push: Push, uid: Uid, body: Body) -> dict[str, str]:
    """Bind the page's connection to the logged-in user."""
    client_id = await check_bindable(push, body.get("client_id"), uid)
    await push.bind_uid(client_id, uid)
    return {"uid": uid, "client_id": client_id}


@router.post("/ws-token", dependencies=CsrfChecked)
async def ws_token(
    push: Push, uid: Uid, settings: Annotated[Settings, Depends(get_settings)]
) -> dict[str, str]:
    """A connect token for the logged-in user: the page connects with
    ``?token=...`` and is bound to its user before its first message, with no
    ``/bind`` call. Short-lived: a reconnecting page asks again."""
    token = push.create_token(uid, expires_in=300)
    return {"token": token, "ws_url": f"{settings.ws_url}?token={token}"}


@router.post("/orders", dependencies=CsrfChecked)
async def create_order(request: Request, uid: Uid) -> dict[str, str]:
    """Start a payment; the provider calls back when it is done."""
    orders: dict[str, Order] = request.app.state.orders
    order = Order(f"order-{next(request.app.state.order_numbers)}", uid, AMOUNT)
    orders[order.order_id] = order
    return {"order_id": order.order_id, "amount": order.amount}


@router.post("/payment/callback")
async def payment_callback(
    request: Request, push: Push, settings: Annotated[Settings, Depends(get_settings)]
) -> dict[str, str]:
    """The provider's notification (no CSRF token: signed instead): settle the order
    and push the news to the buyer."""
    if not signature_ok(settings, await request.body(), request.headers.get("X-Signature", "")):
        raise HTTPException(403, "bad or missing X-Signature")
    body = await json_body(request)
    if is_stale(settings, body.get("timestamp")):
        raise HTTPException(403, "callback timestamp missing or stale (a replay?)")
    status = body.get("status")
    if status not in ("paid", "failed"):
        raise HTTPException(400, "status must be paid or failed")
    order = request.app.state.orders.get(str(body.get("order_id")))
    if order is None:
        raise HTTPException(404, "no such order")
    if settle(order, status):
        message = {"type": "payment", "order_id": order.order_id, "status": order.status}
        await push.send_to_uid(order.uid, json.dumps(message))
    return {"order_id": order.order_id, "status": order.status}


# ---- the application ----------------------------------------------------------------------


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The application; ``settings`` default to :meth:`Settings.from_env`."""
    settings = settings or Settings.from_env()
    settings.check()
    app = FastAPI(title="fastapishop", lifespan=lifespan)
    app.state.settings = settings
    app.state.orders = {}  # in memory (a real shop has a database)
    app.state.order_numbers = itertools.count(1001)
    app.add_middleware(SessionMiddleware, secret_key=settings.session_secret, same_site="lax")
    app.mount("/static", StaticFiles(directory=EXAMPLES / "static"), name="static")
    app.include_router(router)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(InvalidClientId)
    async def bad_client_id(request: Request, exc: InvalidClientId) -> JSONResponse:
        return error(400, str(exc))

    @app.exception_handler(GatewayError)
    async def unavailable(request: Request, exc: GatewayError) -> JSONResponse:
        return error(503, f"the gateway cluster is unavailable: {exc}")

    return app


def __getattr__(name: str) -> Any:
    """``app``: made from the environment on first use (``uvicorn fastapishop:app``),
    so that importing this module does not need the keys."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    made = globals()["app"] = create_app()
    return made
