"""The Prometheus collector: every child's stats file, as metrics, at scrape time.

How this works
--------------
Each child writes its counters to ``run/stats/<name>.json`` every second; the master
writes ``run/state.json``. On every scrape :class:`ClusterCollector` reads both (a
:class:`~metrics.view.ClusterView`) and :func:`families` turns them into metric
families of ``prometheus_client``, which writes the exposition text. Nothing is
cached: a scrape shows what the files say now (at most a second old).

The tables below say which stats key of which role becomes which metric. A key a
child does not report (an older version) is skipped; a labelled key (a dict such as
``closed_by_reason``) gives one sample per entry. Every metric carries the labels
``app``, ``role`` and ``index`` of its process and at most one more from a small
fixed set (``reason``, ``status``, ``kind``, ``state``, ``verb``, ``outcome``), and
label values from a stats dict are capped (:data:`MAX_LABEL_VALUES`,
:data:`MAX_LABEL_LENGTH`), so the number of series stays bounded whatever a child
reports: never a client_id, uid or group.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from pygatewayworker.metrics.view import MASTER_LABELS, ClusterView, process_labels

__all__ = ["ClusterCollector", "families", "PREFIX", "MAX_LABEL_VALUES", "MAX_LABEL_LENGTH"]

PREFIX = "gatewayworker_"
LABELS = ("app", "role", "index")
MAX_LABEL_VALUES = 32
"""At most this many values of the extra label per process and metric."""
MAX_LABEL_LENGTH = 40

COUNTER, GAUGE = "counter", "gauge"


@dataclass(frozen=True, slots=True)
class Spec:
    """Stats key ``key`` of role ``role`` becomes metric ``name`` (prefixed).

    ``label``: the key holds a dict ``{value: number}`` and ``label`` names its keys;
    ``nested``: a dict of dicts (``{verb: {status: n}}``), labels ``label`` and
    ``nested``; ``histogram``: a :mod:`runtime.histogram` snapshot."""

    role: str
    key: str
    name: str
    kind: str
    help: str
    label: str = ""
    nested: str = ""
    histogram: bool = False


SPECS: tuple[Spec, ...] = (
    # ---- gateways
    Spec("gateway", "connections", "gateway_connections", GAUGE, "WebSocket clients connected."),
    Spec(
        "gateway",
        "connections_opened",
        "gateway_connections_opened",
        COUNTER,
        "WebSocket handshakes completed (connections opened).",
    ),
    Spec(
        "gateway",
        "closed_by_reason",
        "gateway_connections_closed",
        COUNTER,
        "WebSocket connections closed, by reason: client_close, client_gone, "
        "heartbeat_timeout, send_buffer_limit, send_timeout, size_limit, rate_limit, "
        "protocol_error, "
        "app_close, shutdown, gateway_lost.",
        label="reason",
    ),
    Spec(
        "gateway",
        "handshake_failures",
        "gateway_handshake_failures",
        COUNTER,
        "HTTP upgrade requests refused, by the HTTP status answered.",
        label="status",
    ),
    Spec(
        "gateway",
        "handshakes_refused",
        "gateway_handshakes_refused",
        COUNTER,
        "Upgrade requests refused before 101 by the admission checks or the authenticate "
        "hook, by reason: handshake_rate, ip_limit, origin, token, auth, auth_unavailable.",
        label="reason",
    ),
    Spec("gateway", "messages_in", "gateway_messages_received", COUNTER, "Client messages in."),
    Spec("gateway", "messages_out", "gateway_messages_sent", COUNTER, "Frames sent to clients."),
    Spec("gateway", "bytes_in", "gateway_received_bytes", COUNTER, "Bytes read from clients."),
    Spec("gateway", "bytes_out", "gateway_sent_bytes", COUNTER, "Bytes written to clients."),
    Spec(
        "gateway",
        "broadcast_deliveries",
        "gateway_broadcast_deliveries",
        COUNTER,
        "Frames delivered by send_to_all/uid/group (one per recipient).",
    ),
    Spec(
        "gateway",
        "send_failures",
        "gateway_slow_consumers",
        COUNTER,
        "Slow consumers closed (1008): send buffer over send_buffer_limit, or not "
        "drained for send_timeout.",
    ),
    Spec(
        "gateway",
        "events_lost",
        "gateway_events_lost",
        COUNTER,
        "Client events sent to a worker whose link was then dropped for silence "
        "(at most that many lost).",
    ),
    Spec(
        "gateway",
        "send_buffer_bytes",
        "gateway_send_buffer_bytes",
        GAUGE,
        "Bytes waiting in the clients' send buffers.",
    ),
    Spec(
        "gateway",
        "send_buffer_max_bytes",
        "gateway_send_buffer_max_bytes",
        GAUGE,
        "The largest send buffer of one client.",
    ),
    Spec(
        "gateway",
        "pending_events",
        "gateway_held_events",
        GAUGE,
        "Client events held while no business worker can take them.",
    ),
    Spec(
        "gateway",
        "gc_full_collections",
        "gateway_gc_full_collections",
        COUNTER,
        "Full cycle collections run because the gateway's memory doubled (runtime/gcfreeze.py).",
    ),
    Spec(
        "gateway",
        "gc_reclaimed_objects",
        "gateway_gc_reclaimed_objects",
        COUNTER,
        "Objects found in garbage cycles by those full collections (0 when nothing leaks).",
    ),
    Spec("gateway", "workers", "gateway_linked_workers", GAUGE, "Business workers linked."),
    Spec("gateway", "clients", "gateway_push_clients", GAUGE, "Push clients linked."),
    # ---- business workers
    Spec(
        "businessworker",
        "events_in",
        "worker_events",
        COUNTER,
        "Client events received, by kind.",
        label="kind",
    ),
    Spec(
        "businessworker",
        "callback_seconds",
        "worker_callback_duration_seconds",
        "",
        "Duration of Events callbacks.",
        histogram=True,
    ),
    Spec(
        "businessworker",
        "callback_errors",
        "worker_callback_errors",
        COUNTER,
        "Events callbacks that raised (and session write-backs that failed).",
    ),
    Spec(
        "businessworker",
        "slow_callbacks",
        "worker_slow_callbacks",
        COUNTER,
        "Events callbacks still running after slow_callback seconds (the watchdog's reports).",
    ),
    Spec(
        "businessworker",
        "rejected_connects",
        "worker_rejected_connects",
        COUNTER,
        "Clients closed from their own on_connect/on_websocket_connect (auth rejected).",
    ),
    Spec(
        "businessworker",
        "queued_events",
        "worker_queued_events",
        GAUGE,
        "Events waiting behind a running event of the same client.",
    ),
    Spec(
        "businessworker",
        "clients",
        "worker_busy_clients",
        GAUGE,
        "Clients with an event running or queued.",
    ),
    Spec(
        "businessworker",
        "threads",
        "worker_callback_threads",
        GAUGE,
        "Callback threads of the worker (thread mode; 0 when callbacks run inline).",
    ),
    Spec(
        "businessworker",
        "threads_busy",
        "worker_callback_threads_busy",
        GAUGE,
        "Callback threads running a callback now.",
    ),
    Spec(
        "businessworker",
        "threads_queued",
        "worker_callback_threads_queued",
        GAUGE,
        "Callbacks waiting for a free callback thread.",
    ),
    Spec(
        "businessworker",
        "authenticate",
        "worker_authenticate",
        COUNTER,
        "Runs of the app's authenticate hook, by outcome: accepted, rejected, failed.",
        label="outcome",
    ),
    Spec(
        "businessworker",
        "gateway_links",
        "worker_gateway_links",
        GAUGE,
        "Listed gateways by the state of the link to each.",
        label="state",
    ),
    Spec(
        "businessworker",
        "messages_out",
        "worker_packets_sent",
        COUNTER,
        "Packets sent to gateways by the API and session write-backs.",
    ),
    Spec(
        "businessworker",
        "orphan_closes",
        "worker_orphan_closes",
        COUNTER,
        "on_close run for clients of a gateway that died.",
    ),
    # ---- registers
    Spec(
        "register",
        "peers",
        "register_peers",
        GAUGE,
        "Connections to the register, by kind.",
        label="kind",
    ),
    Spec("register", "gateways", "register_gateways_listed", GAUGE, "Gateway addresses listed."),
    Spec(
        "register",
        "rejected",
        "register_rejected",
        COUNTER,
        "Connections refused (wrong secret, garbage, silence).",
    ),
    # ---- push API
    Spec(
        "pushapi",
        "requests_by",
        "pushapi_requests",
        COUNTER,
        "HTTP push API requests answered, by verb and status.",
        label="verb",
        nested="status",
    ),
    Spec(
        "pushapi",
        "request_seconds",
        "pushapi_request_duration_seconds",
        "",
        "Push API request duration (head read to answer written).",
        histogram=True,
    ),
    Spec("pushapi", "connections", "pushapi_connections", GAUGE, "Open HTTP connections."),
    Spec("pushapi", "gateways", "pushapi_gateways", GAUGE, "Gateways the push API knows."),
)


class ClusterCollector(Collector):
    """A ``prometheus_client`` collector over the run directory (see the module doc)."""

    def __init__(self, read_view: Callable[[], ClusterView]) -> None:
        self._read_view = read_view

    def collect(self) -> Iterator[Metric]:
        yield from families(self._read_view())


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _label_value(value: Any) -> str:
    return str(value)[:MAX_LABEL_LENGTH]


def _bounded(items: Iterable[tuple[Any, Any]]) -> list[tuple[str, Any]]:
    return [(_label_value(k), v) for k, v in list(items)[:MAX_LABEL_VALUES]]


class _Families:
    """The families of one scrape, created on first use, in a stable order."""

    def __init__(self) -> None:
        self._by_name: dict[str, Metric] = {}

    def get(self, name: str, kind: str, help: str, labels: Iterable[str]) -> Any:
        """The family ``name`` (a Counter/Gauge/HistogramMetricFamily)."""
        family = self._by_name.get(name)
        if family is None:
            full, names = PREFIX + name, [*LABELS, *labels]
            if kind == COUNTER:
                family = CounterMetricFamily(full, help, labels=names)
            elif kind == GAUGE:
                family = GaugeMetricFamily(full, help, labels=names)
            else:
                family = HistogramMetricFamily(full, help, labels=names)
            self._by_name[name] = family
        return family

    def add(self, name: str, kind: str, help: str, labels: dict[str, str], value: Any) -> None:
        number = _number(value)
        if number is not None:
            extra = [k for k in labels if k not in LABELS]
            self.get(name, kind, help, extra).add_metric(list(labels.values()), number)

    def all(self) -> list[Metric]:
        return list(self._by_name.values())


def families(view: ClusterView) -> list[Metric]:
    """Every metric family of the cluster as ``view`` shows it."""
    out = _Families()
    _master(out, view)
    for proc in view.processes:
        labels = process_labels(proc)
        out.add("up", GAUGE, UP_HELP, labels, 1 if proc.get("status") == "running" else 0)
        out.add("process_restarts", COUNTER, RESTARTS_HELP, labels, proc.get("restarts", 0))
        snap = view.stats_of(proc)
        if not snap:
            continue
        out.add("process_resident_memory_bytes", GAUGE, RSS_HELP, labels, snap.get("rss"))
        out.add("process_start_time_seconds", GAUGE, START_HELP, labels, snap.get("started_at"))
        for key, name, help in LOOP_LAG:
            lag = _number(snap.get(key))
            if lag is not None:
                out.add(name, GAUGE, help, labels, lag / 1000)
        for spec in SPECS:
            if spec.role == labels["role"] and spec.key in snap:
                _add_spec(out, spec, labels, snap[spec.key])
    return out.all()


UP_HELP = "1 when the process of this slot runs and reported ready, else 0."
RESTARTS_HELP = "Times the master respawned this slot's process after it died."
RSS_HELP = "Resident memory of the process."
START_HELP = "When the process started (Unix time)."
LOOP_LAG = (
    (
        "loop_lag_max_ms",
        "process_loop_lag_seconds",
        "The longest the event loop was late to run a timer in the last stats interval "
        "(about 1 s): a stall by the process's own work, or a wait for a CPU.",
    ),
    (
        "loop_lag_own_max_ms",
        "process_loop_lag_own_seconds",
        "The same less the loop thread's wait for a CPU (Linux schedstat): what the "
        "process's own callbacks held the loop up.",
    ),
    (
        "loop_lag_peak_ms",
        "process_loop_lag_peak_seconds",
        "The longest event loop stall since the process started.",
    ),
)
"""Stats key (ms) -> metric (seconds) of the loop-lag probe every child runs."""


def _master(out: _Families, view: ClusterView) -> None:
    master = view.master
    if not master:
        return
    out.add("up", GAUGE, UP_HELP, MASTER_LABELS, 1 if master.get("phase") == "running" else 0)
    out.add("process_resident_memory_bytes", GAUGE, RSS_HELP, MASTER_LABELS, view.master_rss)
    out.add(
        "process_start_time_seconds", GAUGE, START_HELP, MASTER_LABELS, master.get("started_at")
    )
    generation = master.get("generation")
    out.add("generation", GAUGE, "Code generation of the workers.", MASTER_LABELS, generation)
    reloads = view.state.get("reloads")
    if isinstance(reloads, dict):
        for outcome in ("done", "failed"):
            out.add(
                "reloads",
                COUNTER,
                "Reloads of the business workers, by outcome.",
                {**MASTER_LABELS, "outcome": outcome},
                reloads.get(outcome, 0),
            )
    reload = view.state.get("reload", {})
    running = 1 if isinstance(reload, dict) and reload.get("state") == "running" else 0
    out.add("reload_in_progress", GAUGE, "1 while a reload runs.", MASTER_LABELS, running)


def _add_spec(out: _Families, spec: Spec, labels: dict[str, str], value: Any) -> None:
    if spec.histogram:
        _add_histogram(out, spec, labels, value)
    elif spec.nested and isinstance(value, dict):
        for outer, inner in _bounded(value.items()):
            if isinstance(inner, dict):
                for key, number in _bounded(inner.items()):
                    extra = {spec.label: outer, spec.nested: key}
                    out.add(spec.name, spec.kind, spec.help, {**labels, **extra}, number)
    elif spec.label and isinstance(value, dict):
        for key, number in _bounded(value.items()):
            out.add(spec.name, spec.kind, spec.help, {**labels, spec.label: key}, number)
    elif not spec.label:
        out.add(spec.name, spec.kind, spec.help, labels, value)


def _add_histogram(out: _Families, spec: Spec, labels: dict[str, str], value: Any) -> None:
    if not isinstance(value, dict):
        return
    bounds, counts = value.get("le"), value.get("counts")
    count, total = _number(value.get("count")), _number(value.get("sum"))
    if not isinstance(bounds, list) or not isinstance(counts, list) or count is None:
        return
    if len(bounds) != len(counts) or total is None:
        return
    buckets = [(floatToGoString(b), float(c)) for b, c in zip(bounds, counts, strict=True)]
    buckets.append(("+Inf", count))
    family = out.get(spec.name, "histogram", spec.help, [])
    assert isinstance(family, HistogramMetricFamily)
    family.add_metric(list(labels.values()), buckets, total)
