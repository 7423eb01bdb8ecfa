"""businessworker.dispatch: coroutine callbacks, run by a task (started eagerly on
Python 3.12+), against the fake gateways of test_worker.py, in both callback
modes: order per client, a current task from the first line (``asyncio.timeout``),
session write-back, context variables, exceptions before and after the first
suspension, cancellation, and the graceful stop waiting for a suspended one."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar

import pytest

from pygatewayworker import api, context
from pygatewayworker.gateway.protocol import Cmd, pack_session
from tests.fakegateway import wait_until
from tests.test_worker import APP_VAR, Env, env, event

__all__ = ["env"]  # the fixture, shared with test_worker.py

EVENTS = "tests.test_dispatch:AsyncEvents"


class AsyncEvents:
    """``async def`` callbacks; the message says what to do. Every entry of ``log``
    records whether the callback ran in a task (``asyncio.current_task()``), and
    each message event runs inside ``asyncio.timeout()``, which needs one."""

    log: ClassVar[list[tuple[Any, ...]]] = []
    finished: ClassVar[list[str]] = []

    async def on_connect(self, client_id: str) -> None:
        api.send_to_current_client(f"init:{client_id}")  # like the chat's init
        self.log.append(("connect", client_id, _in_task()))

    async def on_message(self, client_id: str, message: Any) -> None:
        async with asyncio.timeout(30):  # needs a current task from the first line
            await self._message(client_id, message)

    async def _message(self, client_id: str, message: Any) -> None:
        before = (_in_task(), APP_VAR.get())
        APP_VAR.set(message)  # set and never reset: stays with this event
        session = context.session
        assert session is not None
        session[message] = True
        if message == "boom":
            raise RuntimeError("boom before suspending")
        if message == "cancel":
            raise asyncio.CancelledError
        if message in ("slow", "slow boom", "hang"):
            try:
                await asyncio.sleep(0.2 if message != "hang" else 20)
            finally:
                self.finished.append(message)
            assert context.client_id == client_id and APP_VAR.get() == message
            if message == "slow boom":
                raise RuntimeError("boom after suspending")
        if message == "query":
            await api.get_all_client_count()  # a real suspension on a reply
        api.send_to_current_client(f"echo:{message}")
        self.log.append(("message", client_id, message, before, _in_task()))

    async def on_close(self, client_id: str) -> None:
        self.log.append(("close", client_id, _in_task()))


def _in_task() -> bool:
    return asyncio.current_task() is not None


@pytest.fixture(autouse=True)
def _clear() -> None:
    AsyncEvents.log.clear()
    AsyncEvents.finished.clear()


def _messages(client_id: str) -> list[tuple[Any, ...]]:
    return [e for e in AsyncEvents.log if e[:2] == ("message", client_id)]


async def test_coroutines_run_in_order_per_client_in_a_task(env: Env) -> None:
    """Each coroutine runs in a task from its first line; one that suspends holds
    up its client's next events, not another client's."""
    worker = await env.start_worker(EVENTS)
    gw1 = env.gw1
    cid, other = gw1.client_id(1), gw1.client_id(2)
    gw1.emit(Cmd.EV_CONNECT, 1)
    gw1.emit(Cmd.EV_MESSAGE, 1, "fast")
    gw1.emit(Cmd.EV_MESSAGE, 1, "slow")
    gw1.emit(Cmd.EV_MESSAGE, 1, "after slow")
    gw1.emit(Cmd.EV_MESSAGE, 2, "other")
    gw1.emit(Cmd.EV_MESSAGE, 1, "query")
    gw1.emit(Cmd.EV_CLOSE, 1)
    await wait_until(lambda: ("close", cid, True) in AsyncEvents.log)
    assert [e[2] for e in _messages(cid)] == ["fast", "slow", "after slow", "query"]
    entries = {e[2]: e for e in _messages(cid) + _messages(other)}
    assert AsyncEvents.log[0] == ("connect", cid, True)
    # an event that finds its client idle starts a task, from a fresh context (the
    # events queued behind it run one after another in that task, in its context)
    for message in ("fast", "other"):
        assert entries[message][3:] == ((True, "unset"), True), message
    assert all(e[3][0] and e[4] for e in entries.values())  # always in a task
    await wait_until(lambda: worker.stats()["clients"] == 0)
    gw1.emit(Cmd.EV_MESSAGE, 1, "later")  # nothing a callback set leaked to it
    await wait_until(lambda: len(_messages(cid)) == 5)
    assert _messages(cid)[-1][3:] == ((True, "unset"), True)
    log = AsyncEvents.log
    assert log.index(entries["other"]) < log.index(entries["slow"])
    await wait_until(lambda: len(gw1.packets(Cmd.SEND_TO_CLIENT)) == 7)
    assert [p[2] for p in gw1.packets(Cmd.SEND_TO_CLIENT) if p[1] == 1] == [
        f"init:{cid}",
        "echo:fast",
        "echo:slow",
        "echo:after slow",
        "echo:query",
        "echo:later",
    ]
    await wait_until(lambda: worker.stats()["clients"] == 0)
    assert worker.stats()["callback_errors"] == 0
    assert context.client_id is None and APP_VAR.get() == "unset"  # nothing leaked


async def test_session_write_back_around_a_suspension(env: Env) -> None:
    """Sessions changed before or after a suspension are written back once, and an
    event queued behind a suspended one starts from the session it wrote."""
    await env.start_worker(EVENTS)
    gw1 = env.gw1
    gw1.emit(Cmd.EV_MESSAGE, 3, "fast", session={"n": 1})
    gw1.emit(Cmd.EV_MESSAGE, 4, "slow", session={"n": 2})
    gw1.emit(Cmd.EV_MESSAGE, 4, "next", session={"n": 2})
    await wait_until(lambda: len(gw1.packets(Cmd.SET_SESSION)) == 3)
    assert sorted(gw1.packets(Cmd.SET_SESSION)) == sorted(
        [
            [Cmd.SET_SESSION, 3, pack_session({"n": 1, "fast": True})],
            [Cmd.SET_SESSION, 4, pack_session({"n": 2, "slow": True})],
            [Cmd.SET_SESSION, 4, pack_session({"n": 2, "slow": True, "next": True})],
        ]
    )


async def test_exceptions_are_logged_once_and_the_client_goes_on(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """Raised before the first suspension (in the reader), after it (in the task),
    or a CancelledError of the callback's own: one log line and one count each, no
    session written back, the link and the client's later events carry on."""
    worker = await env.start_worker(EVENTS)
    gw1 = env.gw1
    cid = gw1.client_id(5)
    with caplog.at_level(logging.ERROR, logger="businessworker"):
        gw1.emit(Cmd.EV_MESSAGE, 5, "boom")
        gw1.emit(Cmd.EV_MESSAGE, 5, "slow boom")
        gw1.emit(Cmd.EV_MESSAGE, 5, "cancel")
        gw1.emit(Cmd.EV_MESSAGE, 5, "after")
        await wait_until(lambda: [e[2] for e in _messages(cid)] == ["after"])
    await wait_until(lambda: worker.stats()["clients"] == 0)
    assert worker.stats()["callback_errors"] == 3
    raised = [r for r in caplog.records if f"on_message of client {cid} raised" in r.message]
    assert len(raised) == 3
    assert "boom before suspending" in caplog.text and "boom after suspending" in caplog.text
    await wait_until(lambda: bool(gw1.packets(Cmd.SET_SESSION)))  # only the last one's
    assert gw1.packets(Cmd.SET_SESSION) == [[Cmd.SET_SESSION, 5, pack_session({"after": True})]]
    assert worker.stats()["links"] == 2


async def test_stop_cancels_a_suspended_coroutine(env: Env) -> None:
    """A suspended coroutine (also one started eagerly) belongs to a task the
    worker cancels on a hard stop: it sees the CancelledError (its ``finally`` runs)."""
    worker = await env.start_worker(EVENTS)
    env.gw1.emit(Cmd.EV_MESSAGE, 6, "hang")
    await wait_until(lambda: worker.stats()["clients"] == 1)
    await worker.stop(graceful=False)
    env.worker = None
    assert AsyncEvents.finished == ["hang"]
    assert _messages(env.gw1.client_id(6)) == []


async def test_graceful_stop_waits_for_a_suspended_coroutine(env: Env) -> None:
    """No overlap on reload: the old worker's graceful stop returns only once the
    events it received (one of them suspended) have finished."""
    worker = await env.start_worker(EVENTS)
    cid = env.gw1.client_id(8)
    env.gw1.events_before_ack = [event(Cmd.EV_MESSAGE, 8, "slow"), event(Cmd.EV_MESSAGE, 8, "late")]
    await worker.stop(graceful=True)
    env.worker = None
    assert [e[2] for e in _messages(cid)] == ["slow", "late"]
    assert AsyncEvents.finished == ["slow"]
