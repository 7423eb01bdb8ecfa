"""The Pusher Channels WebSocket protocol (version 7), sans I/O.

How this works
--------------
Everything here is plain functions over strings and dicts: parsing what a client
sends (:func:`parse_client_message`), building what we send (:func:`message`,
:func:`error`...), naming and checking channels, mapping our ``client_id`` to
Pusher's ``socket_id`` and back, and checking a channel's auth signature. The
business worker glue (:mod:`pygatewayworker.pusher.channels`) calls these and does
the I/O through the Gateway API.

Wire shapes: every frame is a JSON object ``{"event", "channel"?, "data"}``. Our
own events (``pusher:*``, ``pusher_internal:*``) carry ``data`` as a JSON-encoded
string, as Pusher does; events triggered through the HTTP API carry the string the
backend gave, unchanged.

``socket_id``: Pusher's format is ``"<digits>.<digits>"``. Ours is the client_id
read as two numbers: its first 12 hex digits (the gateway's IPv4 and internal port)
and its last 8 (the connection number), so ``socket_id_of`` and ``client_id_of``
are exact inverses and a ``socket_id`` sent back by a backend (to exclude the
sender) names the connection without a lookup.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pygatewayworker.runtime import jsondepth
from pygatewayworker.runtime.jsondepth import TooDeep

__all__ = [
    "PROTOCOL_VERSION",
    "PING_DATA",
    "ErrorCode",
    "ProtocolError",
    "ClientMessage",
    "parse_client_message",
    "message",
    "error",
    "subscription_error",
    "close_reason",
    "kind_of",
    "check_channel",
    "check_event_name",
    "check_client_event",
    "group_of",
    "channel_of_group",
    "group_prefix",
    "socket_id_of",
    "client_id_of",
    "sign",
    "channel_signature",
    "check_channel_auth",
    "parse_channel_data",
]

PROTOCOL_VERSION = 7
MIN_PROTOCOL, MAX_PROTOCOL = 5, 7
"""Protocol versions we speak (pusher-js 8 sends 7)."""

PING_DATA = '{"event":"pusher:ping","data":"{}"}'
"""Give this to ``Gateway(ping_data=...)``: the gateway's heartbeat then is a
``pusher:ping``, which pusher-js answers with ``pusher:pong``."""

MAX_CHANNEL_LENGTH = 200
MAX_EVENT_NAME_LENGTH = 200
_CHANNEL = re.compile(r"\A[-a-zA-Z0-9_=@,.;]+\Z")
_SOCKET_ID = re.compile(r"\A(\d{1,15})\.(\d{1,10})\Z")


class ErrorCode:
    """``pusher:error`` codes of the protocol (4000-4099: do not reconnect unchanged;
    4100-4199: reconnect after backing off; 4200-4299: reconnect now; 4300+: client
    event errors)."""

    APP_NOT_FOUND = 4001
    PATH_NOT_FOUND = 4005
    INVALID_VERSION = 4006
    UNSUPPORTED_PROTOCOL = 4007
    NO_PROTOCOL = 4008
    UNAUTHORIZED = 4009
    OVER_CAPACITY = 4100
    RECONNECT = 4200
    CLIENT_EVENT_REJECTED = 4301


class ProtocolError(ValueError):
    """The client sent something the protocol does not allow; ``code`` is the
    ``pusher:error`` code to answer with (``None``: a generic error)."""

    def __init__(self, text: str, code: int | None = None) -> None:
        super().__init__(text)
        self.code = code


@dataclass(slots=True, frozen=True)
class ClientMessage:
    """One parsed client frame: ``event`` name, ``channel`` (may be ``None``) and
    ``data`` (a dict for ``pusher:*`` events; any JSON value for client events)."""

    event: str
    channel: str | None
    data: Any


def parse_client_message(raw: str | bytes) -> ClientMessage:
    """Parse one frame; raise :class:`ProtocolError` when it is not a Pusher event."""
    try:
        doc = jsondepth.loads(raw)
    except TooDeep as exc:
        raise ProtocolError(f"Invalid JSON: the message is {exc}") from None
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("Invalid JSON: the message could not be parsed") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("event"), str) or not doc["event"]:
        raise ProtocolError("Invalid message: expected a JSON object with an 'event' name")
    event: str = doc["event"]
    channel = doc.get("channel")
    if channel is not None and not isinstance(channel, str):
        raise ProtocolError("Invalid message: 'channel' must be a string")
    data = doc.get("data")
    if event.startswith("pusher:"):
        if isinstance(data, str):  # some clients send pusher:* data JSON-encoded
            try:
                data = jsondepth.loads(data) if data else {}
            except ValueError:
                raise ProtocolError(f"Invalid data for {event}: not JSON") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ProtocolError(f"Invalid data for {event}: expected an object")
    return ClientMessage(event, channel, data)


def message(event: str, data: Any, channel: str | None = None, **extra: Any) -> str:
    """One frame. ``data`` that is not a ``str`` is JSON-encoded into a string (Pusher
    sends ``data`` of its own events as a string); ``extra`` adds fields (e.g.
    ``user_id`` on presence client events)."""
    doc: dict[str, Any] = {"event": event}
    if channel is not None:
        doc["channel"] = channel
    doc["data"] = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    doc.update(extra)
    return json.dumps(doc, separators=(",", ":"))


def error(text: str, code: int | None = None, channel: str | None = None) -> str:
    """A ``pusher:error`` frame."""
    return message("pusher:error", {"code": code, "message": text}, channel)


def close_reason(text: str) -> str:
    """``text`` cut to fit a WebSocket close reason (123 bytes of UTF-8)."""
    raw = text.encode("utf-8")
    return text if len(raw) <= 123 else raw[:123].decode("utf-8", "ignore")


def subscription_error(channel: str, text: str, status: int, kind: str = "AuthError") -> str:
    """A ``pusher:subscription_error`` for ``channel`` (pusher-js and Laravel Echo
    surface it on the channel: ``channel.error(...)``)."""
    return message(
        "pusher:subscription_error", {"type": kind, "error": text, "status": status}, channel
    )


# ---- channels -----------------------------------------------------------------------


def kind_of(channel: str) -> str:
    """``"presence"``, ``"encrypted"`` (``private-encrypted-``), ``"private"`` or
    ``"public"``."""
    if channel.startswith("presence-"):
        return "presence"
    if channel.startswith("private-encrypted-"):
        return "encrypted"
    if channel.startswith("private-"):
        return "private"
    return "public"


def check_channel(channel: object) -> str:
    """``channel`` if it is a valid channel name, else :class:`ProtocolError`."""
    if not isinstance(channel, str) or not channel:
        raise ProtocolError("a channel name is required")
    if len(channel) > MAX_CHANNEL_LENGTH:
        raise ProtocolError(f"channel name over {MAX_CHANNEL_LENGTH} characters")
    if not _CHANNEL.match(channel):
        raise ProtocolError(
            f"invalid channel name {channel[:64]!r}: use letters, digits and _-=@,.;"
        )
    return channel


def check_event_name(name: object) -> str:
    """``name`` if it is a valid event name, else :class:`ProtocolError`."""
    if not isinstance(name, str) or not name:
        raise ProtocolError("an event name is required")
    if len(name) > MAX_EVENT_NAME_LENGTH:
        raise ProtocolError(f"event name over {MAX_EVENT_NAME_LENGTH} characters")
    return name


def group_prefix(app_id: str) -> str:
    """The prefix of every group that is a channel of ``app_id``."""
    return f"pusher:{app_id}:"


def group_of(app_id: str, channel: str) -> str:
    """The Gateway API group of ``channel`` of app ``app_id``: ``pusher:<id>:<channel>``."""
    return f"pusher:{app_id}:{channel}"


def channel_of_group(app_id: str, group: str) -> str | None:
    """The channel a group stands for in ``app_id``, or ``None``."""
    prefix = group_prefix(app_id)
    return group[len(prefix) :] if group.startswith(prefix) else None


# ---- socket_id ----------------------------------------------------------------------


def socket_id_of(client_id: str) -> str:
    """Pusher's ``socket_id`` of a client_id (20 hex digits): ``"<48-bit>.<32-bit>"``."""
    return f"{int(client_id[:12], 16)}.{int(client_id[12:], 16)}"


def client_id_of(socket_id: object) -> str:
    """The client_id of a ``socket_id``; :class:`ProtocolError` when it is not one of
    ours."""
    match = _SOCKET_ID.match(socket_id) if isinstance(socket_id, str) else None
    if match is None:
        raise ProtocolError(f"invalid socket_id {str(socket_id)[:40]!r}")
    high, low = int(match.group(1)), int(match.group(2))
    if high >= 1 << 48 or low >= 1 << 32 or low == 0:
        raise ProtocolError(f"socket_id {socket_id!r} does not name a connection")
    return f"{high:012x}{low:08x}"


# ---- signatures ---------------------------------------------------------------------


def sign(secret: str, text: str | bytes) -> str:
    """Hex HMAC-SHA256 of ``text`` with ``secret`` (every Pusher signature)."""
    data = text.encode() if isinstance(text, str) else text
    return hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()


def channel_signature(secret: str, socket_id: str, channel: str, channel_data: str | None) -> str:
    """The signature a backend's auth endpoint puts after ``key:``."""
    text = (
        f"{socket_id}:{channel}"
        if channel_data is None
        else f"{socket_id}:{channel}:{channel_data}"
    )
    return sign(secret, text)


def check_channel_auth(
    key: str, secret: str, socket_id: str, channel: str, auth: object, channel_data: str | None
) -> None:
    """Raise :class:`ProtocolError` unless ``auth`` is ``"<key>:<signature>"`` for this
    connection and channel."""
    if not isinstance(auth, str) or not auth:
        raise ProtocolError(f"Auth info required to subscribe to {channel}")
    given_key, sep, signature = auth.partition(":")
    if not sep or given_key != key:
        raise ProtocolError(f"Invalid key in auth for {channel}: expected '{key}:<signature>'")
    expected = channel_signature(secret, socket_id, channel, channel_data)
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        signed = f"{socket_id}:{channel}" + ("" if channel_data is None else ":<channel_data>")
        raise ProtocolError(f"Invalid signature: expected HMAC SHA256 hex digest of {signed}")


def check_client_event(msg: ClientMessage, subscribed: Mapping[str, Any], max_size: int) -> str:
    """The channel of a client event the sender may send; :class:`ProtocolError`
    (code 4301) when it is not subscribed to it, the channel is not private or
    presence, or the data is over ``max_size`` bytes."""
    rejected = ErrorCode.CLIENT_EVENT_REJECTED
    check_event_name(msg.event)
    channel = msg.channel
    if not channel or channel not in subscribed:
        raise ProtocolError(f"Client event rejected: not subscribed to {channel!r}", rejected)
    if kind_of(channel) not in ("private", "presence"):
        raise ProtocolError(
            "Client event rejected: only supported on private and presence channels", rejected
        )
    size = len(msg.data.encode() if isinstance(msg.data, str) else json.dumps(msg.data).encode())
    if size > max_size:
        raise ProtocolError(
            f"Client event rejected: data of {size} bytes is over {max_size}", rejected
        )
    return channel


def parse_channel_data(raw: object, max_user_info: int) -> tuple[str, Any]:
    """``(user_id, user_info)`` from a presence subscription's ``channel_data``."""
    if not isinstance(raw, str) or not raw:
        raise ProtocolError("channel_data is required to subscribe to a presence channel")
    try:
        doc = jsondepth.loads(raw)
    except TooDeep as exc:
        raise ProtocolError(f"channel_data is {exc}") from None
    except ValueError:
        raise ProtocolError("channel_data is not valid JSON") from None
    if not isinstance(doc, dict):
        raise ProtocolError("channel_data must be a JSON object with a user_id")
    user_id = doc.get("user_id")
    if isinstance(user_id, int) and not isinstance(user_id, bool):
        user_id = str(user_id)
    if not isinstance(user_id, str) or not user_id or len(user_id) > MAX_CHANNEL_LENGTH:
        raise ProtocolError("channel_data must hold a user_id (a non-empty string or number)")
    info = doc.get("user_info")
    if len(json.dumps(info)) > max_user_info:
        raise ProtocolError(f"user_info over {max_user_info} bytes")
    return user_id, info
