"""Bounded work per loop turn (``gateway.pacing`` and ``GatewayCore.link_data``), with
no sockets: broadcasts cut into slices with each client's order kept, link input in
batches with the link's reading paused meanwhile, the heartbeat sweep in slices.

A "turn" here is one deferred callback run by hand (the shell's ``call_soon``)."""

from __future__ import annotations

from typing import Any

from pygatewayworker.gateway.core import INPUT_BATCH
from pygatewayworker.gateway.frames import text_frame
from pygatewayworker.gateway.pacing import CHUNK, Call, Delivery, Pacer
from pygatewayworker.gateway.protocol import Cmd, encode
from pygatewayworker.gateway.records import Client, Link
from pygatewayworker.gateway.websocket import State
from tests.test_gateway_core import SECRET, Harness, events, writer

BUDGET = 10


class Counted(Harness):
    """A harness with a small turn budget, counting the client writes of each turn."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.core.pacer.per_turn = self.core.pacer.budget = BUDGET
        self.writes = 0

    def clients(self, n: int, group: str = "g") -> list[Client]:
        made = []
        for _ in range(n):
            client = self.client()
            self.core.directory.join_group(client.conn_id, group)
            inner = writer(client).write

            def write(data: bytes, inner: Any = inner) -> None:
                self.writes += 1
                inner(data)

            writer(client).write = write
            made.append(client)
        self.run_deferred()  # the ROUTES changes
        return made

    def data(self, link: Link, *packets: list[Any]) -> None:
        """Packets from ``link`` as one read, through the bounded input path."""
        self.writes = 0
        self.core.link_data(link, b"".join(encode(p[0], *p[1:]) for p in packets))

    def turn(self) -> int:
        """Run one loop turn; the client writes it made."""
        self.writes = 0
        self.deferred.pop(0)()
        return self.writes

    def turns(self) -> list[int]:
        """Run turns until nothing is left; the writes of each."""
        done = []
        while self.deferred:
            done.append(self.turn())
        return done


def texts(client: Client) -> list[bytes]:
    return writer(client).take()


# ---- the pacer ----------------------------------------------------------------------


def test_a_delivery_is_written_a_budget_at_a_time_and_later_jobs_wait_behind_it() -> None:
    turns: list[Any] = []
    pacer = Pacer(turns.append, per_turn=3)
    written: list[tuple[list[int], bytes]] = []
    pacer.add(Delivery(list(range(8)), b"a", lambda c, f: written.append((list(c), f))))
    pacer.add(Call(written.append, "after"))
    assert written == [([0, 1, 2], b"a")] and len(turns) == 1
    turns.pop()()
    assert written[-1] == ([3, 4, 5], b"a")
    turns.pop()()
    assert written[-2:] == [([6, 7], b"a"), "after"]
    assert not turns and pacer.idle


class Clock:
    """A clock that moves only when told (``tick``) or, with ``per_read``, by that
    much at every reading."""

    def __init__(self, per_read: float = 0.0) -> None:
        self.now = 100.0
        self.per_read = per_read

    def __call__(self) -> float:
        self.now += self.per_read
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += seconds


def test_a_turn_ends_when_its_time_is_up_in_chunks_and_in_order() -> None:
    """A budget of units far above the delivery, but every chunk of writes takes
    1 ms and a turn has 2.5 ms: three chunks a turn, each client once, in order."""
    clock = Clock()
    turns: list[Any] = []
    pacer = Pacer(turns.append, per_turn=100_000, turn_time=0.0025, clock=clock)
    pacer.fresh()
    written: list[list[int]] = []

    def write(clients: Any, frame: bytes) -> None:
        written.append(list(clients))
        clock.tick(0.001)

    pacer.add(Delivery(list(range(1000)), b"a", write))
    pacer.add(Call(written.append, "after"))
    per_turn = [len(written)]
    while turns:
        before = len(written)
        turns.pop()()
        per_turn.append(len(written) - before)
    assert all(len(chunk) <= CHUNK for chunk in written[:-1])
    assert per_turn[:-1] == [3] * (len(per_turn) - 1) and per_turn[-1] <= 4
    assert [c for chunk in written[:-1] for c in chunk] == list(range(1000))
    assert written[-1] == "after" and pacer.idle


def test_an_unbounded_pacer_is_never_late() -> None:
    clock = Clock(per_read=1.0)
    pacer = Pacer(None, clock=clock)
    written: list[int] = []
    pacer.add(Delivery(list(range(10_000)), b"a", lambda c, f: written.extend(c)))
    assert len(written) == 10_000 and not pacer.late() and pacer.idle


def test_without_defer_nothing_is_cut() -> None:
    pacer = Pacer(None)
    written: list[int] = []
    pacer.add(Delivery(list(range(10_000)), b"a", lambda c, f: written.extend(c)))
    assert len(written) == 10_000 and pacer.idle


def test_a_failing_job_is_logged_and_dropped(caplog: Any) -> None:
    turns: list[Any] = []
    pacer = Pacer(turns.append, per_turn=1)
    done: list[str] = []
    pacer.add(Call(done.append, "first"))
    pacer.add(Call(_boom))
    pacer.add(Call(done.append, "last"))
    while turns:
        turns.pop()()
    assert done == ["first", "last"] and "failed" in caplog.text


def _boom() -> None:
    raise RuntimeError("boom")


# ---- sliced broadcasts ----------------------------------------------------------------


def test_a_large_broadcast_is_written_in_slices_once_to_every_member() -> None:
    h = Counted()
    push = h.link("client", "push")
    members = h.clients(35)
    h.data(push, [Cmd.SEND_TO_GROUP, ["g"], "hi", None])
    assert 0 < h.writes <= BUDGET
    assert all(n <= BUDGET for n in h.turns())
    assert all(texts(c) == [text_frame("hi")] for c in members)
    assert h.core.counters.broadcast_deliveries == 35


def test_order_per_client_across_slices_with_unicasts_and_a_second_broadcast() -> None:
    h = Counted()
    push, worker = h.link("client", "push"), h.link("worker", "w")
    members = h.clients(25)
    last = members[-1]
    h.data(
        push,
        [Cmd.SEND_TO_GROUP, ["g"], "a", None],
        [Cmd.SEND_TO_CLIENT, last.conn_id, "u1"],
        [Cmd.SEND_TO_GROUP, ["g"], "b", None],
    )
    assert texts(last) == []  # still in the unfinished slices
    h.data(worker, [Cmd.SEND_TO_CLIENT, last.conn_id, "u2"])  # another link, meanwhile
    assert writer(worker).paused and writer(push).paused
    h.turns()
    assert texts(last) == [text_frame(m) for m in ("a", "u1", "b", "u2")]
    assert all(texts(c) == [text_frame("a"), text_frame("b")] for c in members[:-1])
    assert not writer(worker).paused and not writer(push).paused


def test_a_client_closed_mid_broadcast_is_skipped() -> None:
    h = Counted()
    push = h.link("client", "push")
    members = h.clients(30)
    h.data(push, [Cmd.SEND_TO_GROUP, ["g"], "hi", None])
    gone = members[-1]
    gone.ws.state = State.CLOSED
    h.core.clients.closed(gone)
    h.turns()
    assert texts(gone) == []
    assert all(texts(c) == [text_frame("hi")] for c in members[:-1])


def test_membership_is_taken_when_the_broadcast_is_handled() -> None:
    h = Counted()
    push, worker = h.link("client", "push"), h.link("worker", "w")
    members = h.clients(30)
    events(worker)
    leaver = members[-1]
    h.data(push, [Cmd.SEND_TO_GROUP, ["g"], "hi", None])
    h.data(worker, [Cmd.LEAVE_GROUP, leaver.conn_id, "g"])  # waits behind the broadcast
    (joiner,) = h.clients(1)  # joined directly, after the broadcast was handled
    h.turns()
    assert texts(leaver) == [text_frame("hi")] and texts(joiner) == []
    assert h.core.directory.groups_info(["g"], "count") == {"g": 30}  # the leave was done
    h.data(push, [Cmd.SEND_TO_GROUP, ["g"], "next", None])
    h.turns()
    assert texts(leaver) == [] and texts(joiner) == [text_frame("next")]


def test_close_and_destroy_wait_behind_the_broadcast() -> None:
    h = Counted()
    push = h.link("client", "push")
    members = h.clients(30)
    closed, destroyed = members[-1], members[-2]
    h.data(
        push,
        [Cmd.SEND_TO_GROUP, ["g"], "bye", None],
        [Cmd.CLOSE_CLIENT, closed.conn_id, "last"],
        [Cmd.DESTROY_CLIENT, destroyed.conn_id],
    )
    assert not writer(closed).closed and not writer(destroyed).aborted
    h.turns()
    assert texts(closed) == [text_frame("bye"), text_frame("last")]
    assert writer(closed).closed == [(1000, "")]
    assert texts(destroyed) == [text_frame("bye")] and writer(destroyed).aborted


def test_worker_leave_and_release_behind_a_broadcast_keep_the_held_events() -> None:
    h = Counted()
    push = h.link("client", "push")
    old = h.link("worker", "old")
    members = h.clients(30)
    assert all(c.worker is old for c in members)
    new = h.link("worker", "new")
    events(old)
    h.data(push, [Cmd.SEND_TO_GROUP, ["g"], "hi", None])
    h.data(old, [Cmd.WORKER_LEAVE])
    assert not old.leaving  # its input waits behind the broadcast
    h.core.clients.message(members[0], "m1")  # client events go on meanwhile
    h.turns()
    assert old.leaving and writer(old).take()[-1][0] == Cmd.LEAVE_ACK
    h.core.clients.message(members[0], "m2")  # held for the leaving worker
    assert events(new) == []
    h.data(push, [Cmd.SEND_TO_GROUP, ["g"], "again", None])
    h.data(old, [Cmd.RELEASE, [members[0].conn_id], False])
    h.turns()
    assert [e for e in events(new) if e[0] == Cmd.EV_MESSAGE] == [(Cmd.EV_MESSAGE, "m2")]
    assert texts(members[0]) == [text_frame("hi"), text_frame("again")]


# ---- bounded link input -------------------------------------------------------------------


def test_link_input_is_handled_in_batches_with_its_reading_paused() -> None:
    h = Counted()
    push = h.link("client", "push")
    (client,) = h.clients(1)
    h.data(push, *[[Cmd.SEND_TO_CLIENT, client.conn_id, str(i)] for i in range(45)])
    assert writer(push).paused and 0 < len(writer(client).written) < 45
    assert all(n <= BUDGET for n in h.turns())
    assert texts(client) == [text_frame(str(i)) for i in range(45)]
    assert not writer(push).paused and push.waiting is False


def test_link_input_stops_at_a_batch_boundary_when_the_turn_time_is_up() -> None:
    """Plenty of units, but each reading of the clock moves it 1 ms and a turn has
    2.5 ms: a large read is handled over several turns, its reading paused between,
    and nothing is lost or reordered."""
    h = Counted()
    pacer = h.core.pacer
    pacer.per_turn = pacer.budget = 100_000
    push = h.link("client", "push")
    (client,) = h.clients(1)
    pacer.clock = Clock(per_read=0.001)
    pacer.turn_time = 0.0025
    count = 5 * INPUT_BATCH
    h.data(push, *[[Cmd.SEND_TO_CLIENT, client.conn_id, str(i)] for i in range(count)])
    first = len(writer(client).written)
    assert writer(push).paused and 0 < first < count and first % INPUT_BATCH == 0
    assert len(h.turns()) > 2
    assert texts(client) == [text_frame(str(i)) for i in range(count)]
    assert not writer(push).paused and push.waiting is False


def test_input_of_several_links_is_handled_in_arrival_order() -> None:
    h = Counted()
    first, second = h.link("client", "a"), h.link("client", "b")
    (client,) = h.clients(1)
    h.data(first, *[[Cmd.SEND_TO_CLIENT, client.conn_id, f"a{i}"] for i in range(30)])
    h.data(second, [Cmd.SEND_TO_CLIENT, client.conn_id, "b"])
    assert writer(second).paused  # it waits behind the first link's input
    h.turns()
    assert texts(client)[-1] == text_frame("b") and len(writer(client).written) == 0


def test_garbage_in_waiting_input_rejects_the_link_when_reached() -> None:
    h = Counted()
    push = h.link("client", "push")
    (client,) = h.clients(1)
    good = b"".join(encode(Cmd.SEND_TO_CLIENT, client.conn_id, str(i)) for i in range(25))
    h.core.link_data(push, good + b"\x00\x00\x00\x03\xc1\xc1\xc1")
    h.turns()
    # the batches before the one holding the garbage were handled (that batch is not)
    assert BUDGET <= len(texts(client)) < 25
    assert push.rejected and writer(push).take()[-1][0] == Cmd.ERROR
    assert not writer(push).paused  # it reads on, discarding, until the peer closes


def test_a_failure_while_handling_waiting_input_drops_only_that_link(caplog: Any) -> None:
    h = Counted()
    bad, good = h.link("client", "bad"), h.link("client", "good")
    (client,) = h.clients(1)
    h.data(bad, *[[Cmd.SEND_TO_CLIENT, client.conn_id, str(i)] for i in range(BUDGET * 2)])
    h.data(bad, [Cmd.UNGROUP, "g"])  # waits; its handler fails (a bug, not the peer's)
    h.data(good, [Cmd.SEND_TO_CLIENT, client.conn_id, "good"])

    def broken(link: Link, packet: list[Any]) -> None:
        raise RuntimeError("bug")

    h.core.handlers[Cmd.UNGROUP] = broken
    h.turns()
    assert writer(bad).aborted and "dropping the link" in caplog.text
    assert texts(client)[-1] == text_frame("good") and not writer(good).paused


def test_broadcasts_in_one_batch_are_still_coalesced_per_recipient() -> None:
    h = Counted()
    push = h.link("client", "push")
    members = h.clients(25)
    h.data(push, *[[Cmd.SEND_TO_GROUP, ["g"], f"m{i}", None] for i in range(5)])
    h.turns()
    merged = b"".join(text_frame(f"m{i}") for i in range(5))
    assert all(texts(c) == [merged] for c in members)
    assert h.core.counters.broadcast_deliveries == 125


def test_broadcasts_that_waited_behind_a_broadcast_are_merged_in_a_whole_batch() -> None:
    h = Counted()
    push = h.link("client", "push")
    members = h.clients(25)
    h.data(push, [Cmd.SEND_TO_GROUP, ["g"], "first", None])
    h.data(push, *[[Cmd.SEND_TO_GROUP, ["g"], f"m{i}", None] for i in range(BUDGET)])
    h.turns()
    merged = b"".join(text_frame(f"m{i}") for i in range(BUDGET))
    assert all(texts(c) == [text_frame("first"), merged] for c in members)


def test_reading_resumes_a_turn_early_so_what_the_sender_queued_merges_too() -> None:
    h = Counted()
    push = h.link("client", "push")
    members = h.clients(25)
    h.data(push, [Cmd.SEND_TO_GROUP, ["g"], "first", None])
    h.data(push, [Cmd.SEND_TO_GROUP, ["g"], "m0", None])  # read before the pause
    assert writer(push).paused
    while writer(push).paused:  # the broadcast's slices, then the early resume
        h.turn()
    assert push.waiting and push.decoder.buffered  # "m0" not handled yet
    h.data(push, [Cmd.SEND_TO_GROUP, ["g"], "m1", None])  # what the sender queued
    h.turns()
    merged = text_frame("m0") + text_frame("m1")
    assert all(texts(c) == [text_frame("first"), merged] for c in members)
    assert not writer(push).paused and not push.waiting


def test_waiting_input_keeps_the_link_alive() -> None:
    h = Counted()
    push = h.link("client", "push")
    members = h.clients(30)
    h.data(push, [Cmd.SEND_TO_GROUP, ["g"], "a", None], [Cmd.PING])
    h.clock.now += 1000
    h.turns()
    assert push.proto.last_recv == h.clock.now
    assert all(texts(c) == [text_frame("a")] for c in members)


# ---- the heartbeat --------------------------------------------------------------------------


def test_the_heartbeat_sweep_pings_a_slice_per_turn() -> None:
    h = Counted(ping_interval=10, ping_data="p", ping_not_response_limit=0)
    members = h.clients(40)
    for c in members:
        c.silent = 0  # silent for a whole interval at the next sweep
    h.core.pacer.start(h.core.clients.heartbeat_sweep())
    assert all(n <= BUDGET for n in h.turns())
    assert all(texts(c) == [text_frame("p")] for c in members)


# ---- a new link's route state ------------------------------------------------------------


def linking_with_uids(
    monkeypatch: Any, chunk: int, per_turn: int, uids: int, groups: tuple[str, ...] = ()
) -> tuple[Counted, Link, list[Client]]:
    """A harness whose ``uids`` clients bound a uid each (the first joined
    ``groups`` too), ``ROUTES_CHUNK`` = ``chunk``, ``per_turn`` units a turn; then a
    worker's ``HELLO`` (at the start of a turn)."""
    from pygatewayworker.gateway import linkproto

    monkeypatch.setattr(linkproto, "ROUTES_CHUNK", chunk)
    h = Counted()
    h.core.pacer.per_turn = h.core.pacer.budget = per_turn
    members = h.clients(uids)
    for n, client in enumerate(members):
        h.core.directory.bind_uid(client.conn_id, f"u{n}")
    for name in groups:
        h.core.directory.join_group(members[0].conn_id, name)
    h.run_deferred()
    link = h.link(hello=False)
    h.core.pacer.fresh()
    h.feed(link, [Cmd.HELLO, "worker", "w1", SECRET, 42])
    return h, link, members


def test_a_large_route_state_goes_a_few_packets_a_turn_and_changes_wait_for_its_end(
    monkeypatch: Any,
) -> None:
    """ROUTES_CHUNK 10 keys, 2 units a turn: 35 uids and 3 groups take 4 packets
    over 2 turns. A uid bound meanwhile reaches the new link only after the state's
    end, and the worker takes client events only then."""
    from pygatewayworker.gateway.linkproto import ROUTES_CHANGES, ROUTES_STATE, ROUTES_STATE_END

    h, link, _ = linking_with_uids(monkeypatch, 10, 2, 35, ("a", "b"))
    sent = writer(link).take()
    assert sent[0][0] == Cmd.WELCOME and [p[1] for p in sent[1:]] == [ROUTES_STATE]
    assert link.route_backlog == [] and h.core.workers.linked == []
    late = h.client()
    h.core.directory.bind_uid(late.conn_id, "late")
    h.run_deferred()  # the changes (held), then the rest of the state
    routes = [p for p in writer(link).take() if p[0] == Cmd.ROUTES]  # (held events follow)
    assert [p[1] for p in routes] == [ROUTES_STATE] * 2 + [ROUTES_STATE_END, ROUTES_CHANGES]
    state = sent[1:] + routes[:-1]
    assert sorted(k for p in state for k in p[2]) == sorted(f"u{n}" for n in range(35))
    assert sorted(k for p in state for k in p[4]) == ["a", "b", "g"]
    assert routes[-1][2] == ["late"]
    assert link.route_backlog is None and h.core.workers.linked == [link]


def test_a_link_gone_during_its_route_state_is_left_out(monkeypatch: Any) -> None:
    h, link, _ = linking_with_uids(monkeypatch, 1, 1, 3)
    assert link.route_backlog == []  # the HELLO took the turn: the state waits
    assert [p[0] for p in writer(link).take()] == [Cmd.WELCOME]
    h.core.link_closed(link)
    h.run_deferred()
    assert link.route_backlog is None and h.core.workers.linked == []
    assert writer(link).take() == []


def test_a_small_route_state_goes_at_once_even_late_in_a_turn() -> None:
    """One packet of state: sent with the WELCOME and the worker linked at once,
    whatever is left of the turn (the end of a state is never put off alone)."""
    h = Counted()
    h.core.pacer.deadline = 0.0  # the turn's time is long up
    link = h.link()  # asserts WELCOME then ROUTES
    assert link.route_backlog is None and h.core.workers.linked == [link]
