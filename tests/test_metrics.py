"""The metrics service's pure parts: the collector over a run directory's contents,
health and readiness, the operator page's data, the histogram, the listen option,
JSON log lines, and the HTTP routes (tokens, cookies) without sockets."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pygatewayworker.cluster.logs import LogPipe, LogSink
from pygatewayworker.cluster.observe import Metrics, parse_metrics_listen
from pygatewayworker.metrics.collector import MAX_LABEL_VALUES, ClusterCollector, families
from pygatewayworker.metrics.health import healthy, ready
from pygatewayworker.metrics.ops import History, ops_data
from pygatewayworker.metrics.server import COOKIE, MetricsServer, Request
from pygatewayworker.metrics.view import ClusterView
from pygatewayworker.register.config import ConfigError
from pygatewayworker.runtime.histogram import Histogram
from pygatewayworker.runtime.logs import JsonFormatter, raw_line_json

NOW = 1_700_000_000.0


def proc(name: str, role: str, index: int, pid: int, **extra: Any) -> dict[str, Any]:
    app = name.split(".")[0]
    base = {"name": name, "app": app, "role": role, "index": index, "pid": pid}
    base.update(status="running", restarts=0, last_exit="", started_at=NOW - 60, addresses={})
    base.update(extra)
    return base


def cluster_state() -> dict[str, Any]:
    return {
        "master": {"pid": 1, "phase": "running", "started_at": NOW - 100, "generation": 2},
        "reload": {"id": 3, "state": "done", "message": "replaced 2", "replaced": []},
        "reloads": {"done": 2, "failed": 1},
        "processes": [
            proc("chat.register.0", "register", 0, 10),
            proc("chat.gateway.0", "gateway", 0, 11, addresses={"advertised": "127.0.0.1:2300"}),
            proc("chat.gateway.1", "gateway", 1, 12, addresses={"advertised": "127.0.0.1:2301"}),
            proc("chat.businessworker.0", "businessworker", 0, 13, restarts=4),
            proc("chat.pushapi.0", "pushapi", 0, 14),
        ],
    }


def histogram(*values: float) -> dict[str, Any]:
    h = Histogram()
    for v in values:
        h.observe(v)
    return h.snapshot()


def cluster_stats() -> dict[str, dict[str, Any]]:
    fresh = {"updated_at": NOW - 0.5, "rss": 1000, "started_at": NOW - 60}
    return {
        "chat.register.0": {"pid": 10, **fresh, "peers": {"gateway": 2, "subscriber": 2}},
        "chat.gateway.0": {
            "pid": 11,
            **fresh,
            "connections": 3,
            "connections_opened": 5,
            "closed_by_reason": {"client_close": 1, "heartbeat_timeout": 1, "rate_limit": 1},
            "handshake_failures": {"400": 2, "401": 1},
            "handshakes_refused": {"auth": 1, "origin": 0},
            "messages_in": 7,
            "messages_in_per_s": 1.5,
            "messages_out_per_s": 2.0,
        },
        "chat.gateway.1": {
            "pid": 12,
            **fresh,
            "connections": 1,
            "messages_in_per_s": 0.5,
            "loop_lag_max_ms": 2.5,
            "loop_lag_own_max_ms": 1.25,
            "loop_lag_peak_ms": 40.0,
        },
        "chat.businessworker.0": {
            "pid": 13,
            **fresh,
            "events_in": {"connect": 5, "message": 7},
            "callback_seconds": histogram(0.0001, 0.02, 3.0),
            "gateways": ["127.0.0.1:2300", "127.0.0.1:2301"],
            "gateway_links": {"linked": 2, "paused": 0, "unlinked": 0},
            "threads": 8,
            "threads_busy": 3,
            "threads_queued": 2,
            "authenticate": {"accepted": 4, "rejected": 1, "failed": 0},
        },
        "chat.pushapi.0": {
            "pid": 14,
            **fresh,
            "requests_by": {"send_to_uid": {"200": 4, "400": 1}},
            "request_seconds": histogram(0.001),
        },
    }


def view(state: dict[str, Any] | None = None, stats: Any = None) -> ClusterView:
    return ClusterView(
        cluster_state() if state is None else state,
        cluster_stats() if stats is None else stats,
        NOW,
        12345,
    )


def scrape(v: ClusterView) -> dict[str, Any]:
    """Exposition text through prometheus_client, parsed back: {family: [samples]}."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(lambda: v))
    text = generate_latest(registry).decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def value(samples: list[Any], name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and labels.items() <= s.labels.items()]
    assert len(found) == 1, (name, labels, samples)
    return float(found[0])


# ---- collector ----------------------------------------------------------------------


def test_collector_turns_stats_into_labelled_metrics() -> None:
    got = scrape(view())
    up = got["gatewayworker_up"]
    assert value(up, "gatewayworker_up", role="master") == 1
    assert value(up, "gatewayworker_up", role="gateway", index="1", app="chat") == 1
    restarts = got["gatewayworker_process_restarts"]
    assert value(restarts, "gatewayworker_process_restarts_total", role="businessworker") == 4
    closed = got["gatewayworker_gateway_connections_closed"]
    name = "gatewayworker_gateway_connections_closed_total"
    assert value(closed, name, reason="heartbeat_timeout", index="0") == 1
    failures = got["gatewayworker_gateway_handshake_failures"]
    assert value(failures, "gatewayworker_gateway_handshake_failures_total", status="400") == 2
    assert value(closed, name, reason="rate_limit", index="0") == 1
    refused = got["gatewayworker_gateway_handshakes_refused"]
    assert value(refused, "gatewayworker_gateway_handshakes_refused_total", reason="auth") == 1
    for gauge, number in (("", 8), ("_busy", 3), ("_queued", 2)):
        family = f"gatewayworker_worker_callback_threads{gauge}"
        assert value(got[family], family) == number
    auth = got["gatewayworker_worker_authenticate"]
    assert value(auth, "gatewayworker_worker_authenticate_total", outcome="rejected") == 1
    events = got["gatewayworker_worker_events"]
    assert value(events, "gatewayworker_worker_events_total", kind="message") == 7
    hist = got["gatewayworker_worker_callback_duration_seconds"]
    hname = "gatewayworker_worker_callback_duration_seconds"
    assert value(hist, hname + "_count") == 3
    assert value(hist, hname + "_bucket", le="0.025") == 2
    assert value(hist, hname + "_bucket", le="+Inf") == 3
    assert value(hist, hname + "_sum") == pytest.approx(3.0201)
    requests = got["gatewayworker_pushapi_requests"]
    rname = "gatewayworker_pushapi_requests_total"
    assert value(requests, rname, verb="send_to_uid", status="400") == 1
    reloads = got["gatewayworker_reloads"]
    assert value(reloads, "gatewayworker_reloads_total", outcome="failed") == 1
    assert (
        value(got["gatewayworker_register_peers"], "gatewayworker_register_peers", kind="gateway")
        == 2
    )
    rss = got["gatewayworker_process_resident_memory_bytes"]
    assert value(rss, "gatewayworker_process_resident_memory_bytes", role="master") == 12345
    for family, seconds in (("", 0.0025), ("_own", 0.00125), ("_peak", 0.04)):
        lag = f"gatewayworker_process_loop_lag{family}_seconds"
        assert value(got[lag], lag, role="gateway", index="1") == seconds
        assert all(s.labels["index"] == "1" for s in got[lag])  # only where reported


def test_collector_tolerates_missing_and_odd_keys() -> None:
    stats = cluster_stats()
    stats["chat.gateway.0"] = {"pid": 11, "connections": "many", "closed_by_reason": [1, 2]}
    stats["chat.businessworker.0"]["callback_seconds"] = {"le": [1.0], "counts": []}
    del stats["chat.pushapi.0"]
    got = scrape(view(stats=stats))
    assert "gatewayworker_gateway_connections_closed" not in got
    assert "gatewayworker_worker_callback_duration_seconds" not in got
    assert value(got["gatewayworker_up"], "gatewayworker_up", role="pushapi") == 1
    assert scrape(view(state={}, stats={})) == {}


def test_label_values_are_bounded() -> None:
    stats = cluster_stats()
    flood = {f"reason{i}" + "x" * 100: i for i in range(500)}
    stats["chat.gateway.0"]["closed_by_reason"] = flood
    got = scrape(view(stats=stats))
    samples = got["gatewayworker_gateway_connections_closed"]
    assert len(samples) == MAX_LABEL_VALUES
    assert all(len(s.labels["reason"]) <= 40 for s in samples)


def test_no_label_names_a_client() -> None:
    client_id = re.compile(r"^[0-9a-f]{20}$")
    for family in families(view()):
        for sample in family.samples:
            assert set(sample.labels) <= {
                "app",
                "role",
                "index",
                "reason",
                "status",
                "kind",
                "state",
                "verb",
                "outcome",
                "le",
            }
            assert not any(client_id.match(v) for v in sample.labels.values())


# ---- health ---------------------------------------------------------------------------


def test_healthy_and_ready() -> None:
    assert healthy(view(), True) == (True, healthy(view(), True)[1])
    ok, doc = ready(view(), True)
    assert ok and doc["status"] == "ok" and doc["missing"] == []


def test_unhealthy_names_what_is_down() -> None:
    state = cluster_state()
    state["processes"][3].update(status="respawning", last_exit="killed by signal 9 (SIGKILL)")
    ok, doc = healthy(view(state=state), True)
    assert not ok and doc["status"] == "fail"
    assert doc["missing"] == [
        "chat.businessworker.0: respawning (last exit: killed by signal 9 (SIGKILL))"
    ]
    ok, doc = healthy(view(), False)
    assert not ok and doc["missing"] == ["master: not running"]
    state = cluster_state()
    state["master"]["phase"] = "stopping"
    assert healthy(view(state=state), True)[1]["missing"] == ["master: stopping"]


def test_not_ready_when_a_worker_misses_a_gateway_or_a_process_is_silent() -> None:
    stats = cluster_stats()
    stats["chat.businessworker.0"]["gateways"] = ["127.0.0.1:2300"]
    stats["chat.businessworker.0"]["gateway_links"] = {"linked": 1, "unlinked": 1}
    ok, doc = ready(view(stats=stats), True)
    assert not ok
    assert doc["missing"] == [
        "chat.businessworker.0: not linked to gateway 127.0.0.1:2301",
        "chat.businessworker.0: 1 listed gateway(s) not linked",
    ]
    assert healthy(view(stats=stats), True)[0]  # healthy, only not ready
    stats = cluster_stats()
    stats["chat.gateway.1"]["updated_at"] = NOW - 60
    ok, doc = ready(view(stats=stats), True)
    assert doc["missing"] == ["chat.gateway.1: not reporting (no fresh stats file)"]


# ---- operator page data ------------------------------------------------------------------


def test_history_and_ops_data() -> None:
    history = History(seconds=10)
    for i in range(15):
        history.sample(ClusterView(cluster_state(), cluster_stats(), NOW + i, 0))
    series = history.series()
    assert len(series["t"]) == 10 and series["t"][-1] == NOW + 14
    assert series["connections"][-1] == 4
    assert series["messages_in"][-1] == 2.0 and series["messages_out"][-1] == 2.0
    data = ops_data(view(), history)
    assert data["master"]["pid"] == 1 and data["reload"]["state"] == "done"
    assert [p["name"] for p in data["processes"]][:2] == ["master", "chat.register.0"]
    assert data["totals"]["connections"] == 4 and data["totals"]["restarts"] == 4
    json.dumps(data)


# ---- histogram and config ---------------------------------------------------------------


def test_histogram_buckets_are_cumulative() -> None:
    h = Histogram([0.1, 1.0])
    for v in (0.05, 0.1, 0.5, 2.0, 3.0):
        h.observe(v)
    assert h.snapshot() == {"le": [0.1, 1.0], "counts": [2, 3], "sum": 5.65, "count": 5}
    assert h.count_above(1.0) == 2 and h.count_above(0.1) == 3


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("9100", "127.0.0.1:9100"),
        (":9100", "127.0.0.1:9100"),
        ("0.0.0.0:9100", "0.0.0.0:9100"),
        ("127.0.0.1:0", "127.0.0.1:0"),
    ],
)
def test_metrics_listen(given: str, expected: str) -> None:
    assert parse_metrics_listen(given) == expected


def test_metrics_config_errors() -> None:
    with pytest.raises(ConfigError, match="--metrics-listen 9100"):
        parse_metrics_listen("nine")
    with pytest.raises(ConfigError, match="printable ASCII"):
        Metrics(token="two words")


# ---- JSON logs ----------------------------------------------------------------------------


def test_json_log_line_has_the_fields_and_the_structured_extras() -> None:
    logger = logging.getLogger("businessworker")
    record = logger.makeRecord(
        "businessworker", logging.ERROR, __file__, 1, "on_%s raised", ("message",), None
    )
    record.client_id = "7f0000010b5400000001"
    line = JsonFormatter("chat.businessworker.0").format(record)
    doc = json.loads(line)
    assert doc["level"] == "ERROR" and doc["process"] == "chat.businessworker.0"
    assert doc["message"] == "on_message raised" and doc["logger"] == "businessworker"
    assert doc["client_id"] == "7f0000010b5400000001" and isinstance(doc["pid"], int)
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$", doc["time"])
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    line = JsonFormatter("x").format(record)
    assert "\n" not in line and "ValueError: boom" in json.loads(line)["exception"]


def test_log_pipe_wraps_raw_lines_in_json_mode(tmp_path: Any) -> None:
    import os

    sink = LogSink(str(tmp_path / "log"))
    pipe = LogPipe(sink, "json")
    os.write(pipe.write_fd, b'{"message": "already json"}\nC library says hi\n')
    pipe.drain()
    sink.close()
    pipe.close()
    lines = (tmp_path / "log").read_text().splitlines()
    assert json.loads(lines[0]) == {"message": "already json"}
    assert json.loads(lines[1])["message"] == "C library says hi"
    assert json.loads(raw_line_json("x"))["logger"] == "raw"


# ---- routes (no sockets) ------------------------------------------------------------------


def server(tmp_path: Any, token: str = "t0ken") -> MetricsServer:
    return MetricsServer(Metrics(listen="127.0.0.1:0", token=token), str(tmp_path))


def test_routes_answer_and_protect_the_page(tmp_path: Any) -> None:
    s = server(tmp_path)
    assert s.respond(Request("GET", "/metrics")).status == 200
    assert s.respond(Request("GET", "/healthz")).status == 503  # nothing runs there
    assert s.respond(Request("POST", "/metrics")).status == 405
    assert s.respond(Request("GET", "/nope")).status == 404
    assert s.respond(Request("GET", "/ops")).status == 401
    assert s.respond(Request("GET", "/ops/data")).status == 401
    assert s.respond(Request("GET", "/ops", {"token": "wrong"})).status == 401
    redirect = s.respond(Request("GET", "/ops", {"token": "t0ken"}))
    assert redirect.status == 303
    cookie = dict(redirect.headers)["set-cookie"]
    assert "t0ken" not in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    value = cookie.split(";")[0]
    page = s.respond(Request("GET", "/ops", headers={"cookie": value}))
    assert page.status == 200 and b"<canvas" in page.body
    data = s.respond(Request("GET", "/ops/data", headers={"authorization": "Bearer t0ken"}))
    assert data.status == 200 and "history" in json.loads(data.body)
    forged = f"{COOKIE}=deadbeef"
    assert s.respond(Request("GET", "/ops/data", headers={"cookie": forged})).status == 401


def test_page_is_off_without_a_token(tmp_path: Any) -> None:
    s = server(tmp_path, token="")
    answer = s.respond(Request("GET", "/ops", {"token": ""}))
    assert answer.status == 404 and b"--metrics-token" in answer.body


# ---- the Grafana dashboard -------------------------------------------------------------------


def test_grafana_dashboard_uses_only_metrics_we_export() -> None:
    from pathlib import Path

    from pygatewayworker.metrics.collector import COUNTER, LOOP_LAG, PREFIX, SPECS

    doc = json.loads((Path(__file__).parent.parent / "docs" / "grafana-dashboard.json").read_text())
    assert doc["title"] and doc["uid"] and doc["schemaVersion"] >= 30
    panels = doc["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    known = {"gatewayworker_up", "gatewayworker_process_resident_memory_bytes"}
    known |= {"gatewayworker_process_restarts_total", "gatewayworker_reloads_total"}
    known |= {PREFIX + name for _, name, _ in LOOP_LAG}
    for spec in SPECS:
        name = PREFIX + spec.name
        known.add(name + "_total" if spec.kind == COUNTER else name)
        known.add(name + "_bucket")
    used = set()
    for panel in panels:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used |= set(re.findall(r"gatewayworker_[a-z_]+", target["expr"]))
    assert used <= known, used - known
    titles = " ".join(p["title"] for p in panels).lower()
    for word in ("connections", "messages", "duration", "restarts"):
        assert word in titles
