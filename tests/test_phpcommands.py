"""gateway/phpcommands.py without sockets: every GatewayClient command, from its
packet bytes to our internal command packets, or to the exact reply bytes the PHP
gateway would write, over a directory of three connections."""

from __future__ import annotations

from typing import Any

import pytest

from pygatewayworker.gateway.directory import Directory, Entry
from pygatewayworker.gateway.gatewayprotocol import PacketDecoder, PhpPacket, encode_reply
from pygatewayworker.gateway.phpcommands import (
    Answer,
    Authenticate,
    CommandError,
    Execute,
    Nothing,
    RawFrames,
    session_from_php,
    session_to_php,
    translate,
)
from pygatewayworker.gateway.phpserialize import PhpSerializeError, loads
from pygatewayworker.gateway.protocol import Cmd, pack_session, unpack_session
from tests import phpclient as php
from tests.phpclient import ext_json, packet


def decoded(data: bytes) -> PhpPacket:
    (one,) = PacketDecoder().feed(data)
    return one


def execute(data: bytes) -> Execute:
    action = translate(decoded(data))
    assert isinstance(action, Execute)
    return action


def commands(data: bytes) -> list[list[Any]]:
    return execute(data).packets


@pytest.fixture
def directory() -> Directory[Entry]:
    """Connection 11: uid u1, groups g1 and g2, a session; 12: uid u1, group g1;
    13: nothing (and first in the directory's order)."""
    d: Directory[Entry] = Directory()
    for conn_id in (13, 11, 12):
        d.add(Entry(conn_id))
    d.bind_uid(11, "u1")
    d.bind_uid(12, "u1")
    d.join_group(11, "g1")
    d.join_group(11, "g2")
    d.join_group(12, "g1")
    d.set_session(11, pack_session({"a": 1}))
    return d


def reply(directory: Directory[Entry], data: bytes) -> bytes:
    """The reply bytes (length + serialized value) to a query packet."""
    action = translate(decoded(data))
    assert isinstance(action, Answer)
    queries = {
        Cmd.Q_CLIENT_INFO: directory.client_info,
        Cmd.Q_UIDS: directory.uids_info,
        Cmd.Q_GROUPS: directory.groups_info,
        Cmd.Q_ALL_GROUPS: directory.all_groups_info,
        Cmd.Q_ALL_UIDS: directory.all_uids,
    }
    return encode_reply(action.compute(lambda cmd, *args: queries[cmd](*args)))


def framed(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


# ---- sends ----------------------------------------------------------------------------


def test_send_to_one() -> None:
    assert commands(packet(php.SEND_TO_ONE, 5, body="hi")) == [[Cmd.SEND_TO_CLIENT, 5, "hi"]]
    binary = commands(packet(php.SEND_TO_ONE, 5, body=b"\x00\xff"))
    assert binary == [[Cmd.SEND_TO_CLIENT, 5, b"\x00\xff"]]  # not UTF-8: a binary frame
    assert commands(packet(php.SEND_TO_ONE, 5, body=None)) == [[Cmd.SEND_TO_CLIENT, 5, ""]]
    with pytest.raises(CommandError, match="CMD_SEND_TO_ONE: a message must be a string"):
        translate(decoded(packet(php.SEND_TO_ONE, 5, body=["array"])))


def test_send_to_all_everyone_listed_or_excluded() -> None:
    assert commands(packet(php.SEND_TO_ALL, body="m")) == [[Cmd.SEND_TO_ALL, "m", None, None]]
    listed = packet(php.SEND_TO_ALL, ext=ext_json({"connections": {"3": 3, "4": 4}}), body="m")
    assert commands(listed) == [[Cmd.SEND_TO_ALL, "m", [3, 4], None]]
    nobody = packet(php.SEND_TO_ALL, ext=ext_json({"connections": []}), body="m")
    assert commands(nobody) == [[Cmd.SEND_TO_ALL, "m", [], None]]
    excluded = packet(php.SEND_TO_ALL, ext=ext_json({"exclude": {"5": 5}}), body="m")
    assert commands(excluded) == [[Cmd.SEND_TO_ALL, "m", None, [5]]]
    with pytest.raises(CommandError, match="CMD_SEND_TO_ALL: ext_data is not JSON"):
        translate(decoded(packet(php.SEND_TO_ALL, ext=b"{nope", body="m")))


def test_send_to_uid_and_group() -> None:
    to_uids = packet(php.SEND_TO_UID, ext=ext_json(["u1", 42]), body="m")
    assert commands(to_uids) == [[Cmd.SEND_TO_UID, ["u1", "42"], "m"]]
    ext = ext_json({"group": ["g", 7], "exclude": None})
    assert commands(packet(php.SEND_TO_GROUP, ext=ext, body="m")) == [
        [Cmd.SEND_TO_GROUP, ["g", "7"], "m", None]
    ]
    ext = ext_json({"group": ["g"], "exclude": {"9": 9, "12": 12}})
    assert commands(packet(php.SEND_TO_GROUP, ext=ext, body="m")) == [
        [Cmd.SEND_TO_GROUP, ["g"], "m", [9, 12]]
    ]
    with pytest.raises(CommandError, match="strings or ints"):
        translate(decoded(packet(php.SEND_TO_GROUP, ext=ext_json({"group": [True]}), body="m")))


def test_raw_sends_must_be_whole_frames() -> None:
    frames = b"\x81\x02hi" + b"\x82\x7e\x00\x80" + bytes(128)
    action = execute(packet(php.SEND_TO_GROUP, ext=ext_json({"group": ["g"]}), body=frames, flag=2))
    assert action.raw
    data = action.packets[0][2]
    assert type(data) is RawFrames and data == frames and data.frames == 2
    for broken in (b"\x81\x05hi", b"\x81\x82abcdhi", b"\x81", b""):
        with pytest.raises(CommandError, match="whole WebSocket frames"):
            translate(decoded(packet(php.SEND_TO_ONE, 1, body=broken, flag=2)))


def test_close_and_destroy() -> None:
    assert commands(packet(php.KICK, 7, body=None)) == [[Cmd.CLOSE_CLIENT, 7, None]]
    assert commands(packet(php.KICK, 7, body="bye")) == [[Cmd.CLOSE_CLIENT, 7, "bye"]]
    assert commands(packet(php.DESTROY, 7)) == [[Cmd.DESTROY_CLIENT, 7]]


# ---- state ------------------------------------------------------------------------------


def test_uid_and_group_state() -> None:
    assert commands(packet(php.BIND_UID, 3, ext="u1")) == [[Cmd.BIND_UID, 3, "u1"]]
    assert commands(packet(php.UNBIND_UID, 3, ext="u1")) == [[Cmd.UNBIND_UID, 3, "u1"]]
    assert commands(packet(php.JOIN_GROUP, 3, ext="房间")) == [[Cmd.JOIN_GROUP, 3, "房间"]]
    assert commands(packet(php.LEAVE_GROUP, 3, ext="g")) == [[Cmd.LEAVE_GROUP, 3, "g"]]
    assert commands(packet(php.UNGROUP, ext="g")) == [[Cmd.UNGROUP, "g"]]
    # "" reaches the directory, which refuses it (an explicit error, not ignored)
    assert commands(packet(php.BIND_UID, 3)) == [[Cmd.BIND_UID, 3, ""]]
    with pytest.raises(CommandError, match="the uid is not UTF-8"):
        translate(decoded(packet(php.BIND_UID, 3, ext=b"\xff")))


def test_sessions_from_php() -> None:
    session = b'a:2:{s:4:"name";s:5:"alice";s:5:"roles";a:1:{i:0;s:5:"admin";}}'
    (cmd,) = commands(packet(php.SET_SESSION, 3, ext=session))
    assert cmd[:2] == [Cmd.SET_SESSION, 3]
    assert unpack_session(cmd[2]) == {"name": "alice", "roles": ["admin"]}
    assert commands(packet(php.SET_SESSION, 3)) == [[Cmd.SET_SESSION, 3, None]]
    (update,) = commands(packet(php.UPDATE_SESSION, 3, ext=b'a:1:{s:1:"x";i:1;}'))
    assert update == [Cmd.UPDATE_SESSION, 3, {"x": 1}]
    assert commands(packet(php.UPDATE_SESSION, 3)) == []
    assert session_from_php(b'a:2:{i:0;s:1:"a";i:1;s:1:"b";}') == {0: "a", 1: "b"}
    with pytest.raises(CommandError, match="objects are refused"):
        translate(decoded(packet(php.SET_SESSION, 3, ext=b'O:8:"stdClass":0:{}')))
    with pytest.raises(CommandError, match="must be an array"):
        translate(decoded(packet(php.SET_SESSION, 3, ext=b's:1:"x";')))


def test_sessions_to_php() -> None:
    assert session_to_php(None) == b""
    assert (
        session_to_php(pack_session({"n": 1, "b": b"\xff"}))
        == b'a:2:{s:1:"n";i:1;s:1:"b";s:1:"\xff";}'
    )
    with pytest.raises(PhpSerializeError):
        session_to_php(pack_session({"bad": {True: 1}}))


def test_auth_ping_and_unsupported() -> None:
    auth = translate(
        decoded(packet(php.GATEWAY_CLIENT_CONNECT, body=ext_json({"secret_key": "s"})))
    )
    assert auth == Authenticate("s")
    with pytest.raises(CommandError, match="secret_key"):
        translate(decoded(packet(php.GATEWAY_CLIENT_CONNECT, body="{}")))
    assert translate(decoded(packet(201))) == Nothing()
    for cmd, why in [
        (php.WORKER_CONNECT, "CMD_WORKER_CONNECT: a PHP BusinessWorker cannot link"),
        (3, "CMD_ON_MESSAGE: client events go from gateways to workers"),
        (99, "cmd 99: unknown command"),
    ]:
        with pytest.raises(CommandError, match=why) as caught:
            translate(decoded(packet(cmd)))
        assert caught.value.unsupported


# ---- queries: the exact reply bytes -----------------------------------------------------

SESSION_11 = b'a:1:{s:1:"a";i:1;}'


def test_is_online(directory: Directory[Entry]) -> None:
    assert reply(directory, packet(php.IS_ONLINE, 11)) == b"\x00\x00\x00\x04i:1;"
    assert reply(directory, packet(php.IS_ONLINE, 99)) == b"\x00\x00\x00\x04i:0;"
    assert reply(directory, packet(php.IS_ONLINE, 0)) == b"\x00\x00\x00\x04i:0;"


def test_get_session(directory: Directory[Entry]) -> None:
    assert reply(directory, packet(php.GET_SESSION_BY_CLIENT_ID, 11)) == framed(SESSION_11)
    assert reply(directory, packet(php.GET_SESSION_BY_CLIENT_ID, 13)) == framed(b"a:0:{}")
    assert reply(directory, packet(php.GET_SESSION_BY_CLIENT_ID, 99)) == framed(b"N;")


def test_session_lists(directory: Directory[Entry]) -> None:
    # values are the serialized session strings, '' for none, as the PHP gateway keeps them
    assert reply(directory, packet(php.GET_ALL_CLIENT_SESSIONS)) == framed(
        b'a:3:{i:13;s:0:"";i:11;s:18:"' + SESSION_11 + b'";i:12;s:0:"";}'
    )
    by_group = reply(directory, packet(php.GET_CLIENT_SESSIONS_BY_GROUP, ext="g1"))
    assert by_group == framed(b'a:2:{i:11;s:18:"' + SESSION_11 + b'";i:12;s:0:"";}')
    assert reply(directory, packet(php.GET_CLIENT_SESSIONS_BY_GROUP, ext="none")) == framed(
        b"a:0:{}"
    )


def test_counts(directory: Directory[Entry]) -> None:
    assert reply(directory, packet(php.GET_CLIENT_COUNT_BY_GROUP)) == framed(b"i:3;")
    assert reply(directory, packet(php.GET_CLIENT_COUNT_BY_GROUP, ext="g1")) == framed(b"i:2;")
    assert reply(directory, packet(php.GET_CLIENT_COUNT_BY_GROUP, ext="x")) == framed(b"i:0;")
    batch = packet(php.BATCH_GET_CLIENT_COUNT_BY_GROUP, ext=ext_json(["g1", "none"]))
    assert reply(directory, batch) == framed(b'a:2:{s:2:"g1";i:2;s:4:"none";i:0;}')


def test_uid_lookups(directory: Directory[Entry]) -> None:
    by_uid = reply(directory, packet(php.GET_CLIENT_ID_BY_UID, ext="u1"))
    assert by_uid == framed(b"a:2:{i:0;i:11;i:1;i:12;}")
    assert reply(directory, packet(php.GET_CLIENT_ID_BY_UID, ext="zz")) == framed(b"a:0:{}")
    batch = packet(php.BATCH_GET_CLIENT_ID_BY_UID, ext=ext_json(["u1", "zz"]))
    assert reply(directory, batch) == framed(
        b'a:2:{s:2:"u1";a:2:{i:0;i:11;i:1;i:12;}s:2:"zz";a:0:{}}'
    )


def test_group_id_list(directory: Directory[Entry]) -> None:
    directory.join_group(13, "7")  # a numeric group name is an int key in PHP
    ids = reply(directory, packet(php.GET_GROUP_ID_LIST))
    assert ids == framed(b'a:3:{i:0;s:2:"g1";i:1;s:2:"g2";i:2;i:7;}')


def select(fields: list[str], where: Any = None) -> bytes:
    return packet(php.SELECT, ext=ext_json({"fields": fields, "where": where or []}))


def test_select(directory: Directory[Entry]) -> None:
    assert reply(directory, select(["uid"])) == framed(
        b'a:3:{i:11;a:1:{s:3:"uid";s:2:"u1";}i:12;a:1:{s:3:"uid";s:2:"u1";}i:13;a:1:{s:3:"uid";N;}}'
    )
    assert reply(directory, select(["groups"], {"groups": ["g2"]})) == framed(
        b'a:1:{i:11;a:1:{s:6:"groups";a:2:{s:2:"g1";s:2:"g1";s:2:"g2";s:2:"g2";}}}'
    )
    assert reply(directory, select(["uid"], {"uid": ["u1"]})) == framed(
        b'a:2:{i:11;a:1:{s:3:"uid";s:2:"u1";}i:12;a:1:{s:3:"uid";s:2:"u1";}}'
    )
    by_id = select(["session", "uid"], {"connection_id": {"11": 11, "99": 99}})
    assert reply(directory, by_id) == framed(
        b'a:1:{i:11;a:2:{s:7:"session";s:18:"' + SESSION_11 + b'";s:3:"uid";s:2:"u1";}}'
    )
    for bad in (select(["password"]), select(["uid"], {"name": ["x"]})):
        with pytest.raises(CommandError, match="CMD_SELECT"):
            translate(decoded(bad))


def test_select_puts_rows_without_uid_or_groups_last(directory: Directory[Entry]) -> None:
    """GatewayClient's getAllGroupUidList() stops reading a gateway's rows at the
    first row without uid or groups; connection 13 (neither) is first in the
    directory, so the PHP gateway's order would give the app nothing."""
    rows = reply(directory, select(["uid", "groups"]))
    assert rows[4:].startswith(b"a:3:{i:11;")
    answer = loads(rows[4:], text=True)
    group_uids: dict[str, set[str]] = {}
    for info in answer.values():  # the PHP client's loop, break included
        if not info["uid"] or not info["groups"]:
            break
        for group in info["groups"].values():
            group_uids.setdefault(group, set()).add(info["uid"])
    assert group_uids == {"g1": {"u1"}, "g2": {"u1"}}
