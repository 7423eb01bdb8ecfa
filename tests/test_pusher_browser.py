"""Laravel Echo 2 + pusher-js 8, unchanged, in headless Chromium against a real
cluster with 2 gateways: a presence channel (here / joining), a private channel
receiving an event triggered with the ``pusher`` server SDK, and a whisper (client
event) between two pages. Chromium and playwright as in ``tests/test_browser.py``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from tests.chromium import TIMEOUT_MS, browser  # noqa: F401 - the fixture
from tests.pusher_cluster import KEY, SECRET, PusherCluster, running_pusher
from tests.pusher_js import JS_DIR, AuthBackend, require_node

PAGE = b"""<!doctype html>
<html><head><script src="/pusher.js"></script><script src="/echo.js"></script></head>
<body><script>
const q = new URLSearchParams(location.search);
const echo = new Echo.default({
  broadcaster: 'pusher', key: q.get('key'), cluster: 'mt1',
  wsHost: '127.0.0.1', wsPort: Number(q.get('port')), forceTLS: false,
  enabledTransports: ['ws'], disableStats: true,
  authEndpoint: '/broadcasting/auth', auth: {params: {user: q.get('user')}},
});
const mark = (name, value) => { document.body.dataset[name] = value; };
echo.join('room.1')
  .here(users => mark('here', users.map(u => u.name).sort().join(',')))
  .joining(user => mark('joined', user.name))
  .leaving(user => mark('left', user.name));
echo.private('orders.1')
  .listen('.OrderShipped', e => mark('shipped', e.order))
  .listenForWhisper('typing', e => mark('typing', e.who));
window.whisper = () => echo.private('orders.1').whisper('typing', {who: q.get('user')});
</script></body></html>
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PusherCluster]:
    require_node()  # the npm packages are the same
    with running_pusher(tmp_path_factory.mktemp("pusherweb")) as running:
        yield running


@pytest.fixture(scope="module")
def site() -> Iterator[AuthBackend]:
    files = {
        "/": ("text/html", PAGE),
        "/pusher.js": (
            "text/javascript",
            (JS_DIR / "node_modules/pusher-js/dist/web/pusher.js").read_bytes(),
        ),
        "/echo.js": (
            "text/javascript",
            (JS_DIR / "node_modules/laravel-echo/dist/echo.iife.js").read_bytes(),
        ),
    }
    backend = AuthBackend(KEY, SECRET, files)
    yield backend
    backend.close()


async def test_laravel_echo_presence_private_and_whisper(
    cluster: PusherCluster,
    site: AuthBackend,
    browser: Any,  # noqa: F811 - fixture
) -> None:
    base = site.url.removesuffix("/auth")
    pages = {}
    for user in ("alice", "bob"):
        page = await (await browser.new_context()).new_page()
        await page.goto(f"{base}/?key={KEY}&port={cluster.ws_port}&user={user}")
        pages[user] = page
        await page.locator(f"body[data-here*='{user}']").wait_for(
            state="attached", timeout=TIMEOUT_MS
        )
    alice, bob = pages["alice"], pages["bob"]
    await alice.locator("body[data-joined='bob']").wait_for(state="attached", timeout=TIMEOUT_MS)
    assert await bob.get_attribute("body", "data-here") == "alice,bob"

    await asyncio.to_thread(
        cluster.sdk().trigger, "private-orders.1", "OrderShipped", {"order": "A-17"}
    )
    for page in (alice, bob):
        await page.locator("body[data-shipped='A-17']").wait_for(
            state="attached", timeout=TIMEOUT_MS
        )

    await bob.evaluate("whisper()")
    await alice.locator("body[data-typing='bob']").wait_for(state="attached", timeout=TIMEOUT_MS)
    assert await bob.get_attribute("body", "data-typing") is None  # not echoed

    await bob.close()
    await alice.locator("body[data-left='bob']").wait_for(state="attached", timeout=TIMEOUT_MS)
