"""The browser shim against a live server, with Socket.IO on its real transport, on the
embedded default and with Redis: live updates, snapshots, offline reading, logout."""
from __future__ import annotations

import re
import time

import pytest

from tests.live import embedded_and_redis, http, log_in, new_page, row

FRAGMENTS = re.compile(r"/(inbox/list|inbox/counts|conversations/\d+)(\?|$|/messages)")
LIVE_MS = 1_000  # "within a blink"


server = embedded_and_redis("shim", seed=("--agents", "3", "--conversations", "30", "--messages", "120"))


@pytest.fixture
def open_page(browser, server):
    """open_page() -> a page in a context of its own; fails the test on any browser error."""
    pages, errors = [], []

    def _open():
        page = new_page(browser, server.base, errors)
        page.fragment_requests = []
        page.on("request", lambda r: FRAGMENTS.search(r.url) and page.fragment_requests.append(r.url))
        pages.append(page)
        return page

    yield _open
    for page in pages:
        page.context.close()
    assert not errors, "the browser reported errors:\n" + "\n".join(errors)


def connected(page) -> None:
    """Wait until the shim's socket is connected (its first event cannot be missed)."""
    page.wait_for_function("() => window.__inboxSocketConnected === true", timeout=5_000)


def test_webhook_message_and_accept_reach_both_agents_live(open_page, server):
    from playwright.sync_api import expect

    ana, bruno = open_page(), open_page()
    log_in(ana, "ana@example.com")
    log_in(bruno, "bruno@example.com")
    connected(ana)
    connected(bruno)
    ana.fragment_requests.clear()
    bruno.fragment_requests.clear()

    cid = server.inbound(phone="+5511955501234", name="Live Wire", body="Is anyone there?",
                         external_id=f"live-{time.time()}")
    expect(row(ana, "Live Wire")).to_have_count(1, timeout=LIVE_MS)
    expect(row(bruno, "Live Wire")).to_have_count(1, timeout=LIVE_MS)
    time.sleep(0.3)  # let any extra (wrong) refetch show up before counting
    for page in (ana, bruno):
        paths = {re.sub(r"\?.*", "", u.split("//", 1)[1].split("/", 1)[1]) for u in page.fragment_requests}
        assert paths <= {"inbox/list", "inbox/counts"}, page.fragment_requests
        assert 1 <= len(page.fragment_requests) <= 2, page.fragment_requests

    bruno.fragment_requests.clear()
    row(ana, "Live Wire").get_by_role("link").click()
    ana.locator("#conversation-pane").get_by_role("button", name="Accept").click()
    expect(ana.locator("#conversation-pane .status")).to_have_text("active")
    expect(row(bruno, "Live Wire")).to_have_count(0, timeout=LIVE_MS)
    time.sleep(0.3)
    assert all("/conversations/" not in u for u in bruno.fragment_requests), bruno.fragment_requests
    assert str(cid) in ana.url


def test_reload_with_nothing_changed_paints_from_snapshot_without_requests(open_page):
    from playwright.sync_api import expect

    page = open_page()
    log_in(page, "bruno@example.com")
    expect(page.locator("#conversation-list li.row").first).to_be_visible()
    names = page.locator("#conversation-list li.row .name").all_text_contents()
    page.fragment_requests.clear()
    # Hold every fragment request back: whatever shows now comes from the snapshot.
    page.route(FRAGMENTS, lambda route: None)
    page.reload()
    expect(page.locator("#conversation-list li.row").first).to_be_visible()
    assert page.locator("#conversation-list li.row .name").all_text_contents() == names
    expect(page.locator("[data-placeholder]")).to_have_count(0)
    time.sleep(0.5)
    assert page.fragment_requests == []


def test_offline_banner_then_catch_up_on_reconnect(open_page, server):
    from playwright.sync_api import expect

    page = open_page()
    log_in(page, "ana@example.com")
    connected(page)
    first = page.locator("#conversation-list li.row").first
    expect(first).to_be_visible()
    first.get_by_role("link").click()
    expect(page.locator("#conversation-pane")).to_be_visible()

    server.stop()
    banner = page.locator("#offline-banner")
    expect(banner).to_be_visible(timeout=10_000)
    expect(banner).to_have_text(re.compile(r"^Offline — showing what you saw at \d\d:\d\d$"))
    expect(page.locator("#conversation-list li.row").first).to_be_visible()  # still readable
    for button in page.locator("[data-needs-server]").all():
        expect(button).to_be_disabled()

    server.start()
    # Sent while this browser was away: its event is lost; revalidation on reconnect finds it.
    server.inbound(phone="+5511955509999", name="Missed While Away", body="did you get this?",
                   external_id=f"away-{time.time()}")
    expect(banner).to_be_hidden(timeout=15_000)
    expect(row(page, "Missed While Away")).to_have_count(1, timeout=5_000)
    for button in page.locator("[data-needs-server]").all():
        expect(button).to_be_enabled()


def test_logout_clears_snapshots_and_the_next_agent_sees_none(open_page):
    from playwright.sync_api import expect

    page = open_page()
    log_in(page, "ana@example.com")
    expect(page.locator("#conversation-list li.row").first).to_be_visible()
    agent_id = page.evaluate("document.body.dataset.agentId")
    page.wait_for_function("() => Object.keys(localStorage).some(k => k.startsWith('inbox:'))")
    assert page.evaluate(f"Object.keys(localStorage).filter(k => k.startsWith('inbox:v1:{agent_id}:')).length") > 0
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/login"))
    assert page.evaluate("Object.keys(localStorage).filter(k => k.startsWith('inbox:')).length") == 0
    log_in(page, "bruno@example.com")
    bruno_id = page.evaluate("document.body.dataset.agentId")
    page.wait_for_function("() => Object.keys(localStorage).some(k => k.startsWith('inbox:'))")
    keys = page.evaluate("Object.keys(localStorage)")
    assert keys and all(k.startswith(f"inbox:v1:{bruno_id}:") for k in keys if k.startswith("inbox:"))


def test_unauthenticated_socket_is_refused(server):
    import socketio

    client = socketio.Client(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect(server.base, transports=["polling"], wait_timeout=5)
    assert not client.connected
    assert http().get(f"{server.base}/login").status_code == 200  # the server is fine


def test_full_local_storage_evicts_the_oldest_snapshot(open_page):
    from playwright.sync_api import expect

    page = open_page()
    log_in(page, "ana@example.com")
    expect(page.locator("#conversation-list li.row").first).to_be_visible()
    # Fill the origin's storage to the brim with one old snapshot of another agent.
    page.evaluate("""() => {
        const record = (n) => JSON.stringify({html: "x".repeat(n), etag: "", at: 1});
        // Chromium keeps about 5 M characters per origin: one big old snapshot, then padding.
        for (let size = 5_200_000; size > 0; size -= 200_000) {
            try { localStorage.setItem("inbox:v1:999:old", record(size)); break; } catch (e) { /* smaller */ }
        }
        for (let i = 0; i < 2000; i++) {
            try { localStorage.setItem("inbox:v1:999:pad" + i, JSON.stringify({html: "", at: 2 + i})); }
            catch (e) { break; }
        }
    }""")
    page.goto("/inbox?tab=closed")  # a fragment never saved before
    expect(page.locator("#conversation-list li.row").first).to_be_visible()
    page.wait_for_function(
        "() => Object.keys(localStorage).some(k => k.includes(':tab:closed|'))", timeout=5_000)
    assert page.evaluate("localStorage.getItem('inbox:v1:999:old')") is None  # the oldest went first


def test_offline_banner_screenshot(open_page, server, request):
    """CHAT_SCREENSHOTS=1 refreshes docs/offline.png, the README's picture of the banner."""
    import os

    from playwright.sync_api import expect

    from tests.live import ROOT

    if os.environ.get("CHAT_SCREENSHOTS") != "1" or server.redis_url:
        return
    page = open_page()
    log_in(page, "ana@example.com")
    connected(page)
    page.locator("#tabs").get_by_role("link", name=re.compile(r"^\s*Mine")).click()
    page.locator("#conversation-list li.row").first.get_by_role("link").click()
    expect(page.locator("#conversation-pane .reply")).to_be_visible()
    server.stop()
    try:
        expect(page.locator("#offline-banner")).to_be_visible(timeout=10_000)
        page.mouse.move(0, 0)
        page.screenshot(path=str(ROOT / "docs" / "offline.png"))
    finally:
        server.start()


def test_a_socket_refused_for_an_ended_session_leads_to_sign_in(open_page, server):
    """Not 'offline': the server is there but the session is gone, so say sign in."""
    from playwright.sync_api import expect

    page = open_page()
    log_in(page, "bruno@example.com")
    connected(page)
    page.context.clear_cookies()  # the session ends (expired, or signed out elsewhere)
    server.stop()
    server.start()  # the socket reconnects, now without a session, and is refused
    expect(page).to_have_url(re.compile(r"/login\?next="), timeout=15_000)
