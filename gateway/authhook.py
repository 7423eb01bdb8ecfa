"""The app's ``authenticate`` hook, gateway side: hold an upgrade request, ask a
business worker, apply its answer. Pure: no I/O.

How this works
--------------
A business worker whose Events define ``authenticate`` says so in its ``HELLO``
(``{"hooks": ["authenticate"]}``, ``Cmd.HELLO``). While at least one linked worker
has the hook, the gateway holds every admitted upgrade request (``gateway.admission``
passed it) instead of answering ``101``: :meth:`AuthHook.ask` picks one of those
workers the way a client's events pick one (the fewest clients; the client keeps
it, so ``on_connect`` runs where the hook ran), sends ``AUTHENTICATE`` and keeps
the request under a request id until the ``AUTH_REPLY`` (:meth:`AuthHook.reply`),
which accepts (a :class:`~gateway.tokens.Grant`: uid, groups, session, bound
before the ``101`` as a token's are) or refuses (status, body, headers).

No answer within ``auth_timeout`` (the shell's sweep), no worker with the hook, or
the worker's link ending first: refused with ``auth_failure_status`` (503 by
default) and ``Retry-After: 1``. A gateway that has had workers with the hook and
now has no worker linked at all refuses the same way rather than letting
connections in unchecked (a restart of every worker); once workers without the
hook are linked (the app dropped it), handshakes are no longer held.

Apps without the hook pay one look at the linked workers per handshake, nothing per
message. Old workers never get ``AUTHENTICATE``: they do not announce the hook.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pygatewayworker.gateway.protocol import MAX_SESSION, Cmd, encode, unpack_session
from pygatewayworker.gateway.tokens import Grant, check_name

if TYPE_CHECKING:  # annotations only: a business worker imports the checks below
    # (check_grant, check_refusal) and must not load the gateway's connection records
    from pygatewayworker.gateway.config import Gateway
    from pygatewayworker.gateway.records import Client, Link
    from pygatewayworker.gateway.workers import Workers

__all__ = [
    "AuthHook",
    "HOOK_AUTHENTICATE",
    "MAX_BODY",
    "AuthRefusal",
    "check_refusal",
    "check_grant",
    "merge_grants",
]

log = logging.getLogger("gateway")

HOOK_AUTHENTICATE = "authenticate"
"""The hook name a worker announces in its ``HELLO``."""
MAX_BODY = 4096
"""Largest body of a refusal, in bytes."""
MAX_HEADERS = 32
"""Most headers of a refusal."""
RESERVED_HEADERS = frozenset({"content-length", "connection", "transfer-encoding", "upgrade"})
"""Headers the gateway writes itself (``Content-Type`` may be given)."""

AuthRefusal = tuple[int, bytes, tuple[tuple[str, str], ...]]
"""``(status, body, headers)`` of a refused handshake."""
Verdict = Grant | AuthRefusal
Done = Callable[[Verdict], None]

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_BAD_VALUE = re.compile(r"[\r\n\x00]")


def check_refusal(status: Any, body: Any, headers: Any) -> AuthRefusal:
    """A valid refusal from its parts (``body`` str or bytes, ``headers`` a dict or
    pairs); ``ValueError``/``TypeError`` saying what is wrong. Both sides use it:
    the worker on the app's ``Reject``, the gateway on the wire."""
    if type(status) is not int or not 300 <= status <= 599:
        raise ValueError(f"a rejection status must be an int in 300..599, got {status!r}")
    if isinstance(body, str):
        body = body.encode()
    if not isinstance(body, bytes):
        raise TypeError("a rejection body must be str or bytes")
    if len(body) > MAX_BODY:
        raise ValueError(f"a rejection body is at most {MAX_BODY} bytes, got {len(body)}")
    pairs = list(headers.items()) if isinstance(headers, dict) else list(headers or ())
    if len(pairs) > MAX_HEADERS:
        raise ValueError(f"a rejection has at most {MAX_HEADERS} headers")
    checked = []
    for pair in pairs:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise TypeError("rejection headers are (name, value) pairs")
        name, value = pair
        if type(name) is not str or not _TOKEN.match(name):
            raise ValueError(f"bad header name {name!r}")
        if name.lower() in RESERVED_HEADERS:
            raise ValueError(f"header {name!r} is written by the gateway")
        if type(value) is not str or _BAD_VALUE.search(value) or len(value) > 4096:
            raise ValueError(f"bad value for header {name!r}")
        checked.append((name, value))
    return status, body, tuple(checked)


def check_grant(uid: Any, groups: Any) -> tuple[str, list[str]]:
    """The uid (``""``: none) and group names of an acceptance, checked."""
    uid = "" if uid is None else check_name(uid, "uid")
    if isinstance(groups, (str, bytes)) or not isinstance(groups, (list, tuple, set, frozenset)):
        raise TypeError("groups must be a list of names")
    return uid, [check_name(g, "a group") for g in groups]


def merge_grants(token: Grant, hook: Grant) -> Grant:
    """A connect token's grant, then the hook's on top: its uid replaces the token's
    (when it gives one), its groups are added, its session fields override."""
    if not (token.uid or token.groups or token.session):
        return hook
    groups = list(token.groups)
    groups.extend(g for g in hook.groups if g not in groups)
    session = dict(token.session or {})
    session.update(hook.session or {})
    return Grant(hook.uid or token.uid, groups, session or None)


class _Held:
    __slots__ = ("client", "link", "done")

    def __init__(self, client: Client, link: Link, done: Done) -> None:
        self.client = client
        self.link = link
        self.done = done


class AuthHook:
    """The upgrade requests of one gateway process held for the hook (see the module
    docstring)."""

    def __init__(self, config: Gateway, workers: Workers, counts: dict[str, int]) -> None:
        self.config = config
        self.workers = workers
        self.counts = counts
        """The admission's counters (``refused_auth``, ``refused_auth_unavailable``)."""
        self.held: dict[int, _Held] = {}
        self._next_req = 0
        self._had_hook = False

    def wanted(self) -> bool:
        """Whether handshakes are held for the hook now (see the module docstring)."""
        linked = self.workers.linked
        if not linked:
            return self._had_hook
        for link in linked:
            if HOOK_AUTHENTICATE in link.hooks:
                self._had_hook = True
                return True
        self._had_hook = False
        return False

    def ask(self, client: Client, info: dict[str, Any], done: Done) -> int:
        """Send ``AUTHENTICATE`` for ``client``'s request to a worker with the hook;
        ``done(verdict)`` runs with its answer. The request id, or 0 when no worker
        has the hook (the caller refuses with :meth:`unavailable`)."""
        best: Link | None = None
        for link in self.workers.linked:
            if HOOK_AUTHENTICATE in link.hooks and (best is None or link.clients < best.clients):
                best = link
        if best is None:
            return 0
        self._next_req = req = self._next_req + 1 if self._next_req < 2**31 - 1 else 1
        client.worker = best
        best.clients += 1
        self.held[req] = _Held(client, best, done)
        best.writer.send(encode(Cmd.AUTHENTICATE, req, info))
        return req

    def unavailable(self, why: str) -> AuthRefusal:
        """The refusal when no worker answered (``auth_failure_status``), counted."""
        self.counts["refused_auth_unavailable"] += 1
        return self.config.auth_failure_status, why.encode() + b"\n", (("Retry-After", "1"),)

    def reply(self, link: Link, packet: list[Any]) -> None:
        """``AUTH_REPLY`` from ``link``: hand the verdict to the held request (late
        or unknown answers are ignored). ``ValueError``/``TypeError`` for a
        malformed packet (the core then closes that link)."""
        _, req, status, body, headers, uid, groups, session = packet
        if type(status) is not int:
            raise TypeError("status must be an int")
        if status:
            verdict: Verdict = check_refusal(status, body, headers)
        else:
            uid, groups = check_grant(uid, groups)
            if session is not None and type(session) is not bytes:
                raise TypeError("session must be packed bytes or None")
            if session is not None and len(session) > MAX_SESSION:
                # the one session rule (protocol.MAX_SESSION): refuse this client, keep the link
                log.warning(
                    "%r: authenticate accepted with a session of %d bytes, over %d; "
                    "refusing the connection (500)",
                    link,
                    len(session),
                    MAX_SESSION,
                )
                status, verdict = 500, (500, b"authentication failed\n", ())
            else:
                verdict = Grant(uid, groups, unpack_session(session) or None)
        held = self.held.get(req)
        if held is None or held.link is not link:
            return
        del self.held[req]
        if status:
            self.counts["refused_auth"] += 1
            self._unassign(held)
        held.done(verdict)

    def cancel(self, req: int) -> None:
        """The held request ``req`` is given up (timeout, the client went away)."""
        held = self.held.pop(req, None)
        if held is not None:
            self._unassign(held)

    def link_gone(self, link: Link) -> None:
        """``link`` ended: refuse what it was asked at once, instead of at the timeout."""
        if not self.held:
            return
        gone = [req for req, held in self.held.items() if held.link is link]
        for req in gone:
            held = self.held.pop(req)
            self._unassign(held)
            held.done(self.unavailable("the authenticating worker went away"))

    @staticmethod
    def forget(client: Client) -> None:
        """An accepted client went away before it was opened: it takes no worker."""
        link = client.worker
        if link is not None:
            link.clients -= 1
            client.worker = None

    @staticmethod
    def _unassign(held: _Held) -> None:
        client = held.client
        if client.worker is held.link:
            held.link.clients -= 1
            client.worker = None
