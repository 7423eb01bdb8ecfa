"""The Pusher HTTP API: what a signed request does, over a push client.

How this works
--------------
:meth:`HTTPAPI.handle` takes one request (method, target, body), checks its
signature (:mod:`.httpauth`), finds its route and runs it against an
:class:`~pygatewayworker.gatewayclient.AsyncGatewayClient` (or anything with the
same coroutines): an event is one ``send_to_group`` per channel, queries are group
queries. It returns ``(status, content type, body)``; the HTTP server
(:mod:`.server`) only moves bytes. Errors are plain text, as Pusher's are: 400 for a
malformed request, 401 for a bad signature, 404 for an unknown app or path, 413 for
an event over the app's size, 503 when the cluster cannot answer.

Routes (``{id}`` is the app id)::

    POST /apps/{id}/events                         {"name", "data", "channels"|"channel", "socket_id"?, "info"?}
    POST /apps/{id}/batch_events                   {"batch": [{"channel", "name", "data", ...}]}
    GET  /apps/{id}/channels                       ?filter_by_prefix=&info=user_count
    GET  /apps/{id}/channels/{channel}             ?info=user_count,subscription_count
    GET  /apps/{id}/channels/{channel}/users       (presence channels)
    POST /apps/{id}/users/{user}/terminate_connections
    POST /users/{user}/terminate_connections       (the form the Python SDK sends; app by auth_key)
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

from pygatewayworker.gatewayclient.errors import GatewayError, QueryTimeout
from pygatewayworker.pusher import protocol as p
from pygatewayworker.pusher.config import PusherApp
from pygatewayworker.pusher.httpauth import ApiError, check_signed
from pygatewayworker.runtime import jsondepth
from pygatewayworker.runtime.jsondepth import TooDeep

__all__ = ["HTTPAPI", "ApiError", "Request", "route_of"]

log = logging.getLogger("pusher.api")

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
INFO_ATTRIBUTES = frozenset({"user_count", "subscription_count"})


@dataclass(slots=True, frozen=True)
class Request:
    """One parsed request: its app, route arguments, query and body."""

    app: PusherApp
    method: str
    args: tuple[str, ...]
    query: dict[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        """The body as a JSON object (400 otherwise)."""
        try:
            doc = jsondepth.loads(self.body)
        except TooDeep as exc:
            raise ApiError(400, f"Request body is {exc}") from None
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "Request body is not valid JSON") from None
        if not isinstance(doc, dict):
            raise ApiError(400, "Request body must be a JSON object")
        return doc

    def info(self) -> set[str]:
        """The ``info`` attributes asked for."""
        raw = self.query.get("info", "")
        wanted = {part.strip() for part in raw.split(",") if part.strip()}
        unknown = wanted - INFO_ATTRIBUTES
        if unknown:
            raise ApiError(400, f"Unknown info attribute(s): {', '.join(sorted(unknown))}")
        return wanted


Handler = Callable[[Request], Coroutine[Any, Any, Any]]
_SEGMENT = r"([^/]+)"
ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("POST", re.compile(rf"\A/apps/{_SEGMENT}/events\Z"), "trigger"),
    ("POST", re.compile(rf"\A/apps/{_SEGMENT}/batch_events\Z"), "trigger_batch"),
    ("GET", re.compile(rf"\A/apps/{_SEGMENT}/channels\Z"), "channels"),
    ("GET", re.compile(rf"\A/apps/{_SEGMENT}/channels/{_SEGMENT}\Z"), "channel"),
    ("GET", re.compile(rf"\A/apps/{_SEGMENT}/channels/{_SEGMENT}/users\Z"), "users"),
    (
        "POST",
        re.compile(rf"\A/apps/{_SEGMENT}/users/{_SEGMENT}/terminate_connections\Z"),
        "terminate",
    ),
    ("POST", re.compile(rf"\A/users/{_SEGMENT}/terminate_connections\Z"), "terminate_by_key"),
)
"""``(method, path pattern, handler name)``; the first group is the app id."""


def route_of(path: str) -> str | None:
    """The name of the route ``path`` (without its query) goes to, if any."""
    return next((name for _, pattern, name in ROUTES if pattern.match(path)), None)


class HTTPAPI:
    """The routes of the Pusher HTTP API over ``client`` for ``apps``."""

    def __init__(
        self,
        apps: Sequence[PusherApp],
        client: Any,
        timestamp_window: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.window = timestamp_window
        self.clock = clock
        self._by_id = {app.id: app for app in apps}
        self._by_key = {app.key: app for app in apps}

    async def handle(self, method: str, target: str, body: bytes) -> tuple[int, str, bytes]:
        """Answer one request: ``(status, content type, body)``."""
        try:
            result = await self._dispatch(method, target, body)
        except ApiError as exc:
            return exc.status, TEXT, (exc.message + "\n").encode()
        except QueryTimeout as exc:
            return 503, TEXT, f"The cluster did not answer in time: {exc}\n".encode()
        except GatewayError as exc:
            return 503, TEXT, f"The cluster is not reachable: {exc}\n".encode()
        return 200, JSON, json.dumps(result, separators=(",", ":")).encode()

    async def _dispatch(self, method: str, target: str, body: bytes) -> Any:
        path, _, raw_query = target.partition("?")
        params = parse_qsl(raw_query, keep_blank_values=True)
        for route_method, pattern, name in ROUTES:
            match = pattern.match(path)
            if match is None:
                continue
            if method != route_method:
                raise ApiError(405, f"Use {route_method} for {path}")
            args = tuple(unquote(group) for group in match.groups())
            if name == "terminate_by_key":
                app = self._by_key.get(dict(params).get("auth_key", ""))
                name = "terminate"
                args = ("", *args)
            else:
                app = self._by_id.get(args[0])
            if app is None:
                raise ApiError(404, f"Unknown app {args[0] or '(by auth_key)'}")
            check_signed(app, method, path, params, body, self.clock(), self.window)
            query = {key.lower(): value for key, value in params}
            handler: Handler = getattr(self, "route_" + name)
            return await handler(Request(app, method, args[1:], query, body))
        raise ApiError(404, f"Not found: {path}")

    # ---- checks ---------------------------------------------------------------------

    def _event(self, app: PusherApp, doc: dict[str, Any]) -> tuple[str, str, list[str], str | None]:
        """``(name, data, channels, excluded client_id)`` of one event, checked."""
        try:
            name = p.check_event_name(doc.get("name"))
            raw = doc.get("channels")
            channels = [doc.get("channel")] if raw is None else raw
            if not isinstance(channels, list) or not channels:
                raise p.ProtocolError("channels must be a non-empty list of channel names")
            names = [p.check_channel(ch) for ch in channels]
            socket_id = doc.get("socket_id")
            excluded = None if socket_id in (None, "") else p.client_id_of(socket_id)
        except p.ProtocolError as exc:
            raise ApiError(400, str(exc)) from None
        if len(names) > app.max_channels_per_event:
            raise ApiError(400, f"More than {app.max_channels_per_event} channels in one event")
        data = doc.get("data", "")
        if not isinstance(data, str):
            data = json.dumps(data, separators=(",", ":"))
        if len(data.encode()) > app.max_event_size:
            raise ApiError(413, f"Payload too large: data over {app.max_event_size} bytes")
        return name, data, names, excluded

    def _attributes(self, raw: object, channels: list[str]) -> set[str]:
        wanted = {a.strip() for a in raw.split(",") if a.strip()} if isinstance(raw, str) else set()
        if wanted - INFO_ATTRIBUTES:
            raise ApiError(
                400, f"Unknown info attribute(s): {', '.join(sorted(wanted - INFO_ATTRIBUTES))}"
            )
        if "user_count" in wanted and any(p.kind_of(ch) != "presence" for ch in channels):
            raise ApiError(400, "info=user_count is only available for presence channels")
        return wanted

    # ---- routes ---------------------------------------------------------------------

    async def _send(
        self, app: PusherApp, name: str, data: str, channels: list[str], excluded: str | None
    ) -> None:
        exclude = [excluded] if excluded else None
        for channel in channels:
            frame = p.message(name, data, channel)
            await self.client.send_to_group(p.group_of(app.id, channel), frame, exclude)

    async def _channel_info(
        self, app: PusherApp, channels: list[str], wanted: set[str]
    ) -> dict[str, Any]:
        groups = [p.group_of(app.id, ch) for ch in channels]
        out: dict[str, dict[str, Any]] = {ch: {} for ch in channels}
        if "subscription_count" in wanted:
            counts = await self.client.batch_get_client_count_by_group(groups)
            for ch, group in zip(channels, groups, strict=True):
                out[ch]["subscription_count"] = counts.get(group, 0)
        if "user_count" in wanted:
            for ch, group in zip(channels, groups, strict=True):
                out[ch]["user_count"] = await self.client.get_uid_count_by_group(group)
        return out

    async def route_trigger(self, req: Request) -> Any:
        doc = req.json()
        name, data, channels, excluded = self._event(req.app, doc)
        wanted = self._attributes(doc.get("info"), channels)
        await self._send(req.app, name, data, channels, excluded)
        if not wanted:
            return {}
        return {"channels": await self._channel_info(req.app, channels, wanted)}

    async def route_trigger_batch(self, req: Request) -> Any:
        batch = req.json().get("batch")
        if not isinstance(batch, list) or not batch:
            raise ApiError(400, "batch must be a non-empty list of events")
        if len(batch) > req.app.max_batch:
            raise ApiError(400, f"Batch too large: at most {req.app.max_batch} events")
        checked = []
        for item in batch:
            if not isinstance(item, dict):
                raise ApiError(400, "each batch entry must be an object")
            name, data, channels, excluded = self._event(req.app, item)
            if len(channels) != 1:
                raise ApiError(400, "a batch entry names one channel")
            checked.append(
                (name, data, channels, excluded, self._attributes(item.get("info"), channels))
            )
        for name, data, channels, excluded, _ in checked:
            await self._send(req.app, name, data, channels, excluded)
        if not any(wanted for *_, wanted in checked):
            return {}
        out = []
        for _, _, channels, _, wanted in checked:
            info = await self._channel_info(req.app, channels, wanted) if wanted else {}
            out.append(info.get(channels[0], {}))
        return {"batch": out}

    async def route_channels(self, req: Request) -> Any:
        prefix = req.query.get("filter_by_prefix", "")
        wanted = req.info()
        if "subscription_count" in wanted:
            raise ApiError(400, "info=subscription_count is not available when listing channels")
        if "user_count" in wanted and not prefix.startswith("presence-"):
            raise ApiError(400, "info=user_count requires filter_by_prefix=presence-")
        app_prefix = p.group_prefix(req.app.id)
        if "user_count" in wanted:
            by_group = await self.client.get_all_group_uid_list()
            return {
                "channels": {
                    group[len(app_prefix) :]: {"user_count": len(uids)}
                    for group, uids in by_group.items()
                    if group.startswith(app_prefix + prefix)
                }
            }
        groups = await self.client.get_all_group_id_list()
        return {
            "channels": {
                group[len(app_prefix) :]: {}
                for group in groups
                if group.startswith(app_prefix + prefix)
            }
        }

    async def route_channel(self, req: Request) -> Any:
        channel = self._channel(req.args[0])
        wanted = req.info()
        if "user_count" in wanted and p.kind_of(channel) != "presence":
            raise ApiError(400, "info=user_count is only available for presence channels")
        group = p.group_of(req.app.id, channel)
        count = await self.client.get_client_count_by_group(group)
        out: dict[str, Any] = {"occupied": count > 0}
        if "subscription_count" in wanted:
            out["subscription_count"] = count
        if "user_count" in wanted:
            out["user_count"] = await self.client.get_uid_count_by_group(group) if count else 0
        return out

    async def route_users(self, req: Request) -> Any:
        channel = self._channel(req.args[0])
        if p.kind_of(channel) != "presence":
            raise ApiError(400, "users are only available for presence channels")
        uids = await self.client.get_uid_list_by_group(p.group_of(req.app.id, channel))
        mine = f"{req.app.id}:"
        return {"users": [{"id": uid[len(mine) :]} for uid in uids if uid.startswith(mine)]}

    async def route_terminate(self, req: Request) -> Any:
        user_id = req.args[0]
        if not user_id:
            raise ApiError(400, "a user id is required")
        client_ids = await self.client.get_client_id_by_uid(f"{req.app.id}:{user_id}")
        # as Pusher's servers do: pusher:error 4009, then a close with 4009, after
        # which pusher-js does not reconnect (4000-4099: "refused")
        text = "Connection terminated by the server"
        bye = p.error(text, p.ErrorCode.UNAUTHORIZED)
        for client_id in client_ids:
            await self.client.close_client(client_id, bye, p.ErrorCode.UNAUTHORIZED, text)
        return {}

    def _channel(self, raw: str) -> str:
        try:
            return p.check_channel(raw)
        except p.ProtocolError as exc:
            raise ApiError(400, str(exc)) from None
