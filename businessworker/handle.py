"""``businessworker.api``: the process-wide handle on the Gateway API.

How this works
--------------
Each :class:`~businessworker.worker.WorkerProcess` owns a :class:`WorkerAPI` (the
Gateway API over its links, plus the calls that act on the current client). Events
code does not receive it as an argument; it imports the one documented handle::

    from pygatewayworker import api

    def on_message(client_id, message):
        api.send_to_group("room", message)
        api.send_to_current_client("ok")

:data:`api` forwards every attribute to the API of the worker that runs the code:
the one whose event (or ``on_worker_start``) is being handled in this task, else the
worker process started last (the normal case is one worker per process). Outside a
worker process every call raises ``RuntimeError`` (web apps use
``gatewayclient.GatewayClient`` instead).
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from typing import Any, cast

from pygatewayworker.businessworker.context import current_event
from pygatewayworker.gatewayclient.api import GatewayAPI, Message

__all__ = ["WorkerAPI", "api", "bind_process_api", "unbind_process_api", "use_api", "reset_api"]

_CONNECT_KINDS = frozenset({"connect", "websocket_connect"})


def _current_client_id(call: str) -> str:
    event = current_event()
    if event is None:
        raise RuntimeError(
            f"{call}() needs a current client and works only inside an Events callback; "
            "elsewhere use the variant that takes a client_id"
        )
    return event.client_id


class WorkerAPI(GatewayAPI):
    """The Gateway API of one business worker, plus the current-client calls."""

    __slots__ = ("rejected_connects",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rejected_connects = 0
        """metrics: clients closed from inside their own ``on_connect`` or
        ``on_websocket_connect``: how an app refuses a connection (a bad token or
        Origin). The gateway counts these closes as ``app_close``."""

    def close_client(
        self, client_id: str, message: Message | None = None, code: int = 1000, reason: str = ""
    ) -> None:
        """Optionally send a last message, then close after flushing with ``code`` and
        ``reason`` (see :meth:`GatewayAPI.close_client`); closing the current client
        from its connect callbacks counts as a refusal."""
        super().close_client(client_id, message, code, reason)
        self._note_rejection(client_id)

    def destroy_client(self, client_id: str) -> None:
        """Drop the connection at once (counted like :meth:`close_client`)."""
        super().destroy_client(client_id)
        self._note_rejection(client_id)

    def _note_rejection(self, client_id: str) -> None:
        event = current_event()
        if event is not None and event.kind in _CONNECT_KINDS and event.client_id == client_id:
            self.rejected_connects += 1

    def send_to_current_client(self, message: Message) -> None:
        """Send to the client whose event is being handled."""
        self.send_to_client(_current_client_id("send_to_current_client"), message)

    def close_current_client(
        self, message: Message | None = None, code: int = 1000, reason: str = ""
    ) -> None:
        """Optional last message, then close the current client (``code``, ``reason``
        as in :meth:`close_client`)."""
        self.close_client(_current_client_id("close_current_client"), message, code, reason)

    def destroy_current_client(self) -> None:
        """Drop the current client at once."""
        self.destroy_client(_current_client_id("destroy_current_client"))


class _ProcessAPI:
    """Holds the API of the worker process running here (``None`` elsewhere)."""

    __slots__ = ("api",)

    def __init__(self) -> None:
        self.api: WorkerAPI | None = None


_process = _ProcessAPI()
_scoped: ContextVar[WorkerAPI | None] = ContextVar(
    "pygatewayworker.businessworker.api", default=None
)


def bind_process_api(worker_api: WorkerAPI) -> None:
    """Make ``worker_api`` what :data:`api` forwards to in this process."""
    _process.api = worker_api


def unbind_process_api(worker_api: WorkerAPI) -> None:
    """Forget ``worker_api`` (if it is still the bound one)."""
    if _process.api is worker_api:
        _process.api = None


def use_api(worker_api: WorkerAPI) -> Token[WorkerAPI | None]:
    """Make ``worker_api`` the target of :data:`api` in the current task/context."""
    return _scoped.set(worker_api)


def reset_api(token: Token[WorkerAPI | None]) -> None:
    """Undo :func:`use_api`."""
    _scoped.reset(token)


def _target() -> WorkerAPI:
    target = _scoped.get() or _process.api
    if target is None:
        raise RuntimeError(
            "businessworker.api is usable only inside a business worker process (in "
            "Events callbacks, from on_worker_start on); web applications use "
            "gatewayclient.GatewayClient / AsyncGatewayClient"
        )
    return target


class _APIHandle:
    """Forwards every attribute to the current worker's :class:`WorkerAPI`."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        return getattr(_target(), name)

    def __repr__(self) -> str:
        target = _scoped.get() or _process.api
        return f"<businessworker.api -> {target!r}>"


api: WorkerAPI = cast(WorkerAPI, _APIHandle())
"""The process-wide Gateway API handle (see the module docstring)."""
