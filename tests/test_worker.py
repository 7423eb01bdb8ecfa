"""WorkerProcess against fake gateways: event dispatch in order per client with the
context set, session write-back, errors in callbacks, the api handle, WORKER_LEAVE /
LEAVE_ACK drain, boot errors, discovery changes and re-linking; each in both
callback modes (thread-mode specifics are in test_threads.py)."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest

import pygatewayworker.businessworker.worker as worker_module
from pygatewayworker import BusinessWorker, api, context
from pygatewayworker.businessworker.worker import WorkerBootError, WorkerProcess
from pygatewayworker.gateway.protocol import NO_WS_CONNECT, Cmd, pack_session
from pygatewayworker.gatewayclient.errors import NoRegister
from tests.fakegateway import (
    UNIT,
    FakeGateway,
    FakeWatcher,
    announced_register,
    wait_until,
)

EVENTS = "tests.test_worker:RecordingEvents"
APP_VAR: contextvars.ContextVar[str] = contextvars.ContextVar("app_var", default="unset")


def snapshot() -> tuple[Any, ...]:
    return (
        context.client_id,
        context.client_ip,
        context.client_port,
        context.gateway_ip,
        context.gateway_port,
        context.gateway_address,
        dict(context.session or {}),
    )


class RecordingEvents:
    """Sync and async callbacks; what a message says decides what the callback does."""

    log: ClassVar[list[tuple[Any, ...]]] = []
    contexts: ClassVar[dict[str, tuple[Any, ...]]] = {}

    def on_worker_start(self, worker: Any) -> None:
        self.log.append(("worker_start", worker.name, worker.index))

    async def on_worker_stop(self, worker: Any) -> None:
        self.log.append(("worker_stop", worker.name))

    def on_connect(self, client_id: str) -> None:
        self.log.append(("connect", client_id))
        self.contexts[client_id] = snapshot()

    def on_websocket_connect(self, client_id: str, request: dict[str, Any]) -> None:
        self.log.append(("websocket_connect", client_id, request["path"]))

    async def on_message(self, client_id: str, message: str | bytes) -> None:
        if message == "slow":
            await asyncio.sleep(0.2)
        elif message == "boom":
            raise RuntimeError("boom in a callback")
        elif message == "set":
            session = context.session
            assert session is not None
            session["count"] = session.get("count", 0) + 1
        elif message == "assign":
            context.session = {"new": True}
        elif message == "reply":
            api.send_to_current_client(f"echo:{message}")
        elif message == "query":
            self.log.append(("count", await api.get_all_client_count()))
        self.log.append(("message", client_id, message))
        self.contexts[client_id] = snapshot()

    async def on_close(self, client_id: str) -> None:
        session = context.session
        assert session is not None
        session["closed"] = True  # never written back
        self.log.append(("close", client_id, dict(session)))


class FailingStartEvents:
    @staticmethod
    def on_worker_start(worker: Any) -> None:
        raise ValueError("database unreachable")


class Env:
    def __init__(
        self, gw1: FakeGateway, gw2: FakeGateway, watcher: FakeWatcher, callbacks: str = "thread"
    ) -> None:
        self.gw1, self.gw2, self.watcher = gw1, gw2, watcher
        self.callbacks = callbacks
        self.worker: WorkerProcess | None = None

    async def start_worker(self, events: str = EVENTS, **options: Any) -> WorkerProcess:
        options.setdefault("callbacks", self.callbacks)
        config = BusinessWorker(
            events=events, register="127.0.0.1:1", secret="s", app="t", **options
        )
        self.worker = WorkerProcess(config, 3, watcher_factory=self.watcher.factory)
        await self.worker.start()
        return self.worker

    def messages(self, client_id: str) -> list[Any]:
        return [entry[2] for entry in RecordingEvents.log if entry[:2] == ("message", client_id)]


@pytest.fixture(params=["thread", "inline"])
async def env(request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    """Fake gateways; the worker runs plain callbacks in each mode in turn."""
    RecordingEvents.log.clear()
    RecordingEvents.contexts.clear()
    gw1 = await FakeGateway(secret="s", public_port=7272).start()
    gw2 = await FakeGateway(secret="s", public_port=7273).start()
    result = Env(gw1, gw2, FakeWatcher([gw1.address, gw2.address]), request.param)
    try:
        yield result
    finally:
        if result.worker is not None:
            await result.worker.stop(graceful=False)
        await gw1.stop()
        await gw2.stop()


def event(cmd: Cmd, conn_id: int, payload: Any = None, session: Any = None) -> list[Any]:
    blob = pack_session(session) if isinstance(session, dict) else session
    return [cmd, conn_id, blob, "203.0.113.7", 50000, payload]


async def test_start_links_every_gateway(env: Env) -> None:
    worker = await env.start_worker()
    assert RecordingEvents.log == [("worker_start", "t.businessworker.3", 3)]
    for gw in (env.gw1, env.gw2):
        assert [link.name for link in gw.worker_links()] == ["t.businessworker.3"]
    stats = worker.stats()
    assert stats["links"] == 2 and stats["gateways"] == sorted([env.gw1.address, env.gw2.address])


async def test_events_in_order_per_client_with_context(env: Env) -> None:
    await env.start_worker()
    gw1, gw2 = env.gw1, env.gw2
    cid = gw1.client_id(1)
    other = gw2.client_id(5)
    gw1.emit(Cmd.EV_CONNECT, 1, session=None)
    request = {"path": "/ws", "query": "t=1", "headers": {}, "cookies": {}}
    gw1.emit(Cmd.EV_WS_CONNECT, 1, request)
    gw1.emit(Cmd.EV_MESSAGE, 1, "slow")
    gw1.emit(Cmd.EV_MESSAGE, 1, "second")
    gw1.emit(Cmd.EV_MESSAGE, 1, b"\x00binary")
    gw1.emit(Cmd.EV_CLOSE, 1, session={"k": "v"})
    gw2.emit(Cmd.EV_MESSAGE, 5, "fast", session={"s": 1}, remote=("198.51.100.1", 4000))
    await wait_until(lambda: any(e[0] == "close" for e in RecordingEvents.log))
    log = RecordingEvents.log
    mine = [e for e in log if len(e) > 1 and e[1] == cid]
    assert mine == [
        ("connect", cid),
        ("websocket_connect", cid, "/ws"),
        ("message", cid, "slow"),
        ("message", cid, "second"),
        ("message", cid, b"\x00binary"),
        ("close", cid, {"k": "v", "closed": True}),
    ]
    # another client ran while the slow callback slept
    assert log.index(("message", other, "fast")) < log.index(("message", cid, "slow"))
    assert RecordingEvents.contexts[cid] == (
        cid,
        "203.0.113.7",
        50000,
        "127.0.0.1",
        7272,
        gw1.address,
        {},
    )
    assert RecordingEvents.contexts[other] == (
        other,
        "198.51.100.1",
        4000,
        "127.0.0.1",
        7273,
        gw2.address,
        {"s": 1},
    )
    assert context.client_id is None and context.session is None  # outside an event


async def test_session_written_back_only_when_changed(env: Env) -> None:
    await env.start_worker()
    gw1 = env.gw1
    gw1.emit(Cmd.EV_MESSAGE, 2, "set", session={"count": 1})
    gw1.emit(Cmd.EV_MESSAGE, 2, "unchanged", session={"count": 2})
    gw1.emit(Cmd.EV_MESSAGE, 3, "assign")
    gw1.emit(Cmd.EV_MESSAGE, 4, "unchanged")  # no session at all: {} stays {}
    gw1.emit(Cmd.EV_CLOSE, 2, session={"count": 2})  # on_close changes it: not written
    gw1.emit(Cmd.EV_MESSAGE, 9, "reply")  # marks the end of the stream
    await wait_until(lambda: bool(gw1.packets(Cmd.SEND_TO_CLIENT)))
    assert sorted(gw1.packets(Cmd.SET_SESSION)) == sorted(
        [
            [Cmd.SET_SESSION, 2, pack_session({"count": 2})],
            [Cmd.SET_SESSION, 3, pack_session({"new": True})],
        ]
    )
    assert env.gw2.packets(Cmd.SET_SESSION) == []


async def test_events_sent_before_the_gateway_had_our_write_back_get_our_session(
    env: Env,
) -> None:
    """The gateway ships the session it holds with every event; one sent before our
    SET_SESSION reached it carries the old one. Such events (queued here, or arriving
    before the gateway answers the PING behind our SET_SESSION) start from the session
    we wrote; later ones from the session they carry (another process may have set it)."""
    worker = await env.start_worker()
    gw1, gw2 = env.gw1, env.gw2

    def written(conn_id: int, gw: FakeGateway = gw1) -> list[Any]:
        return [p[2] for p in gw.packets(Cmd.SET_SESSION) if p[1] == conn_id]

    # back to back: the second was sent before our first write-back existed
    gw1.emit(Cmd.EV_MESSAGE, 2, "set", session={"count": 1})
    gw1.emit(Cmd.EV_MESSAGE, 2, "set", session={"count": 1})
    await wait_until(lambda: len(written(2)) == 2)
    assert written(2) == [pack_session({"count": 2}), pack_session({"count": 3})]

    # later, but the gateway has not answered the PING behind our write-back yet
    gw2.answer_pings = False
    gw2.emit(Cmd.EV_MESSAGE, 3, "set", session={"count": 1})
    await wait_until(lambda: len(written(3, gw2)) == 1)
    await asyncio.sleep(0.1)
    gw2.emit(Cmd.EV_MESSAGE, 3, "set", session={"count": 1})
    await wait_until(lambda: len(written(3, gw2)) == 2)
    assert written(3, gw2)[1] == pack_session({"count": 3})

    # once the gateway has handled it, the session an event carries counts
    link = worker._pool.links[gw1.address] if worker._pool else None
    assert link is not None
    seen = link.pongs_seen
    gw1.emit(Cmd.EV_MESSAGE, 4, "set", session={"count": 1})
    await wait_until(lambda: len(written(4)) == 1 and link.pongs_seen > seen)
    gw1.emit(Cmd.EV_MESSAGE, 4, "set", session={"count": 10, "by": "push client"})
    await wait_until(lambda: len(written(4)) == 2)
    assert written(4)[1] == pack_session({"count": 11, "by": "push client"})


async def test_callback_exception_is_logged_and_worker_keeps_serving(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    worker = await env.start_worker()
    cid = env.gw1.client_id(4)
    with caplog.at_level(logging.ERROR, logger="businessworker"):
        env.gw1.emit(Cmd.EV_MESSAGE, 4, "boom", session={"a": 1})
        env.gw1.emit(Cmd.EV_MESSAGE, 4, "after")
        await wait_until(lambda: "after" in env.messages(cid))
    assert f"on_message of client {cid} raised" in caplog.text
    assert "RuntimeError: boom in a callback" in caplog.text  # the traceback
    assert worker.stats()["callback_errors"] == 1


async def test_api_handle_routes_to_the_current_clients_gateway(env: Env) -> None:
    worker = await env.start_worker()
    env.gw2.emit(Cmd.EV_MESSAGE, 6, "reply")
    env.gw2.emit(Cmd.EV_MESSAGE, 6, "query")  # a query from a callback does not deadlock
    await wait_until(lambda: "query" in env.messages(env.gw2.client_id(6)))
    assert env.gw2.packets(Cmd.SEND_TO_CLIENT) == [[Cmd.SEND_TO_CLIENT, 6, "echo:reply"]]
    assert env.gw1.packets(Cmd.SEND_TO_CLIENT) == []
    assert ("count", 0) in RecordingEvents.log
    api.send_to_uid("u", "from a timer")  # outside an event, inside the worker process
    with pytest.raises(RuntimeError, match="works only inside an Events callback"):
        api.send_to_current_client("no current client")
    await wait_until(lambda: len(env.gw1.packets(Cmd.SEND_TO_UID)) == 1)
    stats = worker.stats()
    assert stats["events_in"]["message"] == 2 and stats["messages_out"] >= 3


async def test_graceful_stop_handles_events_sent_before_leave_ack(env: Env) -> None:
    worker = await env.start_worker()
    cid = env.gw1.client_id(8)
    env.gw1.events_before_ack = [event(Cmd.EV_MESSAGE, 8, "slow"), event(Cmd.EV_MESSAGE, 8, "late")]
    await worker.stop(graceful=True)
    env.worker = None
    assert env.messages(cid) == ["slow", "late"]
    assert RecordingEvents.log[-1] == ("worker_stop", "t.businessworker.3")
    assert env.gw1.packets(Cmd.WORKER_LEAVE) and env.gw2.packets(Cmd.WORKER_LEAVE)
    await wait_until(lambda: not env.gw1.links and not env.gw2.links)
    with pytest.raises(RuntimeError, match="only inside a business worker process"):
        api.send_to_all("after stop")


async def test_graceful_stop_handles_a_burst_of_events_sent_before_leave_ack(env: Env) -> None:
    # thousands of events in few reads: the link handles them over several loop
    # turns (gatewayclient.link's pacing); LEAVE_ACK, behind them, must not overtake
    # them, and the close that follows the stop loses none
    worker = await env.start_worker()
    burst = 3000
    env.gw1.events_before_ack = [event(Cmd.EV_MESSAGE, 1 + i % 20, f"b{i}") for i in range(burst)]
    await worker.stop(graceful=True)
    env.worker = None
    for conn_id in range(1, 21):
        expected = [f"b{i}" for i in range(conn_id - 1, burst, 20)]
        assert env.messages(env.gw1.client_id(conn_id)) == expected
    assert RecordingEvents.log[-1] == ("worker_stop", "t.businessworker.3")


async def test_stop_without_leave_ack_is_bounded(
    env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    worker = await env.start_worker()
    env.gw2.send_leave_ack = False
    monkeypatch.setattr(worker_module, "FAST_LEAVE_TIMEOUT", 0.3)
    with caplog.at_level(logging.WARNING, logger="businessworker"):
        await asyncio.wait_for(worker.stop(graceful=False), UNIT)
    env.worker = None
    assert f"no LEAVE_ACK from {env.gw2.address}" in caplog.text


async def test_events_import_errors_are_boot_errors(env: Env) -> None:
    with pytest.raises(WorkerBootError, match="tests.no_such_module:Events"):
        await env.start_worker("tests.no_such_module:Events")
    with pytest.raises(WorkerBootError, match="tests.test_worker:Missing"):
        await env.start_worker("tests.test_worker:Missing")
    env.worker = None


async def test_failing_on_worker_start_is_a_boot_error(env: Env) -> None:
    with pytest.raises(WorkerBootError, match="database unreachable"):
        await env.start_worker("tests.test_worker:FailingStartEvents")
    env.worker = None
    assert env.gw1.packets(Cmd.WORKER_LEAVE)  # it left cleanly
    await wait_until(lambda: not env.gw1.links)


async def test_no_register_fails_the_start(env: Env) -> None:
    env.watcher = FakeWatcher([], ok=False, error="register 127.0.0.1:1 refused us: wrong secret")
    with pytest.raises(NoRegister, match="refused us: wrong secret"):
        await env.start_worker()
    env.worker = None


async def test_links_gateways_that_appear_later_and_relinks(env: Env) -> None:
    env.watcher = FakeWatcher([env.gw1.address])
    worker = await env.start_worker()
    assert worker.stats()["links"] == 1
    env.watcher.set([env.gw1.address, env.gw2.address])
    await wait_until(lambda: worker.stats()["links"] == 2)
    port = env.gw2.port
    await env.gw2.stop()  # the gateway restarts on the same port
    await wait_until(lambda: worker.stats()["links"] == 1)
    await env.gw2.start(port)
    await wait_until(lambda: worker.stats()["links"] == 2 and bool(env.gw2.worker_links()))
    env.gw2.emit(Cmd.EV_MESSAGE, 1, "after restart")
    await wait_until(lambda: "after restart" in env.messages(env.gw2.client_id(1)))


async def test_with_the_real_register(env: Env) -> None:
    """Discovery through a real register, the gateways announced by the real
    GatewayAnnouncer."""
    async with announced_register([env.gw1.address, env.gw2.address], "s") as register:
        config = BusinessWorker(events=EVENTS, register=register, secret="s")
        env.worker = WorkerProcess(config)
        await env.worker.start()
        assert env.worker.stats()["links"] == 2
        await env.worker.stop(graceful=True)
        env.worker = None


def test_context_outside_an_event() -> None:
    assert context.client_id is None and context.gateway_port is None and context.session is None
    with pytest.raises(RuntimeError, match="only be set while handling a client event"):
        context.session = {}


class PlainEvents:
    """Only plain functions: in inline mode they run in the link reader (no task per
    event).
    ``later`` returns a coroutine from a plain function, which must still be awaited
    before the client's next event."""

    log: ClassVar[list[tuple[Any, ...]]] = []
    seen_var: ClassVar[list[tuple[Any, Any]]] = []

    def on_connect(self, client_id: str) -> None:
        self.log.append(("connect", client_id, context.client_id))

    def on_message(self, client_id: str, message: Any) -> Any:
        self.seen_var.append((message, APP_VAR.get()))
        APP_VAR.set(message)  # set and never reset: must not leak to other events
        if message == "boom":
            raise RuntimeError("boom inline")
        if message == "cancel inline":
            raise asyncio.CancelledError
        if message == "cancelled future":
            future = asyncio.get_running_loop().create_future()
            future.cancel()
            return future
        if message == "set":
            session = context.session
            assert session is not None
            session["n"] = session.get("n", 0) + 1
        if message == "reply":
            api.send_to_current_client(f"echo:{context.client_id}")
        if message == "later":
            return self._later(client_id)
        self.log.append(("message", client_id, message, dict(context.session or {})))
        return None

    async def _later(self, client_id: str) -> None:
        await asyncio.sleep(0.2)
        session = context.session
        assert session is not None and context.client_id == client_id
        session["later"] = True
        self.log.append(("message", client_id, "later", dict(session)))

    def on_close(self, client_id: str) -> None:
        self.log.append(("close", client_id))


async def test_plain_callbacks_run_inline_in_order_with_context_and_write_back(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    PlainEvents.log.clear()
    worker = await env.start_worker("tests.test_worker:PlainEvents", callbacks="inline")
    gw1 = env.gw1
    cid, other = gw1.client_id(1), gw1.client_id(2)
    gw1.emit(Cmd.EV_CONNECT, 1)
    gw1.emit(Cmd.EV_MESSAGE, 1, "later", session={"n": 0})
    gw1.emit(Cmd.EV_MESSAGE, 1, "after later")  # waits for the awaitable
    gw1.emit(Cmd.EV_MESSAGE, 2, "set", session={"n": 4})
    gw1.emit(Cmd.EV_MESSAGE, 2, "boom")
    gw1.emit(Cmd.EV_MESSAGE, 2, "reply")
    gw1.emit(Cmd.EV_CLOSE, 1)
    await wait_until(lambda: ("close", cid) in PlainEvents.log)
    mine = [e for e in PlainEvents.log if e[1] == cid]
    assert mine == [
        ("connect", cid, cid),
        ("message", cid, "later", {"n": 0, "later": True}),
        # queued before "later" wrote its session back: starts from that session
        ("message", cid, "after later", {"n": 0, "later": True}),
        ("close", cid),
    ]
    # the other client was not held up by the awaitable of the first
    log = PlainEvents.log
    assert log.index(("message", other, "set", {"n": 5})) < log.index(mine[1])
    await wait_until(lambda: bool(gw1.packets(Cmd.SEND_TO_CLIENT)))
    assert gw1.packets(Cmd.SEND_TO_CLIENT) == [[Cmd.SEND_TO_CLIENT, 2, f"echo:{other}"]]
    await wait_until(lambda: len(gw1.packets(Cmd.SET_SESSION)) == 2)
    assert sorted(gw1.packets(Cmd.SET_SESSION)) == sorted(
        [
            [Cmd.SET_SESSION, 1, pack_session({"n": 0, "later": True})],
            [Cmd.SET_SESSION, 2, pack_session({"n": 5})],
        ]
    )
    assert f"on_message of client {other} raised" in caplog.text
    assert "RuntimeError: boom inline" in caplog.text
    stats = worker.stats()
    assert stats["callback_errors"] == 1 and stats["clients"] == 0
    assert context.client_id is None  # nothing leaked out of the inline calls


async def test_plain_callbacks_cancel_and_context_variables(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """A plain callback that raises CancelledError, or returns an awaitable that ends
    cancelled, is a failed event (logged, counted): the link and the client's later
    events carry on. A context variable a callback sets stays with its event."""
    PlainEvents.log.clear()
    PlainEvents.seen_var.clear()
    worker = await env.start_worker("tests.test_worker:PlainEvents", callbacks="inline")
    gw1 = env.gw1
    cid = gw1.client_id(7)
    gw1.emit(Cmd.EV_MESSAGE, 7, "cancel inline")
    gw1.emit(Cmd.EV_MESSAGE, 7, "cancelled future")
    gw1.emit(Cmd.EV_MESSAGE, 7, "after")
    gw1.emit(Cmd.EV_MESSAGE, 8, "other client")
    await wait_until(lambda: ("message", cid, "after", {}) in PlainEvents.log)
    await wait_until(lambda: worker.stats()["clients"] == 0)
    assert worker.stats()["callback_errors"] == 2
    assert f"on_message of client {cid} raised" in caplog.text
    seen = dict(PlainEvents.seen_var)
    # events run inline each start from a clean context; "after" was queued behind
    # the awaitable of "cancelled future" and ran in that event's task
    assert [seen[m] for m in ("cancel inline", "cancelled future", "other client")] == ["unset"] * 3
    assert worker.stats()["links"] == 2  # the link survived the inline cancel


async def test_hello_tells_the_gateways_whether_the_app_wants_ws_connect(env: Env) -> None:
    """A worker whose app has no ``on_websocket_connect`` announces NO_WS_CONNECT in
    its HELLO (the gateways then skip EV_WS_CONNECT); one whose app has it, nothing."""
    worker = await env.start_worker()  # RecordingEvents.on_websocket_connect
    assert [len(p) for p in env.gw1.packets(Cmd.HELLO)] == [5]
    await worker.stop(graceful=False)
    env.worker = None
    env.gw1.received.clear()
    await env.start_worker("tests.test_worker:PlainEvents")
    await wait_until(lambda: bool(env.gw1.packets(Cmd.HELLO)))
    assert env.gw1.packets(Cmd.HELLO)[0][5] == {"hooks": [NO_WS_CONNECT]}
