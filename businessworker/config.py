"""The BusinessWorker declaration: plain, validated at construction, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field

from pygatewayworker.register.config import ConfigError, check_link_timing, normalize_addresses

__all__ = ["BusinessWorker", "CALLBACK_MODES"]

CALLBACK_MODES = ("thread", "inline")
"""Values of ``BusinessWorker.callbacks``."""


@dataclass(slots=True)
class BusinessWorker:
    """``count`` worker processes running the app's Events class.

    ``events`` is an import string ``"package.module:Name"`` (e.g.
    ``"apps.chat.Events:Events"``), imported only inside worker processes so that the
    supervisor never runs user code and ``reload`` loads the current code. In a start
    file, ``".Events:Events"`` (leading dot) names ``Events.py`` in the app's own
    folder, wherever the apps folder is.
    ``query_timeout`` bounds every query per gateway (seconds).
    ``gateway_lost_timeout``: a gateway this worker cannot reach for that long
    (seconds; 0: never) is taken for dead and ``on_close`` runs for the clients it
    had here (``businessworker.orphans``).
    ``drain_timeout``: seconds a worker that leaves gracefully (the old worker of a
    ``reload``, or ``stop -g``) keeps running the events it already received, once
    the gateways stopped sending it new ones; what is still running or queued then
    is dropped and logged. Raise it above your slowest callback.
    ``callbacks``: where plain-function (not ``async def``) callbacks run.
    ``"thread"`` (the default): in a pool of ``threads`` threads of the worker
    process, off the event loop, so blocking code (the Django ORM, ``requests``, a
    database driver) is safe and holds up only its own client; queries are blocking
    calls there. ``"inline"``: on the event loop, in the link reader, the fastest way
    for code that never blocks (a blocking call there stalls every client of the
    worker). Coroutine callbacks run on the event loop in both modes
    (``businessworker.dispatch``, ``businessworker.threads``).
    ``slow_callback``: a callback still running after that many seconds gets one
    log line naming it and its client (0: never).
    """

    events: str = ""
    name: str = "businessworker"
    count: int = 2
    register: str | list[str] | tuple[str, ...] = "127.0.0.1:1238"
    secret: str = ""
    query_timeout: float = 5.0
    keepalive_interval: float = 10.0
    link_timeout: float = 30.0
    gateway_lost_timeout: float = 60.0
    drain_timeout: float = 30.0
    callbacks: str = "thread"
    threads: int = 8
    slow_callback: float = 1.0
    app: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        module, sep, attr = self.events.partition(":")
        if not sep or not module or not attr.isidentifier():
            raise ConfigError(
                f"BusinessWorker events must be an import string 'package.module:Name', "
                f"got {self.events!r}"
            )
        if not isinstance(self.count, int) or self.count < 1:
            raise ConfigError(f"BusinessWorker count must be an int >= 1, got {self.count!r}")
        if self.query_timeout <= 0:
            raise ConfigError("BusinessWorker query_timeout must be > 0")
        check_link_timing(self.keepalive_interval, self.link_timeout, "BusinessWorker")
        if self.gateway_lost_timeout < 0:
            raise ConfigError("BusinessWorker gateway_lost_timeout must be >= 0 (0: never)")
        if not isinstance(self.drain_timeout, int | float) or not self.drain_timeout > 0:
            raise ConfigError(
                f"BusinessWorker drain_timeout must be a number of seconds > 0, "
                f"got {self.drain_timeout!r}"
            )
        if self.callbacks not in CALLBACK_MODES:
            raise ConfigError(
                f"BusinessWorker callbacks must be one of {', '.join(map(repr, CALLBACK_MODES))}, "
                f"got {self.callbacks!r}"
            )
        if not isinstance(self.threads, int) or isinstance(self.threads, bool) or self.threads < 1:
            raise ConfigError(f"BusinessWorker threads must be an int >= 1, got {self.threads!r}")
        if not isinstance(self.slow_callback, int | float) or not self.slow_callback >= 0:
            raise ConfigError(
                f"BusinessWorker slow_callback must be a number of seconds >= 0 (0: never), "
                f"got {self.slow_callback!r}"
            )
        self.register = normalize_addresses(self.register, "BusinessWorker register")

    @property
    def registers(self) -> tuple[str, ...]:
        """The register addresses, normalised."""
        return tuple(self.register)
