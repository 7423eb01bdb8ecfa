"""Thread mode (``BusinessWorker(callbacks="thread")``) against fake gateways: plain
callbacks and hooks off the event loop, per-client order with no overlap, clients
in parallel, the Gateway API from threads (sends in order, blocking queries, errors
logged with the call site), the slow-callback watchdog in both modes, and stops with
callbacks running. The Outbox on its own first."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest

from pygatewayworker import BusinessWorker, api, context
from pygatewayworker.businessworker.handle import WorkerAPI
from pygatewayworker.businessworker.threadapi import Outbox, ThreadAPI
from pygatewayworker.businessworker.worker import WorkerProcess
from pygatewayworker.gateway.protocol import Cmd, pack_session
from pygatewayworker.gatewayclient.spec import Kind, calls_of
from tests.fakegateway import UNIT, FakeGateway, FakeWatcher, wait_until

EVENTS = "tests.test_threads:ThreadEvents"


def on_a_loop() -> bool:
    """Whether an event loop runs in the calling thread (Django refuses to work then)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class ThreadEvents:
    """Plain callbacks (one async ``on_close``); a message ``"verb:arg"`` says what
    ``on_message`` does. Every callback notes its thread and whether a loop runs there;
    ``on_message`` counts how many run at once, per client and overall."""

    log: ClassVar[list[tuple[Any, ...]]] = []
    lock = threading.Lock()
    per_client: ClassVar[dict[str, int]] = {}
    overlaps: ClassVar[list[str]] = []
    active = 0
    peak = 0
    close_blocks = 0.0  # seconds the async on_close blocks the loop (the watchdog's test)

    @classmethod
    def reset(cls) -> None:
        cls.log.clear()
        cls.per_client.clear()
        cls.overlaps.clear()
        cls.active = cls.peak = 0
        cls.close_blocks = 0.0

    def on_worker_start(self, worker: Any) -> None:
        self.log.append(("worker_start", threading.get_ident(), on_a_loop()))

    def on_worker_stop(self, worker: Any) -> None:
        self.log.append(("worker_stop", threading.get_ident(), on_a_loop()))

    def on_connect(self, client_id: str) -> None:
        self.log.append(("connect", client_id, threading.get_ident(), on_a_loop()))

    def on_message(self, client_id: str, message: str) -> None:
        cls = type(self)
        with cls.lock:
            cls.per_client[client_id] = cls.per_client.get(client_id, 0) + 1
            if cls.per_client[client_id] > 1:
                cls.overlaps.append(message)
            cls.active += 1
            cls.peak = max(cls.peak, cls.active)
        try:
            self._perform(client_id, message)
        finally:
            with cls.lock:
                cls.per_client[client_id] -= 1
                cls.active -= 1

    def _perform(self, client_id: str, message: str) -> None:
        verb, _, arg = message.partition(":")
        if verb == "sleep":
            time.sleep(float(arg))
        elif verb == "tick":
            time.sleep(0.002)
        elif verb == "boom":
            raise RuntimeError("boom in a thread")
        elif verb == "set":
            session = context.session
            assert session is not None
            session["n"] = session.get("n", 0) + 1
        elif verb == "send":
            api.send_to_current_client(f"echo:{arg}")
            api.send_to_client(client_id, f"again:{arg}")
        elif verb == "query":
            api.send_to_current_client(f"count:{api.get_all_client_count()}")
        elif verb == "bind-then-ask":
            api.bind_uid(client_id, arg)  # queued to the loop...
            online = api.is_uid_online(arg)  # ...and asked after it
            api.send_to_current_client(f"online:{online}")
        elif verb == "bad-send":
            api.send_to_client("not-a-client-id", "x")
            api.send_to_current_client("after bad-send")
        elif verb == "own-thread":
            # a thread of the app's own: no context copied, so api is looked up there
            helper = threading.Thread(target=lambda: api.send_to_client(client_id, "from mine"))
            helper.start()
            helper.join()
        self.log.append(
            ("message", client_id, message, threading.get_ident(), on_a_loop(), context.client_id)
        )

    async def on_close(self, client_id: str) -> None:
        await asyncio.sleep(0)  # a coroutine that has suspended once, as most do
        time.sleep(self.close_blocks)  # blocking code in a coroutine: the loop stops
        self.log.append(("close", client_id, threading.get_ident(), on_a_loop()))


class Env:
    def __init__(self, gw: FakeGateway) -> None:
        self.gw = gw
        self.worker: WorkerProcess | None = None

    async def start_worker(self, **options: Any) -> WorkerProcess:
        options.setdefault("callbacks", "thread")
        config = BusinessWorker(
            events=EVENTS, register="127.0.0.1:1", secret="s", app="t", **options
        )
        self.worker = WorkerProcess(
            config, 0, watcher_factory=FakeWatcher([self.gw.address]).factory
        )
        await self.worker.start()
        return self.worker

    async def stop_worker(self, graceful: bool = True) -> None:
        assert self.worker is not None
        await self.worker.stop(graceful=graceful)
        self.worker = None

    def sent(self) -> list[Any]:
        """Messages sent to clients, in the order the gateway got them."""
        return [p[2] for p in self.gw.packets(Cmd.SEND_TO_CLIENT)]

    @staticmethod
    def messages(client_id: str) -> list[str]:
        return [e[2] for e in ThreadEvents.log if e[:2] == ("message", client_id)]


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    ThreadEvents.reset()
    gw = await FakeGateway(secret="s").start()
    result = Env(gw)
    try:
        yield result
    finally:
        if result.worker is not None:
            await result.worker.stop(graceful=False)
        await gw.stop()


# ---- Outbox --------------------------------------------------------------------------


async def test_outbox_keeps_each_threads_order_and_survives_a_failing_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outbox = Outbox(asyncio.get_running_loop())
    seen: list[tuple[int, int]] = []

    def boom() -> None:
        raise ValueError("a failing call")

    def post_many(thread: int) -> None:
        for n in range(200):
            outbox.post(seen.append, (thread, n))
            if n == 100:
                outbox.post(boom)

    threads = [threading.Thread(target=post_many, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    await asyncio.to_thread(lambda: [thread.join() for thread in threads])
    await wait_until(lambda: len(seen) == 800)
    for t in range(4):
        assert [n for thread, n in seen if thread == t] == list(range(200))
    assert caplog.text.count("ValueError: a failing call") == 4


# ---- callbacks in threads ------------------------------------------------------------


async def test_plain_callbacks_and_hooks_run_off_the_loop_coroutines_on_it(env: Env) -> None:
    await env.start_worker()
    gw, loop_thread = env.gw, threading.get_ident()
    cid = gw.client_id(1)
    gw.emit(Cmd.EV_CONNECT, 1)
    gw.emit(Cmd.EV_MESSAGE, 1, "plain")
    gw.emit(Cmd.EV_CLOSE, 1)
    await wait_until(lambda: any(e[0] == "close" for e in ThreadEvents.log))
    await env.stop_worker()
    log = ThreadEvents.log
    kinds = [e[0] for e in log]
    assert kinds == ["worker_start", "connect", "message", "close", "worker_stop"]
    start, connect, message, close, stop = log
    # (thread, a loop runs there): plain callbacks and hooks in threads with no loop
    assert start[1] != loop_thread and start[2] is False
    assert stop[1] != loop_thread and stop[2] is False
    assert connect[2] != loop_thread and connect[3] is False
    assert message[3] != loop_thread and message[4:] == (False, cid)  # context in the thread
    assert close == ("close", cid, loop_thread, True)  # async: on the loop


async def test_one_clients_events_in_order_and_never_at_once_while_clients_overlap(
    env: Env,
) -> None:
    await env.start_worker(threads=4)
    gw = env.gw
    burst = [f"tick:{n}" for n in range(50)]
    for message in burst:
        gw.emit(Cmd.EV_MESSAGE, 1, message)
    for conn_id in (2, 3, 4):
        gw.emit(Cmd.EV_MESSAGE, conn_id, "sleep:0.2")
    await wait_until(lambda: len(env.messages(gw.client_id(1))) == 50)
    await wait_until(lambda: all(env.messages(gw.client_id(c)) for c in (2, 3, 4)))
    assert env.messages(gw.client_id(1)) == burst
    assert ThreadEvents.overlaps == []
    assert ThreadEvents.peak >= 3  # the sleeping clients ran side by side


async def test_a_blocked_client_does_not_hold_up_another(env: Env) -> None:
    await env.start_worker(threads=4)
    gw = env.gw
    gw.emit(Cmd.EV_MESSAGE, 1, "sleep:2")
    await wait_until(lambda: ThreadEvents.active == 1)
    asked = time.monotonic()
    gw.emit(Cmd.EV_MESSAGE, 2, "send:quick")
    await wait_until(lambda: "echo:quick" in env.sent())
    assert time.monotonic() - asked < 1.0  # well below the other client's 2 s
    assert env.worker is not None and env.worker.stats()["threads_busy"] == 1


async def test_session_write_back_sends_and_queries_from_threads(env: Env) -> None:
    gw = env.gw
    for conn_id in (1, 2, 3):
        gw.add_client(conn_id)
    await env.start_worker()
    gw.emit(Cmd.EV_MESSAGE, 1, "set", session={"n": 1})
    gw.emit(Cmd.EV_MESSAGE, 1, "send:a")
    gw.emit(Cmd.EV_MESSAGE, 1, "query")
    gw.emit(Cmd.EV_MESSAGE, 2, "bind-then-ask:u2")
    await wait_until(lambda: "count:3" in env.sent() and "online:True" in env.sent())
    assert gw.packets(Cmd.SET_SESSION) == [[Cmd.SET_SESSION, 1, pack_session({"n": 2})]]
    mine = [m for m in env.sent() if m != "online:True"]
    assert mine == ["echo:a", "again:a", "count:3"]  # in call order, event after event
    assert gw.conns[2].uid == "u2"


async def test_an_exception_in_a_thread_is_logged_and_the_worker_keeps_serving(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    worker = await env.start_worker()
    gw = env.gw
    cid = gw.client_id(4)
    with caplog.at_level(logging.ERROR, logger="businessworker"):
        gw.emit(Cmd.EV_MESSAGE, 4, "boom", session={"a": 1})
        gw.emit(Cmd.EV_MESSAGE, 4, "send:after")
        await wait_until(lambda: "echo:after" in env.sent())
    assert f"on_message of client {cid} raised" in caplog.text
    assert "RuntimeError: boom in a thread" in caplog.text  # the traceback
    assert worker.stats()["callback_errors"] == 1
    assert gw.packets(Cmd.SET_SESSION) == []  # a failed callback's session is not kept


async def test_an_api_error_in_a_thread_is_logged_with_the_call_site(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    await env.start_worker()
    gw = env.gw
    cid = gw.client_id(5)
    gw.emit(Cmd.EV_MESSAGE, 5, "bad-send")
    await wait_until(lambda: "after bad-send" in env.sent())
    assert "api.send_to_client() called at " in caplog.text
    assert f"test_threads.py:{_line_of('not-a-client-id')} for client {cid} failed" in caplog.text
    assert "InvalidClientId" in caplog.text


async def test_api_from_a_thread_the_app_starts_itself(env: Env) -> None:
    await env.start_worker()
    env.gw.emit(Cmd.EV_MESSAGE, 6, "own-thread")
    await wait_until(lambda: "from mine" in env.sent())
    # and from a thread of the test, outside any event: a blocking query
    count = await asyncio.to_thread(lambda: api.get_all_client_count())
    assert count == 0


async def test_the_thread_api_has_every_call_of_the_table_in_its_form() -> None:
    """Sends queued, queries blocking, as gatewayclient.spec classes each call."""
    threaded = ThreadAPI(WorkerAPI({}), Outbox(asyncio.get_running_loop()), UNIT)
    for call in calls_of(worker=True):
        form = ThreadAPI._query if call.kind is Kind.QUERY else ThreadAPI._call
        assert getattr(threaded, call.name).func.__func__ is form, call.name
    assert threaded.query_timeout == 5.0  # not a call: as it is


async def test_a_blocking_query_on_the_loops_thread_raises(env: Env) -> None:
    worker = await env.start_worker()
    assert worker.api is not None
    threaded = ThreadAPI(worker.api, Outbox(asyncio.get_running_loop()), UNIT)
    with pytest.raises(RuntimeError, match="await it in an async def callback"):
        threaded.get_all_client_count()


# ---- the slow-callback watchdog ------------------------------------------------------


@pytest.mark.parametrize("callbacks", ["thread", "inline"])
async def test_a_slow_callback_is_logged_once_naming_it_and_its_client(
    env: Env, caplog: pytest.LogCaptureFixture, callbacks: str
) -> None:
    worker = await env.start_worker(callbacks=callbacks, slow_callback=0.2)
    gw = env.gw
    cid = gw.client_id(3)
    with caplog.at_level(logging.WARNING, logger="businessworker"):
        gw.emit(Cmd.EV_MESSAGE, 3, "sleep:1.2")
        gw.emit(Cmd.EV_MESSAGE, 3, "send:done")
        await wait_until(lambda: "echo:done" in env.sent())
        await asyncio.sleep(0.3)  # a second look would have come by now
    lines = [r.getMessage() for r in caplog.records if "slow callback" in r.getMessage()]
    assert len(lines) == 1, lines
    assert f"ThreadEvents.on_message of client {cid}" in lines[0]
    where = "in a callback thread" if callbacks == "thread" else "blocked the event loop"
    assert where in lines[0] and "slow_callback=0.2 s" in lines[0]
    assert worker.stats()["slow_callbacks"] == 1


async def test_a_coroutine_callback_blocking_the_loop_is_named(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """A coroutine callback runs in its client's task on the loop; blocking code in it
    is named as that callback of that client."""
    worker = await env.start_worker(callbacks="thread", slow_callback=0.2)
    ThreadEvents.close_blocks = 0.8
    cid = env.gw.client_id(4)
    with caplog.at_level(logging.WARNING, logger="businessworker"):
        env.gw.emit(Cmd.EV_CLOSE, 4)
        await wait_until(lambda: any(e[:2] == ("close", cid) for e in ThreadEvents.log))
        await asyncio.sleep(0.3)
    lines = [r.getMessage() for r in caplog.records if "slow callback" in r.getMessage()]
    assert len(lines) == 1, lines
    assert f"ThreadEvents.on_close of client {cid}" in lines[0], lines
    assert "blocked the event loop" in lines[0]
    assert worker.stats()["slow_callbacks"] == 1


async def test_with_a_lag_probe_the_watchdog_reads_its_pulse_and_keeps_no_timer(
    env: Env, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a worker process the loop-lag probe runs (``runtime.service.PULSE`` says
    when it is due next): the watchdog stops its own timer, and a probe overdue by
    the threshold is a blocked loop, reported once. Here the test plays the probe."""
    from pygatewayworker.runtime.service import PULSE

    monkeypatch.setattr(PULSE, "due", time.monotonic() + 0.1)
    worker = await env.start_worker(callbacks="inline", slow_callback=0.2)
    watchdog = worker._watchdog
    assert watchdog is not None and watchdog._timer is None  # no wake-ups of its own
    assert PULSE.idle_interval == watchdog.period == 0.05  # a block noticed a period late
    await asyncio.sleep(0.05)  # the probe is not due yet: nothing to report
    with caplog.at_level(logging.WARNING, logger="businessworker"):
        _block_the_loop(0.8)
        await asyncio.sleep(0.3)
    lines = [r.getMessage() for r in caplog.records if "slow callback" in r.getMessage()]
    assert len(lines) == 1 and "_block_the_loop (" in lines[0], lines
    assert worker.stats()["slow_callbacks"] == 1
    monkeypatch.setattr(PULSE, "due", 0.0)  # the probe stopped, and the watchdog's timer
    await asyncio.sleep(0.5)  # with it: a stale stamp is no blocked loop
    assert worker.stats()["slow_callbacks"] == 1


async def test_the_watchdog_names_blocking_code_outside_events(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    await env.start_worker(callbacks="inline", slow_callback=0.2)
    with caplog.at_level(logging.WARNING, logger="businessworker"):
        _block_the_loop(0.8)
        await asyncio.sleep(0.3)
    lines = [r.getMessage() for r in caplog.records if "slow callback" in r.getMessage()]
    assert len(lines) == 1 and "_block_the_loop (" in lines[0], lines


def _block_the_loop(seconds: float) -> None:
    time.sleep(seconds)


# ---- stopping ------------------------------------------------------------------------


async def test_a_graceful_stop_lets_a_running_thread_callback_finish(env: Env) -> None:
    await env.start_worker()
    gw = env.gw
    gw.emit(Cmd.EV_MESSAGE, 1, "sleep:0.5")
    gw.emit(Cmd.EV_MESSAGE, 1, "send:late")  # queued behind it: finished too
    await wait_until(lambda: ThreadEvents.active == 1)
    await env.stop_worker(graceful=True)
    assert "echo:late" in env.sent()
    assert ThreadEvents.log[-1][0] == "worker_stop"


async def test_a_stop_past_the_drain_bound_drops_the_callback_and_leaves_its_thread(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    await env.start_worker(drain_timeout=0.3)
    gw = env.gw
    gw.emit(Cmd.EV_MESSAGE, 1, "sleep:4")
    gw.emit(Cmd.EV_MESSAGE, 1, "send:never")
    await wait_until(lambda: ThreadEvents.active == 1)
    began = time.monotonic()
    await env.stop_worker(graceful=True)
    assert time.monotonic() - began < 3.5  # drain 0.3 s + the threads' 2 s, not 4 s
    assert "events still running or queued after 0.3 s, dropped" in caplog.text
    assert "1 callback thread(s) still running a dropped event; left behind" in caplog.text
    assert ThreadEvents.log[-1][0] == "worker_stop"  # the hook had a thread of its own
    assert "echo:never" not in env.sent()


def _line_of(text: str) -> int:
    """The line of this file that holds ``text`` in a call."""
    with open(__file__) as source:
        for number, line in enumerate(source, 1):
            if text in line and "api." in line:
                return number
    raise AssertionError(text)
