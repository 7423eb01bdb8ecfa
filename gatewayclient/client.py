"""Push clients: the Gateway API for web applications (Django, Flask, FastAPI...).

How this works
--------------
:class:`AsyncGatewayClient` is for asyncio code. It keeps one persistent link per
gateway (role ``"client"``, so the gateways route no events to it) through a
:class:`~gatewayclient.pool.LinkPool`: gateways are discovered through the
registers, or taken from a fixed ``gateways`` list; links come back after a gateway
restarts and follow the list as it changes. Every Gateway API call has the same name
and arguments as in ``gatewayclient.api.GatewayAPI``, and here every call is a
coroutine: the first one starts discovery and waits for it (``NoRegister`` when no
register answers within ``timeout``); sends then queue their packet on the right
link(s) and return, awaiting only when a link's buffer is above its high-water mark.

The synchronous, thread-safe form for WSGI apps, :class:`GatewayClient`, lives in
``gatewayclient.sync``: it runs one :class:`AsyncGatewayClient` on a private loop
thread (re-exported here and from ``gatewayclient``).

One ``AsyncGatewayClient`` belongs to the event loop that first uses it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from pygatewayworker.gateway import tokens
from pygatewayworker.gatewayclient.api import GatewayAPI, Key, Message
from pygatewayworker.gatewayclient.errors import GatewayError, GatewayUnavailable
from pygatewayworker.gatewayclient.pool import LinkPool
from pygatewayworker.register.config import check_link_timing, normalize_addresses

__all__ = ["AsyncGatewayClient"]


class AsyncGatewayClient:
    """The Gateway API for asyncio applications; every call is a coroutine.

    ``register``: register address(es), ``"ip:port"``, a comma-separated string or a
    list. ``secret``: the cluster's secret. ``timeout``: seconds to wait for discovery,
    for links and for each query's answers. ``gateways``: a fixed list of gateway
    internal addresses instead of discovery. ``name``: shown in gateway logs.
    ``keepalive_interval`` / ``link_timeout``: an idle link (to a gateway or a
    register) is pinged every ``keepalive_interval`` seconds and dropped after
    ``link_timeout`` seconds of silence, which bounds how long a vanished host goes
    unnoticed; the same settings as the workers' (``link_timeout`` at least twice
    ``keepalive_interval``).
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
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout!r}")
        check_link_timing(keepalive_interval, link_timeout, "push client")
        fixed = None if gateways is None else normalize_addresses(gateways, "gateways")
        registers = () if fixed is not None else normalize_addresses(register, "register")
        self._timeout = timeout
        self._token_key = (
            tokens.check_token_key(token_key, "AsyncGatewayClient") if token_key else b""
        )
        self._pool = LinkPool(
            role="client",
            name=name,
            secret=secret,
            registers=registers,
            gateways=fixed,
            connect_timeout=timeout,
            keepalive_interval=keepalive_interval,
            link_timeout=link_timeout,
        )
        self._links = self._pool.links
        self._api = GatewayAPI(self._links, query_timeout=timeout, unlinked=self._pool.unlinked)
        self._lock = asyncio.Lock()
        self._started = False
        self._closed = False

    # ---- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> AsyncGatewayClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def create_token(
        self,
        uid: Key,
        groups: Iterable[Key] | None = None,
        session: dict[str, Any] | None = None,
        expires_in: float = 3600.0,
    ) -> str:
        """A signed connect token for ``uid`` (``gateway.tokens``): the page connects
        with ``?token=<it>`` and the gateway binds ``uid``, joins ``groups`` and sets
        ``session`` before the ``101``. Needs ``token_key`` (the gateways' key); asks
        no gateway."""
        return tokens.client_token(self._token_key, uid, groups, session, expires_in)

    async def close(self) -> None:
        """Flush and close every link and stop discovery."""
        self._closed = True
        await self._pool.close()

    async def connect(self) -> None:
        """Discover and link now instead of on the first call (optional)."""
        await self._ready()

    def flush(self) -> None:
        """Hand every queued packet to the sockets now."""
        self._pool.flush()

    @property
    def gateways(self) -> list[str]:
        """The gateways linked right now."""
        return sorted(self._links)

    async def _ready(self) -> GatewayAPI:
        if self._started and self._links:
            return self._api
        if self._closed:
            raise GatewayError("this push client is closed")
        async with self._lock:
            if not self._started:
                await self._pool.start()
                await self._pool.wait_discovered(self._timeout)
                await self._pool.wait_linked(self._timeout)
                self._started = True
        if not self._links and not await self._pool.wait_any_link(self._timeout):
            raise GatewayUnavailable(self._why_no_link())
        return self._api

    def _why_no_link(self) -> str:
        if not self._pool.listed:
            where = self._pool.last_register_error or "the registers list no gateway"
            return f"no gateway to send to: {where}"
        errors = "; ".join(self._pool.last_errors.values()) or "no link yet"
        return f"no gateway could be linked within {self._timeout:g} s: {errors}"

    async def _sent(self) -> None:
        if self._pool.paused:
            await self._pool.drain()

    # ---- sends ---------------------------------------------------------------------

    async def send_to_client(self, client_id: str, message: Message) -> None:
        """Send to one connection."""
        (await self._ready()).send_to_client(client_id, message)
        await self._sent()

    async def send_to_all(
        self,
        message: Message,
        client_ids: Iterable[str] | None = None,
        exclude: Iterable[str] | str | None = None,
    ) -> None:
        """Send to everyone, or only ``client_ids`` (``[]`` sends nothing)."""
        (await self._ready()).send_to_all(message, client_ids, exclude)
        await self._sent()

    async def send_to_uid(self, uid: Key | Iterable[Key], message: Message) -> None:
        """Send to every connection bound to the uid(s)."""
        (await self._ready()).send_to_uid(uid, message)
        await self._sent()

    async def send_to_group(
        self,
        group: Key | Iterable[Key],
        message: Message,
        exclude: Iterable[str] | str | None = None,
    ) -> None:
        """Send to every member of the group(s) minus ``exclude``."""
        (await self._ready()).send_to_group(group, message, exclude)
        await self._sent()

    async def close_client(
        self, client_id: str, message: Message | None = None, code: int = 1000, reason: str = ""
    ) -> None:
        """Optional last message, then close after flushing with close ``code``
        (1000 or 3000-4999) and ``reason``."""
        (await self._ready()).close_client(client_id, message, code, reason)
        await self._sent()

    async def destroy_client(self, client_id: str) -> None:
        """Close the connection at once."""
        (await self._ready()).destroy_client(client_id)

    async def bind_uid(self, client_id: str, uid: Key) -> None:
        """Bind the connection to ``uid``."""
        (await self._ready()).bind_uid(client_id, uid)

    async def unbind_uid(self, client_id: str, uid: Key) -> None:
        """Unbind the connection from ``uid``."""
        (await self._ready()).unbind_uid(client_id, uid)

    async def join_group(self, client_id: str, group: Key) -> None:
        """Add the connection to ``group``."""
        (await self._ready()).join_group(client_id, group)

    async def leave_group(self, client_id: str, group: Key) -> None:
        """Remove the connection from ``group``."""
        (await self._ready()).leave_group(client_id, group)

    async def ungroup(self, group: Key) -> None:
        """Dissolve ``group``."""
        (await self._ready()).ungroup(group)

    async def set_session(self, client_id: str, session: dict[str, Any]) -> None:
        """Replace the connection's session."""
        (await self._ready()).set_session(client_id, session)

    async def update_session(self, client_id: str, partial: dict[str, Any]) -> None:
        """Merge ``partial`` into the connection's session."""
        (await self._ready()).update_session(client_id, partial)

    # ---- queries -------------------------------------------------------------------

    async def is_online(self, client_id: str) -> bool:
        """Whether the connection exists."""
        return await (await self._ready()).is_online(client_id)

    async def get_session(self, client_id: str) -> dict[str, Any] | None:
        """The session, ``None`` when offline."""
        return await (await self._ready()).get_session(client_id)

    async def get_uid_by_client_id(self, client_id: str) -> str | None:
        """The bound uid or ``None``."""
        return await (await self._ready()).get_uid_by_client_id(client_id)

    async def is_uid_online(self, uid: Key) -> bool:
        """Whether a connection is bound to ``uid``."""
        return await (await self._ready()).is_uid_online(uid)

    async def get_client_id_by_uid(self, uid: Key) -> list[str]:
        """The client_ids bound to ``uid``."""
        return await (await self._ready()).get_client_id_by_uid(uid)

    async def get_client_count_by_group(self, group: Key = "") -> int:
        """Members of ``group`` (``""``: all clients)."""
        return await (await self._ready()).get_client_count_by_group(group)

    async def get_client_sessions_by_group(self, group: Key) -> dict[str, dict[str, Any]]:
        """``{client_id: session}`` of ``group``."""
        return await (await self._ready()).get_client_sessions_by_group(group)

    async def get_client_id_list_by_group(self, group: Key) -> list[str]:
        """The client_ids of ``group``."""
        return await (await self._ready()).get_client_id_list_by_group(group)

    async def get_uid_list_by_group(self, group: Key) -> list[str]:
        """The distinct uids of ``group``."""
        return await (await self._ready()).get_uid_list_by_group(group)

    async def get_uid_count_by_group(self, group: Key) -> int:
        """How many distinct uids ``group`` has."""
        return await (await self._ready()).get_uid_count_by_group(group)

    async def get_all_client_count(self) -> int:
        """Every connection."""
        return await (await self._ready()).get_all_client_count()

    async def get_all_client_sessions(self) -> dict[str, dict[str, Any]]:
        """Every session by client_id."""
        return await (await self._ready()).get_all_client_sessions()

    async def get_all_client_id_list(self) -> list[str]:
        """Every client_id."""
        return await (await self._ready()).get_all_client_id_list()

    async def get_all_uid_list(self) -> list[str]:
        """Every bound uid."""
        return await (await self._ready()).get_all_uid_list()

    async def get_all_uid_count(self) -> int:
        """How many uids are bound."""
        return await (await self._ready()).get_all_uid_count()

    async def get_all_group_id_list(self) -> list[str]:
        """Every non-empty group."""
        return await (await self._ready()).get_all_group_id_list()

    async def get_all_group_count(self) -> int:
        """How many non-empty groups exist."""
        return await (await self._ready()).get_all_group_count()

    async def get_all_group_uid_list(self) -> dict[str, list[str]]:
        """``{group: [uid, ...]}``."""
        return await (await self._ready()).get_all_group_uid_list()

    async def get_all_group_client_id_list(self) -> dict[str, list[str]]:
        """``{group: [client_id, ...]}``."""
        return await (await self._ready()).get_all_group_client_id_list()

    async def is_uids_online(self, uids: Iterable[Key]) -> dict[str, bool]:
        """``{uid: online}``."""
        return await (await self._ready()).is_uids_online(uids)

    async def batch_get_client_id_by_uid(self, uids: Iterable[Key]) -> dict[str, list[str]]:
        """``{uid: [client_id, ...]}``."""
        return await (await self._ready()).batch_get_client_id_by_uid(uids)

    async def batch_get_client_count_by_group(self, groups: Iterable[Key]) -> dict[str, int]:
        """``{group: members}``."""
        return await (await self._ready()).batch_get_client_count_by_group(groups)

    async def get_connections(self) -> list[dict[str, Any]]:
        """Every connection, one dict each (operators)."""
        return await (await self._ready()).get_connections()

    async def get_gateway_stats(self) -> dict[str, dict[str, Any]]:
        """``{gateway: counters}`` (operators)."""
        return await (await self._ready()).get_gateway_stats()
