"""The per-host override layer (cluster.overrides): pure tests, plus the CLI's
handling of bad values (no process is started)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from pygatewayworker.businessworker import BusinessWorker
from pygatewayworker.cluster.apps import AppsPlan, Declaration, discover
from pygatewayworker.cluster.cli import main
from pygatewayworker.cluster.overrides import (
    OverrideError,
    Overrides,
    apply_overrides,
    from_env,
    from_saved,
    from_values,
)
from pygatewayworker.gateway import Gateway
from pygatewayworker.pushapi import PushAPI
from pygatewayworker.register import Register

ROOT = Path(__file__).resolve().parent.parent


def push_decl(app: str = "chat", listen: str = "127.0.0.1:7373") -> Declaration:
    return Declaration(app, "pushapi", PushAPI(listen=listen, token="t0", app=app), "p.py", "w")


def plan(*extra: Declaration) -> AppsPlan:
    """The chat app's four declarations (as the start files give them)."""
    decls = [
        Declaration("chat", "register", Register(listen="127.0.0.1:1238", app="chat"), "r.py", "x"),
        Declaration("chat", "gateway", Gateway(listen="0.0.0.0:7272", app="chat"), "g.py", "y"),
        Declaration(
            "chat",
            "businessworker",
            BusinessWorker(events="apps.chat.Events:Events", app="chat"),
            "w.py",
            "z",
        ),
        push_decl(),
        *extra,
    ]
    return AppsPlan("/apps", decls, ["/apps/chat/start_a.py", "/apps/chat/start_b.py"])


def configs(p: AppsPlan) -> dict[str, object]:
    return {d.role: d.config for d in p.declarations}


def test_no_overrides_keeps_the_plan() -> None:
    base = plan()
    out = apply_overrides(base, Overrides())
    assert [d.config for d in out.declarations] == [d.config for d in base.declarations]
    assert out.start_files == base.start_files  # reload compares them with the files now


def test_env_overrides_every_role() -> None:
    env = {
        "GW_REGISTER": "10.0.0.1:1238, 10.0.0.2:1238",
        "GW_REGISTER_LISTEN": "10.0.0.1:1238",
        "GW_GATEWAY_LISTEN": "0.0.0.0:8282",
        "GW_LAN_IP": "10.0.0.5",
        "GW_INTERNAL_BIND": "0.0.0.0",
        "GW_START_PORT": "4000",
        "GW_GATEWAY_COUNT": "4",
        "GW_WORKER_COUNT": "3",
        "GW_SECRET": "s3cret",
        "GW_KEEPALIVE_INTERVAL": "2.5",
        "GW_LINK_TIMEOUT": "7",
        "GW_PUSHAPI_LISTEN": "10.0.0.1:7474",
        "GW_PUSHAPI_TOKEN": "tok-1",
        "UNRELATED": "x",
    }
    out = configs(apply_overrides(plan(), from_env(env)))
    reg, gw, bw, push = out["register"], out["gateway"], out["businessworker"], out["pushapi"]
    assert isinstance(reg, Register) and isinstance(gw, Gateway)
    assert isinstance(bw, BusinessWorker) and isinstance(push, PushAPI)
    assert (reg.listen, reg.secret) == ("10.0.0.1:1238", "s3cret")
    assert gw.registers == bw.registers == push.registers == ("10.0.0.1:1238", "10.0.0.2:1238")
    assert (push.listen, push.token, push.secret) == ("10.0.0.1:7474", "tok-1", "s3cret")
    assert gw.listen == "0.0.0.0:8282" and gw.lan_ip == "10.0.0.5"
    assert gw.internal_bind_address(1) == ("0.0.0.0", 4001)
    assert gw.internal_address(1) == "10.0.0.5:4001"
    assert (gw.count, bw.count) == (4, 3)
    assert gw.secret == bw.secret == "s3cret"
    assert (gw.keepalive_interval, gw.link_timeout) == (2.5, 7.0)
    assert (bw.keepalive_interval, bw.link_timeout) == (2.5, 7.0)
    assert gw.app == bw.app == reg.app == push.app == "chat"
    assert gw.ping_interval == 10.0  # untouched fields keep the start file's values


def test_roles_select_declarations() -> None:
    out = apply_overrides(plan(), from_env({"GW_ROLES": "businessworker, gateway"}))
    assert [d.role for d in out.declarations] == ["gateway", "businessworker"]  # file order
    only = apply_overrides(plan(), from_env({"GW_ROLES": "register"}))
    assert [d.role for d in only.declarations] == ["register"]
    assert only.start_files == plan().start_files  # every file read, whatever runs


def test_roles_absent_from_the_apps_is_an_error() -> None:
    base = AppsPlan("/apps", plan().declarations[:1])  # only a register
    with pytest.raises(OverrideError, match=r"GW_ROLES: no declaration of role\(s\) gateway"):
        apply_overrides(base, from_env({"GW_ROLES": "gateway"}))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GW_ROLES": "gateway,db"}, "GW_ROLES='gateway,db': roles are a comma-separated"),
        ({"GW_ROLES": " , "}, "GW_ROLES"),
        ({"GW_START_PORT": "abc"}, "GW_START_PORT='abc': must be an integer"),
        ({"GW_START_PORT": "70000"}, "must be a port number"),
        ({"GW_GATEWAY_COUNT": "0"}, "GW_GATEWAY_COUNT='0': must be an integer >= 1"),
        ({"GW_LINK_TIMEOUT": "-1"}, "GW_LINK_TIMEOUT='-1': must be > 0 seconds"),
        ({"GW_KEEPALIVE_INTERVAL": "soon"}, "must be a number of seconds"),
        ({"GW_REGISTER": "10.0.0.1"}, "GW_REGISTER='10.0.0.1'.*not 'host:port'"),
        ({"GW_REGISTER": "10.0.0.1:0"}, "port 0 is not a reachable address"),
        ({"GW_GATEWAY_LISTEN": "nowhere"}, "GW_GATEWAY_LISTEN='nowhere'"),
        ({"GW_PUSHAPI_LISTEN": "10.0.0.1"}, "GW_PUSHAPI_LISTEN='10.0.0.1'.*not 'host:port'"),
    ],
)
def test_bad_values_name_their_source(env: dict[str, str], message: str) -> None:
    with pytest.raises(OverrideError, match=message):
        from_env(env)


def test_lan_ip_0000_is_refused_with_the_declaration_message() -> None:
    with pytest.raises(OverrideError) as info:
        apply_overrides(plan(), from_env({"GW_LAN_IP": "0.0.0.0"}))
    text = str(info.value)
    assert text.startswith("GW_LAN_IP: the gateway declaration chat.gateway (g.py)")
    assert "not 0.0.0.0" in text and "internal_bind" in text


def test_bad_internal_bind_is_refused() -> None:
    with pytest.raises(OverrideError, match="GW_INTERNAL_BIND.*must be an IPv4 address"):
        apply_overrides(plan(), from_env({"GW_INTERNAL_BIND": "eth0"}))


def test_lan_ip_is_not_checked_when_no_gateway_starts() -> None:
    """A workers-only host may share an environment file with a bad gateway value."""
    out = apply_overrides(plan(), from_env({"GW_ROLES": "businessworker", "GW_LAN_IP": "0.0.0.0"}))
    assert [d.role for d in out.declarations] == ["businessworker"]


def test_precedence_command_line_over_env_over_saved() -> None:
    saved = from_saved({"lan_ip": "10.0.0.1", "start_port": 3000, "roles": "gateway"})
    env = from_env({"GW_LAN_IP": "10.0.0.2", "GW_START_PORT": "3100"})
    cli = from_values({"lan_ip": "10.0.0.3", "start_port": None}, lambda s: s.option)
    merged = cli.over(env.over(saved))
    assert merged.values["lan_ip"] == "10.0.0.3" and merged.sources["lan_ip"] == "--lan-ip"
    assert merged.values["start_port"] == 3100
    assert merged.sources["start_port"] == "GW_START_PORT"
    assert merged.roles == ("gateway",) and merged.sources["roles"] == "previous start"


def test_empty_env_variables_count_as_unset() -> None:
    assert not from_env({"GW_LAN_IP": "", "GW_ROLES": ""})


def test_secret_is_masked_and_never_saved() -> None:
    o = from_env({"GW_SECRET": "hunter2", "GW_LAN_IP": "10.0.0.9", "GW_ROLES": "gateway"})
    assert "hunter2" not in o.describe() and "secret=*** (GW_SECRET)" in o.describe()
    assert o.to_json() == {"lan_ip": "10.0.0.9", "roles": "gateway"}
    assert from_saved(o.to_json()).values == {"lan_ip": "10.0.0.9", "roles": ("gateway",)}


def test_pushapi_token_is_masked_and_never_saved() -> None:
    o = from_env({"GW_PUSHAPI_TOKEN": "tok-hunter2", "GW_PUSHAPI_LISTEN": "10.0.0.9:7373"})
    assert "tok-hunter2" not in o.describe()
    assert "pushapi_token=*** (GW_PUSHAPI_TOKEN)" in o.describe()
    assert o.to_json() == {"pushapi_listen": "10.0.0.9:7373"}


def test_secret_and_register_reach_the_pushapi() -> None:
    """A host with GW_SECRET set starts a push API the secured cluster accepts."""
    env = {"GW_SECRET": "s3cret", "GW_REGISTER": "10.0.0.1:1238", "GW_ROLES": "pushapi"}
    (decl,) = apply_overrides(plan(), from_env(env)).declarations
    assert isinstance(decl.config, PushAPI)
    assert (decl.config.secret, decl.config.registers) == ("s3cret", ("10.0.0.1:1238",))
    assert (decl.config.listen, decl.config.token) == ("127.0.0.1:7373", "t0")  # kept


def test_pushapi_refuses_a_bad_token_naming_the_source() -> None:
    bad = from_values({"pushapi_token": "two words"}, lambda s: s.option)
    with pytest.raises(OverrideError) as info:
        apply_overrides(plan(), bad)
    text = str(info.value)
    assert text.startswith("--pushapi-token: the pushapi declaration chat.pushapi (p.py)")
    assert "refuses the override: PushAPI token" in text
    assert "two words" not in text  # a credential is not repeated in messages


def test_address_override_on_several_declarations_is_refused() -> None:
    other = Declaration("blog", "gateway", Gateway(listen="0.0.0.0:8000", app="blog"), "b.py", "y")
    with pytest.raises(OverrideError, match="GW_START_PORT would give one address to 2 gateway"):
        apply_overrides(plan(other), from_env({"GW_START_PORT": "4000"}))
    with pytest.raises(OverrideError, match="--gateway-listen would give one address"):
        apply_overrides(
            plan(other), from_values({"gateway_listen": "0.0.0.0:80"}, lambda s: s.option)
        )
    blog_push = push_decl("blog", "127.0.0.1:7474")
    with pytest.raises(OverrideError, match="GW_PUSHAPI_LISTEN would give one address to 2 push"):
        apply_overrides(plan(blog_push), from_env({"GW_PUSHAPI_LISTEN": "127.0.0.1:7575"}))
    tokens = apply_overrides(plan(blog_push), from_env({"GW_PUSHAPI_TOKEN": "shared"}))
    assert [d.config.token for d in tokens.declarations if d.role == "pushapi"] == [
        "shared",
        "shared",
    ]
    # Host addresses, counts and secrets apply to every app.
    env = {"GW_GATEWAY_COUNT": "1", "GW_LAN_IP": "10.0.0.2"}
    gateways = [d.config for d in apply_overrides(plan(other), from_env(env)).declarations]
    assert [(g.count, g.lan_ip) for g in gateways if isinstance(g, Gateway)] == [
        (1, "10.0.0.2"),
        (1, "10.0.0.2"),
    ]


def test_subclass_and_runtime_are_kept() -> None:
    class FakeGateway(Gateway):
        runtime = "tests.fake:serve"

    decl = Declaration("chat", "gateway", FakeGateway(app="chat"), "g.py", "tests.fake:serve")
    out = apply_overrides(AppsPlan("/a", [decl]), from_env({"GW_LAN_IP": "10.1.1.1"}))
    assert type(out.declarations[0].config) is FakeGateway
    assert out.declarations[0].runtime == "tests.fake:serve"


def test_overrides_apply_to_the_real_chat_app() -> None:
    base = discover(str(ROOT / "apps"), "chat")
    env = {"GW_ROLES": "gateway", "GW_LAN_IP": "10.9.9.9", "GW_REGISTER": "10.9.9.1:1238"}
    (decl,) = apply_overrides(base, from_env(env)).declarations
    assert decl.config.internal_address(0) == "10.9.9.9:2300"
    assert decl.config.registers == ("10.9.9.1:1238",)
    assert decl.config.static_dir  # the start file's other settings are kept


def test_cli_refuses_a_bad_option_before_starting(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["start", "--start-port", "x", "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "--start-port='x': must be an integer" in result.output


def test_cli_has_the_pushapi_options_and_refuses_a_bad_one(tmp_path: Path) -> None:
    runner = CliRunner()
    run_dir = str(tmp_path / "run")
    result = runner.invoke(main, ["start", "--pushapi-listen", "nowhere", "--run-dir", run_dir])
    assert result.exit_code == 2
    assert "--pushapi-listen='nowhere'" in result.output
    helped = runner.invoke(main, ["start", "--help"])
    assert "--pushapi-token" in helped.output and "GW_PUSHAPI_TOKEN" in helped.output


def test_cli_refuses_lan_ip_0000_with_a_clear_message(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "start.py"),
            "start",
            "-d",
            "--apps-dir",
            str(ROOT / "apps"),
            "--run-dir",
            str(tmp_path / "run"),
            "--app",
            "chat",
            "--lan-ip",
            "0.0.0.0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "GW_ROLES": "gateway"},
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("cannot start: --lan-ip: the gateway declaration")
    assert "not 0.0.0.0" in proc.stderr
    assert not (tmp_path / "run" / "gatewayworker.pid").exists()
