"""Real browser tests (headless Chromium driven by playwright): two pages of the
reference chat exchange public and private messages, and the push-only demo flips a
page to "paid" the moment the payment provider's callback arrives.

Chromium is Debian's package (``scripts/test.sh`` installs it); ``playwright
install`` is never run. Without Chromium these tests are skipped with the reason,
except under CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chromium import TIMEOUT_MS, browser
from tests.cluster import (
    ROOT,
    AppSpec,
    ForegroundCluster,
    make_app,
    wait_ports_free,
    wait_ready,
)
from tests.ports import reserve_ports

__all__ = ["browser"]  # the fixture


@contextlib.contextmanager
def running(spec: AppSpec) -> Iterator[AppSpec]:
    """``start.py start`` of ``spec`` until the block ends."""
    proc = ForegroundCluster(spec).start()
    try:
        asyncio.run(wait_ready(spec, init=True))
        yield spec
    finally:
        code = proc.interrupt()
        assert code == 0, proc.output()
        wait_ports_free(spec.all_ports())


# ---- the reference chat -------------------------------------------------------------------


@pytest.fixture
def chat(tmp_path: Path) -> Iterator[AppSpec]:
    with running(make_app(tmp_path, "chat", gateways=2, workers=2)) as spec:
        yield spec


async def test_chat_pages_exchange_public_and_private_messages(chat: AppSpec, browser: Any) -> None:
    base = f"http://127.0.0.1:{chat.public_port}/?room_id=7&ws={chat.ws_url}"
    alice = await (await browser.new_context()).new_page()
    bob = await (await browser.new_context()).new_page()
    await alice.goto(f"{base}&name=alice")
    await alice.locator("#members li", has_text="alice").wait_for(timeout=TIMEOUT_MS)
    await bob.goto(f"{base}&name=bob")
    await alice.locator("#members li", has_text="bob").wait_for(timeout=TIMEOUT_MS)
    await bob.locator("#members li", has_text="alice").wait_for(timeout=TIMEOUT_MS)

    await alice.fill("#content", "hello <everyone>")
    await alice.click("#send")
    await bob.locator("#log", has_text="alice: hello <everyone>").wait_for(timeout=TIMEOUT_MS)
    await alice.locator("#log", has_text="alice: hello <everyone>").wait_for(timeout=TIMEOUT_MS)

    await bob.select_option("#to", label="alice")
    await bob.fill("#content", "psst")
    await bob.click("#send")
    await alice.locator("#log", has_text="bob to you: psst").wait_for(timeout=TIMEOUT_MS)
    await bob.locator("#log", has_text="you to alice: psst").wait_for(timeout=TIMEOUT_MS)

    await bob.close()
    await alice.locator("#log", has_text="bob left the room").wait_for(timeout=TIMEOUT_MS)
    assert await alice.locator("#members li").count() == 1


# ---- the push-only demo -------------------------------------------------------------------


def make_pushdemo(tmp_path: Path) -> AppSpec:
    """A copy of apps/pushdemo with free ports (2 gateways, 1 worker, no push API)."""
    apps = tmp_path / "apps"
    apps.mkdir(parents=True)
    (apps / "__init__.py").write_text("")
    dest = apps / "pushdemo"
    shutil.copytree(
        ROOT / "apps" / "pushdemo", dest, ignore=shutil.ignore_patterns("start_*.py", "__pycache__")
    )
    block = reserve_ports(4)
    spec = AppSpec(tmp_path, "pushdemo", block, block + 1, block + 2, 2, 1, "", tmp_path / "run")
    register = f"127.0.0.1:{spec.register_port}"
    (dest / "start_register.py").write_text(
        f"from pygatewayworker import Register\nregister = Register(listen={register!r})\n"
    )
    (dest / "start_gateway.py").write_text(
        "from pygatewayworker import Gateway\n"
        f"gateway = Gateway(listen='127.0.0.1:{spec.public_port}', count=2, "
        f"start_port={spec.start_port}, register={register!r}, ping_interval=0)\n"
    )
    (dest / "start_businessworker.py").write_text(
        "from pygatewayworker import BusinessWorker\n"
        "worker = BusinessWorker(events='apps.pushdemo.Events:Events', count=1, "
        f"register={register!r})\n"
    )
    return spec


def _http(url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@pytest.fixture
def pushdemo(tmp_path: Path) -> Iterator[tuple[AppSpec, str]]:
    """The demo's cluster and its web backend (``python -m apps.pushdemo.web``)."""
    with running(make_pushdemo(tmp_path)) as spec:
        web_port = reserve_ports(1)
        log = open(tmp_path / "web.log", "wb")  # noqa: SIM115 - closed below
        web = subprocess.Popen(
            [sys.executable, "-m", "apps.pushdemo.web", "--port", str(web_port)]
            + ["--register", f"127.0.0.1:{spec.register_port}", "--ws-url", spec.ws_url],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{web_port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(url + "/", timeout=2).close()
                    break
                except OSError:
                    assert web.poll() is None, (tmp_path / "web.log").read_text()
                    assert time.monotonic() < deadline, "the web backend did not start"
                    time.sleep(0.2)
            yield spec, url
        finally:
            web.terminate()
            web.wait(15)
            log.close()


async def _login(browser: Any, url: str, name: str) -> Any:
    page = await (await browser.new_context()).new_page()
    await page.goto(url + "/")
    await page.fill("#name", name)
    await page.click("#login")
    await page.locator("body[data-ready='1']").wait_for(timeout=TIMEOUT_MS)
    return page


async def test_pushdemo_payment_flips_to_paid_on_the_callback(
    pushdemo: tuple[AppSpec, str], browser: Any
) -> None:
    _, url = pushdemo
    alice = await _login(browser, url, "alice")
    bob = await _login(browser, url, "bob")
    await alice.locator("#members li", has_text="bob").wait_for(timeout=TIMEOUT_MS)

    await bob.fill("#content", "hi from bob")
    await bob.click("#send")
    await alice.locator("#log", has_text="bob: hi from bob").wait_for(timeout=TIMEOUT_MS)
    await alice.select_option("#to", "bob")
    await alice.fill("#content", "secret")
    await alice.click("#send")
    await bob.locator("#log", has_text="alice to you: secret").wait_for(timeout=TIMEOUT_MS)

    await alice.click("#pay")
    payment = alice.locator("#payment")
    await alice.locator("#payment.pending").wait_for(timeout=TIMEOUT_MS)
    order = await payment.get_attribute("data-order")
    assert order and (await payment.text_content() or "").startswith("waiting")
    # The provider's server calls back: a separate request, not the page.
    status, answer = await asyncio.to_thread(
        _http, url + "/provider/callback", {"order_id": order, "status": "paid"}
    )
    assert (status, answer["status"]) == (200, "paid")
    await alice.locator("#payment.paid").wait_for(timeout=TIMEOUT_MS)
    assert await payment.text_content() == "paid"
    assert "paid" not in (await bob.locator("#payment").text_content() or "")

    await bob.close()
    await alice.locator("#log", has_text="bob left").wait_for(timeout=TIMEOUT_MS)
    await alice.locator("#members li", has_text="bob").wait_for(
        state="detached", timeout=TIMEOUT_MS
    )


def test_pushdemo_backend_refuses_bad_requests(pushdemo: tuple[AppSpec, str]) -> None:
    _, url = pushdemo
    assert _http(url + "/bind", {"client_id": "x"})[0] == 401  # not logged in
    assert _http(url + "/provider/callback", {"order_id": "nope"})[0] == 404
