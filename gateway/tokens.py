"""Signed connect tokens: a backend proves who a WebSocket connection is, with no round
trip at connect time.

How this works
--------------
A token is a JWT (RFC 7519) signed with HMAC-SHA256 under a key the backend and the
gateways share (``Gateway(token_key=...)``; push clients get the same key). Its
claims: ``sub`` the uid, ``iat`` and ``exp`` (standard), and optionally ``groups``
(a list of group names) and ``session`` (a dict of session fields). The backend
creates it (:func:`create_token`, also ``AsyncGatewayClient.create_token``,
``GatewayClient.create_token`` and the push API's ``POST /create_token``) and renders
it into the page; the page connects with ``?token=<jwt>`` (or a non-browser client
sends ``Authorization: Bearer <jwt>``). The gateway checks it before answering the
upgrade (:func:`verify_token`): a forged, expired or malformed token gets 401 and no
``101``; a good one binds the uid, joins the groups and sets the session before the
connection exists for anyone else.

The signature and the claims are checked by PyJWT (a maintained library: we do not
write our own JWT parsing), with the algorithm pinned to ``HS256`` so that a token
cannot choose ``none`` or another algorithm. Pure: no I/O.

PyJWT (and with it ``cryptography`` when installed: 20 MiB of a process's memory) is
imported on the first token made or checked, not with this module: every gateway
imports :class:`Grant` and :func:`check_name`, and most run without ``token_key``.
A gateway that has a key loads it at startup (:func:`load_codec`), so the first
connection does not pay for the import.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pygatewayworker.gateway.limits import MAX_KEY_LENGTH

if TYPE_CHECKING:
    from types import ModuleType

__all__ = [
    "ALGORITHM",
    "MIN_KEY_LENGTH",
    "Grant",
    "TokenError",
    "check_name",
    "check_token_key",
    "client_token",
    "create_token",
    "load_codec",
    "verify_token",
]

ALGORITHM = "HS256"
MIN_KEY_LENGTH = 32
"""Shortest accepted token key, in bytes (RFC 7518 3.2: a key at least as long as the
hash output)."""
LEEWAY = 5.0
"""Seconds of clock skew tolerated between the backend and the gateways."""


def load_codec() -> ModuleType:
    """PyJWT, imported now (the first call pays for the import)."""
    import jwt

    return jwt


class TokenError(ValueError):
    """A token that must be refused (the message says why; it is safe to show)."""


@dataclass(slots=True)
class Grant:
    """What an accepted connection is bound to before its first message."""

    uid: str = ""
    groups: list[str] = field(default_factory=list)
    session: dict[str, Any] | None = None


def check_token_key(key: str | bytes, where: str) -> bytes:
    """The key as bytes; ``ValueError`` when it is too short to be a secret."""
    raw = key.encode() if isinstance(key, str) else bytes(key)
    if len(raw) < MIN_KEY_LENGTH:
        raise ValueError(
            f"{where} token_key is {len(raw)} bytes long; use at least {MIN_KEY_LENGTH} "
            'random bytes (python -c "import secrets; print(secrets.token_urlsafe(32))")'
        )
    return raw


def check_name(value: object, what: str) -> str:
    """``value`` as a uid or group name (an int becomes its str); ``ValueError``."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if type(value) is not str or not value or len(value) > MAX_KEY_LENGTH:
        raise ValueError(f"{what} must be a non-empty str of at most {MAX_KEY_LENGTH} characters")
    return value


def create_token(
    key: str | bytes,
    uid: str | int,
    groups: list[str | int] | tuple[str | int, ...] | None = None,
    session: dict[str, Any] | None = None,
    expires_in: float = 3600.0,
    now: float | None = None,
) -> str:
    """A connect token for ``uid`` (optionally joining ``groups`` and setting
    ``session``), valid for ``expires_in`` seconds. ``ValueError`` for a bad argument."""
    raw = check_token_key(key, "create_token:")
    if expires_in <= 0:
        raise ValueError("expires_in must be > 0 seconds")
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "sub": check_name(uid, "uid"),
        "iat": issued,
        "exp": issued + max(1, round(expires_in)),
    }
    if groups:
        claims["groups"] = [check_name(g, "a group") for g in groups]
    if session:
        if not isinstance(session, dict):
            raise ValueError("session must be a dict")
        claims["session"] = session
    return load_codec().encode(claims, raw, algorithm=ALGORITHM)


def client_token(
    key: bytes,
    uid: str | int,
    groups: Iterable[str | int] | None,
    session: dict[str, Any] | None,
    expires_in: float,
) -> str:
    """:func:`create_token` for the push clients, whose ``key`` may be unset
    (``ValueError`` saying so)."""
    if not key:
        raise ValueError("create_token needs token_key= (the gateways' token_key)")
    return create_token(key, uid, list(groups or ()), session, expires_in)


def verify_token(key: bytes, token: str) -> Grant:
    """Check ``token``'s signature (HS256 under ``key``) and claims; the
    :class:`Grant` it carries. :class:`TokenError` for anything wrong."""
    if not token or len(token) > 8192:
        raise TokenError("malformed token")
    jwt = load_codec()
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            options={"require": ["sub", "exp", "iat"], "verify_iat": False},
            leeway=LEEWAY,
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("token expired") from None
    except jwt.InvalidSignatureError:
        raise TokenError("token signature does not verify") from None
    except jwt.InvalidTokenError as exc:
        raise TokenError(f"invalid token: {exc}") from None
    try:
        uid = check_name(claims["sub"], "sub")
        groups = claims.get("groups") or []
        if not isinstance(groups, list):
            raise ValueError("groups must be a list")
        groups = [check_name(g, "a group") for g in groups]
        session = claims.get("session")
        if session is not None and not isinstance(session, dict):
            raise ValueError("session must be an object")
    except ValueError as exc:
        raise TokenError(f"invalid token: {exc}") from None
    return Grant(uid, groups, session)
