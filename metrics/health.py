"""``/healthz`` and ``/readyz``: pure checks of a :class:`~metrics.view.ClusterView`.

- **healthy**: the master is alive and running (not starting, not stopping) and the
  process of every slot it should run is up (``running`` in ``state.json``: started
  and reported ready). A load balancer or an orchestrator restarts or routes away
  from a host that is not.
- **ready**: healthy, and the cluster can serve: every gateway process reports
  (listening, its stats file is fresh) and every business worker is linked to every
  gateway (the gateways of its app on this host by address, and every gateway its
  registers list, which covers gateways on other hosts).

Each check returns ``(ok, document)``; the document names what is missing, one line
per problem, so an operator reading a probe's body knows where to look.
"""

from __future__ import annotations

from typing import Any

from pygatewayworker.metrics.view import ClusterView

__all__ = ["healthy", "ready", "STALE_AFTER"]

STALE_AFTER = 5.0
"""A process whose stats file is older than this (seconds) is not reporting (hung,
or its loop is blocked): not ready."""


def healthy(view: ClusterView, master_alive: bool) -> tuple[bool, dict[str, Any]]:
    """Whether the master and every slot are up; the JSON body of ``/healthz``."""
    missing = _down(view, master_alive)
    return not missing, _document(view, missing)


def ready(view: ClusterView, master_alive: bool) -> tuple[bool, dict[str, Any]]:
    """Whether the cluster can serve clients; the JSON body of ``/readyz``."""
    missing = _down(view, master_alive)
    if not missing:
        missing = _not_serving(view)
    return not missing, _document(view, missing)


def _document(view: ClusterView, missing: list[str]) -> dict[str, Any]:
    master = view.master
    return {
        "status": "fail" if missing else "ok",
        "missing": missing,
        "master": {"pid": master.get("pid"), "phase": master.get("phase")},
        "processes": {p["name"]: p.get("status") for p in view.processes if "name" in p},
    }


def _down(view: ClusterView, master_alive: bool) -> list[str]:
    master = view.master
    if not master_alive or not master:
        return ["master: not running"]
    missing: list[str] = []
    if master.get("phase") != "running":
        missing.append(f"master: {master.get('phase') or 'unknown'}")
    for proc in view.processes:
        if proc.get("status") != "running":
            last = f" (last exit: {proc['last_exit']})" if proc.get("last_exit") else ""
            missing.append(f"{proc.get('name')}: {proc.get('status')}{last}")
    return missing


def _not_serving(view: ClusterView) -> list[str]:
    missing: list[str] = []
    gateways: dict[str, set[str]] = {}
    for proc in view.processes:
        if proc.get("role") == "gateway":
            address = proc.get("addresses", {}).get("advertised", "")
            gateways.setdefault(str(proc.get("app")), set()).add(address)
    for proc in view.processes:
        role = proc.get("role")
        if role not in ("gateway", "businessworker"):
            continue
        if not view.fresh(proc, STALE_AFTER):
            missing.append(f"{proc.get('name')}: not reporting (no fresh stats file)")
        elif role == "businessworker":
            missing.extend(
                _unlinked(proc, view.stats_of(proc), gateways.get(str(proc.get("app")), set()))
            )
    return missing


def _unlinked(proc: dict[str, Any], snap: dict[str, Any], expected: set[str]) -> list[str]:
    name = proc.get("name")
    linked = set(snap.get("gateways") or [])
    out = [f"{name}: not linked to gateway {a}" for a in sorted(expected - linked)]
    states = snap.get("gateway_links")
    if isinstance(states, dict) and states.get("unlinked"):
        out.append(f"{name}: {states['unlinked']} listed gateway(s) not linked")
    if not linked and not out:
        out.append(f"{name}: linked to no gateway")
    return out
