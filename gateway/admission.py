"""Who may open a WebSocket, decided before the ``101``: pure, no I/O.

How this works
--------------
One :class:`Admission` per gateway process. The connection shell
(``gateway.connection``) asks :meth:`Admission.admit` once a WebSocket upgrade
request head is complete, before answering it. The checks run cheapest first, and
the first one that fails answers the request with an HTTP status and no ``101``:

1. the handshake rate of this gateway process (``handshake_rate`` per second,
   ``handshake_burst`` at once; a token bucket): ``503`` with ``Retry-After``;
2. the open connections of the remote IP (``max_connections_per_ip``): ``429``;
3. the ``Origin`` header against ``allowed_origins`` (``gateway.origins``):
   ``403``;
4. the connect token (``gateway.tokens``) from the ``token`` query parameter or an
   ``Authorization: Bearer`` header, when the gateway has a ``token_key``: ``401``
   when missing (if required), malformed, expired or forged.

An admitted request may then be held for the app's ``authenticate`` hook
(``gateway.authhook``; its refusals are counted here too). An admitted request
gets a :class:`~gateway.tokens.Grant` (uid, groups, session
to bind at once; empty without a token) and counts against its IP until
:meth:`Admission.released`.

After the handshake :class:`TokenBucket` limits each connection's message rate and
byte rate (the shell closes a client over either with ``1008``).

Every refusal is counted (:meth:`Admission.stats`, merged into ``status``) and
summarised in one log line per :data:`REPORT_INTERVAL` (:meth:`Admission.report`),
never one line per event: a connect storm must not become a log storm.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qs

from pygatewayworker.gateway.config import Gateway
from pygatewayworker.gateway.http11 import Request
from pygatewayworker.gateway.origins import OriginPolicy
from pygatewayworker.gateway.tokens import Grant, TokenError, load_codec, verify_token

__all__ = ["Admission", "Refusal", "TokenBucket", "REPORT_INTERVAL"]

log = logging.getLogger("gateway")

REPORT_INTERVAL = 10.0
"""Seconds between two summary lines about refused handshakes and limited clients."""

Refusal = tuple[int, str, tuple[tuple[str, str], ...]]
"""``(status, reason, headers)``: how a handshake is refused."""

_NO_GRANT = Grant()


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; :meth:`take` spends
    them. The clock is the caller's (seconds, monotonic)."""

    __slots__ = ("rate", "burst", "level", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.level = burst
        self.stamp = now

    def take(self, amount: float, now: float) -> bool:
        """Spend ``amount`` tokens if there are enough; False (nothing spent) if not."""
        level = self.level + (now - self.stamp) * self.rate
        self.stamp = now
        if level > self.burst:
            level = self.burst
        if level < amount:
            self.level = level
            return False
        self.level = level - amount
        return True


class Admission:
    """The handshake checks of one gateway process (see the module docstring)."""

    def __init__(self, config: Gateway, now: float = 0.0) -> None:
        self.config = config
        self.origins = OriginPolicy(config.allowed_origins) if config.allowed_origins else None
        self.token_key = config.token_key.encode() if config.token_key else b""
        if self.token_key:
            load_codec()  # now, not on the first connection that brings a token
        self.handshakes = (
            TokenBucket(config.handshake_rate, config.handshake_burst, now)
            if config.handshake_rate
            else None
        )
        self.per_ip: dict[str, int] = {}
        """Open (admitted, not yet released) connections per remote IP."""
        self.counts: dict[str, int] = dict.fromkeys(
            (
                "refused_handshake_rate",
                "refused_ip_limit",
                "refused_origin",
                "refused_token",
                "refused_auth",
                "refused_auth_unavailable",
                "closed_message_rate",
                "closed_byte_rate",
            ),
            0,
        )
        self._reported = dict(self.counts)
        self._next_report = now + REPORT_INTERVAL

    @property
    def limits_clients(self) -> bool:
        """Whether connections get a message or byte rate limit."""
        return bool(self.config.message_rate or self.config.byte_rate)

    def admit(self, request: Request, remote_ip: str, now: float) -> Grant | Refusal:
        """Admit an upgrade request (a :class:`Grant`, and the IP counts it) or refuse
        it (a :data:`Refusal`); see the module docstring for the order."""
        cfg = self.config
        counts = self.counts
        if self.handshakes is not None and not self.handshakes.take(1, now):
            counts["refused_handshake_rate"] += 1
            return 503, "too many handshakes, retry later", (("Retry-After", "1"),)
        open_here = self.per_ip.get(remote_ip, 0)
        if cfg.max_connections_per_ip and open_here >= cfg.max_connections_per_ip:
            counts["refused_ip_limit"] += 1
            return 429, "too many connections from this address", (("Retry-After", "5"),)
        if self.origins is not None and not self.origins.allows(request.headers.get("origin")):
            counts["refused_origin"] += 1
            return 403, "origin not allowed", ()
        grant = _NO_GRANT
        if self.token_key:
            token = _token_of(request)
            if token:
                try:
                    grant = verify_token(self.token_key, token)
                except TokenError as exc:
                    counts["refused_token"] += 1
                    return 401, str(exc), ()
            elif cfg.token_required:
                counts["refused_token"] += 1
                return 401, "a connect token is required (?token=...)", ()
        self.per_ip[remote_ip] = open_here + 1
        return grant

    def released(self, remote_ip: str) -> None:
        """An admitted connection is gone."""
        left = self.per_ip.get(remote_ip, 0) - 1
        if left > 0:
            self.per_ip[remote_ip] = left
        else:
            self.per_ip.pop(remote_ip, None)

    def stats(self) -> dict[str, Any]:
        """Counters for ``status``, and ``handshakes_refused``: the ``refused_*`` ones
        by reason (``origin``, ``token``, ``auth``...) for the metrics."""
        counts: dict[str, Any] = dict(self.counts)
        counts["handshakes_refused"] = {
            name.removeprefix("refused_"): n
            for name, n in self.counts.items()
            if name.startswith("refused_")
        }
        return counts

    def report(self, now: float) -> None:
        """At most once per :data:`REPORT_INTERVAL`: one log line with what was
        refused or closed since the last line (none when nothing was)."""
        if now < self._next_report:
            return
        self._next_report = now + REPORT_INTERVAL
        changes = {
            k: v - self._reported[k] for k, v in self.counts.items() if v > self._reported[k]
        }
        if not changes:
            return
        self._reported = dict(self.counts)
        log.warning(
            "in the last %g s: %s",
            REPORT_INTERVAL,
            ", ".join(f"{name.replace('_', ' ')} {n}" for name, n in changes.items()),
        )


def _token_of(request: Request) -> str:
    """The connect token: the ``token`` query parameter, else ``Authorization:
    Bearer``."""
    if "token=" in request.query:
        values = parse_qs(request.query).get("token")
        if values:
            return values[0]
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""
