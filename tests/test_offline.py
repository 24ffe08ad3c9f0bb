"""Offline first, in Chromium against a live gunicorn (embedded and with Redis): the service
worker answers page loads with the server down, snapshots fill them, and the outbox delivers
a reply sent offline, or whose answer was lost, exactly once when the server is back.
"""
from __future__ import annotations

import re
import sqlite3
import subprocess
import time

import pytest

from tests.live import BIN, ROOT, embedded_and_redis, log_in, new_page, row, tab

OFFLINE_ERRORS = r"ERR_CONNECTION_REFUSED|ERR_CONNECTION_RESET|ERR_FAILED|Failed to load resource|WebSocket"


server = embedded_and_redis("offline", seed=("--agents", "3", "--conversations", "40", "--messages", "160"))


@pytest.fixture
def open_page(browser, server):
    """open_page() -> a page in a fresh context; fails on browser errors other than those of
    the server being away; restarts the server if a test left it stopped."""
    contexts, errors = [], []

    def _open():
        page = new_page(browser, server.base, errors)
        contexts.append(page.context)
        return page

    yield _open
    for context in contexts:
        context.close()
    server.start() if server.process is None or server.process.poll() is not None else None
    unexpected = [e for e in errors if not re.search(OFFLINE_ERRORS, e)]
    assert not unexpected, "the browser reported errors:\n" + "\n".join(unexpected)


def controlled(page) -> None:
    """Wait until the service worker controls the page (it claims it on activation)."""
    page.wait_for_function("() => navigator.serviceWorker && !!navigator.serviceWorker.controller", timeout=10_000)


def connected(page) -> None:
    page.wait_for_function("() => window.__inboxSocketConnected === true", timeout=10_000)


def messages_in_db(server, body: str) -> int:
    with sqlite3.connect(server.tmp / "live.db") as db:
        return db.execute("SELECT count(*) FROM messages WHERE body = ?", (body,)).fetchone()[0]


def run_domain(server, code: str) -> None:
    """Change data as another agent would meanwhile, through the domain (the commit invalidates)."""
    script = f"from chat import create_app\nfrom chat import domain\napp = create_app()\nwith app.app_context():\n{code}"
    done = subprocess.run([str(BIN / "python"), "-c", script], cwd=ROOT, env=server.env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def visit_mine_and_open_first(page):
    from playwright.sync_api import expect

    tab(page, "Mine").click()  # a navigation: the worker keeps the page
    first = page.locator("#conversation-list li.row").first
    expect(first).to_be_visible()
    name = first.locator(".name").inner_text()
    first.get_by_role("link").click()
    pane = page.locator("#conversation-pane")
    expect(pane.get_by_role("heading", name=name)).to_be_visible()
    return name, pane


def test_an_offline_reload_paints_once_and_asks_the_server_only_once_it_is_back(open_page, server):
    """Served by the worker, the page paints its snapshots once and sends no fragment request
    that can only fail; when the server answers again, every fragment revalidates."""
    from playwright.sync_api import expect

    page = open_page()
    log_in(page, "ana@example.com")
    controlled(page)
    page.reload()
    name, _ = visit_mine_and_open_first(page)
    time.sleep(0.3)
    page.context.add_init_script(
        "window.__paints = 0; document.addEventListener('inbox:painted', () => { window.__paints += 1; });")
    fragment_requests = []
    page.on("request", lambda r: fragment_requests.append(r.url) if r.headers.get("hx-request") else None)

    server.stop()
    page.reload()
    expect(page.locator("#offline-banner")).to_be_visible(timeout=10_000)
    expect(page.locator("#conversation-pane").get_by_role("heading", name=name)).to_be_visible()
    time.sleep(1.0)  # time for a refresh to be tried, fail and paint again, as it once did
    assert page.evaluate("() => window.__paints") == 1
    assert fragment_requests == []

    server.start()
    expect(page.locator("#offline-banner")).to_be_hidden(timeout=10_000)
    deadline = time.monotonic() + 10
    while not any("/inbox/list" in url for url in fragment_requests) and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    assert any("/inbox/list" in url for url in fragment_requests), fragment_requests
    expect(page.locator("#conversation-list li.row").first).to_be_visible()


def test_reading_offline_pages_tabs_and_conversations_seen_before(open_page, server):
    from playwright.sync_api import expect

    page = open_page()
    log_in(page, "ana@example.com")
    controlled(page)
    page.reload()  # now through the worker: this page is kept
    name, pane = visit_mine_and_open_first(page)
    messages = pane.locator(".msg-body").all_text_contents()
    second = page.locator("#conversation-list li.row").nth(1)
    second_name = second.locator(".name").inner_text()
    never_opened = page.locator("#conversation-list li.row").nth(2).locator(".name").inner_text()
    second.get_by_role("link").click()
    expect(pane.get_by_role("heading", name=second_name)).to_be_visible()
    page.locator("#conversation-list li.row").first.get_by_role("link").click()
    expect(pane.get_by_role("heading", name=name)).to_be_visible()
    time.sleep(0.3)  # the snapshot of the last swap is written after settling

    server.stop()
    page.reload()  # /conversations/<id>?tab=mine was never a navigation: the inbox shell stands in
    banner = page.locator("#offline-banner")
    expect(banner).to_have_text(re.compile(r"^Offline — showing what you saw at \d\d:\d\d$"), timeout=10_000)
    expect(page.locator("#conversation-pane").get_by_role("heading", name=name)).to_be_visible()
    assert page.locator("#conversation-pane .msg-body").all_text_contents() == messages
    expect(tab(page, "Mine")).to_have_attribute("aria-current", "page")
    expect(row(page, second_name)).to_have_count(1)

    row(page, second_name).get_by_role("link").click()  # opened before: from its snapshot
    expect(page.locator("#conversation-pane").get_by_role("heading", name=second_name)).to_be_visible()
    row(page, never_opened).get_by_role("link").click()  # never opened: said plainly
    expect(page.locator("#pane")).to_contain_text("not available offline")

    tab(page, "Pending").click()  # a tab seen before (the inbox's first page was Pending)
    expect(page.locator("#conversation-list li.row").first).to_be_visible()
    expect(banner).to_be_visible()
    tab(page, "Closed").click()  # never seen
    expect(page.locator("#conversation-list")).to_contain_text("not available offline")
    page.goto("/contacts")  # a page never opened: the worker's page, not the browser's error
    expect(page.get_by_role("heading", name=re.compile("Not available offline"))).to_be_visible()

    server.start()
    page.goto("/inbox?tab=mine")
    expect(banner).to_have_count(0)
    expect(page.locator("#conversation-list li.row").first).to_be_visible()


def test_a_reply_sent_offline_is_queued_survives_a_reload_and_is_delivered_once(open_page, server):
    from playwright.sync_api import expect

    page = open_page()
    log_in(page, "ana@example.com")
    controlled(page)
    connected(page)
    name, pane = visit_mine_and_open_first(page)
    text = f"Written on the train {time.time()}"

    server.stop()
    expect(page.locator("#offline-banner")).to_be_visible(timeout=10_000)
    for label in ("Close", "Transfer"):
        button = pane.get_by_role("button", name=label, exact=True)
        if button.count():
            expect(button.first).to_be_disabled()
    box = pane.locator("textarea[data-draft]")
    box.fill(text)
    pane.get_by_role("button", name="Send").click()
    queued = pane.locator(".msg.queued")
    expect(queued).to_have_count(1)
    expect(queued).to_contain_text(text)
    expect(queued).to_contain_text("Queued")
    expect(box).to_have_value("")

    page.reload()  # still offline: the page and the queued reply come back
    pane = page.locator("#conversation-pane")
    expect(pane.locator(".msg.queued")).to_contain_text(text, timeout=10_000)

    server.start()
    expect(pane.locator(".msg.queued")).to_have_count(0, timeout=10_000)
    expect(pane.locator(".msg:not(.queued) .msg-body").filter(has_text=text)).to_have_count(1)
    assert messages_in_db(server, text) == 1
    time.sleep(1.5)  # a second flush, a second tab or a reconnect must not send it again
    assert messages_in_db(server, text) == 1


def test_a_reply_whose_answer_was_lost_is_retried_and_stored_once(open_page, server):
    from playwright.sync_api import expect

    page = open_page()
    log_in(page, "ana@example.com")
    connected(page)
    name, pane = visit_mine_and_open_first(page)
    text = f"Did this arrive? {time.time()}"

    def lose_the_answer(route):
        route.fetch()  # the server stores it and answers...
        route.abort()  # ...and the answer never reaches the browser

    page.route(re.compile(r"/conversations/\d+/messages$"), lose_the_answer, times=1)
    pane.locator("textarea[data-draft]").fill(text)
    pane.get_by_role("button", name="Send").click()
    expect(pane.locator(".msg.queued")).to_contain_text(text)  # no answer: it waits, then goes again
    expect(pane.locator("textarea[data-draft]")).to_have_value("")
    expect(pane.locator(".msg.queued")).to_have_count(0, timeout=10_000)
    expect(pane.locator(".msg-body").filter(has_text=text)).to_have_count(1)
    time.sleep(0.5)
    assert messages_in_db(server, text) == 1


def test_a_queued_reply_refused_meanwhile_keeps_its_text_and_says_why(open_page, server):
    from playwright.sync_api import expect

    page = open_page()
    log_in(page, "ana@example.com")
    controlled(page)
    connected(page)
    name, pane = visit_mine_and_open_first(page)
    conversation_id = int(re.search(r"/conversations/(\d+)", page.url).group(1))
    text = f"Sorry for the wait {time.time()}"

    server.stop()
    expect(page.locator("#offline-banner")).to_be_visible(timeout=10_000)
    pane.locator("textarea[data-draft]").fill(text)
    pane.get_by_role("button", name="Send").click()
    expect(pane.locator(".msg.queued")).to_have_count(1)
    run_domain(server, "    from chat.models import User\n    from chat.extensions import db\n"
                       "    from sqlalchemy import select\n"
                       "    ana = db.session.scalar(select(User).where(User.email == 'ana@example.com'))\n"
                       f"    domain.close_conversation({conversation_id}, ana)\n")
    server.start()
    refused = pane.locator(".msg.queued.refused")
    expect(refused).to_contain_text(text, timeout=10_000)
    expect(refused).to_contain_text(re.compile(r"Not sent: .*closed"))
    assert messages_in_db(server, text) == 0
    refused.get_by_role("button", name="Discard").click()
    expect(pane.locator(".msg.queued")).to_have_count(0)


def test_sign_out_warns_about_queued_replies_and_leaves_nothing_of_the_agent(open_page, server):
    from playwright.sync_api import expect

    page = open_page()
    log_in(page, "ana@example.com")
    controlled(page)
    connected(page)
    ana_conversation, pane = visit_mine_and_open_first(page)
    ana_url, ana_id = page.url, page.evaluate("document.body.dataset.agentId")
    server.stop()
    expect(page.locator("#offline-banner")).to_be_visible(timeout=10_000)
    pane.locator("textarea[data-draft]").fill("queued, then signed out")
    pane.get_by_role("button", name="Send").click()
    expect(pane.locator(".msg.queued")).to_have_count(1)
    pane.locator("textarea[data-draft]").fill("a draft too")
    page.route(re.compile(r"/conversations/\d+/messages$"), lambda route: route.abort())  # keep it queued
    server.start()
    expect(page.locator("#offline-banner")).to_be_hidden(timeout=10_000)

    dialogs = []
    page.once("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/conversations/"))  # dismissed: still here, still queued
    assert dialogs and "not reached the server" in dialogs[0]
    page.once("dialog", lambda d: d.accept())
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/login"))
    page.unroute(re.compile(r"/conversations/\d+/messages$"))
    assert page.evaluate("Object.keys(localStorage).filter(k => k.startsWith('inbox:') || k.startsWith('htmx')).length") == 0
    page.wait_for_function("async (id) => !(await caches.keys()).includes('inbox-pages-' + id)", arg=ana_id)

    log_in(page, "bruno@example.com")
    controlled(page)
    page.reload()
    server.stop()
    page.goto(ana_url)  # Ana's conversation, on Bruno's device, offline
    expect(page.locator("#offline-banner")).to_be_visible(timeout=10_000)
    expect(page.locator("#pane")).to_contain_text("not available offline")
    bruno_id = page.evaluate("document.body.dataset.agentId")
    assert bruno_id != ana_id
    assert page.evaluate("Object.keys(localStorage).filter(k => k.startsWith('inbox:v1:'))") != []
    assert page.evaluate(f"Object.keys(localStorage).filter(k => k.startsWith('inbox:v1:') "
                         f"&& !k.startsWith('inbox:v1:{bruno_id}:'))") == []


def test_a_new_release_replaces_the_shell_cleanly(open_page, server):
    page = open_page()
    log_in(page, "ana@example.com")
    controlled(page)
    first = page.evaluate("async () => (await caches.keys()).filter(n => n.startsWith('inbox-shell-'))")
    assert len(first) == 1
    script = "document.querySelector('script[src*=\"/assets/client.js\"]').getAttribute('src')"
    old_src = page.evaluate(script)
    server.stop()
    server.env["RELEASE"] = f"test-{time.time()}"  # a deploy: another release of the shell
    try:
        server.start()
        page.reload()
        page.wait_for_function("""async (old) => {
            const shells = (await caches.keys()).filter(n => n.startsWith('inbox-shell-'));
            return shells.length === 1 && shells[0] !== old;
        }""", arg=first[0], timeout=15_000)
        page.reload()
        assert page.evaluate(script) != old_src  # the page runs the new release's client
        assert page.evaluate("typeof window.Inbox.outbox.flush") == "function"
    finally:
        server.stop()
        server.env.pop("RELEASE", None)
        server.start()
