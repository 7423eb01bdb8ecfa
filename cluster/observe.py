"""The metrics listener's declaration: plain, validated at construction, no I/O.

Unlike the other roles it is not declared in a start file: the command line builds
it from ``--metrics-listen`` / ``GW_METRICS_LISTEN`` (one listener per host, whatever
the apps) and the master runs it as a process of its own, whose code
(``pygatewayworker.metrics``, above the supervisor: it reads what ``cluster`` writes)
is named by :data:`RUNTIME` and imported only in that child.
"""

from __future__ import annotations

from dataclasses import dataclass

from pygatewayworker.register.config import ConfigError, parse_address

__all__ = ["Metrics", "parse_metrics_listen", "RUNTIME", "APP"]

RUNTIME = "pygatewayworker.metrics.server:serve"
APP = "gatewayworker"
"""The ``app`` of the metrics process (its name is ``gatewayworker.metrics.0``)."""


def parse_metrics_listen(value: str) -> str:
    """``"9100"`` or ``":9100"`` -> ``"127.0.0.1:9100"`` (loopback unless a host is
    given); ``"0.0.0.0:9100"`` stays; port 0 binds any free port (``status`` and
    ``state.json`` show the one bound). Raises :class:`ConfigError` with the fix."""
    text = value.strip()
    if text.isdigit():
        text = f"127.0.0.1:{text}"
    elif text.startswith(":"):
        text = f"127.0.0.1{text}"
    try:
        host, port = parse_address(text, "--metrics-listen")
    except ConfigError as exc:
        raise ConfigError(f"{exc} (e.g. --metrics-listen 9100 or 127.0.0.1:9100)") from None
    return f"{host}:{port}"


@dataclass(slots=True)
class Metrics:
    """The metrics, health and operator-page listener of this host.

    ``listen``: ``host:port`` (see :func:`parse_metrics_listen`). ``token``: the
    operator page's token (``--metrics-token`` / ``GW_METRICS_TOKEN``); without one
    the page is off. ``/metrics``, ``/healthz`` and ``/readyz`` need no token (bind
    loopback or firewall the port). ``history_seconds``: how far back the page's
    charts go.
    """

    listen: str = "127.0.0.1:9100"
    token: str = ""
    history_seconds: float = 600.0
    name: str = "metrics"
    count: int = 1
    app: str = APP

    def __post_init__(self) -> None:
        self.listen = parse_metrics_listen(self.listen)
        if self.token and (
            not (self.token.isascii() and self.token.isprintable()) or " " in self.token
        ):
            raise ConfigError("--metrics-token must be printable ASCII without spaces")
        if self.history_seconds < 10:
            raise ConfigError("Metrics history_seconds must be >= 10")
