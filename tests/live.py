"""A live app for browser tests: gunicorn serving a migrated, seeded SQLite database (with
Redis as cache and Socket.IO queue when asked), which a test may stop and start again,
plus Debian's chromium driven by Playwright. Ports, HTTP sessions and chromium's flags are
the bench's (bench/common.py), so both run the app the same way.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from bench.common import CHROMIUM_ARGS, chromium_executable, cookie_header, free_port, http, log_in as form_log_in
from tests.conftest import REDIS_URL, redis_client, unavailable

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv running pytest; deliberately not resolved
INBOUND_TOKEN = "browser-token"
PASSWORD = "demo-pass"
TIMEOUT_MS = 5_000
VIEWPORT = {"width": 1366, "height": 800}
class LiveServer:
    """gunicorn as `make run` serves (gunicorn.conf.py: the gevent worker) on a fixed loopback
    port, restartable."""

    def __init__(self, tmp: Path, redis_url: str | None = None, seed: tuple[str, ...] = (),
                 database_url: str | None = None):
        self.tmp, self.port = tmp, free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.redis_url, self.prefix = redis_url, f"chat-test-{uuid.uuid4().hex[:10]}:"
        self.env = {**os.environ, "DATABASE_URL": database_url or f"sqlite:///{tmp / 'live.db'}",
                    "SECRET_KEY": "browser-test-secret", "INBOUND_TOKEN": INBOUND_TOKEN,
                    "PYTHONUNBUFFERED": "1", "ATTACHMENT_DIR": str(tmp / "attachments")}
        if redis_url:
            self.env.update(REDIS_URL=redis_url, CACHE_KEY_PREFIX=self.prefix,
                            SOCKETIO_CHANNEL=self.prefix + "socketio")
        else:
            self.env.pop("REDIS_URL", None)
        self.log_path = tmp / "gunicorn.log"
        self.process: subprocess.Popen | None = None
        flask = [str(BIN / "flask"), "--app", "app"]
        for args in (["db", "upgrade"], ["seed", *seed]):
            done = subprocess.run(flask + args, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, f"flask {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"

    def twin(self) -> "LiveServer":
        """Another server process over the same database and Redis namespace, on its own port."""
        other = LiveServer.__new__(LiveServer)
        other.__dict__.update(self.__dict__, port=free_port(), process=None,
                              log_path=self.tmp / f"gunicorn-{len(os.listdir(self.tmp))}.log")
        other.base = f"http://127.0.0.1:{other.port}"
        return other

    def start(self) -> None:
        log = self.log_path.open("a")
        self.process = subprocess.Popen(
            [str(BIN / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py"),
             "--bind", f"127.0.0.1:{self.port}", "--access-logfile", "-", "app:app"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)  # its own process group: stop() ends the workers too
        deadline = time.monotonic() + 20
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"gunicorn exited with {self.process.returncode}:\n{self.log_path.read_text()}")
            try:
                if http().get(f"{self.base}/login", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"gunicorn did not answer /login within 20 s:\n{self.log_path.read_text()}")
            time.sleep(0.1)

    def stop(self, graceful: bool = False) -> None:
        """Stop now, like a crash or a network cut: open Socket.IO connections drop too.
        graceful=True: SIGTERM to the master only, as a deploy or systemd stops gunicorn."""
        if self.process is None or self.process.poll() is not None:
            return
        if graceful:
            self.process.send_signal(signal.SIGTERM)
        else:
            os.killpg(self.process.pid, signal.SIGINT)  # gunicorn: quick shutdown, workers included
        try:
            self.process.wait(timeout=35 if graceful else 5)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)

    def cleanup(self) -> None:
        """Stop, and delete this server's keys from a shared Redis (a private Redis Cluster is
        the test session's own and goes with it)."""
        self.stop()
        if self.redis_url and not self.redis_url.startswith("redis+cluster://"):
            import redis

            client = redis.Redis.from_url(self.redis_url)
            for key in client.scan_iter(match=self.prefix + "*"):
                client.delete(key)

    def inbound(self, **message) -> int:
        """POST /api/inbound as the messaging provider; returns the conversation id."""
        return self.inbound_data(**message)["conversation_id"]

    def inbound_data(self, **message) -> dict:
        """POST /api/inbound as the messaging provider; returns its answer's data (the
        conversation's and the message's ids)."""
        response = http().post(f"{self.base}/api/inbound", json=message, timeout=5,
                               headers={"Authorization": f"Bearer {INBOUND_TOKEN}"})
        assert response.status_code in (200, 201), response.text
        return response.json()["data"]

    def flask(self, *args: str) -> str:
        """Run a `flask` command on this server's database and Redis; returns what it printed."""
        done = subprocess.run([str(BIN / "flask"), "--app", "app", *args], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"flask {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout


@contextmanager
def running_pair(tmp: Path, redis_url: str | None = None, seed: tuple[str, ...] = (), env: dict | None = None):
    """gunicorn A and gunicorn B over one migrated, seeded database (and one Redis namespace when
    redis_url is given), both answering; `env` is added after the seed, so only the servers see it."""
    a = LiveServer(tmp, redis_url=redis_url, seed=seed)
    a.env.update(env or {})
    b = a.twin()
    try:
        a.start()
        b.start()
        yield a, b
    finally:
        b.stop()
        a.cleanup()


def sign_in(server: LiveServer, email: str = "ana@example.com"):
    """A signed-in requests session on `server` (session.csrf: its token), and its Cookie header
    for a socket."""
    session = form_log_in(server.base, email)
    return session, cookie_header(session)


def socket_client(server: LiveServer, cookie: str, received: list):
    """A python-socketio client on `server` (long-polling), appending (time, event, args) of each
    data:updated, session:ended and disconnect to `received`."""
    import socketio as socketio_client

    client = socketio_client.Client(reconnection=False)
    for name in ("data:updated", "session:ended", "disconnect"):
        client.on(name, lambda *args, name=name: received.append((time.monotonic(), name, args)))
    client.connect(server.base, headers={"Cookie": cookie}, transports=["polling"], wait_timeout=5)
    return client


def engineio_websocket(base: str, cookie: str):
    """A raw websocket to Socket.IO's endpoint (Engine.IO 4), signed in with `cookie`, as a
    browser opens it: websockets' sync client (recv(timeout=...) raises TimeoutError). Not
    simple-websocket's client: a frame that arrives in the same read as the handshake's answer
    (the server's Engine.IO open, when the machine is busy) stays unread there until the next
    frame, a ping 25 s later."""
    from websockets.sync.client import connect

    return connect(base.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket",
                   additional_headers={"Cookie": cookie}, proxy=None, compression=None, open_timeout=10)


def wait_for(condition, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def embedded_and_redis(name: str, seed: tuple[str, ...]):
    """A module fixture: one LiveServer on the embedded default, then one with Redis as cache
    and Socket.IO queue (its keys under a prefix of its own, deleted afterwards)."""

    @pytest.fixture(scope="module", params=["embedded", "redis"])
    def server(request, tmp_path_factory):
        redis_url = None
        if request.param == "redis":
            redis_client()  # fails under CI=true, skips elsewhere, when Redis is missing
            redis_url = REDIS_URL
        live = LiveServer(tmp_path_factory.mktemp(f"{name}-{request.param}"), redis_url=redis_url, seed=seed)
        live.start()
        yield live
        live.cleanup()

    return server


def launch_chromium(playwright):
    from playwright.sync_api import Error as PlaywrightError

    executable = chromium_executable()
    if not os.access(executable, os.X_OK):
        unavailable(f"chromium not found ({executable}); `make chromium` installs it")
    try:
        return playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
    except PlaywrightError as exc:
        unavailable(f"chromium at {executable} did not start: {exc}")


def new_page(browser, base_url: str, errors: list[str]):
    """A page in a fresh context (its own cookies and localStorage) that records JS errors."""
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    context = browser.new_context(viewport=VIEWPORT, base_url=base_url, locale="en-US", timezone_id="UTC")
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))

    def on_console(msg):
        url = (msg.location or {}).get("url", "")
        if msg.type == "error" and not _expected_console_error(msg.text, url):
            errors.append(f"console: {msg.text} ({url})")

    page.on("console", on_console)
    return page


@contextmanager
def pages(browser, base_url: str):
    """open() -> a new page in a context of its own (new_page); on exit the contexts close and
    any browser error any of them reported fails the test: a browser module's open_page."""
    contexts, errors = [], []

    def _open():
        page = new_page(browser, base_url, errors)
        contexts.append(page.context)
        return page

    yield _open
    for context in contexts:
        context.close()
    assert not errors, "the browser reported errors:\n" + "\n".join(errors)


def _expected_console_error(text: str, url: str) -> bool:
    # While a test has stopped the server, failed connections are the point (htmx logs its
    # network failures, which the shim turns into the offline banner): refused, or reset when
    # the stop (SIGINT: quick, like a crash) cut a request short. gevent's worker accepts
    # until it exits, 0.1 s after the signal, so a page may still be loading from it; a
    # request on a connection it was closing reports ERR_SOCKET_NOT_CONNECTED.
    # A signed-out page's probe of GET /session is answered 401: that is its answer, not a fault.
    return ("ERR_CONNECTION_REFUSED" in text or "ERR_CONNECTION_RESET" in text
            or "ERR_SOCKET_NOT_CONNECTED" in text
            or text in ("htmx:sendError", "htmx:afterRequest")
            or "Failed to load resource" in text and "socket.io" in url
            or "status of 401" in text and url.endswith("/session"))


def log_in(page, email: str, password: str = PASSWORD) -> None:
    from playwright.sync_api import expect

    page.goto("/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/inbox(\?|$)"))


def tab(page, name: str):
    return page.locator("#tabs").get_by_role("link", name=re.compile(rf"^\s*{name}\b"))


def row(page, contact_name: str):
    return page.locator("#conversation-list li.row").filter(has_text=contact_name)
