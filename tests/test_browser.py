"""End to end in a real browser: a live gunicorn server, Debian's chromium, Playwright.

One server (SQLite in a temp dir, small seeded world) serves the whole module. An agent
logs in through the form, takes a fresh inbound conversation from Pending, replies, and
finds it under Mine; a message body full of markup must show as text and never run.

CHAT_SCREENSHOTS=1 also writes docs/inbox.png (the README's screenshot); CI leaves it be.
Without chromium the tests skip, except with CI=true, where they fail.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv running pytest; deliberately not resolved
IN_CI = os.environ.get("CI", "").lower() == "true"
INBOUND_TOKEN = "browser-token"
EMAIL, PASSWORD = "ana@example.com", "demo-pass"
TIMEOUT_MS = 5_000
VIEWPORT = {"width": 1366, "height": 800}
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _unavailable(reason: str):
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: tests must not skip)")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # never send loopback traffic through a proxy from the environment
    return session


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)  # gunicorn: graceful shutdown
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


@pytest.fixture(scope="module")
def live_server(tmp_path_factory):
    """Base URL of a gunicorn (gthread) server on a fresh, migrated and seeded SQLite database."""
    tmp = tmp_path_factory.mktemp("browser")
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp / 'browser.db'}",
        "SECRET_KEY": "browser-test-secret",
        "INBOUND_TOKEN": INBOUND_TOKEN,
        "PYTHONUNBUFFERED": "1",
    }
    flask = [str(BIN / "flask"), "--app", "app"]
    for args in (["db", "upgrade"], ["seed", "--agents", "3", "--conversations", "40", "--messages", "200"]):
        done = subprocess.run(flask + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"flask {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"

    port = _free_port()
    log_path = tmp / "gunicorn.log"
    log = log_path.open("w")
    server = subprocess.Popen(
        [str(BIN / "gunicorn"), "--worker-class", "gthread", "--workers", "1", "--threads", "20",
         "--bind", f"127.0.0.1:{port}", "--access-logfile", "-", "app:app"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        http = _http()
        deadline = time.monotonic() + 20
        while True:
            if server.poll() is not None:
                pytest.fail(f"gunicorn exited with {server.returncode}:\n{log_path.read_text()}")
            try:
                if http.get(f"{base}/login", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"gunicorn did not answer /login within 20 s:\n{log_path.read_text()}")
            time.sleep(0.1)
        yield base
    finally:
        _stop(server)
        log.close()


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import Error as PlaywrightError, sync_playwright
    except ImportError:
        _unavailable("playwright is not installed")
    executable = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(executable, os.X_OK):
        _unavailable(f"chromium not found ({executable}); `make chromium` installs it")
    with sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        except PlaywrightError as exc:
            _unavailable(f"chromium at {executable} did not start: {exc}")
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser, live_server):
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    context = browser.new_context(viewport=VIEWPORT, base_url=live_server, locale="en-US",
                                  timezone_id="UTC")
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))

    def on_console(msg):
        url = (msg.location or {}).get("url", "")
        if msg.type == "error" and not url.endswith("/favicon.ico"):  # no favicon is not a bug
            errors.append(f"console: {msg.text} ({url})")

    page.on("console", on_console)
    yield page
    context.close()
    assert not errors, "the browser reported errors:\n" + "\n".join(errors)


def inbound(base: str, **message) -> int:
    """POST /api/inbound as the messaging provider; returns the conversation id."""
    response = _http().post(f"{base}/api/inbound", json=message, timeout=5,
                            headers={"Authorization": f"Bearer {INBOUND_TOKEN}"})
    assert response.status_code in (200, 201), response.text
    return response.json()["data"]["conversation_id"]


def log_in(page, email: str = EMAIL, password: str = PASSWORD) -> None:
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


def test_accept_reply_and_find_it_under_mine(page, live_server):
    from playwright.sync_api import expect

    conversation_id = inbound(live_server, phone="+5511988887777", name="Browser Tester",
                              body="Hello from the browser test", external_id="browser-1")
    log_in(page)

    # Pending is the default tab; the fresh conversation (no department) is visible to ana.
    expect(tab(page, "Pending")).to_have_attribute("aria-current", "page")
    target = row(page, "Browser Tester")
    expect(target).to_have_count(1)
    expect(target).to_have_attribute("data-conversation-id", str(conversation_id))
    target.get_by_role("link").click()

    pane = page.locator("#pane > #conversation-pane")  # swapped into #pane, not over it
    expect(pane.get_by_role("heading", name="Browser Tester")).to_be_visible()
    expect(pane.locator(".msg.in .msg-body")).to_have_text(["Hello from the browser test"])
    expect(page).to_have_url(re.compile(rf"/conversations/{conversation_id}\b"))
    expect(pane.locator(".reply-note")).to_contain_text("Accept this conversation")

    pane.get_by_role("button", name="Accept").click()
    expect(pane.locator(".status")).to_have_text("active")
    expect(pane.get_by_role("button", name="Accept")).to_have_count(0)

    reply = pane.locator("#reply-body")
    reply.fill("Thanks, on it!")
    pane.get_by_role("button", name="Send").click()
    sent = pane.locator(".msg.out .msg-body").filter(has_text="Thanks, on it!")
    expect(sent).to_have_count(1)
    expect(sent).to_have_text("Thanks, on it!")
    expect(pane.locator("#reply-body")).to_have_value("")  # a fresh form after the swap

    tab(page, "Mine").click()
    expect(page).to_have_url(re.compile(r"tab=mine"))
    expect(tab(page, "Mine")).to_have_attribute("aria-current", "page")
    expect(row(page, "Browser Tester")).to_have_count(1)

    tab(page, "Pending").click()
    expect(tab(page, "Pending")).to_have_attribute("aria-current", "page")
    expect(page.locator("#conversation-list li.row").first).to_be_visible()  # the list did render
    expect(row(page, "Browser Tester")).to_have_count(0)

    # The README's screenshot: the Mine tab with this conversation open.
    tab(page, "Mine").click()
    row(page, "Browser Tester").get_by_role("link").click()
    expect(pane.locator(".msg.out .msg-body").filter(has_text="Thanks, on it!")).to_be_visible()
    expect(tab(page, "Mine")).to_have_attribute("aria-current", "page")
    # Opening it as the assignee cleared its unread count; the server-rendered page says so.
    expect(page).to_have_url(re.compile(rf"/conversations/{conversation_id}\?tab=mine"))
    page.reload()
    expect(tab(page, "Mine")).to_have_attribute("aria-current", "page")
    expect(row(page, "Browser Tester").locator(".unread-badge")).to_have_count(0)
    expect(pane.locator(".msg.out .msg-body").filter(has_text="Thanks, on it!")).to_be_visible()
    if os.environ.get("CHAT_SCREENSHOTS") == "1":
        page.mouse.move(0, 0)  # no hover highlight in the picture
        page.evaluate("document.activeElement && document.activeElement.blur()")
        out = ROOT / "docs" / "inbox.png"
        out.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(out))


def test_message_markup_is_shown_as_text_and_never_runs(page, live_server):
    from playwright.sync_api import expect

    markup = "<b>bold</b><script>window.pwned=1</script>"
    conversation_id = inbound(live_server, phone="+5511977776666", name="Markup Tester",
                              body=markup, external_id="browser-markup-1")
    log_in(page)

    # In the list preview...
    target = row(page, "Markup Tester")
    expect(target.locator(".preview")).to_have_text(markup)
    expect(target.locator(".preview b, .preview script")).to_have_count(0)

    # ...in the pane loaded by htmx...
    target.get_by_role("link").click()
    body = page.locator("#conversation-pane .msg.in .msg-body")
    expect(body).to_have_text([markup])
    expect(body.locator("b, script")).to_have_count(0)
    assert page.evaluate("typeof window.pwned") == "undefined"

    # ...and on the full page rendered by the server.
    page.goto(f"/conversations/{conversation_id}")
    expect(page.locator("#conversation-pane .msg.in .msg-body")).to_have_text([markup])
    assert page.evaluate("typeof window.pwned") == "undefined"
