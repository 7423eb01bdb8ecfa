"""The push API's verbs: which JSON fields each call takes (pure: no I/O).

Every verb is a Gateway API call of the push clients, with the same name; its JSON
body is an object of the call's arguments by name. The push clients' other public
calls are deliberately not verbs: ``connect``, ``close``, ``flush`` and ``gateways``
manage the client itself, and the operator queries ``get_connections`` and
``get_gateway_stats`` (not part of the Gateway API) are served by ``start.py
connections`` and ``start.py status``. :func:`parse_call` checks the body
against the verb's :class:`Param` list and returns the positional arguments for the
:class:`~gatewayclient.AsyncGatewayClient` method, or raises :class:`BadRequest`
naming the field at fault. A message is ``"message": "text"`` (a text frame) or
``"message_base64": "..."`` (a binary frame).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["BadRequest", "Param", "VERBS", "parse_call"]


class BadRequest(ValueError):
    """The body does not fit the verb; the message names the field and the problem."""


@dataclass(slots=True, frozen=True)
class Param:
    """One JSON field of a verb: ``kind`` names its converter (``_arg_<kind>``)."""

    name: str
    kind: str
    required: bool = True


_CID = Param("client_id", "client_id")
_MSG = Param("message", "message")
_UID = Param("uid", "key")
_GROUP = Param("group", "key")
_EXCLUDE = Param("exclude", "ids_or_one", required=False)

VERBS: dict[str, tuple[Param, ...]] = {
    # sends and state changes
    "send_to_client": (_CID, _MSG),
    "send_to_all": (_MSG, Param("client_ids", "ids", required=False), _EXCLUDE),
    "send_to_uid": (Param("uid", "keys"), _MSG),
    "send_to_group": (Param("group", "keys"), _MSG, _EXCLUDE),
    "close_client": (_CID, Param("message", "message", required=False)),
    "destroy_client": (_CID,),
    "bind_uid": (_CID, _UID),
    "unbind_uid": (_CID, _UID),
    "join_group": (_CID, _GROUP),
    "leave_group": (_CID, _GROUP),
    "ungroup": (_GROUP,),
    "set_session": (_CID, Param("session", "object")),
    "update_session": (_CID, Param("session", "object")),
    # queries
    "is_online": (_CID,),
    "get_session": (_CID,),
    "get_uid_by_client_id": (_CID,),
    "is_uid_online": (_UID,),
    "get_client_id_by_uid": (_UID,),
    "get_client_count_by_group": (Param("group", "key_or_all", required=False),),
    "get_client_sessions_by_group": (_GROUP,),
    "get_client_id_list_by_group": (_GROUP,),
    "get_uid_list_by_group": (_GROUP,),
    "get_uid_count_by_group": (_GROUP,),
    "get_all_client_count": (),
    "get_all_client_sessions": (),
    "get_all_client_id_list": (),
    "get_all_uid_list": (),
    "get_all_uid_count": (),
    "get_all_group_id_list": (),
    "get_all_group_count": (),
    "get_all_group_uid_list": (),
    "get_all_group_client_id_list": (),
    "is_uids_online": (Param("uids", "key_list"),),
    "batch_get_client_id_by_uid": (Param("uids", "key_list"),),
    "batch_get_client_count_by_group": (Param("groups", "key_list"),),
}
"""Every verb and its fields, in the order of the client method's arguments."""


def parse_call(verb: str, body: bytes) -> list[Any]:
    """The positional arguments of ``verb`` from a JSON ``body``; :class:`BadRequest`
    when the verb is unknown or the body does not fit it."""
    params = VERBS.get(verb)
    if params is None:
        raise BadRequest(f"unknown verb {verb[:60]!r}; verbs: {', '.join(VERBS)}")
    fields = _parse_object(body)
    known = {p.name for p in params} | ({"message_base64"} if _takes_message(params) else set())
    unknown = sorted(set(fields) - known)
    if unknown:
        expected = ", ".join(sorted(known)) or "no fields"
        raise BadRequest(f"{verb}: unknown field(s) {', '.join(unknown)}; expected {expected}")
    return [_convert(verb, param, fields) for param in params]


def _takes_message(params: tuple[Param, ...]) -> bool:
    return any(p.kind == "message" for p in params)


def _parse_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("the body is not valid JSON: nested too deeply") from None
    if not isinstance(document, dict):
        raise BadRequest(f"the body must be a JSON object, got {type(document).__name__}")
    return document


def _convert(verb: str, param: Param, fields: dict[str, Any]) -> Any:
    if param.kind == "message":
        return _message(verb, param, fields)
    if param.name not in fields or fields[param.name] is None:
        if param.required:
            raise BadRequest(f"{verb}: missing field {param.name!r}")
        return "" if param.kind == "key_or_all" else None
    converter: Callable[[str, Any], Any] = _CONVERTERS[param.kind]
    try:
        return converter(param.name, fields[param.name])
    except BadRequest as exc:
        raise BadRequest(f"{verb}: {exc}") from None


def _message(verb: str, param: Param, fields: dict[str, Any]) -> str | bytes | None:
    text, b64 = fields.get("message"), fields.get("message_base64")
    if text is not None and b64 is not None:
        raise BadRequest(f"{verb}: give either 'message' or 'message_base64', not both")
    if b64 is not None:
        if not isinstance(b64, str):
            raise BadRequest(f"{verb}: 'message_base64' must be a base64 string")
        try:
            return base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"{verb}: 'message_base64' is not valid base64") from None
    if text is None:
        if param.required:
            raise BadRequest(f"{verb}: missing field 'message' (or 'message_base64')")
        return None
    if not isinstance(text, str):
        raise BadRequest(
            f"{verb}: 'message' must be a string (encode JSON payloads as a string), "
            f"got {type(text).__name__}"
        )
    return text


def _arg_client_id(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{name!r} must be a string, got {type(value).__name__}")
    return value


def _arg_key(name: str, value: Any) -> str | int:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadRequest(f"{name!r} must be a string or an integer, got {type(value).__name__}")
    return value


def _arg_key_or_all(name: str, value: Any) -> str | int:
    return "" if value == "" else _arg_key(name, value)


def _arg_keys(name: str, value: Any) -> str | int | list[str | int]:
    if isinstance(value, list):
        return _arg_key_list(name, value)
    return _arg_key(name, value)


def _arg_key_list(name: str, value: Any) -> list[str | int]:
    if not isinstance(value, list):
        raise BadRequest(f"{name!r} must be a list, got {type(value).__name__}")
    return [_arg_key(f"{name}[{i}]", item) for i, item in enumerate(value)]


def _arg_ids(name: str, value: Any) -> list[str]:
    if not isinstance(value, list):
        raise BadRequest(f"{name!r} must be a list of client_ids, got {type(value).__name__}")
    return [_arg_client_id(f"{name}[{i}]", item) for i, item in enumerate(value)]


def _arg_ids_or_one(name: str, value: Any) -> str | list[str]:
    return _arg_client_id(name, value) if isinstance(value, str) else _arg_ids(name, value)


def _arg_object(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"{name!r} must be a JSON object, got {type(value).__name__}")
    return value


_CONVERTERS: dict[str, Callable[[str, Any], Any]] = {
    name.removeprefix("_arg_"): function
    for name, function in dict(globals()).items()
    if name.startswith("_arg_")
}
