"""Binding the listening sockets of every process slot in the master.

The master binds every socket before any child exists, so a port conflict is
reported at once with nothing running (the binding itself and its error messages
are ``runtime.sockets``). Gateway public sockets are one per process with
``SO_REUSEPORT``, so the kernel spreads accepted connections across gateway
processes; the first process of a declaration probes the address first
(:func:`~pygatewayworker.runtime.sockets.probe_free`), so that a listener held by
another program is reported instead of silently joined.
"""

from __future__ import annotations

import socket

from pygatewayworker.cluster.apps import Declaration
from pygatewayworker.register.config import parse_address
from pygatewayworker.runtime.sockets import (
    BindError,
    bind_listener,
    explain_bind_error,
    probe_free,
)

__all__ = ["BindError", "bind_slot_sockets"]


def bind_slot_sockets(
    decl: Declaration, index: int, public_ports: dict[int, int]
) -> dict[str, socket.socket]:
    """Bind the listening sockets of process ``index`` of ``decl`` (the keys of
    ``ChildSpec.sockets``). ``public_ports`` remembers, per gateway declaration, the
    port its first process got, so ``listen="...:0"`` gives every process one port."""
    config = decl.config
    what = f"app {decl.app} {decl.role} {decl.name!r}"
    if decl.role in ("register", "metrics"):
        host, port = parse_address(config.listen)
        return {"listen": bind_listener(host, port, what)}
    if decl.role != "gateway":
        return {}
    host, port = parse_address(config.listen)
    if id(decl) not in public_ports:
        try:
            probe_free(host, port)
        except OSError as exc:
            raise BindError(explain_bind_error(host, port, f"{what} public port", exc)) from None
    port = public_ports.get(id(decl), port)
    public = bind_listener(host, port, f"{what} public port", reuse_port=True)
    public_ports[id(decl)] = public.getsockname()[1]
    internal_host, internal_port = config.internal_bind_address(index)
    if not config.start_port:
        internal_port = 0  # start_port=0: any free port per process
    try:
        internal = bind_listener(
            internal_host, internal_port, f"{what} internal port of process {index}"
        )
    except BindError:
        public.close()
        raise
    return {"public": public, "internal": internal}
