"""CSRF protection for the Flask example (Flask has none of its own).

The synchronizer-token pattern: a random token per session, rendered into the page
(``<meta name="csrf-token">`` for the page's script, a hidden ``csrf_token`` field in
the login form) and required on every POST, in the ``X-CSRF-Token`` header or that
form field. Another site can make the browser send our session cookie, but it cannot
read our page to learn the token. The session cookie is also ``SameSite=Lax``.

The payment callback is exempt (``flaskshop.views.CSRF_EXEMPT``): the provider's
server has no session; the view checks the signature of its body instead.
"""

from __future__ import annotations

import hmac
import secrets

from flask import request, session
from werkzeug.exceptions import Forbidden

__all__ = ["CSRF_HEADER", "check_csrf", "csrf_token"]

CSRF_HEADER = "X-CSRF-Token"


def csrf_token() -> str:
    """This session's CSRF token (made on first use)."""
    token = session.get("csrf")
    if not isinstance(token, str):
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def check_csrf(exempt: frozenset[str]) -> None:
    """Refuse (403) a POST without this session's token, unless its endpoint is exempt."""
    if request.method != "POST" or request.endpoint in exempt:
        return
    sent = request.headers.get(CSRF_HEADER) or request.form.get("csrf_token", "")
    expected = session.get("csrf")
    if not isinstance(expected, str) or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise Forbidden(f"missing or wrong CSRF token (send the {CSRF_HEADER} header)")
