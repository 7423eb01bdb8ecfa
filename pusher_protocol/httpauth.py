"""Pusher HTTP API request signing, checked. Pure: no I/O.

A signed request carries in its query string ``auth_key`` (the app key),
``auth_timestamp`` (Unix seconds), ``auth_version`` (``1.0``), ``body_md5`` (hex MD5
of a non-empty body) and ``auth_signature``: the hex HMAC-SHA256, with the app
secret, of::

    <METHOD>\\n<path>\\n<every other query parameter, keys lower-cased, sorted by key,
                       joined as key=value with &>

A request is refused (401) when the key is not the app's, the timestamp is further
than the window from our clock, the body's MD5 does not match, or the signature is
wrong; the message says which, as Pusher's does.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from pygatewayworker.pusher.config import PusherApp
from pygatewayworker.pusher.protocol import sign

__all__ = ["ApiError", "string_to_sign", "check_signed"]


class ApiError(Exception):
    """A request the API refuses: ``status`` and a plain-text ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def string_to_sign(method: str, path: str, params: Sequence[tuple[str, str]]) -> str:
    """What ``auth_signature`` signs (``params`` without ``auth_signature``)."""
    pairs = sorted((key.lower(), value) for key, value in params if key.lower() != "auth_signature")
    return f"{method}\n{path}\n" + "&".join(f"{key}={value}" for key, value in pairs)


def check_signed(
    app: PusherApp,
    method: str,
    path: str,
    params: Sequence[tuple[str, str]],
    body: bytes,
    now: float,
    window: float,
) -> None:
    """Raise :class:`ApiError` (401) unless the request is signed by ``app``."""
    query = {key.lower(): value for key, value in params}
    if query.get("auth_key") != app.key:
        raise ApiError(401, "Unknown auth_key")
    if query.get("auth_version", "1.0") != "1.0":
        raise ApiError(401, "Unsupported auth_version (use 1.0)")
    try:
        stamp = int(query.get("auth_timestamp", ""))
    except ValueError:
        raise ApiError(401, "Missing or malformed auth_timestamp") from None
    if abs(now - stamp) > window:
        raise ApiError(
            401,
            f"Timestamp expired: Given timestamp ({stamp}) not within {window:g}s of "
            f"server time ({int(now)})",
        )
    if body:
        given_md5 = query.get("body_md5")
        if given_md5 is None:
            raise ApiError(401, "body_md5 is required for a request with a body")
        if not hmac.compare_digest(given_md5.lower(), hashlib.md5(body).hexdigest()):
            raise ApiError(401, "body_md5 does not match the body")
    expected_text = string_to_sign(method, path, params)
    given = query.get("auth_signature", "")
    if not hmac.compare_digest(given.encode(), sign(app.secret, expected_text).encode()):
        shown = expected_text.replace("\n", "\\n")
        raise ApiError(
            401,
            f"Invalid signature: Expected HMAC SHA256 hex digest of {shown}, but got {given}",
        )
