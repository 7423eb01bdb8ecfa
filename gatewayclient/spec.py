"""The Gateway API in one table: every call, its arguments, what it is and what it costs.

How this works
--------------
:data:`CALLS` holds one :class:`Call` per call of the Gateway API: its name, its
arguments (name, type, default, and how the push API reads it from JSON), whether it
is a *send* (a send or a state change: queued, returns ``None``) or a *query* (an
answer comes back), its cost class and its verb in the HTTP push API. Four surfaces
implement the table:

- ``gatewayclient.api.GatewayAPI`` and the worker's ``api``
  (``businessworker.handle.WorkerAPI``, which adds the current-client calls): sends
  are plain calls, queries coroutines;
- ``gatewayclient.client.AsyncGatewayClient``: every call is a coroutine;
- ``gatewayclient.sync.GatewayClient``: every call is a plain, blocking call;
- ``pushapi.verbs.VERBS``: built from this table, one JSON field per argument.

The three classes keep their methods written out, so that type checkers, editors and
readers see them; ``tests/test_api_spec.py`` compares every method's signature with
this table (names, order, kinds, defaults, resolved annotations, sync or async) and
fails when one surface drifts. :func:`render_markdown` writes the reference table
of ``docs/api.md``.

Cost classes (see the README): **T** goes to one gateway, the one named by the
client_id; **B** is one packet to every gateway that may need it; **S** asks every
gateway at once and merges the answers.

This module is pure data: no I/O, nothing imported from the rest of the package.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

__all__ = [
    "Message",
    "Key",
    "Kind",
    "Cost",
    "JsonField",
    "Arg",
    "Call",
    "CALLS",
    "HELPERS",
    "BY_NAME",
    "NO_DEFAULT",
    "calls_of",
    "render_markdown",
]

Message = str | bytes
"""A message: ``str`` travels as a text frame, ``bytes`` as a binary frame."""
Key = str | int
"""A uid or a group: a non-empty ``str``, or an ``int`` (converted with ``str``)."""

NO_DEFAULT: Any = inspect.Parameter.empty
"""The default of a required argument (what :mod:`inspect` reports for one)."""


class Kind(StrEnum):
    """What a call does."""

    SEND = "send"
    """A send or a state change: the packet is queued and the call returns ``None``."""
    QUERY = "query"
    """A question to one or every gateway; the call returns the answer."""


class Cost(StrEnum):
    """Where a call goes."""

    T = "T"
    """One gateway: the one the client_id names."""
    B = "B"
    """One packet to every gateway that may need it."""
    S = "S"
    """A query to every gateway at once, answers merged."""
    L = "L"
    """No gateway: computed where it is called (the push clients' helpers)."""


class JsonField(StrEnum):
    """How the HTTP push API reads an argument from its JSON object."""

    CLIENT_ID = "client_id"
    CLIENT_IDS = "client_ids"
    """A list of client_ids."""
    CLIENT_IDS_OR_ONE = "client_ids_or_one"
    """A list of client_ids, or one."""
    MESSAGE = "message"
    """``"message": "text"`` (a text frame) or ``"message_base64": "..."`` (binary)."""
    KEY = "key"
    """A uid or group: a string or an integer."""
    KEYS = "keys"
    """One uid/group or a list of them."""
    KEY_LIST = "key_list"
    """A list of uids/groups."""
    OBJECT = "object"
    """A JSON object (a session)."""
    NUMBER = "number"
    """A JSON number (seconds)."""
    CLOSE_CODE = "close_code"
    """A WebSocket close code: an integer, 1000 or 3000-4999."""
    TEXT = "text"
    """A JSON string."""


@dataclass(frozen=True, slots=True)
class Arg:
    """One argument of a call. ``field_name``: its JSON field when not ``name``."""

    name: str
    type: Any
    json: JsonField
    default: Any = NO_DEFAULT
    field_name: str = ""

    @property
    def required(self) -> bool:
        """Whether the call needs it (it has no default)."""
        return self.default is NO_DEFAULT

    @property
    def field(self) -> str:
        """The JSON field of the push API that carries it."""
        return self.field_name or self.name


@dataclass(frozen=True, slots=True)
class Call:
    """One call of the Gateway API.

    ``verb``: its path in the HTTP push API (``POST /<verb>``); empty for the calls
    that are not verbs: the current-client calls (``worker_only``: they exist only
    inside an event, in the worker's ``api``) and the operator queries, served by
    ``gatewayworker status`` / ``connections``.
    """

    name: str
    kind: Kind
    cost: Cost
    args: tuple[Arg, ...]
    returns: Any
    summary: str
    verb: str = ""
    worker_only: bool = False

    def signature(self) -> str:
        """``send_to_all(message, client_ids=None, exclude=None)``."""
        parts = [a.name if a.required else f"{a.name}={a.default!r}" for a in self.args]
        return f"{self.name}({', '.join(parts)})"


# ---- the arguments, shared by the calls ---------------------------------------------

_CLIENT_ID = Arg("client_id", str, JsonField.CLIENT_ID)
_MESSAGE = Arg("message", Message, JsonField.MESSAGE)
_LAST_MESSAGE = Arg("message", Message | None, JsonField.MESSAGE, default=None)
_UID = Arg("uid", Key, JsonField.KEY)
_GROUP = Arg("group", Key, JsonField.KEY)
_UIDS = Arg("uids", Iterable[Key], JsonField.KEY_LIST)
_EXCLUDE = Arg("exclude", Iterable[str] | str | None, JsonField.CLIENT_IDS_OR_ONE, default=None)
_SESSION = Arg("session", dict[str, Any], JsonField.OBJECT)
_CLOSE_CODE = Arg("code", int, JsonField.CLOSE_CODE, default=1000)
_CLOSE_REASON = Arg("reason", str, JsonField.TEXT, default="")

_SEND, _QUERY = Kind.SEND, Kind.QUERY
_T, _B, _S = Cost.T, Cost.B, Cost.S
_SESSIONS = dict[str, dict[str, Any]]


def _call(
    name: str,
    kind: Kind,
    cost: Cost,
    args: tuple[Arg, ...],
    returns: Any,
    summary: str,
    *,
    verb: bool = True,
    worker_only: bool = False,
) -> Call:
    return Call(name, kind, cost, args, returns, summary, name if verb else "", worker_only)


CALLS: tuple[Call, ...] = (
    # ---- sends and state changes ----
    _call("send_to_client", _SEND, _T, (_CLIENT_ID, _MESSAGE), None, "Send to one connection."),
    _call(
        "send_to_current_client",
        _SEND,
        _T,
        (_MESSAGE,),
        None,
        "Send to the client whose event is being handled.",
        verb=False,
        worker_only=True,
    ),
    _call(
        "send_to_all",
        _SEND,
        _B,
        (
            _MESSAGE,
            Arg("client_ids", Iterable[str] | None, JsonField.CLIENT_IDS, default=None),
            _EXCLUDE,
        ),
        None,
        "Send to every client, or only to `client_ids` (an empty list sends nothing), "
        "minus `exclude`.",
    ),
    _call(
        "send_to_uid",
        _SEND,
        _B,
        (Arg("uid", Key | Iterable[Key], JsonField.KEYS), _MESSAGE),
        None,
        "Send to every connection bound to the uid (or to any of the uids).",
    ),
    _call(
        "send_to_group",
        _SEND,
        _B,
        (Arg("group", Key | Iterable[Key], JsonField.KEYS), _MESSAGE, _EXCLUDE),
        None,
        "Send to every member of the group(s), once, minus `exclude`.",
    ),
    _call(
        "close_client",
        _SEND,
        _T,
        (_CLIENT_ID, _LAST_MESSAGE, _CLOSE_CODE, _CLOSE_REASON),
        None,
        "Optionally send a last message, then close after flushing, with close `code`"
        " (1000 or 3000-4999) and `reason` (at most 123 bytes).",
    ),
    _call(
        "close_current_client",
        _SEND,
        _T,
        (_LAST_MESSAGE, _CLOSE_CODE, _CLOSE_REASON),
        None,
        "Optionally send a last message, then close the current client (`code`,"
        " `reason` as in `close_client`).",
        verb=False,
        worker_only=True,
    ),
    _call("destroy_client", _SEND, _T, (_CLIENT_ID,), None, "Drop the connection at once."),
    _call(
        "destroy_current_client",
        _SEND,
        _T,
        (),
        None,
        "Drop the current client at once.",
        verb=False,
        worker_only=True,
    ),
    _call(
        "bind_uid",
        _SEND,
        _T,
        (_CLIENT_ID, _UID),
        None,
        "Bind the connection to `uid` (rebinding replaces the previous uid).",
    ),
    _call(
        "unbind_uid",
        _SEND,
        _T,
        (_CLIENT_ID, _UID),
        None,
        "Unbind the connection from `uid` (only if bound to that uid).",
    ),
    _call("join_group", _SEND, _T, (_CLIENT_ID, _GROUP), None, "Add the connection to `group`."),
    _call(
        "leave_group",
        _SEND,
        _T,
        (_CLIENT_ID, _GROUP),
        None,
        "Remove the connection from `group` (an empty group vanishes).",
    ),
    _call("ungroup", _SEND, _B, (_GROUP,), None, "Dissolve `group` on every gateway."),
    _call(
        "set_session",
        _SEND,
        _T,
        (_CLIENT_ID, _SESSION),
        None,
        "Replace the connection's session.",
    ),
    _call(
        "update_session",
        _SEND,
        _T,
        (_CLIENT_ID, Arg("partial", dict[str, Any], JsonField.OBJECT, field_name="session")),
        None,
        "Merge `partial` into the connection's session, recursively.",
    ),
    # ---- queries about one connection ----
    _call("is_online", _QUERY, _T, (_CLIENT_ID,), bool, "Whether the connection exists."),
    _call(
        "get_session",
        _QUERY,
        _T,
        (_CLIENT_ID,),
        dict[str, Any] | None,
        "The connection's session (`{}` if never set), `None` when offline.",
    ),
    _call(
        "get_uid_by_client_id",
        _QUERY,
        _T,
        (_CLIENT_ID,),
        str | None,
        "The uid the connection is bound to, `None` if unbound or offline.",
    ),
    # ---- queries about uids ----
    _call("is_uid_online", _QUERY, _S, (_UID,), bool, "Whether any connection is bound to `uid`."),
    _call(
        "get_client_id_by_uid",
        _QUERY,
        _S,
        (_UID,),
        list[str],
        "The client_ids bound to `uid`.",
    ),
    _call(
        "is_uids_online",
        _QUERY,
        _S,
        (_UIDS,),
        dict[str, bool],
        "`{uid: online}` for many uids in one round trip.",
    ),
    _call(
        "batch_get_client_id_by_uid",
        _QUERY,
        _S,
        (_UIDS,),
        dict[str, list[str]],
        "`{uid: [client_id, ...]}` for many uids in one round trip.",
    ),
    # ---- queries about groups ('' means every client) ----
    _call(
        "get_client_count_by_group",
        _QUERY,
        _S,
        (Arg("group", Key, JsonField.KEY, default=""),),
        int,
        'How many members `group` has (`""`: every client).',
    ),
    _call(
        "get_client_sessions_by_group",
        _QUERY,
        _S,
        (_GROUP,),
        _SESSIONS,
        '`{client_id: session}` of the members of `group` (`""`: all).',
    ),
    _call(
        "get_client_id_list_by_group",
        _QUERY,
        _S,
        (_GROUP,),
        list[str],
        'The client_ids in `group` (`""`: all).',
    ),
    _call(
        "get_uid_list_by_group",
        _QUERY,
        _S,
        (_GROUP,),
        list[str],
        'The distinct uids bound to members of `group` (`""`: all).',
    ),
    _call(
        "get_uid_count_by_group",
        _QUERY,
        _S,
        (_GROUP,),
        int,
        "How many distinct uids are bound to members of `group`.",
    ),
    _call(
        "batch_get_client_count_by_group",
        _QUERY,
        _S,
        (Arg("groups", Iterable[Key], JsonField.KEY_LIST),),
        dict[str, int],
        "`{group: members}` for many groups in one round trip.",
    ),
    # ---- cluster-wide queries ----
    _call("get_all_client_count", _QUERY, _S, (), int, "How many connections the cluster has."),
    _call(
        "get_all_client_sessions",
        _QUERY,
        _S,
        (),
        _SESSIONS,
        "`{client_id: session}` of every connection.",
    ),
    _call("get_all_client_id_list", _QUERY, _S, (), list[str], "Every client_id."),
    _call("get_all_uid_list", _QUERY, _S, (), list[str], "Every bound uid, once."),
    _call("get_all_uid_count", _QUERY, _S, (), int, "How many distinct uids are bound."),
    _call("get_all_group_id_list", _QUERY, _S, (), list[str], "Every non-empty group."),
    _call("get_all_group_count", _QUERY, _S, (), int, "How many non-empty groups exist."),
    _call(
        "get_all_group_uid_list",
        _QUERY,
        _S,
        (),
        dict[str, list[str]],
        "`{group: [uid, ...]}` for every non-empty group.",
    ),
    _call(
        "get_all_group_client_id_list",
        _QUERY,
        _S,
        (),
        dict[str, list[str]],
        "`{group: [client_id, ...]}` for every non-empty group.",
    ),
    # ---- operator queries (not verbs: `gatewayworker connections` / `status`) ----
    _call(
        "get_connections",
        _QUERY,
        _S,
        (),
        list[dict[str, Any]],
        "One dict per connection of the cluster, each naming its gateway.",
        verb=False,
    ),
    _call(
        "get_gateway_stats",
        _QUERY,
        _S,
        (),
        dict[str, dict[str, Any]],
        "`{gateway address: counters}`.",
        verb=False,
    ),
)
"""Every call of the Gateway API."""

HELPERS: tuple[Call, ...] = (
    _call(
        "create_token",
        _QUERY,
        Cost.L,
        (
            _UID,
            Arg("groups", Iterable[Key] | None, JsonField.KEY_LIST, default=None),
            Arg("session", dict[str, Any] | None, JsonField.OBJECT, default=None),
            Arg("expires_in", float, JsonField.NUMBER, default=3600.0),
        ),
        str,
        "A signed connect token (JWT, HS256 under `token_key`) binding `uid`, `groups`"
        " and `session` at connect.",
    ),
)
"""Calls of the push clients (plain methods in both) and the push API that ask no
gateway: not part of the Gateway API, so not in the worker's ``api``."""

BY_NAME: dict[str, Call] = {call.name: call for call in CALLS}


def calls_of(worker: bool) -> tuple[Call, ...]:
    """The calls of the worker's ``api`` (``worker``) or of the push clients."""
    return tuple(call for call in CALLS if worker or not call.worker_only)


def _original_name(call: Call) -> str:
    """The original GatewayWorker's name (``sendToClient``); empty for ours only."""
    if not call.verb and not call.worker_only:
        return ""
    head, *rest = call.name.split("_")
    return head + "".join(word.capitalize() for word in rest)


_DOC_HEAD = """\
# The Gateway API, call by call

<!-- Generated from gatewayclient/spec.py by scripts/api_doc.py; do not edit. -->

Every call, in Events (`api.<call>`) and in the push clients (`GatewayClient`,
`AsyncGatewayClient`). *send*: a send or a state change, queued, returns `None` (a
coroutine in `AsyncGatewayClient`); *query*: returns the answer (a coroutine in Events
and in `AsyncGatewayClient`). Cost: **T** one gateway, the one the client_id names;
**B** one packet to every gateway that may need it; **S** every gateway is asked at
once and the answers are merged; **L** no gateway (a push-client helper, a plain
method in both clients). HTTP: `POST /<verb>` on the push API with a JSON
object of the listed fields (a message is `message` or `message_base64`).

"""


def render_markdown() -> str:
    """The reference page ``docs/api.md``: one row per call."""
    lines = [
        "| call | kind | cost | HTTP verb and JSON fields | GatewayWorker | what it does |",
        "|---|---|---|---|---|---|",
    ]
    for call in CALLS + HELPERS:
        fields = ", ".join(a.field for a in call.args)
        verb = f"`POST /{call.verb}` {{{fields}}}" if call.verb else "-"
        original = f"`{_original_name(call)}`" if _original_name(call) else "-"
        where = " (Events only)" if call.worker_only else ""
        lines.append(
            f"| `{call.signature()}` | {call.kind}{where} | {call.cost} | {verb} | "
            f"{original} | {call.summary} |"
        )
    return _DOC_HEAD + "\n".join(lines) + "\n"
