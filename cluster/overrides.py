"""Per-host settings: one codebase, deployed unchanged on every host.

How this works
--------------
The start files of an app declare the whole cluster with the addresses of one
machine. On a real deployment every host runs the same files but only some roles,
with its own addresses. Instead of editing Python per host, a host sets
*overrides*: environment variables (``GW_LAN_IP=10.0.0.5``) or the matching
``start`` options (``--lan-ip 10.0.0.5``). Precedence, highest first:

1. the ``start`` / ``restart`` command line;
2. the environment (``GW_*``);
3. for ``restart`` only: the overrides the running cluster was started with;
4. the app's start files.

:func:`apply_overrides` is pure: it keeps the declarations of the selected roles and
rebuilds each one with :func:`dataclasses.replace`, so the declaration's own
validation runs again and a bad value (``GW_LAN_IP=0.0.0.0``) is refused with the
declaration's message, prefixed by where the value came from.

Settings and the declarations they change:

============================ ======================= =====================================
env / option                 field                   declarations
============================ ======================= =====================================
GW_ROLES / --roles           (which roles start)     all
GW_REGISTER / --register     register                Gateway, BusinessWorker, PushAPI
GW_REGISTER_LISTEN           listen                  Register
GW_GATEWAY_LISTEN            listen                  Gateway
GW_LAN_IP                    lan_ip                  Gateway
GW_INTERNAL_BIND             internal_bind           Gateway
GW_START_PORT                start_port              Gateway
GW_GATEWAY_COUNT             count                   Gateway
GW_WORKER_COUNT              count                   BusinessWorker
GW_SECRET                    secret                  Register, Gateway, BusinessWorker,
                                                     PushAPI
GW_KEEPALIVE_INTERVAL        keepalive_interval      Gateway, BusinessWorker
GW_LINK_TIMEOUT              link_timeout            Gateway, BusinessWorker
GW_PUSHAPI_LISTEN            listen                  PushAPI
GW_PUSHAPI_TOKEN             token                   PushAPI
============================ ======================= =====================================

The secret and the push API token are *sensitive*: masked in :meth:`Overrides.describe`
and never saved for ``restart`` (give them again, preferably in the environment).

A port override (listen addresses, start port) that would apply to several
declarations of one role (several apps) is refused: the processes would compete
for one port; start one app per master with ``--app``. Host addresses (``lan_ip``,
``internal_bind``), counts and secrets apply to every app.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pygatewayworker.cluster.apps import ROLES, AppsPlan, Declaration
from pygatewayworker.register.config import ConfigError, normalize_addresses, parse_address

__all__ = [
    "OverrideError",
    "Overrides",
    "Setting",
    "SETTINGS",
    "from_env",
    "from_values",
    "apply_overrides",
    "override_options",
]

ROLE_NAMES = tuple(role for role, _ in ROLES)


class OverrideError(ConfigError):
    """An override has a bad value, or makes a declaration invalid."""


# ---- parsers: text -> value, raising ValueError with a short reason --------------------


def _roles(text: str) -> tuple[str, ...]:
    roles = tuple(dict.fromkeys(r.strip() for r in text.split(",") if r.strip()))
    unknown = [r for r in roles if r not in ROLE_NAMES]
    if unknown or not roles:
        raise ValueError(f"roles are a comma-separated subset of {', '.join(ROLE_NAMES)}")
    return roles


def _addresses(text: str) -> tuple[str, ...]:
    return normalize_addresses(text, "register address")


def _address(text: str) -> str:
    parse_address(text.strip(), "address")
    return text.strip()


def _text(text: str) -> str:
    return text.strip()


def _secret(text: str) -> str:
    return text  # spaces may be part of a secret


def _port(text: str) -> int:
    value = _int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number 0..65535")
    return value


def _int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError("must be an integer") from None


def _count(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise ValueError("must be an integer >= 1")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError("must be a number of seconds") from None
    if not value > 0:
        raise ValueError("must be > 0 seconds")
    return value


@dataclass(slots=True, frozen=True)
class Setting:
    """One overridable setting: where it comes from and what it changes."""

    name: str
    parse: Callable[[str], Any]
    targets: tuple[tuple[str, str], ...]
    """``(role, field)`` pairs of the declarations it changes."""
    help: str
    unique: bool = False
    """An address: refuse to apply it to several declarations of one role."""
    sensitive: bool = False
    """A credential: masked in logs, never written to disk."""

    @property
    def env(self) -> str:
        """The environment variable, e.g. ``GW_LAN_IP``."""
        return "GW_" + self.name.upper()

    @property
    def option(self) -> str:
        """The command-line option, e.g. ``--lan-ip``."""
        return "--" + self.name.replace("_", "-")


GW, BW, REG, PUSH = "gateway", "businessworker", "register", "pushapi"
PUSHER = "pusherapi"

SETTINGS: tuple[Setting, ...] = (
    Setting("roles", _roles, (), "Roles to start here, e.g. gateway,businessworker."),
    Setting(
        "register",
        _addresses,
        ((GW, "register"), (BW, "register"), (PUSH, "register"), (PUSHER, "register")),
        "Register address(es) gateways, workers and push APIs use: ip:port[,ip:port...].",
    ),
    Setting("register_listen", _address, ((REG, "listen"),), "Register listen ip:port.", True),
    Setting("gateway_listen", _address, ((GW, "listen"),), "Public WebSocket ip:port.", True),
    Setting("lan_ip", _text, ((GW, "lan_ip"),), "Address other hosts use to reach gateways."),
    Setting("internal_bind", _text, ((GW, "internal_bind"),), "Bind internal ports here."),
    Setting("start_port", _port, ((GW, "start_port"),), "First internal gateway port.", True),
    Setting("gateway_count", _count, ((GW, "count"),), "Gateway processes."),
    Setting("worker_count", _count, ((BW, "count"),), "Business worker processes."),
    Setting(
        "secret",
        _secret,
        ((REG, "secret"), (GW, "secret"), (BW, "secret"), (PUSH, "secret"), (PUSHER, "secret")),
        "Secret of internal links (prefer GW_SECRET: options show in ps).",
        sensitive=True,
    ),
    Setting(
        "keepalive_interval",
        _seconds,
        ((GW, "keepalive_interval"), (BW, "keepalive_interval")),
        "Seconds of idleness before an internal link is pinged.",
    ),
    Setting(
        "link_timeout",
        _seconds,
        ((GW, "link_timeout"), (BW, "link_timeout")),
        "Seconds of silence after which an internal link is dropped.",
    ),
    Setting("pushapi_listen", _address, ((PUSH, "listen"),), "HTTP push API ip:port.", True),
    Setting(
        "pushapi_token",
        _secret,
        ((PUSH, "token"),),
        "Bearer token of the HTTP push API (prefer GW_PUSHAPI_TOKEN: options show in ps).",
        sensitive=True,
    ),
)
BY_NAME = {s.name: s for s in SETTINGS}


@dataclass(slots=True, frozen=True)
class Overrides:
    """Parsed overrides: ``values`` maps a setting name to its value, ``sources``
    to where it came from (``"GW_LAN_IP"``, ``"--lan-ip"``, ``"previous start"``)."""

    values: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    sources: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.values)

    def over(self, lower: Overrides) -> Overrides:
        """These overrides on top of ``lower`` (ours win)."""
        return Overrides({**lower.values, **self.values}, {**lower.sources, **self.sources})

    @property
    def roles(self) -> tuple[str, ...] | None:
        """The roles to start, or ``None`` for every role."""
        roles = self.values.get("roles")
        return tuple(roles) if roles is not None else None

    def describe(self) -> str:
        """One line for logs, secret and token masked: ``lan_ip=10.0.0.5 (GW_LAN_IP), ...``."""
        parts = []
        for name, value in self.values.items():
            shown = "***" if BY_NAME[name].sensitive else _show(value)
            parts.append(f"{name}={shown} ({self.sources.get(name, '?')})")
        return ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        """The values as JSON (secret and token left out: never written to disk)."""
        return {k: _show(v) for k, v in self.values.items() if not BY_NAME[k].sensitive}


def _show(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def from_values(given: Mapping[str, str | None], source: Callable[[Setting], str]) -> Overrides:
    """Parse the texts in ``given`` (setting name -> text, ``None`` or absent: not
    set); ``source(setting)`` names where a value came from, for messages."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for setting in SETTINGS:
        text = given.get(setting.name)
        if text is None:
            continue
        where = source(setting)
        try:
            values[setting.name] = setting.parse(text)
        except (ValueError, ConfigError) as exc:
            raise OverrideError(f"{where}={text!r}: {exc}") from None
        sources[setting.name] = where
    return Overrides(values, sources)


def from_env(environ: Mapping[str, str]) -> Overrides:
    """The ``GW_*`` overrides set in ``environ`` (empty variables count as unset)."""
    given = {s.name: environ.get(s.env) or None for s in SETTINGS}
    return from_values(given, lambda s: s.env)


def from_saved(saved: Mapping[str, Any]) -> Overrides:
    """Overrides saved by a previous start (:meth:`Overrides.to_json`)."""
    given = {k: str(v) for k, v in saved.items() if k in BY_NAME}
    return from_values(given, lambda s: "previous start")


# ---- applying ------------------------------------------------------------------------


def apply_overrides(plan: AppsPlan, overrides: Overrides) -> AppsPlan:
    """A new plan: the declarations of the selected roles, with overrides applied.

    Raises :class:`OverrideError` when no declaration is left, when an address would
    apply to several declarations of one role, or when a declaration refuses a value.
    """
    roles = overrides.roles
    kept = [d for d in plan.declarations if roles is None or d.role in roles]
    if not kept:
        found = sorted({d.role for d in plan.declarations})
        raise OverrideError(
            f"{overrides.sources.get('roles', 'roles')}: no declaration of role(s) "
            f"{', '.join(roles or ())} in {plan.apps_dir} (found: {', '.join(found) or 'none'})"
        )
    _check_unique_targets(kept, overrides)
    return AppsPlan(plan.apps_dir, [_apply_one(d, overrides) for d in kept], list(plan.start_files))


def _check_unique_targets(declarations: list[Declaration], overrides: Overrides) -> None:
    for name in overrides.values:
        setting = BY_NAME[name]
        if not setting.unique:
            continue
        for role, _field in setting.targets:
            hits = [d for d in declarations if d.role == role]
            if len(hits) > 1:
                names = ", ".join(f"{d.app}.{d.name}" for d in hits)
                raise OverrideError(
                    f"{overrides.sources[name]} would give one address to {len(hits)} "
                    f"{role} declarations ({names}); start one app per master with --app"
                )


def _apply_one(decl: Declaration, overrides: Overrides) -> Declaration:
    changes: dict[str, Any] = {}
    used: list[str] = []
    for name, value in overrides.values.items():
        for role, field_name in BY_NAME[name].targets:
            if role == decl.role:
                changes[field_name] = value
                used.append(overrides.sources[name])
    if not changes:
        return decl
    try:
        config = dataclasses.replace(decl.config, **changes)
    except (ConfigError, ValueError, TypeError) as exc:
        raise OverrideError(
            f"{', '.join(dict.fromkeys(used))}: the {decl.role} declaration "
            f"{decl.app}.{decl.name} ({decl.source}) refuses the override: {exc}"
        ) from None
    config.app = decl.app
    return Declaration(decl.app, decl.role, config, decl.source, decl.runtime)


# ---- command line -----------------------------------------------------------------------


def override_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """Add one ``start`` option per setting; the command receives them parsed as
    ``cli_overrides: Overrides`` (a bad value is a usage error naming the option).
    Only the command line loads click: the master (``cluster.boot``) imports this
    module without it."""
    import click

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        given = {s.name: kwargs.pop(s.name, None) for s in SETTINGS}
        try:
            kwargs["cli_overrides"] = from_values(given, lambda s: s.option)
        except OverrideError as exc:
            raise click.UsageError(str(exc)) from None
        return function(*args, **kwargs)

    decorated: Callable[..., Any] = wrapper
    for setting in reversed(SETTINGS):
        decorated = click.option(
            setting.option,
            setting.name,
            default=None,
            metavar="TEXT",
            help=f"{setting.help} [env {setting.env}]",
        )(decorated)
    return decorated
