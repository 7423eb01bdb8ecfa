"""The pure client/uid/group directory."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from pygatewayworker.gateway.directory import Directory, Entry, merge_session
from pygatewayworker.gateway.protocol import ProtocolError, pack_session, unpack_session


def make(*conn_ids: int) -> Directory[Entry]:
    directory: Directory[Entry] = Directory()
    for conn_id in conn_ids:
        directory.add(Entry(conn_id))
    return directory


def ids(entries) -> list[int]:
    return sorted(e.conn_id for e in entries)


def test_add_get_remove() -> None:
    d = make(1, 2)
    assert len(d) == 2 and 1 in d and d.get(2).conn_id == 2
    with pytest.raises(ValueError):
        d.add(Entry(1))
    assert d.remove(1).conn_id == 1
    assert d.remove(1) is None and d.get(1) is None and len(d) == 1


def test_bind_uid_rebinding_replaces_and_remove_unbinds() -> None:
    d = make(1, 2)
    assert d.bind_uid(1, "u1") and d.bind_uid(2, "u1")
    assert d.uids_info(["u1", "nobody"]) == {"u1": [1, 2]}
    assert d.bind_uid(1, "u2")
    assert d.uids_info(["u1", "u2"]) == {"u1": [2], "u2": [1]}
    d.remove(2)
    assert d.all_uids() == ["u2"]
    assert not d.bind_uid(99, "u3")
    assert d.all_uids() == ["u2"]


def test_unbind_uid_only_when_bound_to_that_uid() -> None:
    d = make(1)
    d.bind_uid(1, "a")
    assert not d.unbind_uid(1, "b")
    assert d.get(1).uid == "a"
    assert d.unbind_uid(1, "a")
    assert d.get(1).uid is None and d.all_uids() == []


def test_groups_join_leave_ungroup_and_empty_groups_vanish() -> None:
    d = make(1, 2, 3)
    for conn_id in (1, 2):
        d.join_group(conn_id, "room")
    d.join_group(1, "other")
    assert sorted(d.group_names()) == ["other", "room"]
    assert d.leave_group(1, "other") and not d.leave_group(1, "other")
    assert d.group_names() == ["room"]
    assert d.get(1).groups == {"room"}
    assert d.ungroup("room") == 2
    assert d.group_names() == [] and d.get(1).groups is None
    assert d.ungroup("room") == 0
    d.join_group(3, "g")
    d.remove(3)
    assert d.group_names() == []


@pytest.mark.parametrize("bad", ["", 5, None, b"x"])
def test_invalid_names_raise(bad: object) -> None:
    d = make(1)
    with pytest.raises((TypeError, ValueError)):
        d.bind_uid(1, bad)  # type: ignore[arg-type]
    with pytest.raises((TypeError, ValueError)):
        d.join_group(1, bad)  # type: ignore[arg-type]
    with pytest.raises((TypeError, ValueError)):
        d.ungroup(bad)  # type: ignore[arg-type]


def test_recipients_of_groups_deliver_once_and_honour_exclude() -> None:
    d = make(1, 2, 3, 4)
    for conn_id in (1, 2, 3):
        d.join_group(conn_id, "a")
    for conn_id in (2, 3, 4):
        d.join_group(conn_id, "b")
    assert ids(d.recipients_groups(["a"])) == [1, 2, 3]
    assert ids(d.recipients_groups(["a"], [2])) == [1, 3]
    assert ids(d.recipients_groups(["a", "b", "a"])) == [1, 2, 3, 4]
    assert ids(d.recipients_groups(["a", "b"], [3, 99])) == [1, 2, 4]
    assert ids(d.recipients_groups(["nope"])) == []


def test_recipients_of_uids_and_all() -> None:
    d = make(1, 2, 3)
    d.bind_uid(1, "x")
    d.bind_uid(2, "x")
    d.bind_uid(3, "y")
    assert ids(d.recipients_uids(["x"])) == [1, 2]
    assert ids(d.recipients_uids(["x", "y", "x", "zz"])) == [1, 2, 3]
    assert ids(d.recipients_all()) == [1, 2, 3]
    assert ids(d.recipients_all(None, [2])) == [1, 3]
    assert ids(d.recipients_all([3, 1, 3, 42])) == [1, 3]
    assert ids(d.recipients_all([3, 1], [1])) == [3]
    assert ids(d.recipients_all([])) == []


def test_group_queries_every_shape() -> None:
    d = make(1, 2, 3)
    d.join_group(1, "g")
    d.join_group(2, "g")
    d.bind_uid(1, "u")
    d.bind_uid(2, "u")
    d.set_session(2, pack_session({"k": 1}))
    assert d.groups_info(["g", "none"], "count") == {"g": 2, "none": 0}
    assert d.groups_info(["g"], "ids") == {"g": [1, 2]}
    assert d.groups_info(["g"], "sessions") == {"g": {1: None, 2: pack_session({"k": 1})}}
    assert d.groups_info(["g", "none"], "uids") == {"g": ["u"], "none": []}
    assert d.groups_info(None, "count") == {"": 3}
    assert d.groups_info(None, "ids") == {"": [1, 2, 3]}
    assert d.groups_info(None, "uids") == {"": ["u"]}
    assert d.all_groups_info("count") == {"g": 2}
    assert d.all_groups_info("ids") == {"g": [1, 2]}
    with pytest.raises(ValueError):
        d.groups_info(["g"], "everything")
    with pytest.raises(ValueError):
        d.all_groups_info("x")


def test_client_info() -> None:
    d = make(1)
    assert d.client_info(2) is None
    assert d.client_info(1) == {"uid": None, "session": None, "groups": []}
    d.bind_uid(1, "u")
    d.join_group(1, "b")
    d.join_group(1, "a")
    info = d.client_info(1)
    assert info == {"uid": "u", "session": None, "groups": ["a", "b"]}


def test_sessions_set_and_recursive_update() -> None:
    d = make(1)
    assert d.update_session(1, {"a": {"x": 1}, "l": [1, 2]})
    assert unpack_session(d.get(1).session) == {"a": {"x": 1}, "l": [1, 2]}
    assert d.update_session(1, {"a": {"y": 2}, "l": [9], "n": None})
    assert unpack_session(d.get(1).session) == {"a": {"x": 1, "y": 2}, "l": [9], "n": None}
    assert d.set_session(1, pack_session({"fresh": True}))
    assert unpack_session(d.get(1).session) == {"fresh": True}
    assert d.set_session(1, None) and d.get(1).session is None
    assert not d.set_session(2, pack_session({})) and not d.update_session(2, {})
    with pytest.raises(ProtocolError):
        d.set_session(1, b"\x93\x01\x02\x03")  # a packed list, not a dict
    with pytest.raises(TypeError):
        d.set_session(1, "text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        d.update_session(1, ["x"])  # type: ignore[arg-type]


def test_merge_session_replaces_non_dicts() -> None:
    assert merge_session({"a": 1, "b": {"c": 1}}, {"a": {"z": 1}, "b": 2}) == {
        "a": {"z": 1},
        "b": 2,
    }


# ---- random operation sequences against a simple model ---------------------------

CONNS = st.integers(min_value=1, max_value=6)
NAMES = st.sampled_from(["a", "b", "c"])


class DirectoryModel(RuleBasedStateMachine):
    """Random adds/removes/binds/joins compared with plain dicts."""

    def __init__(self) -> None:
        super().__init__()
        self.d: Directory[Entry] = Directory()
        self.uid: dict[int, str | None] = {}
        self.groups: dict[int, set[str]] = {}

    @rule(conn_id=CONNS)
    def add(self, conn_id: int) -> None:
        if conn_id not in self.uid:
            self.d.add(Entry(conn_id))
            self.uid[conn_id] = None
            self.groups[conn_id] = set()

    @rule(conn_id=CONNS)
    def remove(self, conn_id: int) -> None:
        removed = self.d.remove(conn_id)
        assert (removed is not None) == (conn_id in self.uid)
        self.uid.pop(conn_id, None)
        self.groups.pop(conn_id, None)

    @rule(conn_id=CONNS, uid=NAMES)
    def bind(self, conn_id: int, uid: str) -> None:
        assert self.d.bind_uid(conn_id, uid) == (conn_id in self.uid)
        if conn_id in self.uid:
            self.uid[conn_id] = uid

    @rule(conn_id=CONNS, uid=NAMES)
    def unbind(self, conn_id: int, uid: str) -> None:
        expected = self.uid.get(conn_id) == uid
        assert self.d.unbind_uid(conn_id, uid) == expected
        if expected:
            self.uid[conn_id] = None

    @rule(conn_id=CONNS, group=NAMES)
    def join(self, conn_id: int, group: str) -> None:
        assert self.d.join_group(conn_id, group) == (conn_id in self.groups)
        if conn_id in self.groups:
            self.groups[conn_id].add(group)

    @rule(conn_id=CONNS, group=NAMES)
    def leave(self, conn_id: int, group: str) -> None:
        expected = group in self.groups.get(conn_id, set())
        assert self.d.leave_group(conn_id, group) == expected
        if expected:
            self.groups[conn_id].discard(group)

    @rule(group=NAMES)
    def ungroup(self, group: str) -> None:
        members = [c for c, gs in self.groups.items() if group in gs]
        assert self.d.ungroup(group) == len(members)
        for c in members:
            self.groups[c].discard(group)

    @rule(groups=st.lists(NAMES, max_size=3), exclude=st.lists(CONNS, max_size=3))
    def send_to_groups(self, groups: list[str], exclude: list[int]) -> None:
        got = [e.conn_id for e in self.d.recipients_groups(groups, exclude)]
        expected = {c for c, gs in self.groups.items() if gs & set(groups)} - set(exclude)
        assert sorted(got) == sorted(expected)  # and each exactly once

    @invariant()
    def indexes_match_the_model(self) -> None:
        uids = {u for u in self.uid.values() if u is not None}
        assert set(self.d.all_uids()) == uids
        info = self.d.uids_info(sorted(uids) + ["nobody"])
        assert {u: set(v) for u, v in info.items()} == {
            u: {c for c, x in self.uid.items() if x == u} for u in uids
        }
        groups = set().union(*self.groups.values()) if self.groups else set()
        assert set(self.d.group_names()) == groups
        counts = self.d.groups_info(sorted(groups), "count")
        assert counts == {g: sum(g in gs for gs in self.groups.values()) for g in groups}
        assert self.d.groups_info(None, "count") == {"": len(self.uid)}
        for conn_id, gs in self.groups.items():
            entry = self.d.get(conn_id)
            assert entry is not None and entry.uid == self.uid[conn_id]
            assert (entry.groups or set()) == gs


TestDirectoryModel = DirectoryModel.TestCase
TestDirectoryModel.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
