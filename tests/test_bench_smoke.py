"""Smoke run of the benchmark suite: ``python -m bench run --quick`` starts real
clusters with tiny loads and must write every report with every metric. No timing
is asserted (the full run is a separate command, see the README)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bench.chatload import SAY_PREFIX, SAY_SUFFIX, ChatProtocol
from bench.cluster import ClusterConfig
from bench.loadgen import Client, client_frame
from bench.metrics import QUICK, Bench, _m8_send_buffer_limit, percentile
from bench.pool import split
from bench.pusherload import CHANNEL as PUSHER_CHANNEL
from bench.pusherload import EVENT as PUSHER_EVENT
from bench.pusherload import PusherProtocol
from pygatewayworker.pusher.protocol import PING_DATA, message

ROOT = Path(__file__).resolve().parent.parent


def run_quick(out: Path, *args: str, timeout: float) -> None:
    """``python -m bench run --quick *args --out out``; it must succeed."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "run", "--quick", *args, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_split_and_percentile() -> None:
    assert split(10, 3) == [4, 3, 3]
    assert sum(split(100_001, 6)) == 100_001
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile([], 99) == 0.0


def _server_frame(text: str) -> bytes:
    payload = text.encode()
    if len(payload) < 126:
        return bytes((0x81, len(payload))) + payload
    return bytes((0x81, 126)) + len(payload).to_bytes(2, "big") + payload


class _Transport:
    """What a generator's client writes."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)


class _Gen:
    """The generator state an app protocol touches (``bench.loadgen.Generator``'s)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.lat: list[int] = []
        self.echo_recv = self.bcast = self.last_ns = 0
        self.track = False
        self.answer_pings = True
        self.last_error = ""
        self.ready: list[int] = []

    def on_ready(self, client: Client) -> None:
        self.ready.append(client.index)


def _generator_client(app: Any) -> tuple[_Gen, Client, _Transport]:
    gen = _Gen(app)
    client = Client(gen, 7)  # type: ignore[arg-type]
    transport = _Transport()
    client.transport = transport  # type: ignore[assignment]
    return gen, client, transport


def test_chat_protocol_logs_in_answers_pings_and_times_say() -> None:
    """The generator's chat clients (bench.chatload), fed the chat app's messages:
    login to their own room on the handshake, ready on the login reply, the page's
    pong to a ping, a ``say`` reply timed from its content, anything else counted."""
    gen, client, transport = _generator_client(ChatProtocol())
    client.data_received(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
    login = b'{"type":"login","client_name":"c7","room_id":"r7"}'
    assert transport.written == [client_frame(login)]
    client.data_received(_server_frame('{"type":"init","client_id":"7f0000010b5400000001"}'))
    assert not client.ready and gen.app.other == 0
    client.data_received(_server_frame('{"type":"login","client_id":"x","client_list":{}}'))
    assert client.ready and gen.ready == [7]
    client.data_received(_server_frame('{"type":"ping"}'))
    assert transport.written[-1] == client_frame(b'{"type":"pong"}')
    request = SAY_PREFIX + b"E%019d" % time.monotonic_ns() + b"x" * 12 + SAY_SUFFIX
    content = json.loads(request)["content"]
    reply = _server_frame(
        '{"type":"say","from_client_id":"x","from_client_name":"c7","to_client_id":"all",'
        f'"content":"{content}","time":"2024-01-01 00:00:00"}}'
    )
    client.data_received(reply[:30])  # split over two reads
    client.data_received(reply[30:] + _server_frame('{"type":"error","message":"no"}'))
    assert gen.echo_recv == 1 and len(gen.lat) == 1 and 0 <= gen.lat[0] < 10_000_000
    assert gen.app.other == 1 and "error" in gen.last_error


def test_chat_protocol_without_login_is_ready_on_init() -> None:
    """``protocol="chat-connect"`` (M3's chat series): no login on the handshake;
    the worker's ``init`` makes the client ready."""
    gen, client, transport = _generator_client(ChatProtocol(login=False))
    client.data_received(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
    assert transport.written == [] and not client.ready
    client.data_received(_server_frame('{"type":"init","client_id":"7f0000010b5400000001"}'))
    assert client.ready and gen.ready == [7] and gen.app.other == 0


def test_chat_protocol_ready_on_upgrade_counts_the_101() -> None:
    """``protocol="chat-upgrade"`` (php-compare's connects): ready at the ``101``,
    no login sent; a later ``init`` (our chat's) changes nothing."""
    gen, client, transport = _generator_client(ChatProtocol(login=False, ready_on_upgrade=True))
    client.data_received(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
    assert transport.written == [] and client.ready and gen.ready == [7]
    client.data_received(_server_frame('{"type":"init","client_id":"7f0000010b5400000001"}'))
    assert gen.ready == [7] and gen.app.other == 0


def test_pusher_protocol_subscribes_answers_pings_and_counts_events() -> None:
    """The generator's Pusher clients (bench.pusherload), fed what the Pusher app
    sends: subscribe on connection_established, ready on subscription_succeeded,
    pusher:pong to pusher:ping, events on the channel counted and timed."""
    gen, client, transport = _generator_client(PusherProtocol())
    client.data_received(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
    assert transport.written == []  # the server speaks first
    established = message("pusher:connection_established", {"socket_id": "1.1"})
    client.data_received(_server_frame(established))
    subscribe = json.loads(transport.written[-1][6:])  # after the head and the zero mask
    assert subscribe == {"event": "pusher:subscribe", "data": {"channel": PUSHER_CHANNEL}}
    client.data_received(
        _server_frame(message("pusher_internal:subscription_succeeded", {}, PUSHER_CHANNEL))
    )
    assert client.ready and gen.ready == [7]
    client.data_received(_server_frame(PING_DATA))
    assert json.loads(transport.written[-1][6:])["event"] == "pusher:pong"
    gen.track = True
    event = message(PUSHER_EVENT, f"B{time.monotonic_ns():019d}" + "x" * 80, PUSHER_CHANNEL)
    frame = _server_frame(event)
    client.data_received(frame[:25])  # split over two reads
    client.data_received(frame[25:] + _server_frame(message("other", "x", PUSHER_CHANNEL)))
    assert gen.bcast == 1 and len(gen.lat) == 1 and 0 <= gen.lat[0] < 10_000_000
    assert gen.app.other == 1 and '"other"' in gen.last_error


@pytest.mark.timeout(180)
def test_quick_run_writes_every_report(tmp_path: Path) -> None:
    out = tmp_path / "results"
    run_quick(out, timeout=170)
    doc = json.loads((out / "bench.json").read_text())
    assert doc["errors"] == []
    assert {"cpu", "cores", "kernel", "python", "uvloop"} <= set(doc["machine"])
    stick = doc["machine"]["yardstick"]
    assert stick["loopback_send_us"] > 0 and stick["echo_rtt_us"] > 0
    assert stick["connects_per_s"] > 0
    assert 0 <= doc["machine"]["cpu_steal"]["steal_pct"] <= 100
    for metric in ("M3", "M4", "M6", "M7"):
        assert doc["summary"][metric]["per_yardstick"] > 0, metric
    assert set(doc["summary"]) == {f"M{i}" for i in range(1, 10)} | {"RSS"}
    for metric, row in doc["summary"].items():
        assert row["value"] is not None, f"{metric} has no figure"
    results = doc["results"]
    assert results["M1"]["connections_held"] > 0
    assert results["M3"]["reconnect_storm"]["reconnected"] > 0
    assert results["M4"]["send_to_group"] and results["M4"]["send_to_all"]
    assert all(r["points"] for r in results["M4"]["sustained"].values())
    storm = results["M3"]["reconnect_storm"]
    assert {"seconds_to_99pct", "seconds_to_100pct", "missing", "gateway_exit_s"} <= set(storm)
    assert results["M5"]["deliveries"] > 0
    assert results["M6"]["series"]
    # every M6 point carries the longest loop stall of each cluster process
    points = [p for series in results["M6"]["series"].values() for p in series]
    assert (
        points
        and all(p["cpu"]["loop_stall_by_process_ms"] for p in points)
        and results["M6"]["thread"]["series"]
    )  # both modes
    assert doc["config"]["M6 thread"]["callbacks"] == "thread"
    # M6 with the shipped chat app: login to one's own room, say, timed from the reply
    chat = results["M6"]["chat"]
    chat_points = [p for series in chat["series"].values() for p in series]
    assert chat_points and all(p["received"] == p["sent"] > 0 for p in chat_points)
    assert chat["connect"]["ready"] == int(next(iter(chat["series"])))
    assert doc["config"]["M6 chat"]["app"] == "chat"
    assert doc["summary"]["M6"]["chat"]["low_load_p50_ms"] > 0
    # server CPU per round trip at every M6 point (both bench app modes and chat)
    for series in (results["M6"], results["M6"]["thread"], chat):
        cpu = [p["cluster_cpu_us_per_msg"] for s in series["series"].values() for p in s]
        assert all(isinstance(c, float) and c >= 0 for c in cpu) and sum(cpu) > 0
    assert results["M3"]["cluster_cpu_us_per_connection"] > 0
    _check_security_pairs(doc, (out / "bench.md").read_text())
    # plain connects to the chat app (ready on the worker's init, no login)
    assert results["M3"]["chat"]["ready"] > 0 and results["M3"]["chat"]["failed"] == 0
    assert results["M3"]["chat"]["cluster_cpu_us_per_connection"] > 0
    assert doc["config"]["M3 chat"]["app"] == "chat"
    assert results["M7"]["async"]["received"] == results["M7"]["async"]["calls"]
    assert results["M7"]["sync"]["received"] == results["M7"]["sync"]["calls"]
    for kind in ("msgpack", "php_persistent", "php_per_call"):
        assert results["M8"][kind]["deliveries"] == results["M8"][kind]["expected"], kind
        assert results["M8"][kind]["members_open_after"] == results["M8"][kind]["members"]
    assert doc["config"]["M8"]["send_buffer_limit"] >= 1 << 20
    m9 = results["M9"]
    assert m9["connections_held"] == m9["subscribed"] == m9["api_subscription_count"] > 0
    for kind in ("http_events_api", "send_to_group"):
        assert m9[kind]["deliveries"] == m9[kind]["expected"] > 0, kind
    assert m9["http_events_api"]["calls_per_s"] > 0
    check_rss(results["RSS"], markdown=(out / "bench.md").read_text())
    markdown = (out / "bench.md").read_text()
    for metric in doc["summary"]:
        assert f"| {metric} |" in markdown
    assert "| chat |" in markdown and "cluster CPU us/msg" in markdown
    assert "Yardstick: loopback send" in markdown
    png = (out / "latency.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def check_rss(rss: dict[str, Any], markdown: str) -> None:
    """The RSS section: the six processes of the shipped chat cluster, each read."""
    roles = sorted(p["role"] for p in rss["processes"])
    assert roles == ["businessworker"] * 2 + ["gateway"] * 2 + ["master", "register"]
    for p in rss["processes"]:
        assert p["rss_mib"] >= p["pss_mib"] >= p["uss_mib"] > 0, p
        assert p["modules"] > 0 and set(p["loaded"]) >= {"uvloop", "msgpack", "h11", "jwt"}, p
    totals = rss["totals"]
    assert totals["rss_mib"] == round(sum(p["rss_mib"] for p in rss["processes"]), 1)
    assert totals["pss_mib"] > 0 and rss["php_rss_mib"] == 88
    assert "| RSS |" in markdown and "| process | RSS | PSS | USS | modules |" in markdown


@pytest.mark.timeout(120)
async def test_a_burst_that_lost_its_members_is_an_error_not_a_figure() -> None:
    """M8's check after a burst: the members were closed (here by the generators,
    as the gateway closes slow consumers), so the burst is an error that says so,
    with the cluster's log lines, and carries no rate."""
    logged: list[str] = []
    bench = Bench(QUICK, logged.append)
    with bench.setup("M8", ClusterConfig(1, 1, 5.0, 2), 1):
        assert bench.pool is not None
        members = (await bench.connect(3, {"g": "m8"}))["ready"]
        assert members == 3

        async def burst_to_nobody() -> dict[str, Any]:
            assert bench.pool is not None
            await bench.pool.call({"op": "close_all"})
            return {"deliveries": 30, "expected": 30, "calls_per_s": 1, "deliveries_per_s": 1}

        result = await bench._checked("M8 test", members, burst_to_nobody())
    assert result["members_open_after"] == 0
    assert "calls_per_s" not in result and "deliveries_per_s" not in result
    assert result["error"].startswith("M8 test: 30 of 30 delivered, 0 of 3 members still open")
    assert bench.errors == [result["error"]] and result["error"] in logged
    # a whole burst per member fits M8's limit (twice over), never below the default
    assert _m8_send_buffer_limit(20_000) >= 2 * 20_000 * 110
    assert _m8_send_buffer_limit(10) == 1 << 20


def test_quick_rss_reads_every_process_of_the_shipped_chat(tmp_path: Path) -> None:
    out = tmp_path / "results"
    run_quick(out, "--only", "RSS", timeout=110)
    doc = json.loads((out / "bench.json").read_text())
    assert doc["errors"] == [] and doc["config"]["RSS"]["app"] == "chat"
    check_rss(doc["results"]["RSS"], (out / "bench.md").read_text())


def _check_security_pairs(doc: dict[str, Any], markdown: str) -> None:
    """M3 with connect tokens and M6 with the limits ran beside their plain twins, no
    limit or check acted on them, and bench.md shows the pairs."""
    results = doc["results"]
    tokens = results["M3"]["tokens"]
    assert tokens["ready"] == results["M3"]["ready"] > 0 and tokens["failed"] == 0
    assert tokens["cluster_cpu_us_per_connection"] > 0
    assert doc["config"]["M3 tokens"]["security"].startswith("token_key=<")
    assert tokens["limits_hit"] == {"rate_limit_closes": 0, "handshakes_refused": 0}
    assert doc["summary"]["M3"]["tokens"]["per_s"] == tokens["per_s"]
    assert "| M3 connections/s (tokens) |" in markdown
    _check_limits_pair(doc, markdown)


def _check_limits_pair(doc: dict[str, Any], markdown: str) -> None:
    """M6 with every gateway limit configured ran beside plain M6, no limit acted."""
    limits = doc["results"]["M6"]["limits"]
    points = [p for series in limits["series"].values() for p in series]
    assert points and all(p["received"] == p["sent"] > 0 for p in points)
    assert all(p["cluster_cpu_us_per_msg"] is not None for p in points)
    assert "allowed_origins" in doc["config"]["M6 limits"]["security"]
    assert limits["limits_hit"] == {"rate_limit_closes": 0, "handshakes_refused": 0}
    assert doc["summary"]["M6"]["limits"]["low_load_p50_ms"] == limits["low_load"]["p50_ms"]
    assert "| M6 cluster CPU us per round trip, same point (limits) |" in markdown


@pytest.mark.timeout(120)
def test_quick_soak_reports_the_drift_of_every_process(tmp_path: Path) -> None:
    out = tmp_path / "results"
    run_quick(out, "--only", "soak", timeout=110)
    soak = json.loads((out / "bench.json").read_text())["results"]["SOAK"]
    assert soak["cycles"] > 0 and soak["messages_echoed"] == soak["messages_sent"] > 0
    names = [r["process"].split(" (")[0] for r in soak["processes"]]
    assert "master" in names and sum(".gateway." in n for n in names) == 2
    assert all("rss_mb_drift" in r and "fds_drift" in r for r in soak["processes"])
    assert "| process | RSS start MB" in (out / "bench.md").read_text()


@pytest.mark.timeout(120)
def test_quick_run_with_metrics_on(tmp_path: Path) -> None:
    """``--metrics`` starts every cluster with the metrics listener and scrapes it;
    ``--only M6_LIMITS`` runs M6 inline and its limits twin only (the whole quick run
    above checks M3's tokens twin)."""
    out = tmp_path / "results"
    run_quick(out, "--only", "M6_LIMITS", "--metrics", timeout=110)
    doc = json.loads((out / "bench.json").read_text())
    assert doc["errors"] == []
    assert doc["config"] and all(c["metrics"] for c in doc["config"].values()), doc["config"]
    assert set(doc["config"]) == {"M6", "M6 limits"}
    assert set(doc["results"]["M6"]) >= {"series", "limits"}
    assert not {"thread", "chat"} & set(doc["results"]["M6"])
    _check_limits_pair(doc, (out / "bench.md").read_text())
