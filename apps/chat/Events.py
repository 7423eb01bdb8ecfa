"""Chat room logic: the behaviour users know from workerman-chat.

Client -> server (JSON text frames):
    {"type": "login", "client_name": "...", "room_id": "..."}
    {"type": "say", "to_client_id": "all" | "<client_id>", "to_client_name": "...", "content": "..."}
    {"type": "pong"}
Server -> client:
    {"type": "init", "client_id": ...}                      on connect
    {"type": "ping"}                                         heartbeat (gateway)
    {"type": "login", "client_id", "client_name", "time"[, "client_list"]}
    {"type": "say", "from_client_id", "from_client_name", "to_client_id", "content", "time"}
    {"type": "logout", "from_client_id", "from_client_name", "time"}
    {"type": "error", "message"}                             a request we could not serve
Names and content are HTML-escaped; ``time`` is ``YYYY-mm-dd HH:MM:SS``.
"""

from __future__ import annotations

import html
import json
import logging
import time
from typing import Any

from pygatewayworker import GatewayUnavailable, QueryTimeout, api, context

log = logging.getLogger("apps.chat")

MAX_NAME = 64
MAX_CONTENT = 4096


def now() -> str:
    """The current local time as ``YYYY-mm-dd HH:MM:SS``."""
    return time.strftime("%Y-%m-%d %H:%M:%S")


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def dumps(message: dict[str, Any]) -> str:
    """Encode one message for the browser (compact JSON, UTF-8 kept readable; one
    encoder for all, as ``json.dumps`` builds a new one for these options per call)."""
    return _ENCODER.encode(message)


def current_session() -> dict[str, Any]:
    """The current client's session: always a dict inside an event (``None`` only
    outside one, where the handlers never run)."""
    session = context.session
    return {} if session is None else session


def _valid_text(request: Any) -> bool:
    """Whether every string of a decoded request has a UTF-8 form: ``json.loads``
    turns an escaped lone surrogate (``"\\ud800"``) into a ``str`` that cannot be
    sent anywhere."""
    try:
        dumps(request).encode()
    except UnicodeEncodeError:
        return False
    return True


def as_text(value: Any) -> str:
    """A session value as text for the browser: sessions may be written by PHP
    (``bytes`` for a string that is not UTF-8) or a push client, not only by us."""
    if value.__class__ is str:
        return value  # type: ignore[no-any-return]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def room_of(session: dict[str, Any]) -> str | None:
    """The room a session names, as a group name (``None``: not in a room)."""
    room = session.get("room_id")
    return None if room is None else as_text(room) or None


def reply_error(message: str) -> None:
    """Tell the current client what was wrong with its request."""
    api.send_to_current_client(dumps({"type": "error", "message": message}))


class Events:
    """Callbacks run by the business workers for every client event."""

    @staticmethod
    def on_connect(client_id: str) -> None:
        """Tell the page its client_id (used by push-only web backends to bind it)."""
        api.send_to_current_client(dumps({"type": "init", "client_id": client_id}))

    @staticmethod
    async def on_message(client_id: str, message: str | bytes) -> None:
        """Dispatch one chat request by its ``type``."""
        if isinstance(message, bytes):
            reply_error("binary messages are not supported by the chat")
            return
        try:
            request = json.loads(message)
        except (ValueError, RecursionError):  # RecursionError: nested past the stack
            log.warning("client %s sent invalid JSON: %.80r", client_id, message)
            reply_error("invalid JSON")
            return
        if "\\u" in message and not _valid_text(request):
            log.warning("client %s sent a lone surrogate escape: %.80r", client_id, message)
            reply_error("text must be valid Unicode (a lone surrogate escape was sent)")
            return
        if not isinstance(request, dict):
            reply_error("a request must be a JSON object")
            return
        kind = request.get("type")
        handler = HANDLERS.get(kind) if isinstance(kind, str) else None
        if handler is None:
            reply_error(f"unknown request type {str(request.get('type'))[:32]!r}")
            return
        await handler(client_id, request)

    @staticmethod
    def on_close(client_id: str) -> None:
        """Tell the room that this member left (the gateway already removed it)."""
        session = context.session or {}
        room_id = room_of(session)
        if room_id is None:
            return
        api.send_to_group(
            room_id,
            dumps(
                {
                    "type": "logout",
                    "from_client_id": client_id,
                    "from_client_name": as_text(session.get("client_name")),
                    "time": now(),
                }
            ),
        )


async def on_pong(client_id: str, request: dict[str, Any]) -> None:
    """Heartbeat answers need no reply: the gateway already counted the activity."""


async def on_login(client_id: str, request: dict[str, Any]) -> None:
    """Join a room: announce the newcomer, then send it the member list."""
    room_id = request.get("room_id")
    if not isinstance(room_id, (str, int)) or isinstance(room_id, bool) or str(room_id) == "":
        reply_error("login needs a room_id")
        return
    room_id = str(room_id)[:MAX_NAME]
    client_name = html.escape(str(request.get("client_name") or "guest").strip()[:MAX_NAME])
    session = current_session()
    old_room = room_of(session)
    if old_room is not None and old_room != room_id:
        api.leave_group(client_id, old_room)
    session["room_id"] = room_id
    session["client_name"] = client_name

    try:
        members = await api.get_client_sessions_by_group(room_id)
    except QueryTimeout as exc:
        # A gateway did not answer (restarting, unreachable): list the members the
        # others reported rather than refusing the login.
        log.warning("member list of room %s is incomplete: %s", room_id, exc)
        members = exc.partial or {}
    client_list = {
        cid: as_text(member.get("client_name") if isinstance(member, dict) else None)
        for cid, member in members.items()
    }
    client_list[client_id] = client_name
    announcement = {
        "type": "login",
        "client_id": client_id,
        "client_name": client_name,
        "time": now(),
    }
    # The gateway keeps the session; write it before joining so that the member list
    # of the next newcomer (read from the gateway) already names this client.
    api.set_session(client_id, session)
    api.send_to_group(room_id, dumps(announcement))
    api.join_group(client_id, room_id)
    api.send_to_current_client(dumps({**announcement, "client_list": client_list}))


async def on_say(client_id: str, request: dict[str, Any]) -> None:
    """A public message to the room, or a private one to a member (with a copy for
    the sender)."""
    session = current_session()
    room_id = room_of(session)
    if room_id is None:
        reply_error("log in to a room before saying anything")
        return
    content = html.escape(str(request.get("content", ""))[:MAX_CONTENT])
    to_client_id = str(request.get("to_client_id", "all"))
    message = {
        "type": "say",
        "from_client_id": client_id,
        "from_client_name": as_text(session.get("client_name")),
        "to_client_id": to_client_id,
        "content": content,
        "time": now(),
    }
    if to_client_id == "all":
        api.send_to_group(room_id, dumps(message))
        return
    message["to_client_name"] = html.escape(str(request.get("to_client_name", ""))[:MAX_NAME])
    text = dumps(message)
    try:
        api.send_to_client(to_client_id, text)
    except ValueError:
        reply_error("to_client_id is not a valid client_id")
        return
    except GatewayUnavailable:  # a well-formed id of a gateway that is not linked
        reply_error("that member is not online")
        return
    api.send_to_current_client(text)


HANDLERS = {"pong": on_pong, "login": on_login, "say": on_say}
