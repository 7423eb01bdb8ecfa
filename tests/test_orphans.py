"""GatewayMemory (businessworker.orphans) without sockets: which clients get a
synthetic EV_CLOSE when their gateway process dies, and when."""

from __future__ import annotations

from typing import Any

from pygatewayworker.businessworker.orphans import GatewayMemory
from pygatewayworker.gateway.protocol import Cmd, Decoder


class FakeLink:
    """The attributes GatewayMemory reads from a GatewayLink."""

    def __init__(self, pid: int, address: str = "127.0.0.1:2300") -> None:
        self.gateway_address = address
        self.info = {"pid": pid}
        self.is_open = True
        self.sent: list[list[Any]] = []

    def send(self, data: bytes) -> None:
        self.sent.extend(Decoder().feed(data))


def event(cmd: Cmd, conn_id: int, session: bytes | None = None) -> list[Any]:
    return [cmd, conn_id, session, "10.0.0.1", 5000 + conn_id, None]


class Sink:
    def __init__(self) -> None:
        self.calls: list[tuple[FakeLink, list[list[Any]]]] = []

    def __call__(self, link: Any, packets: list[list[Any]]) -> None:
        self.calls.append((link, packets))

    @property
    def closed(self) -> list[tuple[int, bytes | None, str, int]]:
        return sorted((p[1], p[2], p[3], p[4]) for _, ps in self.calls for p in ps)


def feed(memory: GatewayMemory, link: FakeLink) -> None:
    memory.note(link, event(Cmd.EV_CONNECT, 1))  # type: ignore[arg-type]
    memory.note(link, event(Cmd.EV_MESSAGE, 1, b"s1"))  # type: ignore[arg-type]
    memory.note(link, event(Cmd.EV_CONNECT, 2))  # type: ignore[arg-type]
    memory.note(link, event(Cmd.EV_CONNECT, 3))  # type: ignore[arg-type]
    memory.note(link, event(Cmd.EV_CLOSE, 3))  # type: ignore[arg-type]


def test_a_new_gateway_process_closes_the_clients_of_the_old_one() -> None:
    sink = Sink()
    memory = GatewayMemory(60.0, sink)
    old = FakeLink(pid=100)
    feed(memory, old)
    memory.note_session(old, 2, b"s2")  # type: ignore[arg-type]
    assert memory.remembered == 2
    old.is_open = False
    memory.sweep({}, now=1.0)
    assert sink.calls == []  # not yet: it may come back
    new = FakeLink(pid=200)
    memory.sweep({new.gateway_address: new}, now=2.0)  # type: ignore[dict-item]
    assert sink.closed == [(1, b"s1", "10.0.0.1", 5001), (2, b"s2", "10.0.0.1", 5002)]
    assert sink.calls[0][0] is old  # the context is the dead gateway's
    assert all(p[0] is Cmd.EV_CLOSE for p in sink.calls[0][1])
    assert memory.remembered == 0 and memory.orphan_closes == 2
    memory.sweep({new.gateway_address: new}, now=3.0)  # type: ignore[dict-item]
    assert len(sink.calls) == 1


def test_the_first_event_from_a_new_process_closes_the_old_clients_first() -> None:
    sink = Sink()
    memory = GatewayMemory(60.0, sink)
    old = FakeLink(pid=100)
    feed(memory, old)
    old.is_open = False
    new = FakeLink(pid=200)
    memory.note(new, event(Cmd.EV_CONNECT, 1))  # type: ignore[arg-type]  # id reused
    assert [p[1] for p in sink.calls[0][1]] == [1, 2]
    assert memory.remembered == 1  # the new client 1


def test_relinking_to_the_same_process_forgets_without_closing() -> None:
    sink = Sink()
    memory = GatewayMemory(60.0, sink)
    old = FakeLink(pid=100)
    feed(memory, old)
    old.is_open = False
    again = FakeLink(pid=100)
    memory.sweep({again.gateway_address: again}, now=1.0)  # type: ignore[dict-item]
    assert sink.calls == [] and memory.remembered == 0


def test_a_gateway_unreachable_past_the_timeout_closes_its_clients() -> None:
    sink = Sink()
    memory = GatewayMemory(5.0, sink)
    link = FakeLink(pid=100)
    feed(memory, link)
    other = FakeLink(pid=7, address="127.0.0.1:2301")
    memory.note(other, event(Cmd.EV_CONNECT, 9))  # type: ignore[arg-type]
    link.is_open = False
    links = {other.gateway_address: other}
    memory.sweep(links, now=10.0)  # type: ignore[arg-type]
    memory.sweep(links, now=14.0)  # type: ignore[arg-type]
    assert sink.calls == []
    memory.sweep(links, now=15.5, listed={link.gateway_address})  # type: ignore[arg-type]
    assert sink.calls == []  # still listed by the registers: alive, only not reachable
    memory.sweep(links, now=15.6)  # type: ignore[arg-type]
    assert [p[1] for p in sink.calls[0][1]] == [1, 2]
    assert memory.remembered == 1  # the other gateway's client stays


def declared_lost(sink: Sink) -> GatewayMemory:
    """A memory whose gateway (pid 100) was declared lost by the timeout path."""
    memory = GatewayMemory(5.0, sink)
    link = FakeLink(pid=100)
    feed(memory, link)
    link.is_open = False
    for now in (10.0, 15.5):  # unreachable past the timeout, not listed
        memory.sweep({}, now=now)
    return memory


def test_a_gateway_declared_lost_that_comes_back_is_told_which_clients_closed() -> None:
    sink = Sink()
    memory = declared_lost(sink)
    assert [p[1] for p in sink.calls[0][1]] == [1, 2]
    back = FakeLink(pid=100)  # the same process: it only hung
    memory.note(back, event(Cmd.EV_MESSAGE, 2))  # type: ignore[arg-type]
    memory.sweep({back.gateway_address: back}, now=16.0)  # type: ignore[dict-item]
    assert back.sent == [[Cmd.DECLARED_CLOSED, [1, 2]]]
    assert memory.remembered == 0  # never a second on_close for them
    memory.sweep({back.gateway_address: back}, now=17.0)  # type: ignore[dict-item]
    assert len(back.sent) == 1 and len(sink.calls) == 1
    # a gateway that did die (another pid) is told nothing
    other = declared_lost(Sink())
    new = FakeLink(pid=200)
    other.sweep({new.gateway_address: new}, now=16.0)  # type: ignore[dict-item]
    assert new.sent == []


def test_timeout_zero_never_closes_and_idle_gateways_are_dropped() -> None:
    sink = Sink()
    memory = GatewayMemory(0.0, sink)
    link = FakeLink(pid=100)
    feed(memory, link)
    link.is_open = False
    memory.sweep({}, now=1.0)
    memory.sweep({}, now=10_000.0)
    assert sink.calls == [] and memory.remembered == 2
    quiet = FakeLink(pid=5, address="127.0.0.1:2302")
    memory.note(quiet, event(Cmd.EV_CONNECT, 1))  # type: ignore[arg-type]
    memory.note(quiet, event(Cmd.EV_CLOSE, 1))  # type: ignore[arg-type]
    quiet.is_open = False
    memory.sweep({}, now=10_001.0)
    assert quiet.gateway_address not in memory._gateways
