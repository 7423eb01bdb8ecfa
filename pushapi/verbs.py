"""The push API's verbs: which JSON fields each call takes (pure: no I/O).

Every verb is a call of the Gateway API table (``gatewayclient.spec.CALLS``) that
has a ``verb``: the same name as the push clients' method, and one JSON field per
argument, read as the table's :class:`~gatewayclient.spec.JsonField` says. The
calls without a verb are the current-client calls (only inside an event) and the
operator queries ``get_connections`` and ``get_gateway_stats``, served by
``gatewayworker connections`` and ``gatewayworker status``. The helpers
(``gatewayclient.spec.HELPERS``: ``create_token``) are verbs too. :func:`parse_call`
checks a JSON body against the verb's arguments and returns the positional
arguments for the :class:`~gatewayclient.AsyncGatewayClient` method, or raises
:class:`BadRequest` naming the field at fault; a field left out takes the
argument's default. A message is ``"message": "text"`` (a text frame) or
``"message_base64": "..."`` (a binary frame).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any

from pygatewayworker.gatewayclient.spec import CALLS, HELPERS, Arg, Call, JsonField
from pygatewayworker.runtime import jsondepth
from pygatewayworker.runtime.jsondepth import TooDeep

__all__ = ["BadRequest", "VERBS", "parse_call"]


class BadRequest(ValueError):
    """The body does not fit the verb; the message names the field and the problem."""


VERBS: dict[str, Call] = {call.verb: call for call in CALLS + HELPERS if call.verb}
"""Every verb and its call (arguments in the order of the client method's)."""


def parse_call(verb: str, body: bytes) -> list[Any]:
    """The positional arguments of ``verb`` from a JSON ``body``; :class:`BadRequest`
    when the verb is unknown or the body does not fit it."""
    call = VERBS.get(verb)
    if call is None:
        raise BadRequest(f"unknown verb {verb[:60]!r}; verbs: {', '.join(VERBS)}")
    fields = _parse_object(body)
    known = {a.field for a in call.args}
    if _takes_message(call.args):
        known.add("message_base64")
    unknown = sorted(set(fields) - known)
    if unknown:
        expected = ", ".join(sorted(known)) or "no fields"
        raise BadRequest(f"{verb}: unknown field(s) {', '.join(unknown)}; expected {expected}")
    return [_convert(verb, arg, fields) for arg in call.args]


def _takes_message(args: tuple[Arg, ...]) -> bool:
    return any(a.json is JsonField.MESSAGE for a in args)


def _parse_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        document = jsondepth.loads(body)
    except TooDeep as exc:
        raise BadRequest(f"the body is {exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise BadRequest(f"the body must be a JSON object, got {type(document).__name__}")
    return document


def _convert(verb: str, arg: Arg, fields: dict[str, Any]) -> Any:
    if arg.json is JsonField.MESSAGE:
        return _message(verb, arg, fields)
    if fields.get(arg.field) is None:
        if arg.required:
            raise BadRequest(f"{verb}: missing field {arg.field!r}")
        return arg.default
    try:
        return CONVERTERS[arg.json](arg.field, fields[arg.field])
    except BadRequest as exc:
        raise BadRequest(f"{verb}: {exc}") from None


def _message(verb: str, arg: Arg, fields: dict[str, Any]) -> str | bytes | None:
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
        if arg.required:
            raise BadRequest(f"{verb}: missing field 'message' (or 'message_base64')")
        return None
    if not isinstance(text, str):
        raise BadRequest(
            f"{verb}: 'message' must be a string (encode JSON payloads as a string), "
            f"got {type(text).__name__}"
        )
    return text


def _arg_string(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{name!r} must be a string, got {type(value).__name__}")
    return value


def _arg_key(name: str, value: Any) -> str | int:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadRequest(f"{name!r} must be a string or an integer, got {type(value).__name__}")
    return value


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
    return [_arg_string(f"{name}[{i}]", item) for i, item in enumerate(value)]


def _arg_ids_or_one(name: str, value: Any) -> str | list[str]:
    return _arg_string(name, value) if isinstance(value, str) else _arg_ids(name, value)


def _arg_object(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"{name!r} must be a JSON object, got {type(value).__name__}")
    return value


def _arg_close_code(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{name!r} must be an integer close code, got {type(value).__name__}")
    if value != 1000 and not 3000 <= value <= 4999:
        raise BadRequest(f"{name!r}: close code {value} is not 1000 or 3000-4999")
    return value


def _arg_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"{name!r} must be a number, got {type(value).__name__}")
    return float(value)


CONVERTERS: dict[JsonField, Callable[[str, Any], Any]] = {
    JsonField.CLIENT_ID: _arg_string,
    JsonField.CLIENT_IDS: _arg_ids,
    JsonField.CLIENT_IDS_OR_ONE: _arg_ids_or_one,
    JsonField.KEY: _arg_key,
    JsonField.KEYS: _arg_keys,
    JsonField.KEY_LIST: _arg_key_list,
    JsonField.OBJECT: _arg_object,
    JsonField.NUMBER: _arg_number,
    JsonField.CLOSE_CODE: _arg_close_code,
    JsonField.TEXT: _arg_string,
}
"""``(field name, JSON value) -> argument`` for every field kind but messages."""
