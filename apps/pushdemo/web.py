"""The demo's web backend (FastAPI): login, bind, chat and a payment, all over HTTP.

How this works
--------------
The page (``page.html``) opens a WebSocket to the gateway and gets
``{"type": "init", "client_id": ...}``. It POSTs that id to ``/bind``; the backend
knows the logged-in user from a signed cookie and, through its
:class:`~gatewayclient.AsyncGatewayClient`, binds the user's uid, joins the room and
stores the name in the connection's session. From then on every action is an HTTP
request, and every update is a push:

- ``POST /say`` pushes a chat line with ``send_to_group`` (or ``send_to_uid`` for a
  private line, with a copy to the sender's own uid);
- ``GET /members`` reads the room from ``get_client_sessions_by_group``; pages call
  it when told someone joined or left (``leave`` comes from ``Events.on_close``);
- ``POST /pay`` starts a payment; the provider later calls
  ``POST /provider/callback`` (here: the fake provider page, or curl) and the
  backend pushes ``{"type": "payment", "status": "paid"}`` to the buyer's uid: the
  page flips to "paid" at once, without polling.

Run: ``python -m apps.pushdemo`` (cluster + this backend) or, with the cluster
already running, ``python -m apps.pushdemo.web``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import html
import itertools
import json
import os
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from pygatewayworker import AsyncGatewayClient, GatewayError, InvalidClientId

__all__ = ["Settings", "create_app", "main"]

COOKIE = "pushdemo_user"
MAX_NAME = 32
MAX_CONTENT = 2000
PAGE = Path(__file__).with_name("page.html")


@dataclass(slots=True)
class Settings:
    """Where the cluster is and how cookies are signed."""

    register: str = "127.0.0.1:1239"
    secret: str = ""
    ws_url: str = "ws://127.0.0.1:7273/"
    room: str = "lobby"
    cookie_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))


@dataclass(slots=True)
class Order:
    """A payment in progress."""

    order_id: str
    uid: str
    amount: str
    status: str = "pending"


# ---- signed cookie (pure) ------------------------------------------------------------


def sign(name: str, key: bytes) -> str:
    """``base64(name).hmac`` so the user cannot change the name in the cookie."""
    payload = base64.urlsafe_b64encode(name.encode()).decode()
    mac = hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()
    return f"{payload}.{mac}"


def unsign(value: str | None, key: bytes) -> str | None:
    """The name in a cookie signed by :func:`sign`, or ``None``."""
    payload, _, mac = (value or "").partition(".")
    expected = hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()
    if not payload or not hmac.compare_digest(mac, expected):
        return None
    try:
        return base64.urlsafe_b64decode(payload.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        return None


def clean_name(raw: str) -> str:
    """A display name: trimmed, 1..32 printable characters."""
    name = " ".join(raw.split())[:MAX_NAME]
    if not name or not name.isprintable():
        raise HTTPException(400, "a name of 1 to 32 printable characters is required")
    return name


def push(kind: str, **fields: Any) -> str:
    """A push message as the page expects it (JSON text)."""
    return json.dumps({"type": kind, "time": time.strftime("%H:%M:%S"), **fields})


# ---- the application -------------------------------------------------------------------


def create_app(settings: Settings) -> FastAPI:
    """The FastAPI application; the push client lives as long as the app."""
    client = AsyncGatewayClient(
        register=settings.register, secret=settings.secret, name="pushdemo-web"
    )
    orders: dict[str, Order] = {}
    order_numbers = itertools.count(1001)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await client.close()

    app = FastAPI(title="pushdemo", lifespan=lifespan)

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        return JSONResponse({"error": f"the gateway cluster is unavailable: {exc}"}, 503)

    @app.exception_handler(InvalidClientId)
    async def bad_client_id(request: Request, exc: InvalidClientId) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, 400)

    def user_of(request: Request) -> str:
        name = unsign(request.cookies.get(COOKIE), settings.cookie_secret)
        if name is None:
            raise HTTPException(401, "log in first")
        return name

    async def json_body(request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise HTTPException(400, "the body must be JSON") from None
        if not isinstance(body, dict):
            raise HTTPException(400, "the body must be a JSON object")
        return body

    @app.get("/", response_class=HTMLResponse)
    async def index(request: Request) -> str:
        name = unsign(request.cookies.get(COOKIE), settings.cookie_secret)
        if name is None:
            return LOGIN_PAGE
        page = PAGE.read_text(encoding="utf-8")
        return page.replace("{{WS_URL}}", html.escape(settings.ws_url)).replace(
            "{{NAME}}", html.escape(name)
        )

    @app.post("/login")
    async def login(request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        name = clean_name((form.get("name") or [""])[0])
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            COOKIE, sign(name, settings.cookie_secret), httponly=True, samesite="lax"
        )
        return response

    @app.post("/logout")
    async def logout() -> Response:
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    @app.post("/bind")
    async def bind(request: Request) -> dict[str, Any]:
        """The page's connection belongs to the logged-in user: bind, join, tag."""
        name = user_of(request)
        client_id = (await json_body(request)).get("client_id")
        if not isinstance(client_id, str):
            raise HTTPException(400, "client_id (a string) is required")
        await client.bind_uid(client_id, name)
        await client.join_group(client_id, settings.room)
        await client.set_session(client_id, {"name": name, "room": settings.room})
        await client.send_to_group(settings.room, push("joined", name=name))
        return {"uid": name, "room": settings.room}

    @app.get("/members")
    async def members(request: Request) -> dict[str, Any]:
        user_of(request)
        sessions = await client.get_client_sessions_by_group(settings.room)
        names = sorted({str(s.get("name", "?")) for s in sessions.values() if s})
        return {"room": settings.room, "members": names, "connections": len(sessions)}

    @app.post("/say")
    async def say(request: Request) -> dict[str, Any]:
        name = user_of(request)
        body = await json_body(request)
        content, to = body.get("content"), body.get("to") or ""
        if not isinstance(content, str) or not content.strip() or len(content) > MAX_CONTENT:
            raise HTTPException(400, f"content must be 1 to {MAX_CONTENT} characters")
        if not isinstance(to, str):
            raise HTTPException(400, "to must be a user name")
        if to:
            line = push("say", **{"from": name, "to": to, "content": content, "private": True})
            await client.send_to_uid([to, name], line)
        else:
            line = push("say", **{"from": name, "content": content, "private": False})
            await client.send_to_group(settings.room, line)
        return {"sent": True}

    @app.post("/pay")
    async def pay(request: Request) -> dict[str, Any]:
        """Start a payment; the provider will call back when it is done."""
        name = user_of(request)
        amount = str((await json_body(request)).get("amount", "9.90"))[:16]
        order = Order(f"order-{next(order_numbers)}", name, amount)
        orders[order.order_id] = order
        return {"order_id": order.order_id, "provider_url": f"/provider/{order.order_id}"}

    @app.get("/provider/{order_id}", response_class=HTMLResponse)
    async def provider_page(order_id: str) -> str:
        """A stand-in for the payment provider's site."""
        order = orders.get(order_id)
        if order is None:
            raise HTTPException(404, "no such order")
        return PROVIDER_PAGE.replace("{{ORDER}}", html.escape(order_id)).replace(
            "{{AMOUNT}}", html.escape(order.amount)
        )

    @app.post("/provider/callback")
    async def provider_callback(request: Request) -> dict[str, Any]:
        """The provider's server-to-server notification (a real one is signed: check
        the signature here). The buyer's page learns it by a push, not by polling."""
        body = await json_body(request)
        order = orders.get(str(body.get("order_id")))
        if order is None:
            raise HTTPException(404, "no such order")
        order.status = "paid" if body.get("status", "paid") == "paid" else "failed"
        message = push("payment", order_id=order.order_id, status=order.status, amount=order.amount)
        await client.send_to_uid(order.uid, message)
        return {"order_id": order.order_id, "status": order.status}

    return app


LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pushdemo: log in</title></head>
<body style="font-family: system-ui, sans-serif; margin: 2em">
<h1>Push-only demo</h1>
<form method="post" action="/login">
  <label>Your name <input id="name" name="name" maxlength="32" required autofocus></label>
  <button type="submit" id="login">Log in</button>
</form>
</body></html>
"""

PROVIDER_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Fake payment provider</title></head>
<body style="font-family: system-ui, sans-serif; margin: 2em">
<h1>Fake payment provider</h1>
<p>Order {{ORDER}}: {{AMOUNT}} EUR</p>
<button id="confirm">Confirm payment</button> <span id="done"></span>
<script>
document.getElementById("confirm").onclick = async () => {
  const r = await fetch("/provider/callback", {method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify({order_id: "{{ORDER}}", status: "paid"})});
  document.getElementById("done").textContent = r.ok ? "callback sent" : "failed";
};
</script>
</body></html>
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description="The push-only demo's web backend.")
    parser.add_argument("--host", default=env("PUSHDEMO_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env("PUSHDEMO_PORT", "8000")))
    parser.add_argument("--register", default=env("PUSHDEMO_REGISTER", "127.0.0.1:1239"))
    parser.add_argument("--secret", default=env("PUSHDEMO_SECRET", ""))
    parser.add_argument("--ws-url", default=env("PUSHDEMO_WS_URL", "ws://127.0.0.1:7273/"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Serve the backend with uvicorn until Ctrl-C."""
    import uvicorn

    args = parse_args(argv)
    settings = Settings(register=args.register, secret=args.secret, ws_url=args.ws_url)
    print(f"pushdemo: open http://{args.host}:{args.port}/ (gateway {args.ws_url})", flush=True)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
