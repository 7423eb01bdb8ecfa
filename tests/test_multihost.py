"""Deployment across hosts, end to end, over Linux network namespaces.

Five namespaces stand in for hosts on one LAN; a sixth, ``switch``, holds only the
bridge that joins them (one veth pair per host, no address):

========  ==============  =====================================================
host      address         runs (each a ``python start.py start -d`` of its own)
========  ==============  =====================================================
a         10.213.N.1      register R1 (run dir a-reg); 2 gateways (run dir a-gw)
b         10.213.N.2      register R2 + 1 gateway (one master); later the workers
c         10.213.N.3      2 business workers; later a gateway started late,
                          then the host vanishes (its link goes down)
d         10.213.N.4      the test's WebSocket clients and push client
e         10.213.N.5      1 business worker, until the host vanishes
========  ==============  =====================================================

Every host runs the same unchanged app (the ``rc`` fixture, whose start files say
127.0.0.1) with per-host overrides from the environment and the command line.
The 10.213.N.0/24 network exists only inside the namespaces: the root namespace
has no address or route in it, and each namespace routes nothing but that subnet
(checked before anything starts), so nothing leaves the namespaces and loopback.

Internal links ping every ``KEEPALIVE`` (1 s) and drop a peer silent for
``LINK_TIMEOUT`` (4 s); a register drops a peer silent for three of the intervals
it declared (3 s). The test idles for longer than all of these and checks that no
link was dropped or made again, then makes a gateway host and a worker host vanish
(link down, processes left running) and checks that their links are dropped
within ``DROP_BOUND``.

The test's clients run in an asyncio loop in a thread that joined namespace ``d``
(``setns(2)`` changes the network namespace of the calling thread only).

Needs root (CAP_NET_ADMIN) and ``ip`` (iproute2): skipped with the reason otherwise,
except with CI=true as root, where a failure to build the namespaces fails the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import random
import re
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from websockets.asyncio.client import ClientConnection, connect

from pygatewayworker.gateway.client_id import decode_client_id
from pygatewayworker.gatewayclient import AsyncGatewayClient
from tests.cluster import PYTHON, ROOT, AppSpec, make_app

T = TypeVar("T")

HOSTS = {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}
KEEPALIVE = 1.0
LINK_TIMEOUT = 4.0
REGISTER_DROP = max(1.0, 3 * KEEPALIVE)
"""A register drops a peer silent for three of the keep-alive intervals the peer
declared in its handshake (``RegisterServer._adopt_keepalive``); the peer gives up
on a silent register after as long (``register.discovery.SILENCE_FACTOR``)."""
IDLE = 1.5 * max(LINK_TIMEOUT, REGISTER_DROP)
"""An idle period longer than every timeout of the internal links."""
DROP_BOUND = LINK_TIMEOUT + 5
"""A vanished peer is dropped within ``link_timeout``, plus the keep-alive tick (a
quarter of the timeout), the 1 s stats writer, our polling and up to 2 s of
scheduling delay on a loaded 2-core machine (five hosts' processes; a drop took
8.06 s once under a full test run, where ``link_timeout + 3`` was the bound)."""
LINK_EVENTS = re.compile(
    r"silent|lost|dropping|is gone|left|joined|linked|leaving|closing|closed|"
    r"retrying|unreachable|is back|announced|subscribed"
)
"""Log lines of links coming and going (none of them is logged on an idle cluster)."""
CLONE_NEWNET = 0x40000000


def run(
    argv: list[str], timeout: float = 30, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


# ---- the network ------------------------------------------------------------------


class Lan:
    """Namespaces joined by a bridge; :meth:`close` deletes every one of them."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 10000}{random.randrange(100, 1000)}"
        self.subnet = random.randrange(0, 256)
        self.switch = f"gwt{tag}sw"
        self.names = {host: f"gwt{tag}{host}" for host in HOSTS}
        self.created: list[str] = []

    def ip(self, host: str) -> str:
        return f"10.213.{self.subnet}.{HOSTS[host]}"

    @property
    def cidr(self) -> str:
        return f"10.213.{self.subnet}.0/24"

    def create(self) -> None:
        self._add_ns(self.switch)
        run(["ip", "-n", self.switch, "link", "add", "br0", "type", "bridge"])
        run(["ip", "-n", self.switch, "link", "set", "br0", "up"])
        for host, ns in self.names.items():
            self._add_ns(ns)
            port = f"p{host}"
            # Both ends are created directly inside the namespaces: no device ever
            # appears in the root namespace.
            run(["ip", "link", "add", "eth0", "netns", ns, "type", "veth",
                 "peer", "name", port, "netns", self.switch])  # fmt: skip
            run(["ip", "-n", self.switch, "link", "set", port, "master", "br0", "up"])
            run(["ip", "-n", ns, "addr", "add", f"{self.ip(host)}/24", "dev", "eth0"])
            run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])

    def _add_ns(self, ns: str) -> None:
        run(["ip", "netns", "add", ns])
        self.created.append(ns)

    def link(self, host: str, state: str) -> None:
        run(["ip", "-n", self.names[host], "link", "set", "eth0", state])

    def routes(self, ns: str) -> list[dict[str, Any]]:
        """The IPv4 and IPv6 routes of namespace ``ns`` (its main tables)."""
        found: list[dict[str, Any]] = []
        for family in ("-4", "-6"):
            found += json.loads(run(["ip", "-j", family, "-n", ns, "route", "show"]).stdout or "[]")
        return found

    def check_isolated(self) -> None:
        """Each host routes its subnet and nothing else (IPv6: link-local only, if
        enabled); the switch routes nothing. A send to any other address fails
        ("network unreachable") inside the namespace instead of leaving it."""
        for ns in [self.switch, *self.names.values()]:
            routes = self.routes(ns)
            v4 = [r.get("dst") for r in routes if ":" not in r.get("dst", "")]
            assert v4 == ([] if ns == self.switch else [self.cidr]), (ns, routes)
            for route in routes:
                dst = route.get("dst", "")
                local = dst == self.cidr or dst.startswith("fe80::")
                assert local and "gateway" not in route, (ns, route)

    def close(self) -> None:
        for ns in reversed(self.created):
            pids = run(["ip", "netns", "pids", ns], check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
            run(["ip", "netns", "del", ns], check=False)
        self.created.clear()


@pytest.fixture
def lan() -> Iterator[Lan]:
    must = os.environ.get("CI") == "true" and os.geteuid() == 0
    reason = ""
    if shutil.which("ip") is None:
        reason = "`ip` (iproute2) is not installed"
    elif os.geteuid() != 0:
        reason = "network namespaces need root (CAP_NET_ADMIN)"
    network = Lan()
    if not reason:
        try:
            network.create()
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            network.close()
            reason = f"cannot create network namespaces: {exc}"
    if reason:
        if must:
            pytest.fail(f"multi-host test cannot run on CI as root: {reason}")
        pytest.skip(reason)
    try:
        yield network
    finally:
        network.close()


class NetnsLoop:
    """An asyncio loop in a thread that joined a network namespace."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.loop = asyncio.new_event_loop()
        self.error: str | None = None
        self._joined = threading.Event()
        self.thread = threading.Thread(target=self._main, name=f"netns-{ns}", daemon=True)

    def start(self) -> NetnsLoop:
        self.thread.start()
        self._joined.wait(10)
        if self.error:
            raise RuntimeError(self.error)
        return self

    def _main(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{self.ns}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                self.error = f"setns({self.ns}): {os.strerror(ctypes.get_errno())}"
        finally:
            os.close(fd)
        self._joined.set()
        if self.error:
            return
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        if self.thread.is_alive():
            with contextlib.suppress(Exception):
                self.run(_cancel_all(), timeout=10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
        if not self.loop.is_running():
            self.loop.close()


async def _cancel_all() -> None:
    """Cancel what a failed scenario left behind (clients, push client tasks)."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# ---- hosts running start.py --------------------------------------------------------

LINK_KEYS = {
    "gateway": ("connections", "workers", "clients"),
    "businessworker": ("gateways",),
    "register": ("gateways", "subscribers", "connections", "rejected"),
}
"""The stats of each role that count its clients and internal links."""


class Hosts:
    """Runs ``start.py`` commands inside the namespaces, one run dir per master."""

    def __init__(self, lan: Lan, spec: AppSpec, env: dict[str, str]) -> None:
        self.lan = lan
        self.spec = spec
        self.env = env
        self.masters: dict[str, str] = {}  # run dir name -> host

    def run_dir(self, name: str) -> Path:
        return self.spec.root / "run" / name

    def cli(self, host: str, name: str, *args: str, timeout: float = 90) -> str:
        argv = ["ip", "netns", "exec", self.lan.names[host], PYTHON, str(ROOT / "start.py")]
        argv += [*args, "--apps-dir", str(self.spec.apps_dir), "--run-dir", str(self.run_dir(name))]
        proc = subprocess.run(
            argv,
            cwd=self.spec.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if proc.returncode != 0:
            log = self.run_dir(name) / "gatewayworker.log"
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise AssertionError(f"{args[0]} on {host}/{name} failed:\n{proc.stderr}\n{tail}")
        return proc.stdout

    def start(self, host: str, name: str, *options: str) -> None:
        self.masters[name] = host
        self.cli(host, name, "start", "-d", *options)

    def stop(self, name: str) -> None:
        host = self.masters.pop(name)
        self.cli(host, name, "stop")

    def stop_all(self) -> None:
        for name in list(self.masters):
            with contextlib.suppress(Exception):
                self.stop(name)

    def stats(self, name: str, role: str) -> list[dict[str, Any]]:
        """The stats files of ``role``'s processes in master ``name`` (written every
        second by each child)."""
        out = []
        for path in sorted((self.run_dir(name) / "stats").glob("*.json")):
            with contextlib.suppress(ValueError, OSError):
                data = json.loads(path.read_text())
                if isinstance(data, dict) and data.get("role") == role:
                    out.append(data)
        return out

    def links(self) -> dict[str, dict[str, Any]]:
        """What every process of every master links to, with its pid and restarts,
        from ``status --json`` run on the master's host."""
        out = {}
        for name, host in sorted(self.masters.items()):
            status = json.loads(self.cli(host, name, "status", "--json"))
            for proc in status["processes"]:
                keys = LINK_KEYS.get(proc["role"])
                if keys is not None:
                    row = {k: proc[k] for k in ("role", "pid", "restarts")}
                    row.update((k, proc["stats"].get(k)) for k in keys)
                    out[f"{name}/{proc['name']}"] = row
        return out

    def log_files(self) -> list[Path]:
        return sorted((self.spec.root / "run").glob("*/*.log"))

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.log_files())

    def log_marks(self) -> dict[Path, int]:
        """The current size of every log, for :meth:`logs_since`."""
        return {p: p.stat().st_size for p in self.log_files()}

    def logs_since(self, marks: dict[Path, int], masters: tuple[str, ...] = ()) -> list[str]:
        """The log lines written after ``marks`` (by ``masters`` only, if given)."""
        lines = []
        for path in self.log_files():
            if masters and path.parent.name not in masters:
                continue
            with path.open("rb") as file:
                file.seek(marks.get(path, 0))
                lines += file.read().decode(errors="replace").splitlines()
        return lines


# ---- WebSocket clients of the rc app ---------------------------------------------------


class Client:
    """One WebSocket client of the rc app: remote API calls and received messages."""

    def __init__(self, ws: ClientConnection, client_id: str) -> None:
        self.ws = ws
        self.id = client_id
        self.inbox: list[Any] = []
        self._next = 0

    @classmethod
    async def open(cls, url: str) -> Client:
        ws = await connect(url, open_timeout=10)
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), 20))
            if message.get("type") == "init":
                return cls(ws, message["client_id"])

    @property
    def gateway_ip(self) -> str:
        return decode_client_id(self.id).ip

    async def call(self, op: str, *args: Any, timeout: float = 20) -> Any:
        self._next += 1
        rid = self._next
        await self.ws.send(json.dumps({"id": rid, "op": op, "args": list(args)}))
        reply = await self.expect(lambda m: m.get("re") == rid, timeout)
        if "error" in reply:
            raise AssertionError(f"{op}{args} failed: {reply['error']}")
        return reply["ok"]

    async def expect(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10) -> Any:
        for i, message in enumerate(self.inbox):
            if predicate(message):
                return self.inbox.pop(i)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise TimeoutError(f"{self.id}: expected message not received; got {self.inbox}")
            message = json.loads(await asyncio.wait_for(self.ws.recv(), left))
            if isinstance(message, dict) and predicate(message):
                return message
            self.inbox.append(message)

    async def got(self, text: str, timeout: float = 10) -> None:
        await self.expect(lambda m: m.get("m") == text, timeout)


async def none_got(clients: list[Client], text: str) -> None:
    """None of ``clients`` receives ``text`` (within a short grace period)."""
    for client in clients:
        with contextlib.suppress(TimeoutError):
            await client.got(text, 0.5)
            raise AssertionError(f"{client.id} received {text!r}")


def note(text: str) -> str:
    return json.dumps({"m": text})


async def wait_for(check: Callable[[], Any], timeout: float, what: str) -> float:
    """Poll ``check`` (sync or async) until truthy; return the seconds it took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return loop.time() - start
        if loop.time() - start > timeout:
            raise TimeoutError(f"{what} not within {timeout:g} s")
        await asyncio.sleep(0.2)


# ---- the test -------------------------------------------------------------------------------


def test_cluster_across_namespaced_hosts(lan: Lan, tmp_path: Path) -> None:
    started = time.monotonic()
    spec = make_app(tmp_path, "rc", gateways=1, workers=1)  # start files say 127.0.0.1
    secret = secrets.token_hex(8)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GW_")}
    env.update(
        GW_SECRET=secret,  # every host; the start files have none
        GW_KEEPALIVE_INTERVAL=str(KEEPALIVE),
        GW_LINK_TIMEOUT=str(LINK_TIMEOUT),
        PYTHONDONTWRITEBYTECODE="1",
    )
    hosts = Hosts(lan, spec, env)
    a, b = lan.ip("a"), lan.ip("b")
    rp, pub, sp = spec.register_port, spec.public_port, spec.start_port
    registers = f"--register={a}:{rp},{b}:{rp}"

    def gateway_opts(ip: str, count: int) -> list[str]:
        return [
            "--roles=gateway",
            f"--gateway-listen={ip}:{pub}",
            f"--lan-ip={ip}",
            f"--start-port={sp}",
            f"--gateway-count={count}",
            registers,
        ]

    lan.check_isolated()
    d = NetnsLoop(lan.names["d"]).start()
    try:
        hosts.start("a", "a-reg", "--roles=register", f"--register-listen={a}:{rp}")
        b_opts = gateway_opts(b, 1)
        b_opts[0] = "--roles=register,gateway"
        hosts.start("b", "b", *b_opts, f"--register-listen={b}:{rp}")
        hosts.start("a", "a-gw", *gateway_opts(a, 2))
        hosts.start("c", "c-wk", "--roles=businessworker", "--worker-count=2", registers)
        hosts.start("e", "e-wk", "--roles=businessworker", "--worker-count=1", registers)
        d.run(scenario(hosts, lan, secret, gateway_opts, registers), timeout=240)
    finally:
        d.close()
        for host in ("c", "e"):  # so that stopping does not wait for unreachable peers
            with contextlib.suppress(Exception):
                lan.link(host, "up")
        hosts.stop_all()
    print(f"multi-host test ran for {time.monotonic() - started:.1f} s")


async def scenario(
    hosts: Hosts,
    lan: Lan,
    secret: str,
    gateway_opts: Callable[[str, int], list[str]],
    registers: str,
) -> None:
    a, b, c = lan.ip("a"), lan.ip("b"), lan.ip("c")
    pub = hosts.spec.public_port

    # -- clients on both gateway hosts ------------------------------------------------
    a1, a2 = await Client.open(f"ws://{a}:{pub}/"), await Client.open(f"ws://{a}:{pub}/")
    b1, b2 = await Client.open(f"ws://{b}:{pub}/"), await Client.open(f"ws://{b}:{pub}/")
    assert [x.gateway_ip for x in (a1, a2, b1, b2)] == [a, a, b, b]  # lan_ip in client_ids
    await a1.call("bind_uid", a1.id, "alice")
    for member, uid in ((b1, "bob"), (b2, "bob")):
        await member.call("bind_uid", member.id, uid)
        await member.call("join_group", member.id, "room")
    await a1.call("join_group", a1.id, "room")

    # -- group and uid sends span both hosts; so do cluster-wide queries ---------------
    await a2.call("send_to_group", "room", note("g1"))
    await asyncio.gather(a1.got("g1"), b1.got("g1"), b2.got("g1"))
    await none_got([a2], "g1")
    await a1.call("send_to_uid", "bob", note("u1"))
    await asyncio.gather(b1.got("u1"), b2.got("u1"))
    await b2.call("send_to_uid", "alice", note("u2"))
    await a1.got("u2")
    assert await b1.call("get_all_client_count") == 4
    room = await a2.call("get_client_id_list_by_group", "room")
    assert sorted(room) == sorted([a1.id, b1.id, b2.id])
    assert sorted(await a1.call("get_all_uid_list")) == ["alice", "bob"]

    # -- a push client (web app) on host d, merging both registers ----------------------
    push = AsyncGatewayClient(register=registers.split("=", 1)[1], secret=secret, timeout=10)
    await push.connect()
    assert await push.get_all_client_count() == 4
    await push.send_to_uid("alice", note("p1"))
    await a1.got("p1")

    # -- status and connections work on hosts that run only some roles ------------------
    status = json.loads(hosts.cli("b", "b", "status", "--json"))
    roles = sorted(p["role"] for p in status["processes"] if p["role"] != "master")
    assert roles == ["gateway", "register"]
    conns = json.loads(hosts.cli("a", "a-gw", "connections", "--json"))
    assert sorted(row["client_id"] for row in conns["connections"]) == sorted([a1.id, a2.id])

    # -- idle links survive (keep-alives), well past every link timeout ------------------
    await idle_links_survive(hosts, [a1, a2, b1, b2])
    await b1.call("send_to_group", "room", note("idle"))
    await asyncio.gather(a1.got("idle"), b2.got("idle"))
    await push.send_to_uid("bob", note("p2"))
    await asyncio.gather(b1.got("p2"), b2.got("p2"))

    # -- host e (a worker only) vanishes: the gateways drop its worker ------------------
    await worker_host_vanishes(hosts, lan, [a1, a2, b1, b2])

    # -- register R1 stops: existing traffic keeps working --------------------------------
    await asyncio.to_thread(hosts.stop, "a-reg")
    await b2.call("send_to_group", "room", note("g2"))
    await asyncio.gather(a1.got("g2"), b1.got("g2"))
    assert await a1.call("get_all_client_count") == 4

    # -- a gateway started afterwards on host c is discovered through register R2 -------
    await asyncio.to_thread(hosts.start, "c", "c-gw", *gateway_opts(c, 1))
    c1 = await Client.open(f"ws://{c}:{pub}/")  # its init needs a worker linked to it
    assert c1.gateway_ip == c
    await c1.call("join_group", c1.id, "room")
    await a1.call("send_to_group", "room", note("g3"))
    await asyncio.gather(b1.got("g3"), b2.got("g3"), c1.got("g3"))
    assert await b1.call("get_all_client_count") == 5
    await wait_for(
        _equals(push.get_all_client_count, 5), 15, "the push client counting the late gateway"
    )

    # -- the workers move from host c to host b: no client reconnects -------------------
    await asyncio.to_thread(hosts.stop, "c-wk")
    await asyncio.to_thread(
        hosts.start, "b", "b-wk", "--roles=businessworker", "--worker-count=1", registers
    )
    await c1.call("send_to_group", "room", note("moved"))
    await asyncio.gather(a1.got("moved"), b1.got("moved"), b2.got("moved"))
    assert await a2.call("get_all_client_count") == 5
    assert sorted(await a2.call("get_client_id_list_by_group", "room")) == sorted(
        [a1.id, b1.id, b2.id, c1.id]
    )
    assert all(x.ws.state.name == "OPEN" for x in (a1, a2, b1, b2, c1))

    # -- host c vanishes: its gateway is dropped within the link timeout -----------------
    gone = f"{c}:{hosts.spec.start_port}"
    assert all(gone in w["gateways"] for w in hosts.stats("b-wk", "businessworker"))
    lan.link("c", "down")
    took = await wait_for(
        lambda: all(gone not in w["gateways"] for w in hosts.stats("b-wk", "businessworker")),
        LINK_TIMEOUT + 10,
        "the workers dropping the vanished gateway",
    )
    assert took <= DROP_BOUND, took
    assert await a1.call("get_all_client_count") == 4  # no QueryTimeout: c is dropped
    await b1.call("send_to_group", "room", note("after"))
    await asyncio.gather(a1.got("after"), b2.got("after"))
    for client in (a1, a2, b1, b2):
        await client.ws.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(c1.ws.close(), 1)
    await push.close()


async def idle_links_survive(hosts: Hosts, clients: list[Client]) -> None:
    """Nothing is sent for :data:`IDLE` seconds: keep-alives alone hold every link
    (gateway-worker, gateway-push client, the registers' announcements and
    subscriptions) and the WebSocket clients; nothing is dropped or made again."""
    marks = hosts.log_marks()
    before = await asyncio.to_thread(hosts.links)
    by_role: dict[str, list[dict[str, Any]]] = {}
    for row in before.values():
        by_role.setdefault(row["role"], []).append(row)
    # 3 gateways (2 on a, 1 on b), 3 workers (2 on c, 1 on e), 2 registers (a, b)
    assert [(g["workers"], g["clients"]) for g in by_role["gateway"]] == [(3, 1)] * 3, before
    assert [len(w["gateways"]) for w in by_role["businessworker"]] == [3] * 3, before
    # every register lists the 3 gateways and serves 3 workers and the push client
    assert [(r["gateways"], r["subscribers"]) for r in by_role["register"]] == [(3, 4)] * 2
    await asyncio.sleep(IDLE)
    assert await asyncio.to_thread(hosts.links) == before
    assert [line for line in hosts.logs_since(marks) if LINK_EVENTS.search(line)] == []
    for client in clients:  # the same connections, still served
        assert (await client.call("context"))["client_id"] == client.id
        assert client.ws.state.name == "OPEN"


async def worker_host_vanishes(hosts: Hosts, lan: Lan, clients: list[Client]) -> None:
    """Host e's link goes down, its worker left running: every gateway drops the
    worker's link within :data:`DROP_BOUND`, both registers drop its subscription,
    and the clients (one of them served by e's worker until then) are served by the
    workers on host c without reconnecting."""
    e, pub = lan.ip("e"), hosts.spec.public_port
    (e_worker,) = hosts.stats("e-wk", "businessworker")
    c_pids = {w["pid"] for w in hosts.stats("c-wk", "businessworker")}
    # A gateway gives a new client to the worker with the fewest clients; on b, the
    # two clients went to c's workers (linked first), so a third one goes to e's.
    probe = await Client.open(f"ws://{lan.ip('b')}:{pub}/")
    served_by = (await probe.call("context"))["pid"]
    assert served_by == e_worker["pid"], f"probe served by pid {served_by}, not e's worker"

    def gateway_workers() -> list[int]:
        return [g["workers"] for name in ("a-gw", "b") for g in hosts.stats(name, "gateway")]

    def subscribers() -> list[int]:
        return [r["subscribers"] for name in ("a-reg", "b") for r in hosts.stats(name, "register")]

    assert (gateway_workers(), subscribers()) == ([3, 3, 3], [4, 4])
    marks = hosts.log_marks()
    lan.link("e", "down")
    took = await wait_for(
        lambda: gateway_workers() == [2, 2, 2], DROP_BOUND + 10, "the gateways dropping e's worker"
    )
    assert took <= DROP_BOUND, took
    # the registers drop it after REGISTER_DROP (< LINK_TIMEOUT) of silence
    await wait_for(lambda: subscribers() == [3, 3], 3, "the registers dropping e's worker")
    lines = hosts.logs_since(marks, masters=("a-gw", "a-reg", "b", "c-wk"))
    e_peer = re.escape(e) + r":\d+"
    dropped = [x for x in lines if re.search(rf"from {e_peer}> silent for .* dropping it", x)]
    assert len(dropped) == 3, lines  # one per gateway process
    closed = f"silent for more than {REGISTER_DROP:g} s"
    assert len([x for x in lines if re.search(rf"closing {e_peer}: {closed}", x)]) == 2, lines
    assert all(e in x for x in lines if "silent" in x), lines  # nothing else went silent

    for client in (probe, *clients):
        context = await client.call("context")
        assert context["client_id"] == client.id and context["pid"] in c_pids, context
    await probe.call("send_to_all", note("e gone"))
    await asyncio.gather(*(client.got("e gone") for client in (probe, *clients)))
    await probe.ws.close()
    await wait_for(
        _equals(lambda: clients[0].call("get_all_client_count"), len(clients)), 10, "probe closed"
    )
    # e's worker gave up its links too: stopping it does not wait for the gateways
    await wait_for(
        lambda: hosts.stats("e-wk", "businessworker")[0]["links"] == 0,
        DROP_BOUND,
        "e's worker dropping its links",
    )
    await asyncio.to_thread(hosts.stop, "e-wk")


def _equals(call: Callable[[], Coroutine[Any, Any, Any]], value: Any) -> Callable[[], Any]:
    async def check() -> bool:
        with contextlib.suppress(Exception):
            return bool(await call() == value)
        return False

    return check
