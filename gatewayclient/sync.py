"""The synchronous push client, for WSGI apps and other threaded code.

How this works
--------------
:class:`GatewayClient` runs one :class:`~gatewayclient.client.AsyncGatewayClient`
on a private event loop (uvloop when installed) in a daemon thread, started on the
first call. Each call is submitted to that loop with
``asyncio.run_coroutine_threadsafe`` and the calling thread waits for the result,
bounded by about ``3 * timeout + 1`` seconds. Every method has the same name and
arguments as the async client's, so the two forms read alike.

Connections are persistent: no TCP connect per call. A send returns once its bytes
are handed to the socket (the loop flushes the links after each call).

The loop thread belongs to the process that started it: after ``fork`` the child
finds a runner with another pid and starts its own loop and links on its next call
(the parent's are never touched from the child).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

from pygatewayworker.gateway import tokens
from pygatewayworker.gatewayclient.api import Key, Message
from pygatewayworker.gatewayclient.client import AsyncGatewayClient
from pygatewayworker.gatewayclient.errors import GatewayError

__all__ = ["GatewayClient"]

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(slots=True)
class _Runner:
    """The private loop thread of a :class:`GatewayClient` in one process."""

    pid: int
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    client: AsyncGatewayClient


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


async def _then_flush(client: AsyncGatewayClient, call: Callable[[], Awaitable[T]]) -> T:
    result = await call()
    client.flush()  # "returns once the bytes are handed to the socket"
    return result


class GatewayClient:
    """The Gateway API for synchronous code; thread-safe, share one per process.

    Same arguments as :class:`AsyncGatewayClient`. Each call waits at most about
    ``3 * timeout + 1`` seconds (discovery, linking, answers) and raises the same
    exceptions as the async client.
    """

    def __init__(
        self,
        register: str | list[str] = "127.0.0.1:1238",
        secret: str = "",
        timeout: float = 5.0,
        gateways: list[str] | None = None,
        name: str = "push-client",
        keepalive_interval: float = 10.0,
        link_timeout: float = 30.0,
        token_key: str = "",
    ) -> None:
        self._kwargs: dict[str, Any] = {
            "register": register,
            "secret": secret,
            "timeout": timeout,
            "gateways": gateways,
            "name": name,
            "keepalive_interval": keepalive_interval,
            "link_timeout": link_timeout,
        }
        AsyncGatewayClient(**self._kwargs)  # validate the arguments now
        self._token_key = tokens.check_token_key(token_key, "GatewayClient") if token_key else b""
        self._wait = 3 * timeout + 1.0
        self._lock = threading.Lock()
        self._runner: _Runner | None = None
        self._closed = False

    # ---- lifecycle -----------------------------------------------------------------

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def create_token(
        self,
        uid: Key,
        groups: Iterable[Key] | None = None,
        session: dict[str, Any] | None = None,
        expires_in: float = 3600.0,
    ) -> str:
        """A connect token, as :meth:`AsyncGatewayClient.create_token` makes it (no
        gateway is asked, so this never blocks)."""
        return tokens.client_token(self._token_key, uid, groups, session, expires_in)

    def close(self) -> None:
        """Close the links and stop the background thread."""
        with self._lock:
            runner, self._runner = self._runner, None
            self._closed = True
        if runner is None or runner.pid != os.getpid():
            return
        future = asyncio.run_coroutine_threadsafe(runner.client.close(), runner.loop)
        with contextlib.suppress(Exception):  # closing anyway
            future.result(self._wait)
        runner.loop.call_soon_threadsafe(runner.loop.stop)
        runner.thread.join(self._wait)
        if not runner.thread.is_alive():
            runner.loop.close()

    def _get_runner(self) -> _Runner:
        runner = self._runner
        if runner is not None and runner.pid == os.getpid():
            return runner
        with self._lock:
            if self._closed:
                raise GatewayError("this GatewayClient is closed")
            runner = self._runner
            if runner is None or runner.pid != os.getpid():
                runner = self._runner = self._start_runner()
            return runner

    def _start_runner(self) -> _Runner:
        loop = _new_loop()
        thread = threading.Thread(target=loop.run_forever, name="gatewayclient", daemon=True)
        thread.start()
        return _Runner(os.getpid(), loop, thread, AsyncGatewayClient(**self._kwargs))

    def _call(
        self,
        method: Callable[Concatenate[AsyncGatewayClient, P], Awaitable[T]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        runner = self._get_runner()
        client = runner.client
        future = asyncio.run_coroutine_threadsafe(
            _then_flush(client, lambda: method(client, *args, **kwargs)), runner.loop
        )
        try:
            return future.result(self._wait)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise GatewayError(
                f"{method.__name__} did not finish within {self._wait:g} s"
            ) from None

    # ---- sends ---------------------------------------------------------------------

    def send_to_client(self, client_id: str, message: Message) -> None:
        """Send to one connection."""
        self._call(AsyncGatewayClient.send_to_client, client_id, message)

    def send_to_all(
        self,
        message: Message,
        client_ids: Iterable[str] | None = None,
        exclude: Iterable[str] | str | None = None,
    ) -> None:
        """Send to everyone, or only ``client_ids`` (``[]`` sends nothing)."""
        self._call(AsyncGatewayClient.send_to_all, message, client_ids, exclude)

    def send_to_uid(self, uid: Key | Iterable[Key], message: Message) -> None:
        """Send to every connection bound to the uid(s)."""
        self._call(AsyncGatewayClient.send_to_uid, uid, message)

    def send_to_group(
        self,
        group: Key | Iterable[Key],
        message: Message,
        exclude: Iterable[str] | str | None = None,
    ) -> None:
        """Send to every member of the group(s) minus ``exclude``."""
        self._call(AsyncGatewayClient.send_to_group, group, message, exclude)

    def close_client(
        self, client_id: str, message: Message | None = None, code: int = 1000, reason: str = ""
    ) -> None:
        """Optional last message, then close after flushing with close ``code``
        (1000 or 3000-4999) and ``reason``."""
        self._call(AsyncGatewayClient.close_client, client_id, message, code, reason)

    def destroy_client(self, client_id: str) -> None:
        """Close the connection at once."""
        self._call(AsyncGatewayClient.destroy_client, client_id)

    def bind_uid(self, client_id: str, uid: Key) -> None:
        """Bind the connection to ``uid``."""
        self._call(AsyncGatewayClient.bind_uid, client_id, uid)

    def unbind_uid(self, client_id: str, uid: Key) -> None:
        """Unbind the connection from ``uid``."""
        self._call(AsyncGatewayClient.unbind_uid, client_id, uid)

    def join_group(self, client_id: str, group: Key) -> None:
        """Add the connection to ``group``."""
        self._call(AsyncGatewayClient.join_group, client_id, group)

    def leave_group(self, client_id: str, group: Key) -> None:
        """Remove the connection from ``group``."""
        self._call(AsyncGatewayClient.leave_group, client_id, group)

    def ungroup(self, group: Key) -> None:
        """Dissolve ``group``."""
        self._call(AsyncGatewayClient.ungroup, group)

    def set_session(self, client_id: str, session: dict[str, Any]) -> None:
        """Replace the connection's session."""
        self._call(AsyncGatewayClient.set_session, client_id, session)

    def update_session(self, client_id: str, partial: dict[str, Any]) -> None:
        """Merge ``partial`` into the connection's session."""
        self._call(AsyncGatewayClient.update_session, client_id, partial)

    # ---- queries -------------------------------------------------------------------

    def is_online(self, client_id: str) -> bool:
        """Whether the connection exists."""
        return self._call(AsyncGatewayClient.is_online, client_id)

    def get_session(self, client_id: str) -> dict[str, Any] | None:
        """The session, ``None`` when offline."""
        return self._call(AsyncGatewayClient.get_session, client_id)

    def get_uid_by_client_id(self, client_id: str) -> str | None:
        """The bound uid or ``None``."""
        return self._call(AsyncGatewayClient.get_uid_by_client_id, client_id)

    def is_uid_online(self, uid: Key) -> bool:
        """Whether a connection is bound to ``uid``."""
        return self._call(AsyncGatewayClient.is_uid_online, uid)

    def get_client_id_by_uid(self, uid: Key) -> list[str]:
        """The client_ids bound to ``uid``."""
        return self._call(AsyncGatewayClient.get_client_id_by_uid, uid)

    def get_client_count_by_group(self, group: Key = "") -> int:
        """Members of ``group`` (``""``: all clients)."""
        return self._call(AsyncGatewayClient.get_client_count_by_group, group)

    def get_client_sessions_by_group(self, group: Key) -> dict[str, dict[str, Any]]:
        """``{client_id: session}`` of ``group``."""
        return self._call(AsyncGatewayClient.get_client_sessions_by_group, group)

    def get_client_id_list_by_group(self, group: Key) -> list[str]:
        """The client_ids of ``group``."""
        return self._call(AsyncGatewayClient.get_client_id_list_by_group, group)

    def get_uid_list_by_group(self, group: Key) -> list[str]:
        """The distinct uids of ``group``."""
        return self._call(AsyncGatewayClient.get_uid_list_by_group, group)

    def get_uid_count_by_group(self, group: Key) -> int:
        """How many distinct uids ``group`` has."""
        return self._call(AsyncGatewayClient.get_uid_count_by_group, group)

    def get_all_client_count(self) -> int:
        """Every connection."""
        return self._call(AsyncGatewayClient.get_all_client_count)

    def get_all_client_sessions(self) -> dict[str, dict[str, Any]]:
        """Every session by client_id."""
        return self._call(AsyncGatewayClient.get_all_client_sessions)

    def get_all_client_id_list(self) -> list[str]:
        """Every client_id."""
        return self._call(AsyncGatewayClient.get_all_client_id_list)

    def get_all_uid_list(self) -> list[str]:
        """Every bound uid."""
        return self._call(AsyncGatewayClient.get_all_uid_list)

    def get_all_uid_count(self) -> int:
        """How many uids are bound."""
        return self._call(AsyncGatewayClient.get_all_uid_count)

    def get_all_group_id_list(self) -> list[str]:
        """Every non-empty group."""
        return self._call(AsyncGatewayClient.get_all_group_id_list)

    def get_all_group_count(self) -> int:
        """How many non-empty groups exist."""
        return self._call(AsyncGatewayClient.get_all_group_count)

    def get_all_group_uid_list(self) -> dict[str, list[str]]:
        """``{group: [uid, ...]}``."""
        return self._call(AsyncGatewayClient.get_all_group_uid_list)

    def get_all_group_client_id_list(self) -> dict[str, list[str]]:
        """``{group: [client_id, ...]}``."""
        return self._call(AsyncGatewayClient.get_all_group_client_id_list)

    def is_uids_online(self, uids: Iterable[Key]) -> dict[str, bool]:
        """``{uid: online}``."""
        return self._call(AsyncGatewayClient.is_uids_online, uids)

    def batch_get_client_id_by_uid(self, uids: Iterable[Key]) -> dict[str, list[str]]:
        """``{uid: [client_id, ...]}``."""
        return self._call(AsyncGatewayClient.batch_get_client_id_by_uid, uids)

    def batch_get_client_count_by_group(self, groups: Iterable[Key]) -> dict[str, int]:
        """``{group: members}``."""
        return self._call(AsyncGatewayClient.batch_get_client_count_by_group, groups)

    def get_connections(self) -> list[dict[str, Any]]:
        """Every connection, one dict each (operators)."""
        return self._call(AsyncGatewayClient.get_connections)

    def get_gateway_stats(self) -> dict[str, dict[str, Any]]:
        """``{gateway: counters}`` (operators)."""
        return self._call(AsyncGatewayClient.get_gateway_stats)
