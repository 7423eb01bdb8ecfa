"""A minimal Flask shop that pushes to the browser through pygatewayworker.

Run it with ``flask --app flaskshop run`` (Flask finds :func:`create_app`); the
cluster with ``gatewayworker start`` in this folder. The flow and the views are in
:mod:`flaskshop.views`.

Settings come from the environment (defaults for a development machine, matching
``apps/shop/start_*.py``): ``GW_REGISTER`` (``127.0.0.1:1281``), ``GW_SECRET``,
``GATEWAY_WS_URL`` (``ws://127.0.0.1:7281/``), ``PAYMENT_WEBHOOK_SECRET`` (signs the
provider's callbacks) and ``FLASK_SECRET_KEY`` (signs the session cookie).
:func:`create_app` takes overrides as keyword arguments (tests use them).

The two keys are required: :func:`create_app` refuses to make an app without them,
unless ``SHOP_DEV=1`` says this is a development machine, where the published
development values (``dev-only-not-secret-change-me``, ``dev-webhook-secret``) stand
in. With a published key anyone could sign a session cookie or a payment callback.

The push client
---------------
One :class:`~pygatewayworker.GatewayClient` per process, made by :func:`create_app`
and kept in ``app.extensions["gatewayworker"]`` (:func:`push` returns it inside a
request). Making it costs nothing: its thread and links start with the first push,
and after a fork each process gets its own. It is thread-safe, so every request
thread shares it, and it is closed when the interpreter exits.
"""

from __future__ import annotations

import atexit
import os
from pathlib import Path
from typing import Any

from flask import Flask
from werkzeug.exceptions import HTTPException

from flaskshop.csrf import check_csrf
from flaskshop.views import CSRF_EXEMPT, Refused, shop
from pygatewayworker import GatewayClient, GatewayError, InvalidClientId

__all__ = ["create_app", "settings_from_env"]

EXAMPLES = Path(__file__).resolve().parents[2]  # static/ and templates/ are shared


KEYS = {
    # setting: (environment variable, published development value)
    "SECRET_KEY": ("FLASK_SECRET_KEY", "dev-only-not-secret-change-me"),
    "PAYMENT_WEBHOOK_SECRET": ("PAYMENT_WEBHOOK_SECRET", "dev-webhook-secret"),
}


def settings_from_env() -> dict[str, Any]:
    """The app's settings, from the environment or the development defaults (the
    keys' only with ``SHOP_DEV=1``)."""
    env = os.environ.get
    dev = env("SHOP_DEV") == "1"
    keys = {name: env(var) or (value if dev else "") for name, (var, value) in KEYS.items()}
    return {
        **keys,
        "GATEWAY_REGISTER": env("GW_REGISTER", "127.0.0.1:1281"),
        "GATEWAY_SECRET": env("GW_SECRET", ""),
        "GATEWAY_WS_URL": env("GATEWAY_WS_URL", "ws://127.0.0.1:7281/"),
        "PAYMENT_CALLBACK_WINDOW": 300,  # seconds: an older callback is a replay
        "SESSION_COOKIE_SAMESITE": "Lax",
    }


def create_app(**overrides: Any) -> Flask:
    """The application: settings from the environment, then ``overrides``."""
    app = Flask(
        __name__,
        static_folder=str(EXAMPLES / "static"),
        static_url_path="/static",
        template_folder=str(EXAMPLES / "templates"),
    )
    app.config.update(settings_from_env(), **overrides)
    missing = [var for name, (var, _) in KEYS.items() if not app.config.get(name)]
    if missing:
        raise RuntimeError(
            f"{' and '.join(missing)} not set: set each to a long random secret. (For a "
            "development machine only, SHOP_DEV=1 uses the published development values.)"
        )
    client = GatewayClient(
        register=app.config["GATEWAY_REGISTER"],
        secret=app.config["GATEWAY_SECRET"],
        timeout=5.0,
        name="flaskshop",
    )
    app.extensions["gatewayworker"] = client
    atexit.register(client.close)
    app.register_blueprint(shop)
    app.before_request(lambda: check_csrf(CSRF_EXEMPT))
    app.register_error_handler(Refused, lambda exc: ({"error": str(exc)}, exc.status))
    app.register_error_handler(InvalidClientId, lambda exc: ({"error": str(exc)}, 400))
    app.register_error_handler(GatewayError, gateway_unavailable)
    app.register_error_handler(HTTPException, lambda exc: ({"error": exc.description}, exc.code))
    return app


def gateway_unavailable(exc: GatewayError) -> tuple[dict[str, str], int]:
    return {"error": f"the gateway cluster is unavailable: {exc}"}, 503
