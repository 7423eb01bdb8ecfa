"""The app's ``authenticate`` hook, worker side: accept or reject a WebSocket
handshake that the gateway holds before its ``101``.

How this works
--------------
An Events object may define ``authenticate(request)`` (a plain function or a
coroutine). The worker then announces the hook in its ``HELLO``, and every gateway it
links to holds each upgrade request and sends it here as ``AUTHENTICATE``
(``gateway.authhook``). :class:`Authenticator` runs the hook with a
:class:`~businessworker.request.ConnectRequest` (path, parsed query, headers,
cookies, remote address) and answers ``AUTH_REPLY``:

- :class:`Accept` (or ``None``/``True``): the gateway answers ``101``; ``uid``,
  ``groups`` and ``session`` are bound before ``on_connect`` runs and before the
  client's first message, so a ``send_to_uid`` right after the handshake reaches it;
- :class:`Reject` (returned or raised), or ``False`` (403): the client gets that
  HTTP status, body and headers, and no client_id; no other callback runs;
- an exception (or a result of another type): 500, and one log line with the
  traceback.

A plain function runs in a callback thread in thread mode (the default: a database
lookup never stops the loop), else in a task on the loop, like a coroutine. The
gateway gives up after its ``auth_timeout`` (503): a late answer is ignored there.
There is no client_id yet, so ``context`` is empty in the hook; ``api`` works.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from pygatewayworker.businessworker.handle import WorkerAPI, use_api
from pygatewayworker.businessworker.request import ConnectRequest
from pygatewayworker.businessworker.threads import FAILED, CallbackThreads, resolve
from pygatewayworker.gateway.authhook import check_grant, check_refusal
from pygatewayworker.gateway.protocol import Cmd, encode, pack_session
from pygatewayworker.gatewayclient.link import GatewayLink

__all__ = ["Accept", "Reject", "Authenticator", "HOOK_NAME"]

logger = logging.getLogger("businessworker")

HOOK_NAME = "authenticate"
"""The Events attribute, and the hook name announced in ``HELLO``."""


@dataclass(slots=True, frozen=True)
class Accept:
    """Accept the connection, bound at once to ``uid`` (optional), ``groups`` and
    ``session`` (a dict: what ``context.session`` holds in ``on_connect``)."""

    uid: str | int | None = None
    groups: Iterable[str | int] = ()
    session: dict[str, Any] | None = field(default=None)


class Reject(Exception):
    """Refuse the connection before the ``101`` with an HTTP ``status`` (300..599:
    401, 403, 429...), a small ``body`` (str or bytes, at most 4 KiB) and
    ``headers`` (a dict or pairs; not ``Content-Length``/``Connection``). Return it
    or raise it. A bad argument raises ``ValueError``/``TypeError`` at once."""

    def __init__(
        self,
        status: int = 403,
        body: str | bytes = "",
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    ) -> None:
        pairs = dict(headers) if isinstance(headers, Mapping) else headers
        self.status, self.body, self.headers = check_refusal(status, body, pairs)
        super().__init__(status, self.body[:80])


class Authenticator:
    """Runs the Events' ``authenticate`` for the gateways' ``AUTHENTICATE`` packets
    (see the module docstring)."""

    def __init__(
        self, hook: Callable[..., Any], api: WorkerAPI, threads: CallbackThreads | None
    ) -> None:
        self._hook = hook
        self._api = api
        self._threads = threads if not inspect.iscoroutinefunction(hook) else None
        self.name = getattr(hook, "__qualname__", HOOK_NAME)
        self._tasks: set[asyncio.Task[None]] = set()
        self.counts = {"accepted": 0, "rejected": 0, "failed": 0}

    def on_authenticate(self, link: GatewayLink, packet: list[Any]) -> None:
        """The link reader's callback: run the hook in a task of its own."""
        _, req, info = packet
        request = ConnectRequest.from_wire(info)
        task = asyncio.get_running_loop().create_task(self._run(link, req, request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel_all(self) -> None:
        """Stop: drop the hooks still running (their gateways answer 503)."""
        for task in list(self._tasks):
            task.cancel()

    async def _run(self, link: GatewayLink, req: int, request: ConnectRequest) -> None:
        use_api(self._api)
        try:
            if self._threads is not None:
                result = await self._in_thread(request)
            else:
                result = self._hook(request)
            if inspect.isawaitable(result):
                result = await result
            reply = self._reply(result)
        except Reject as rejection:
            reply = (rejection.status, rejection.body, rejection.headers, None, [], None)
        except Exception as exc:
            self.counts["failed"] += 1
            logger.exception(
                "%s raised for %s (%s); answering 500: %s",
                self.name,
                request.path,
                request.remote_ip,
                exc.__class__.__name__,
            )
            reply = (500, b"authentication failed\n", (), None, [], None)
        if reply[0]:
            self.counts["rejected"] += 1
        else:
            self.counts["accepted"] += 1
        status, body, headers, uid, groups, session = reply
        if link.is_open:
            link.send(
                encode(
                    Cmd.AUTH_REPLY,
                    req,
                    status,
                    body,
                    [list(h) for h in headers],
                    uid,
                    groups,
                    session,
                )
            )

    def _reply(self, result: Any) -> tuple[Any, ...]:
        """``AUTH_REPLY`` fields of what the hook returned (``TypeError`` and
        ``ValueError`` for what it must not return)."""
        if isinstance(result, Reject):
            return result.status, result.body, result.headers, None, [], None
        if result is None or result is True:
            return 0, b"", (), None, [], None
        if result is False:
            return 403, b"forbidden\n", (), None, [], None
        if not isinstance(result, Accept):
            raise TypeError(
                f"{self.name} must return Accept, Reject, None, True or False, "
                f"not {type(result).__name__}"
            )
        uid, groups = check_grant(result.uid, list(result.groups))
        session = None
        if result.session:
            if not isinstance(result.session, dict):
                raise TypeError("Accept(session=...) must be a dict")
            session = pack_session(result.session)
        return 0, b"", (), uid or None, groups, session

    async def _in_thread(self, request: ConnectRequest) -> Any:
        """The plain hook in a callback thread; its result, or what it raised."""
        threads = self._threads
        assert threads is not None
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        run = functools.partial(contextvars.copy_context().run, self._call, threads, request)
        threads.submit(run, functools.partial(resolve, future), self.name)
        outcome = await future
        if outcome is FAILED:
            raise RuntimeError("the callback threads are stopping")
        ok, value = outcome
        if not ok:
            raise value
        return value

    def _call(self, threads: CallbackThreads, request: ConnectRequest) -> tuple[bool, Any]:
        use_api(cast(WorkerAPI, threads.api))
        try:
            return True, self._hook(request)
        except Exception as exc:  # re-raised on the loop, logged there
            return False, exc
