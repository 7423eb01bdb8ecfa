"""The framework examples (``examples/django``, ``examples/flask``, ``examples/fastapi``)
against real clusters.

For each example, the example's own apps folder is started the way its README says
(``python -m pygatewayworker start`` in the example's folder), with free ports given
as ``start`` options. A real WebSocket client reads ``init``; the framework's own
test client (Django's ``Client`` with CSRF checks on, Flask's ``test_client()``,
FastAPI's ``TestClient``) logs in, binds that client_id, starts an order and plays
the provider's signed callback; the WebSocket client must receive the push. Refusals
(malformed, offline or foreign client_id, missing CSRF token, bad signature) are
checked to be clear 4xx answers. FastAPI runs the flow in two successive lifespans
of one app. With Chromium available, a real browser runs each example's page
(``examples/static/gatewayworker.js``) against the framework's own server: it binds,
receives a push, and binds again after the gateway closed its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from examples.provider import DEFAULT_SECRET, callback_body, post_callback, signature
from pygatewayworker import GatewayClient
from tests.chromium import TIMEOUT_MS, browser  # noqa: F401 - browser is a fixture
from tests.cluster import ROOT, AppSpec, wait_ports_free, wait_ready
from tests.ports import reserve_ports

EXAMPLES = ROOT / "examples"
PYTHON = sys.executable
DEV_ENV = {"SHOP_DEV": "1"}
"""Development mode: the examples' published keys are allowed (see examples/README.md)."""
KEY_VARIABLES = (
    "DJANGO_SECRET_KEY",
    "FLASK_SECRET_KEY",
    "SESSION_SECRET",
    "PAYMENT_WEBHOOK_SECRET",
    "GW_TOKEN_KEY",
)


# ---- the cluster of an example ------------------------------------------------------------


@dataclass(slots=True)
class ExampleCluster:
    """An example's cluster, running on free ports."""

    spec: AppSpec
    folder: Path

    @property
    def register(self) -> str:
        return f"127.0.0.1:{self.spec.register_port}"

    @property
    def ws_url(self) -> str:
        return self.spec.ws_url


@contextlib.contextmanager
def example_cluster(folder: Path, tmp: Path) -> Iterator[ExampleCluster]:
    """``python -m pygatewayworker start`` in ``folder`` (its ``./apps``), ports
    overridden on the command line, until the block ends; then Ctrl-C."""
    block = reserve_ports(4)
    spec = AppSpec(tmp, "shop", block, block + 1, block + 2, 2, 1, run_dir=tmp / "run")
    command = [PYTHON, "-m", "pygatewayworker", "start", "--run-dir", str(spec.run_dir)]
    command += ["--register-listen", f"127.0.0.1:{spec.register_port}"]
    command += ["--register", f"127.0.0.1:{spec.register_port}"]
    command += ["--gateway-listen", f"127.0.0.1:{spec.public_port}"]
    command += ["--start-port", str(spec.start_port)]
    log_path = tmp / "cluster.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            command,
            cwd=folder,
            env={**os.environ, **DEV_ENV},  # Django's workers load its settings
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        asyncio.run(wait_ready(spec, init=True))
        yield ExampleCluster(spec, folder)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
        assert code == 0, log_path.read_text(errors="replace")
        assert not wait_ports_free(spec.all_ports())


@contextlib.contextmanager
def on_path(folder: Path) -> Iterator[None]:
    """Make the example's own modules importable (appended: nothing is shadowed)."""
    sys.path.append(str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))


def next_message(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    """The next JSON message that is not the gateway's heartbeat ping."""
    deadline = time.monotonic() + timeout
    while True:
        message = json.loads(ws.recv(timeout=max(0.0, deadline - time.monotonic())))
        if message.get("type") != "ping":
            return dict(message)


# ---- driving an example with its framework's test client --------------------------------


@dataclass(slots=True)
class Answer:
    status: int
    body: Any
    """The JSON answer, or the text when it is not JSON (Django's CSRF failure page)."""

    @property
    def error(self) -> str:
        return str(self.body.get("error", "")) if isinstance(self.body, dict) else ""


def _answer(status: int, text: str) -> Answer:
    try:
        return Answer(status, json.loads(text))
    except ValueError:
        return Answer(status, text)


def _page_value(pattern: str, page: str) -> str:
    match = re.search(pattern, page)
    assert match, f"{pattern} not in the page:\n{page}"
    return match.group(1)


class Shop:
    """One browser session with an example, through its framework's test client.

    It does what the page does: reads the CSRF token from ``<meta name="csrf-token">``,
    the header to send it in from ``<body data-csrf-header>``, and the login form's
    field for it from the form; subclasses only make the requests."""

    def __init__(self) -> None:
        self.token = ""
        self.header = ""
        self.field = ""
        self._read_page()

    def _request(self, method: str, path: str, **kwargs: Any) -> tuple[int, str]:
        """``(status, text)`` of one request in this session (``json=``, ``data=``,
        ``headers=`` as in Flask's and httpx's clients)."""
        raise NotImplementedError

    def _callback(self, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
        """The provider's request: no session cookie."""
        raise NotImplementedError

    def _read_page(self) -> None:
        status, page = self._request("get", "/")
        assert status == 200, page
        self.token = _page_value(r'<meta name="csrf-token" content="([^"]+)">', page)
        self.header = _page_value(r'data-csrf-header="([^"]+)"', page)
        if 'action="/login"' in page:
            self.field = _page_value(r'<input type="hidden" name="([^"]+)"', page)

    def login(self, name: str) -> None:
        status, text = self._request("post", "/login", data={"name": name, self.field: self.token})
        assert status in (200, 302, 303), text  # 200: the client followed the redirect
        self._read_page()  # a new session has a new token

    def post(self, path: str, body: dict[str, Any], *, csrf: bool = True) -> Answer:
        headers = {self.header: self.token} if csrf else {}
        return _answer(*self._request("post", path, json=body, headers=headers))

    def provider(self, body: bytes, signature: str) -> Answer:
        headers = {"X-Signature": signature, "Content-Type": "application/json"}
        return _answer(*self._callback(body, headers))


class DjangoShop(Shop):
    """A session of ``django.test.Client(enforce_csrf_checks=True)``."""

    def __init__(self) -> None:
        from django.test import Client

        self.client = Client(enforce_csrf_checks=True)
        super().__init__()

    def _request(self, method: str, path: str, **kwargs: Any) -> tuple[int, str]:
        if "json" in kwargs:
            kwargs["data"] = json.dumps(kwargs.pop("json"))
            kwargs["content_type"] = "application/json"
        response = getattr(self.client, method)(path, **kwargs)
        return response.status_code, response.content.decode()

    def _callback(self, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
        from django.test import Client

        content_type = headers.pop("Content-Type")
        response = Client(enforce_csrf_checks=True).post(
            "/payment/callback", body, content_type=content_type, headers=headers
        )
        return response.status_code, response.content.decode()


class FlaskShop(Shop):
    """A session of ``app.test_client()``."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.client = app.test_client()
        super().__init__()

    def _request(self, method: str, path: str, **kwargs: Any) -> tuple[int, str]:
        response = getattr(self.client, method)(path, **kwargs)
        return response.status_code, response.get_data(as_text=True)

    def _callback(self, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
        response = self.app.test_client().post("/payment/callback", data=body, headers=headers)
        return response.status_code, response.get_data(as_text=True)


class FastAPIShop(Shop):
    """A session of a ``TestClient`` that is running the app (one lifespan, one event
    loop, which its push client belongs to); shops on the same TestClient keep their
    own cookies, swapped in for each request."""

    def __init__(self, http: Any) -> None:
        self.http = http
        self.jar = self._no_cookies()
        super().__init__()

    def _no_cookies(self) -> Any:
        return type(self.http.cookies)()  # httpx's or httpx2's, whichever Starlette uses

    def _request(self, method: str, path: str, **kwargs: Any) -> tuple[int, str]:
        self.http.cookies = self.jar
        try:
            response = getattr(self.http, method)(path, **kwargs)
        finally:
            self.jar = type(self.http.cookies)(self.http.cookies)
        return response.status_code, response.text

    def _callback(self, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
        self.http.cookies = self._no_cookies()
        response = self.http.post("/payment/callback", content=body, headers=headers)
        return response.status_code, response.text


def signed(
    order_id: str, status: str = "paid", timestamp: float | None = None
) -> tuple[bytes, str]:
    body = callback_body(order_id, status, timestamp)
    return body, signature(body, DEFAULT_SECRET)


# ---- what every example must do -----------------------------------------------------------


def pay_and_expect_push(shop: Shop, ws: ClientConnection, name: str) -> None:
    """The documented flow: init, bind, order, provider callback, push received."""
    init = next_message(ws)
    assert init["type"] == "init"
    shop.login(name)
    bound = shop.post("/bind", {"client_id": init["client_id"]})
    assert (bound.status, bound.body) == (200, {"uid": name, "client_id": init["client_id"]})
    order = shop.post("/orders", {})
    assert order.status == 200, order.body
    order_id = order.body["order_id"]
    answer = shop.provider(*signed(order_id))
    assert (answer.status, answer.body) == (200, {"order_id": order_id, "status": "paid"})
    assert next_message(ws) == {"type": "payment", "order_id": order_id, "status": "paid"}


def check_replays(shop: Shop, ws: ClientConnection) -> None:
    """Callbacks replayed or reordered cannot change a settled order: the same one
    again is 200 with nothing pushed, another outcome 409, a stale one 403."""
    init = next_message(ws)
    shop.login("dave")
    assert shop.post("/bind", {"client_id": init["client_id"]}).status == 200
    order_id = shop.post("/orders", {}).body["order_id"]
    stale = shop.provider(*signed(order_id, timestamp=time.time() - 600))
    assert stale.status == 403 and "stale" in stale.error, stale.body
    no_stamp = json.dumps({"order_id": order_id, "status": "paid"}).encode()
    assert shop.provider(no_stamp, signature(no_stamp, DEFAULT_SECRET)).status == 403
    assert shop.provider(*signed(order_id, status="refunded")).status == 400
    paid = signed(order_id)
    assert shop.provider(*paid).body == {"order_id": order_id, "status": "paid"}
    assert next_message(ws) == {"type": "payment", "order_id": order_id, "status": "paid"}
    again = shop.provider(*paid)  # the provider retries, or someone replays it
    assert (again.status, again.body) == (200, {"order_id": order_id, "status": "paid"})
    failed = shop.provider(*signed(order_id, status="failed"))
    assert failed.status == 409 and "already paid" in failed.error, failed.body
    assert shop.provider(*paid).body["status"] == "paid"  # still paid
    with pytest.raises(TimeoutError):
        next_message(ws, timeout=0.5)  # and pushed once


def check_refusals(new_shop: Any, ws: ClientConnection) -> None:
    """Bad binds and callbacks get clear 4xx answers, and bind nothing."""
    client_id = next_message(ws)["client_id"]
    anonymous = new_shop()
    assert anonymous.post("/bind", {"client_id": client_id}).status == 401
    shop = new_shop()
    shop.login("carol")
    assert shop.post("/bind", {"client_id": client_id}, csrf=False).status == 403
    malformed = shop.post("/bind", {"client_id": "not-a-client-id"})
    assert malformed.status == 400 and "client_id" in malformed.error, malformed.body
    assert shop.post("/bind", {"client_id": 12345}).status == 400
    offline = client_id[:12] + ("00000001" if client_id[12:] != "00000001" else "00000002")
    gone = shop.post("/bind", {"client_id": offline})
    assert gone.status == 404 and "not online" in gone.error, gone.body
    assert shop.post("/bind", {"client_id": client_id}).status == 200
    thief = new_shop()
    thief.login("mallory")
    taken = thief.post("/bind", {"client_id": client_id})
    assert taken.status == 409 and "another user" in taken.error, taken.body
    order_id = shop.post("/orders", {}).body["order_id"]
    body, _ = signed(order_id)
    assert shop.provider(body, signature(body, "not-the-secret")).status == 403
    assert shop.provider(*signed("order-unknown")).status == 404
    with pytest.raises(TimeoutError):
        next_message(ws, timeout=0.5)  # nothing was pushed


# ---- real browser -------------------------------------------------------------------------


@contextlib.contextmanager
def web_server(command: list[str], cluster: ExampleCluster, tmp: Path) -> Iterator[str]:
    """Run the example's web server as its README says (``{port}`` in ``command`` is
    replaced by a free port), pointed at ``cluster``; yield its base URL."""
    port = reserve_ports(1)
    environment = {
        **os.environ,
        **DEV_ENV,
        "GW_REGISTER": cluster.register,
        "GATEWAY_WS_URL": cluster.ws_url,
    }
    log_path = tmp / "web.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [part.replace("{port}", str(port)) for part in command],
            cwd=cluster.folder,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/", timeout=2).close()
                break
            except OSError:
                assert proc.poll() is None, log_path.read_text(errors="replace")
                assert time.monotonic() < deadline, "the web server did not start"
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(15)


async def browser_flow(chromium: Any, url: str, cluster: ExampleCluster) -> None:
    """Log in, get bound, receive a payment push; after the gateway closed the page's
    connection, the page reconnects, binds its new client_id and receives again."""
    page = await (await chromium.new_context()).new_page()
    await page.goto(url + "/")
    await page.fill("#name", "alice")
    await page.click("#login")
    status = page.locator("#status")
    await page.locator("#status[data-state='bound']").wait_for(timeout=TIMEOUT_MS)
    first_id = await status.get_attribute("data-client-id")
    assert first_id and len(first_id) == 20
    helpers = await page.evaluate(
        """() => { document.cookie = "probe=a%20b"; return [GatewayWorker.cookie("probe"),
           GatewayWorker.cookie("absent"), GatewayWorker.meta("csrf-token").length]; }"""
    )
    assert helpers[:2] == ["a b", ""] and helpers[2] > 20

    async def pay() -> str:
        await page.click("#buy")
        order = page.locator("#order[data-order-id]")
        await order.wait_for(timeout=TIMEOUT_MS)
        order_id = await order.get_attribute("data-order-id")
        assert order_id
        answer = await asyncio.to_thread(post_callback, url, order_id)
        assert answer == (200, {"order_id": order_id, "status": "paid"})
        await page.locator("#payment", has_text=f"{order_id}: paid").wait_for(timeout=TIMEOUT_MS)
        return order_id

    await pay()
    push = GatewayClient(register=cluster.register, name="test-examples")
    try:
        await asyncio.to_thread(push.close_client, first_id)  # the server side hangs up
    finally:
        await asyncio.to_thread(push.close)
    await page.locator("#status[data-binds='2'][data-state='bound']").wait_for(timeout=TIMEOUT_MS)
    assert await status.get_attribute("data-client-id") != first_id
    await pay()  # the new connection is bound: pushes reach the page again


# ---- the examples -------------------------------------------------------------------------


@pytest.fixture(scope="class")
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ExampleCluster]:
    """The cluster of the test class's example (its ``FOLDER``), for that class."""
    folder: Path = request.cls.FOLDER
    with example_cluster(folder, tmp_path_factory.mktemp(folder.name)) as running:
        yield running


class ExampleTests:
    """What every example's test class has: its folder (``FOLDER``, whose cluster the
    ``cluster`` fixture starts) and the command that serves its web app as its README
    says (``WEB_COMMAND``, ``{port}`` standing for a free port), which the browser test
    runs."""

    FOLDER: Path
    WEB_COMMAND: list[str]

    async def test_page_in_a_browser(
        self,
        cluster: ExampleCluster,
        browser: Any,  # noqa: F811 - the fixture imported from test_browser
        tmp_path: Path,
    ) -> None:
        with web_server(self.WEB_COMMAND, cluster, tmp_path) as url:
            await browser_flow(browser, url, cluster)


class TestDjango(ExampleTests):
    FOLDER = EXAMPLES / "django"
    WEB_COMMAND = [PYTHON, "manage.py", "runserver", "--noreload", "127.0.0.1:{port}"]

    @pytest.fixture(scope="class")
    @classmethod
    def django_on(cls, cluster: ExampleCluster) -> Iterator[None]:
        """Django set up once for this process, its push client aimed at ``cluster``."""
        import django
        from django.test.utils import (
            override_settings,
            setup_test_environment,
            teardown_test_environment,
        )

        with on_path(cls.FOLDER), pytest.MonkeyPatch.context() as env:
            env.setenv("DJANGO_SETTINGS_MODULE", "djangoshop.settings")
            env.setenv("SHOP_DEV", "1")
            env.setenv("TZ", os.environ.get("TZ", ""))  # restored after: Django sets it
            django.setup()
            from djangoshop import push

            setup_test_environment()
            try:
                with override_settings(GATEWAY_REGISTER=cluster.register):
                    yield
            finally:
                push.close()
                teardown_test_environment()
        time.tzset()

    def test_payment_is_pushed(self, cluster: ExampleCluster, django_on: None) -> None:
        with connect(cluster.ws_url) as ws:
            pay_and_expect_push(DjangoShop(), ws, "alice")

    def test_refusals(self, cluster: ExampleCluster, django_on: None) -> None:
        with connect(cluster.ws_url) as ws:
            check_refusals(DjangoShop, ws)

    def test_replayed_callbacks(self, cluster: ExampleCluster, django_on: None) -> None:
        with connect(cluster.ws_url) as ws:
            check_replays(DjangoShop(), ws)

    def test_workers_set_django_up(self, cluster: ExampleCluster) -> None:
        log = (cluster.spec.root / "cluster.log").read_text(errors="replace")
        assert "Django" in log and "set up with djangoshop.settings" in log, log


class TestFlask(ExampleTests):
    FOLDER = EXAMPLES / "flask"
    WEB_COMMAND = [PYTHON, "-m", "flask", "--app", "flaskshop", "run", "--port", "{port}"]

    @pytest.fixture(scope="class")
    @classmethod
    def app(cls, cluster: ExampleCluster) -> Iterator[Any]:
        with on_path(cls.FOLDER):
            from flaskshop import create_app

            app = create_app(
                GATEWAY_REGISTER=cluster.register,
                TESTING=True,
                SECRET_KEY="flask-test-session-key",
                PAYMENT_WEBHOOK_SECRET=DEFAULT_SECRET,
            )
            try:
                yield app
            finally:
                app.extensions["gatewayworker"].close()

    def test_payment_is_pushed(self, cluster: ExampleCluster, app: Any) -> None:
        with connect(cluster.ws_url) as ws:
            pay_and_expect_push(FlaskShop(app), ws, "alice")

    def test_refusals(self, cluster: ExampleCluster, app: Any) -> None:
        with connect(cluster.ws_url) as ws:
            check_refusals(lambda: FlaskShop(app), ws)

    def test_replayed_callbacks(self, cluster: ExampleCluster, app: Any) -> None:
        with connect(cluster.ws_url) as ws:
            check_replays(FlaskShop(app), ws)


class TestFastAPI(ExampleTests):
    FOLDER = EXAMPLES / "fastapi"
    WEB_COMMAND = [PYTHON, "-m", "uvicorn", "fastapishop:app", "--port", "{port}"]

    @pytest.fixture(scope="class")
    @classmethod
    def app(cls, cluster: ExampleCluster) -> Iterator[Any]:
        with on_path(cls.FOLDER):
            from fastapishop import DEV_KEYS, Settings, create_app

            settings = Settings(
                register=cluster.register,
                webhook_secret=DEFAULT_SECRET,
                session_secret="fastapi-test-session-key",
                token_key=DEV_KEYS["token_key"],  # the example cluster's, with SHOP_DEV=1
            )
            yield create_app(settings)

    def test_payment_is_pushed_in_successive_lifespans(
        self, cluster: ExampleCluster, app: Any
    ) -> None:
        from fastapi.testclient import TestClient

        clients = []
        for name in ("alice", "bob"):
            with TestClient(app) as http, connect(cluster.ws_url) as ws:
                clients.append(app.state.push)
                pay_and_expect_push(FastAPIShop(http), ws, name)
        assert clients[0] is not clients[1]  # one push client per lifespan

    def test_refusals(self, cluster: ExampleCluster, app: Any) -> None:
        from fastapi.testclient import TestClient

        with TestClient(app) as http, connect(cluster.ws_url) as ws:
            check_refusals(lambda: FastAPIShop(http), ws)

    def test_a_connect_token_binds_the_page_without_bind(
        self, cluster: ExampleCluster, app: Any
    ) -> None:
        """POST /ws-token, connect with it: the payment push arrives with no /bind."""
        from fastapi.testclient import TestClient

        with TestClient(app) as http:
            shop = FastAPIShop(http)
            assert shop.post("/ws-token", {}).status == 401  # logged out
            shop.login("carol")
            answer = shop.post("/ws-token", {})
            assert answer.status == 200, answer.body
            with connect(f"{cluster.ws_url}?token={answer.body['token']}") as ws:
                assert next_message(ws)["type"] == "init"
                order_id = shop.post("/orders", {}).body["order_id"]
                assert shop.provider(*signed(order_id)).status == 200
                assert next_message(ws) == {
                    "type": "payment",
                    "order_id": order_id,
                    "status": "paid",
                }
            with pytest.raises(Exception, match="401"):
                connect(f"{cluster.ws_url}?token=forged.{answer.body['token'][6:]}")

    def test_replayed_callbacks(self, cluster: ExampleCluster, app: Any) -> None:
        from fastapi.testclient import TestClient

        with TestClient(app) as http, connect(cluster.ws_url) as ws:
            check_replays(FastAPIShop(http), ws)


# ---- the published development keys ---------------------------------------------------------

START_WITHOUT_KEYS = {
    "django": "import djangoshop.settings",
    "flask": "from flaskshop import create_app; create_app()",
    "fastapi": "import fastapishop; fastapishop.app",
}


@pytest.mark.parametrize("example", sorted(START_WITHOUT_KEYS))
def test_no_start_with_the_published_keys_unless_in_development_mode(example: str) -> None:
    """Without its keys set, an example refuses to start and names them; SHOP_DEV=1
    (development mode) lets it use the published development values."""
    environment = {k: v for k, v in os.environ.items() if k not in (*KEY_VARIABLES, "SHOP_DEV")}

    def start(extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PYTHON, "-c", START_WITHOUT_KEYS[example]],
            cwd=EXAMPLES / example,
            env={**environment, **extra},
            capture_output=True,
            text=True,
            timeout=60,
        )

    refused = start({})
    assert refused.returncode != 0
    assert "PAYMENT_WEBHOOK_SECRET" in refused.stderr and "SHOP_DEV=1" in refused.stderr
    assert start(DEV_ENV).returncode == 0, start(DEV_ENV).stderr
    keys = {name: "a-long-random-test-secret" for name in KEY_VARIABLES}
    assert start(keys).returncode == 0
