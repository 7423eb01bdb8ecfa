"""Keeping one link per gateway: discovery, linking, re-linking.

How this works
--------------
A :class:`LinkPool` learns the gateway addresses either from a fixed list or from
the registers (``register.discovery.GatewayDirectoryWatcher``). For every listed
address it runs one *keeper* task: connect, wait for the link to close, connect
again (at once the first time, then every ``retry_interval`` while the address is
still listed). A keeper whose address is no longer listed ends when its link
closes; a live link is never closed just because a register forgot it, so a
register restart cannot cut traffic.

:attr:`LinkPool.links` maps each open link's gateway address (``lan_ip:port`` from
``WELCOME``, the address client_ids encode) to the link. It is the mapping a
:class:`~gatewayclient.api.GatewayAPI` works over; the pool updates it from the
links' ``on_open``/``on_close`` callbacks, synchronously, so the API never sees a
closed link for long and sees a new one before its first event is handled.

Business workers (role ``"worker"``) and push clients (role ``"client"``) both use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from pygatewayworker.gatewayclient.errors import LinkError, NoRegister
from pygatewayworker.gatewayclient.link import EventCallback, GatewayLink, LinkCallback
from pygatewayworker.register.config import ConfigError

__all__ = ["LinkPool", "DirectoryWatcher", "WatcherFactory"]

logger = logging.getLogger("gatewayclient")

WARN_EVERY = 60
"""While a gateway stays unreachable, log a warning every this many failed attempts."""


class DirectoryWatcher(Protocol):
    """What the pool needs from ``register.discovery.GatewayDirectoryWatcher``."""

    @property
    def addresses(self) -> frozenset[str]: ...

    @property
    def last_error(self) -> str | None: ...

    async def start(self) -> None: ...

    async def wait_first_list(self, timeout: float) -> bool: ...

    async def close(self) -> None: ...


WatcherFactory = Callable[
    [tuple[str, ...], str, Callable[[frozenset[str]], None]], DirectoryWatcher
]


def default_watcher(
    registers: tuple[str, ...],
    secret: str,
    on_change: Callable[[frozenset[str]], None],
    keepalive: float = 10.0,
) -> DirectoryWatcher:
    """The real register client (imported here so a fixed gateway list needs none)."""
    from pygatewayworker.register.discovery import GatewayDirectoryWatcher

    watcher: DirectoryWatcher = GatewayDirectoryWatcher(
        registers, secret, on_change=on_change, keepalive=keepalive
    )
    return watcher


class LinkPool:
    """One link per listed gateway, kept up. See the module docstring."""

    def __init__(
        self,
        *,
        role: str,
        name: str,
        secret: str = "",
        registers: Iterable[str] = (),
        gateways: Iterable[str] | None = None,
        keepalive_interval: float = 10.0,
        link_timeout: float = 30.0,
        connect_timeout: float = 5.0,
        retry_interval: float = 1.0,
        on_event: EventCallback | None = None,
        on_leave_ack: LinkCallback | None = None,
        watcher_factory: WatcherFactory | None = None,
    ) -> None:
        self.role = role
        self.name = name
        self._secret = secret
        self.registers = tuple(registers)
        self._fixed = None if gateways is None else frozenset(gateways)
        if self._fixed is None and not self.registers:
            raise ValueError("a LinkPool needs register addresses or a fixed gateway list")
        self._link_args: dict[str, Any] = {
            "keepalive_interval": keepalive_interval,
            "link_timeout": link_timeout,
            "connect_timeout": connect_timeout,
        }
        self._retry = retry_interval
        self.on_event = on_event
        """Given to every new link (see ``GatewayLink``); set it before ``start()``."""
        self.on_leave_ack = on_leave_ack
        self.hooks: tuple[str, ...] = ()
        """App hooks announced in every link's ``HELLO`` (a worker's ``authenticate``)."""
        self.on_authenticate: EventCallback | None = None
        """Given to every new link: ``AUTHENTICATE`` packets (set it with ``hooks``)."""
        self._watcher_factory = watcher_factory or default_watcher
        self._watcher: DirectoryWatcher | None = None
        self.links: dict[str, GatewayLink] = {}
        """Open links by gateway address: the mapping the API uses."""
        self.paused: set[GatewayLink] = set()
        """Links whose transport is above its write high-water mark."""
        self.last_errors: dict[str, str] = {}
        """Listed address -> why its last link attempt failed (cleared on success)."""
        self._listed: frozenset[str] = frozenset()
        self._by_listed: dict[str, GatewayLink] = {}
        self._keepers: dict[str, asyncio.Task[None]] = {}
        self._every_link: set[GatewayLink] = set()
        self._waiters: list[asyncio.Future[None]] = []
        self._relinking = True
        self._closed = False

    # ---- lifecycle -----------------------------------------------------------------

    def unlinked(self) -> list[str]:
        """Listed gateways with no open link right now (for complete queries)."""
        by_listed = self._by_listed
        return [a for a in self._listed if a not in by_listed]

    @property
    def listed(self) -> frozenset[str]:
        """The gateway addresses currently listed (fixed list or registers)."""
        return self._listed

    @property
    def last_register_error(self) -> str | None:
        """The register client's last error (``None`` with a fixed gateway list)."""
        return None if self._watcher is None else self._watcher.last_error

    async def start(self) -> None:
        """Start discovery (or take the fixed list) and the keepers; return at once."""
        if self._fixed is not None:
            self._on_list(self._fixed)
            return
        if self._watcher is not None:
            return
        if self._watcher_factory is default_watcher:
            # the register learns our ping interval and drops us after 3 silent ones
            self._watcher = default_watcher(
                self.registers,
                self._secret,
                self._on_list,
                keepalive=self._link_args["keepalive_interval"],
            )
        else:
            self._watcher = self._watcher_factory(self.registers, self._secret, self._on_list)
        await self._watcher.start()

    async def wait_discovered(self, timeout: float) -> None:
        """Wait for the first gateway list; raise :class:`NoRegister` if none came."""
        if self._watcher is None:
            return
        if not await self._watcher.wait_first_list(timeout):
            reason = self._watcher.last_error or f"no answer within {timeout:g} s"
            raise NoRegister(
                f"no register answered ({', '.join(self.registers)}): {reason}; "
                "check that the register runs and that the secret matches"
            )
        self._on_list(self._watcher.addresses)

    async def wait_linked(self, timeout: float) -> list[str]:
        """Wait until every listed gateway is linked, at most ``timeout`` seconds;
        return the listed addresses still not linked (empty when all are)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            unlinked = [a for a in sorted(self._listed) if a not in self._by_listed]
            remaining = deadline - loop.time()
            if not unlinked or remaining <= 0:
                return unlinked
            await self._wait_change(remaining)

    async def wait_any_link(self, timeout: float) -> bool:
        """Wait until at least one link is open; ``False`` after ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.links:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            await self._wait_change(remaining)
        return True

    def stop_relinking(self) -> None:
        """Keep the open links but make no new ones (a leaving worker)."""
        self._relinking = False
        for task in self._keepers.values():
            task.cancel()

    async def close(self, timeout: float = 5.0) -> None:
        """Stop discovery and keepers, flush and close every link."""
        if self._closed:
            return
        self._closed = True
        self.stop_relinking()
        keepers = list(self._keepers.values())
        for task in keepers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._watcher is not None:
            await self._watcher.close()
        links = list(self._every_link)
        for link in links:
            link.close("closed by us: shutting down")
        if links:
            await asyncio.wait(
                [asyncio.ensure_future(link.wait_closed()) for link in links], timeout=timeout
            )
        for link in links:
            link.abort("closed by us: shutting down")

    def flush(self) -> None:
        """Hand every queued packet of every link to its transport now."""
        for link in self.links.values():
            link.flush()

    async def drain(self) -> None:
        """Wait until no link is above its write high-water mark."""
        for link in list(self.paused):
            await link.drain()

    # ---- list changes and keepers --------------------------------------------------

    def _on_list(self, addresses: frozenset[str]) -> None:
        if self._closed:
            return
        added = addresses - self._listed
        removed = self._listed - addresses
        self._listed = frozenset(addresses)
        if added or removed:
            logger.info(
                "%s: gateways listed: %s", self.name, ", ".join(sorted(addresses)) or "none"
            )
        if self._relinking:
            for address in sorted(added):
                if address not in self._keepers:
                    self._keepers[address] = asyncio.create_task(
                        self._keep(address), name=f"link-keeper-{address}"
                    )
        self._notify()

    async def _keep(self, address: str) -> None:
        failures = 0
        try:
            while self._relinking and address in self._listed:
                try:
                    link = self._new_link(address)
                except (ConfigError, ValueError) as exc:
                    logger.error("%s: cannot use gateway address %r: %s", self.name, address, exc)
                    return
                try:
                    await link.connect()
                except LinkError as exc:
                    failures += 1
                    self.last_errors[address] = str(exc)
                    self._notify()
                    if failures % WARN_EVERY == 1:
                        logger.warning("%s: %s (retrying every %g s)", self.name, exc, self._retry)
                    await asyncio.sleep(self._retry)
                    continue
                if failures:
                    logger.info("%s: linked to gateway %s again", self.name, address)
                failures = 0
                self.last_errors.pop(address, None)
                opened_at = asyncio.get_running_loop().time()
                await link.wait_closed()
                if asyncio.get_running_loop().time() - opened_at < self._retry:
                    await asyncio.sleep(self._retry)  # no tight loop on a flapping gateway
        finally:
            if self._keepers.get(address) is asyncio.current_task():
                del self._keepers[address]

    def _new_link(self, address: str) -> GatewayLink:
        link = GatewayLink(
            address,
            role=self.role,
            name=self.name,
            secret=self._secret,
            on_event=self.on_event,
            on_leave_ack=self.on_leave_ack,
            on_open=lambda opened: self._opened(address, opened),
            on_close=lambda closed: self._lost(address, closed),
            on_flow=self._flow,
            hooks=self.hooks,
            on_authenticate=self.on_authenticate,
            **self._link_args,
        )
        self._every_link.add(link)
        return link

    def _opened(self, address: str, link: GatewayLink) -> None:
        self._by_listed[address] = link
        previous = self.links.get(link.gateway_address)
        if previous is not None and previous is not link:
            logger.warning(
                "%s: gateways %s and %s both say they are %s",
                self.name,
                previous.address,
                link.address,
                link.gateway_address,
            )
        self.links[link.gateway_address] = link
        self._notify()

    def _lost(self, address: str, link: GatewayLink) -> None:
        self._every_link.discard(link)
        self.paused.discard(link)
        if self._by_listed.get(address) is link:
            del self._by_listed[address]
        if self.links.get(link.gateway_address) is link:
            del self.links[link.gateway_address]
        self._notify()

    def _flow(self, link: GatewayLink, paused: bool) -> None:
        if paused:
            self.paused.add(link)
        else:
            self.paused.discard(link)

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _wait_change(self, timeout: float) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waiter, timeout)
