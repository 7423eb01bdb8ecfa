"""The register's clients: gateways announce themselves, workers and push clients
learn the gateway list.

How this works
--------------
Both clients keep one background task per listed register. The task connects, sends
its handshake line, then reads; it sends a ``ping`` every ``keepalive`` seconds and
treats a register silent for three keep-alive intervals as gone. When the connection
is refused, dropped, or rejected, the task waits ``retry_interval`` (1 s) and starts
again, forever, until ``close()``. Only the first failure of a register and its
recovery are logged, not every retry.

- :class:`GatewayAnnouncer` (gateway side) sends ``gateway_connect`` followed at once
  by a ``ping``. The register sends no acknowledgement for ``gateway_connect``, but it
  handles lines in order and closes after an ``error``, so the ``pong`` answering that
  first ping means the announcement was accepted.
- :class:`GatewayDirectoryWatcher` (worker and push client side) sends
  ``worker_connect`` and keeps, per register, the last list that register sent. Its
  :attr:`~GatewayDirectoryWatcher.addresses` is the union over the registers
  connected now; when none is connected the last union is kept, so existing traffic
  keeps flowing while the registers are down.

A register that answers ``error`` (wrong secret) refuses us; when every register
refuses, ``wait_announced`` / ``wait_first_list`` return ``False`` at once instead of
waiting for their timeout, and ``last_error`` says why, e.g. ``"register
127.0.0.1:1238 refused us: wrong secret key"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from pygatewayworker.register import lines
from pygatewayworker.register.config import parse_address

__all__ = ["GatewayAnnouncer", "GatewayDirectoryWatcher"]

logger = logging.getLogger("register")

CONNECT_TIMEOUT = 5.0
"""Seconds to wait for a TCP connection to a register."""
SILENCE_FACTOR = 3
"""A register silent for this many keep-alive intervals is considered gone."""


class _Refused(Exception):
    """The register answered with an error document."""


class _RegisterClient:
    """What both clients share: one reconnecting conversation per register.

    Subclasses provide :meth:`_hello` (the handshake line), ``on_<event>`` handlers
    for the documents a register sends, and :meth:`_session_ended`.
    """

    def __init__(
        self,
        registers: tuple[str, ...],
        secret: str,
        keepalive: float = 10.0,
        retry_interval: float = 1.0,
    ) -> None:
        if not registers:
            raise ValueError("at least one register address is required")
        if keepalive <= 0 or retry_interval <= 0:
            raise ValueError("keepalive and retry_interval must be > 0")
        self.registers = tuple(dict.fromkeys(registers))
        self._targets = {reg: parse_address(reg, "register address") for reg in self.registers}
        self._secret = secret
        self._keepalive = keepalive
        self._retry = retry_interval
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._failing: dict[str, str] = {}  # register -> the failure reason last logged
        self._ever_ok: set[str] = set()
        self._refused: set[str] = set()  # registers refusing us since their last success
        self._all_refused = asyncio.Event()
        self.last_error: str | None = None
        """The latest failure, e.g. ``"register 127.0.0.1:1238 refused us: wrong
        secret key"``; ``None`` while every register is fine."""

    # ---- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Start one background task per register and return at once."""
        if self._tasks or self._closed:
            return
        self._tasks = [
            asyncio.create_task(self._run(reg), name=f"register-client-{reg}")
            for reg in self.registers
        ]

    async def close(self) -> None:
        """Stop every task and close every register connection."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    # ---- one register --------------------------------------------------------------

    async def _run(self, reg: str) -> None:
        while not self._closed:
            try:
                await self._session(reg)
            except _Refused as exc:
                self._note_failure(reg, f"refused us: {exc}", refused=True)
            except lines.LineError as exc:
                self._note_failure(reg, f"sent garbage: {exc}")
            except (OSError, TimeoutError, EOFError) as exc:
                self._note_failure(reg, _describe(exc))
            except Exception:  # a bug must not end discovery for good
                logger.exception("register %s: unexpected error; retrying", reg)
            await asyncio.sleep(self._retry)

    async def _session(self, reg: str) -> None:
        host, port = self._targets[reg]
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancel
        # that arrives as the inner call completes, and close() would wait forever.
        async with asyncio.timeout(CONNECT_TIMEOUT):
            reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(self._hello())
            await self._converse(reg, reader, writer)
        finally:
            self._session_ended(reg)
            writer.close()

    async def _converse(
        self, reg: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Read documents until the connection ends; ping every keep-alive."""
        loop = asyncio.get_running_loop()
        decoder = lines.LineDecoder()
        keepalive = self._keepalive
        last_heard = loop.time()
        next_ping = last_heard + keepalive
        while True:
            now = loop.time()
            if now - last_heard > SILENCE_FACTOR * keepalive:
                raise EOFError(f"silent for {now - last_heard:.0f} s")
            if now >= next_ping:
                writer.write(lines.PING)
                next_ping = now + keepalive
            try:
                async with asyncio.timeout(next_ping - now):  # not wait_for: see _session
                    data = await reader.read(65536)
            except TimeoutError:
                # Woken late: our loop was stalled (a blocking callback, a stopped
                # process), and what the register sent meanwhile may still be unread
                # in the socket. Our stall is not its silence.
                woken = loop.time()
                last_heard = min(woken, last_heard + max(0.0, woken - next_ping))
                continue
            if not data:
                raise EOFError("closed the connection")
            last_heard = loop.time()
            for doc in decoder.feed(data):
                self._dispatch(reg, doc)

    def _dispatch(self, reg: str, doc: dict[str, Any]) -> None:
        event = lines.event_of(doc)
        handler = getattr(self, "on_" + event, None)
        if handler is None:  # a newer register may say more; not an error
            logger.debug("register %s sent unknown event %s", reg, lines.shorten(event))
            return
        handler(reg, doc)

    def on_pong(self, reg: str, doc: dict[str, Any]) -> None:
        """Keep-alive answer."""

    def on_error(self, reg: str, doc: dict[str, Any]) -> None:
        """The register refuses us; it closes the connection after this."""
        raise _Refused(lines.check_error(doc))

    # ---- hooks ---------------------------------------------------------------------

    def _hello(self) -> bytes:
        raise NotImplementedError

    def _session_ended(self, reg: str) -> None:
        """The connection to ``reg`` is over (whatever the reason)."""

    # ---- failure and recovery bookkeeping ------------------------------------------

    def _note_failure(self, reg: str, reason: str, refused: bool = False) -> None:
        if self._closed:
            return
        self.last_error = f"register {reg} {reason}"
        if refused:
            self._refused.add(reg)
            if len(self._refused) == len(self.registers):
                self._all_refused.set()
        # Log the first failure, then stay quiet until recovery, except when the
        # register starts refusing us for a new reason (someone changed a secret).
        logged = self._failing.get(reg)
        if logged is None or (refused and reason != logged):
            log = logger.error if refused else logger.warning
            log("%s; retrying every %g s", self.last_error, self._retry)
            self._failing[reg] = reason

    def _note_success(self, reg: str, what: str) -> None:
        """``reg`` accepted us: log the first time and the recovery, once."""
        if reg in self._failing:
            del self._failing[reg]
            logger.info("register %s is back: %s", reg, what)
        elif reg not in self._ever_ok:
            logger.info("register %s: %s", reg, what)
        self._ever_ok.add(reg)
        self._refused.discard(reg)
        self._all_refused.clear()
        if not self._failing:
            self.last_error = None

    async def _wait_for(self, ok: asyncio.Event, timeout: float) -> bool:
        """Wait until ``ok`` is set, every register refused us, or ``timeout``."""
        if ok.is_set():
            return True
        waiters = [
            asyncio.ensure_future(ok.wait()),
            asyncio.ensure_future(self._all_refused.wait()),
        ]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        return ok.is_set()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, EOFError):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return "unreachable (connect timed out)"
    if isinstance(exc, ConnectionRefusedError):
        return "unreachable (connection refused)"
    return f"connection failed ({exc.__class__.__name__}: {exc})"


class GatewayAnnouncer(_RegisterClient):
    """Keeps a gateway's internal ``address`` listed by every register.

    ``await start()`` returns at once; :attr:`connected` counts the registers holding
    the announcement now; ``await wait_announced(timeout)`` is ``True`` once one of
    them does.
    """

    def __init__(
        self,
        registers: tuple[str, ...],
        secret: str,
        address: str,
        keepalive: float = 10.0,
        retry_interval: float = 1.0,
    ) -> None:
        super().__init__(registers, secret, keepalive, retry_interval)
        self.address = address
        self._line = lines.gateway_connect(address, secret, keepalive)
        self._holding: set[str] = set()
        self._announced = asyncio.Event()

    @property
    def connected(self) -> int:
        """How many registers currently hold our announcement."""
        return len(self._holding)

    async def wait_announced(self, timeout: float) -> bool:
        """``True`` once at least one register accepted us; ``False`` after
        ``timeout``, or at once when every register refused us (see
        :attr:`last_error`)."""
        return await self._wait_for(self._announced, timeout)

    def _hello(self) -> bytes:
        return self._line + lines.PING

    def on_pong(self, reg: str, doc: dict[str, Any]) -> None:
        """The first pong acknowledges the announcement."""
        if reg not in self._holding:
            self._holding.add(reg)
            self._announced.set()
            self._note_success(reg, f"announced {self.address}")

    def _session_ended(self, reg: str) -> None:
        self._holding.discard(reg)
        if not self._holding:
            self._announced.clear()

    async def close(self) -> None:
        """Withdraw from every register (closing the connections unlists us)."""
        await super().close()
        self._holding.clear()
        self._announced.clear()


class GatewayDirectoryWatcher(_RegisterClient):
    """Knows the gateway addresses: the union of what every connected register lists.

    ``on_change(addresses)`` is called whenever :attr:`addresses` changes. When no
    register is connected, the last union is kept.
    """

    def __init__(
        self,
        registers: tuple[str, ...],
        secret: str,
        on_change: Callable[[frozenset[str]], None] | None = None,
        keepalive: float = 10.0,
        retry_interval: float = 1.0,
    ) -> None:
        super().__init__(registers, secret, keepalive, retry_interval)
        self._on_change = on_change
        self._line = lines.worker_connect(secret, keepalive)
        self._lists: dict[str, frozenset[str]] = {}  # connected register -> its last list
        self._addresses: frozenset[str] = frozenset()
        self._first_list = asyncio.Event()

    @property
    def addresses(self) -> frozenset[str]:
        """The known gateway addresses (``"ip:port"``)."""
        return self._addresses

    @property
    def registers_connected(self) -> int:
        """How many registers are connected and have sent their list."""
        return len(self._lists)

    async def wait_first_list(self, timeout: float) -> bool:
        """``True`` once a register has sent its list; ``False`` after ``timeout``, or
        at once when every register refused us (see :attr:`last_error`)."""
        return await self._wait_for(self._first_list, timeout)

    def _hello(self) -> bytes:
        return self._line

    def on_broadcast_addresses(self, reg: str, doc: dict[str, Any]) -> None:
        """A register sent its whole list."""
        addresses = lines.check_broadcast_addresses(doc)
        if reg not in self._lists:
            self._note_success(reg, f"subscribed ({len(addresses)} gateways listed)")
        self._lists[reg] = addresses
        self._first_list.set()
        self._merge()

    def _session_ended(self, reg: str) -> None:
        if self._lists.pop(reg, None) is not None and not self._closed:
            self._merge()

    def _merge(self) -> None:
        if not self._lists:
            return  # no register connected: keep the last union
        union = frozenset().union(*self._lists.values())
        if union == self._addresses:
            return
        self._addresses = union
        logger.debug("gateway list is now %s", sorted(union))
        if self._on_change is not None:
            try:
                self._on_change(union)
            except Exception:
                logger.exception("gateway list on_change callback failed")
