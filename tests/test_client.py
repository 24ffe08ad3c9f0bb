"""The agent's browser never loses work: drafts, the list's place, honest status, one identity.

Each test drives the page as an agent does (typing, wheel-scrolling, clicking) against a live
gunicorn, on the embedded default and with Redis, and reproduces a defect the client had:
a push, a reload or a refused send erased the reply being typed; the list never loaded page 2
and a live update threw the loaded rows and the scroll position away; one failed request
left the page "offline"; signing out in one tab left the other showing the agent's customers.
"""
from __future__ import annotations

import re
import time

import pytest

from tests.live import embedded_and_redis, log_in, new_page, row, tab

LIVE_MS = 2_000
DRAFT = "Thanks for waiting, I am checking your order right now"


# 160 conversations: an admin's "All" tab holds four pages of 50.
server = embedded_and_redis("client", seed=("--agents", "3", "--conversations", "160", "--messages", "480"))


@pytest.fixture
def open_page(browser, server):
    """open_page(context=None, viewport=None) -> a page; fails the test on any browser error
    except those the test causes on purpose (page.expect_console_error(pattern))."""
    contexts, errors, expected = [], [], []

    def _open(context=None, viewport=None):
        if context is None:
            page = new_page(browser, server.base, errors)
            if viewport:
                page.set_viewport_size(viewport)
            contexts.append(page.context)
        else:
            page = context.new_page()  # another tab of the same browser: same cookies and storage
            page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
        page.expect_console_error = lambda pattern: expected.append(re.compile(pattern))
        return page

    yield _open
    for context in contexts:
        context.close()
    unexpected = [e for e in errors if not any(p.search(e) for p in expected)]
    assert not unexpected, "the browser reported errors:\n" + "\n".join(unexpected)


def connected(page) -> None:
    page.wait_for_function("() => window.__inboxSocketConnected === true", timeout=5_000)


def open_first(page, tab_name: str):
    """Open the first conversation of a tab by clicking it; returns its pane."""
    from playwright.sync_api import expect

    tab(page, tab_name).click()
    first = page.locator("#conversation-list li.row").first
    expect(first).to_be_visible()
    first.get_by_role("link").click()
    pane = page.locator("#conversation-pane")
    expect(pane.locator("textarea[data-draft]")).to_be_visible()
    return pane


def phone_of(pane) -> str:
    return re.search(r"\+\d+", pane.locator(".conversation-head .muted").inner_text()).group(0)


def test_draft_survives_a_push_to_the_open_conversation_and_a_reload(open_page, server):
    from playwright.sync_api import expect

    page = open_page()
    log_in(page, "ana@example.com")
    connected(page)
    pane = open_first(page, "Mine")
    box = pane.locator("textarea[data-draft]")
    box.click()
    page.keyboard.type(DRAFT)
    page.keyboard.press("Home")  # the caret in the middle of a line the agent is editing
    for _ in range(6):
        page.keyboard.press("ArrowRight")

    # The customer writes meanwhile: the push refreshes the open pane.
    before = pane.locator(".msg").count()
    server.inbound(phone=phone_of(pane), body="Hello? Are you still there?", external_id=f"draft-{time.time()}")
    expect(pane.locator(".msg-body").last).to_have_text("Hello? Are you still there?", timeout=LIVE_MS)
    assert pane.locator(".msg").count() == before + 1
    expect(box).to_have_value(DRAFT)
    expect(box).to_be_focused()
    assert box.evaluate("b => [b.selectionStart, b.selectionEnd]") == [6, 6]
    page.keyboard.type("X")  # typing goes on where the caret was
    expect(box).to_have_value(DRAFT[:6] + "X" + DRAFT[6:])

    page.reload()
    expect(page.locator("#conversation-pane textarea[data-draft]")).to_have_value(DRAFT[:6] + "X" + DRAFT[6:])


def test_a_sent_reply_clears_its_draft_and_keeps_focus_in_the_box(open_page):
    from playwright.sync_api import expect

    page = open_page()
    log_in(page, "ana@example.com")
    pane = open_first(page, "Mine")
    box = pane.locator("textarea[data-draft]")
    box.click()
    page.keyboard.type("On its way!")
    pane.get_by_role("button", name="Send").click()
    expect(pane.locator(".msg-body").last).to_have_text("On its way!")
    expect(box).to_have_value("")
    page.reload()
    expect(page.locator("#conversation-pane textarea[data-draft]")).to_have_value("")


def test_a_reply_over_the_limit_is_refused_whole_and_kept(open_page):
    from playwright.sync_api import expect

    page = open_page()
    log_in(page, "ana@example.com")
    pane = open_first(page, "Mine")
    box = pane.locator("textarea[data-draft]")
    limit = int(box.get_attribute("data-max-length"))
    box.fill("a" * (limit + 10))  # a paste: nothing may be cut silently
    counter = pane.locator(".reply-count")
    expect(counter).to_have_text(f"{limit + 10:,} / {limit:,} — too long to send")
    sent = []
    page.on("request", lambda r: r.method == "POST" and "/messages" in r.url and sent.append(r.url))
    pane.get_by_role("button", name="Send").click()
    time.sleep(0.3)
    assert sent == []
    expect(box).to_have_value("a" * (limit + 10))
    box.press("End")
    for _ in range(10):
        box.press("Backspace")
    expect(counter).not_to_have_class(re.compile(r"\bover\b"))


def test_a_failed_send_shows_why_next_to_it_keeps_the_draft_and_the_page_usable(open_page):
    from playwright.sync_api import expect

    page = open_page()
    log_in(page, "ana@example.com")
    connected(page)
    pane = open_first(page, "Mine")
    box = pane.locator("textarea[data-draft]")
    box.click()
    page.keyboard.type(DRAFT)

    # Answered 500: the server is there but failed; say so next to Send, keep the text.
    page.expect_console_error(r"ERR_FAILED|status of 500|Error Code 500")
    page.route(re.compile(r"/conversations/\d+/messages$"),
               lambda route: route.fulfill(status=500, body="boom"), times=1)
    pane.get_by_role("button", name="Send").click()
    error = pane.locator(".reply .request-error")
    expect(error).to_have_text(re.compile(r"error 500"))
    expect(box).to_have_value(DRAFT)
    expect(page.locator("#offline-banner")).to_have_count(0)
    for button in page.locator("[data-needs-server]").all():
        expect(button).to_be_enabled()

    # Aborted on the way (a flaky network): not "offline", not lost; it waits in the outbox
    # and goes out by itself as the server answers.
    page.route(re.compile(r"/conversations/\d+/messages$"), lambda route: route.abort(), times=1)
    pane.get_by_role("button", name="Send").click()
    expect(page.locator("#offline-banner")).to_have_count(0)
    expect(pane.locator(".msg-body").filter(has_text=DRAFT)).to_have_count(1)
    expect(pane.locator(".msg.queued")).to_have_count(0, timeout=5_000)  # delivered
    expect(pane.locator(".msg:not(.queued) .msg-body").last).to_have_text(DRAFT)
    expect(box).to_have_value("")
    for button in page.locator("[data-needs-server]").all():
        expect(button).to_be_enabled()


def test_sending_shows_a_sending_state(open_page):
    from playwright.sync_api import expect

    page = open_page()
    log_in(page, "ana@example.com")
    pane = open_first(page, "Mine")
    pane.locator("textarea[data-draft]").fill("Slow network today")

    held = []  # the request waits on the network until the test lets it go
    page.route(re.compile(r"/conversations/\d+/messages$"), lambda route: held.append(route), times=1)
    pane.get_by_role("button", name="Send").click()
    busy = pane.get_by_role("button", name="Sending…")
    expect(busy).to_be_visible()
    expect(busy).to_be_disabled()
    held[0].continue_()
    expect(pane.get_by_role("button", name="Send")).to_be_enabled()
    expect(pane.locator(".msg-body").last).to_have_text("Slow network today")


@pytest.mark.parametrize("viewport", [{"width": 1366, "height": 800}, {"width": 390, "height": 844}],
                         ids=["desktop", "mobile"])
def test_scrolling_loads_more_and_a_live_update_keeps_rows_and_place(open_page, server, viewport):
    from playwright.sync_api import expect

    page = open_page(viewport=viewport)
    log_in(page, "admin@example.com")
    connected(page)
    tab(page, "All").click()
    rows = page.locator("#conversation-list li.row")
    expect(rows).to_have_count(50)
    rows.first.hover()
    for expected in (100, 150):  # wheel down until "Loading more…" comes into view, twice
        for _ in range(60):
            if rows.count() >= expected:
                break
            page.mouse.wheel(0, 1500)
            time.sleep(0.05)
        expect(rows).to_have_count(expected)
    page.mouse.wheel(0, -2000)  # read somewhere in the middle of what is loaded
    time.sleep(0.3)
    place = page.eval_on_selector("#conversation-list", "l => l.scrollTop")
    assert place > 1000
    shown = rows.count()

    # Its own name: the other viewport's run may have left one in this server's All tab.
    name = f"Arrived While Scrolled {viewport['width']}x{viewport['height']} {int(time.time() * 1000)}"
    server.inbound(phone=f"+55119{int(time.time() * 1000) % 10**8:08d}", name=name,
                   body="hi", external_id=f"scroll-{time.time()}-{viewport['width']}")
    expect(row(page, name)).to_have_count(1, timeout=LIVE_MS)
    assert rows.count() >= shown  # every loaded page is still there
    assert abs(page.eval_on_selector("#conversation-list", "l => l.scrollTop") - place) < 150


def test_search_and_department_live_in_the_url_and_survive_tab_switches(open_page):
    from playwright.sync_api import expect

    page = open_page()
    log_in(page, "admin@example.com")
    tab(page, "All").click()
    first_name = page.locator("#conversation-list li.row .name").first.inner_text()
    page.get_by_label("Search by contact name or phone").fill(first_name)
    expect(page).to_have_url(re.compile(r"[?&]q=" + re.escape(first_name.split()[0])))
    expect(page.locator("#conversation-list li.row .name").first).to_have_text(first_name)
    tab(page, "Closed").click()
    expect(page).to_have_url(re.compile(r"tab=closed"))
    expect(page.get_by_label("Search by contact name or phone")).to_have_value(first_name)
    page.reload()
    expect(page.get_by_label("Search by contact name or phone")).to_have_value(first_name)


def test_sign_out_in_one_tab_sends_the_other_to_sign_in_and_keeps_nothing(open_page, server):
    from playwright.sync_api import expect

    first = open_page()
    log_in(first, "ana@example.com")
    second = open_page(context=first.context)
    second.goto("/inbox?tab=mine")
    connected(second)
    expect(second.locator("#conversation-list li.row").first).to_be_visible()
    second.locator("#conversation-list li.row").first.get_by_role("link").click()
    second.locator("#conversation-pane textarea[data-draft]").fill("a draft that must not outlive the session")

    first.get_by_role("button", name="Sign out").click()
    expect(first).to_have_url(re.compile(r"/login"))
    expect(second).to_have_url(re.compile(r"/login"), timeout=2_000)
    assert second.evaluate("Object.keys(localStorage).filter(k => k.startsWith('inbox:')).length") == 0

    # Another agent signs in in tab 1: tab 2 shows nothing of Ana, and follows on reload.
    log_in(first, "bruno@example.com")
    second.reload()
    expect(second).to_have_url(re.compile(r"/inbox"))
    assert second.evaluate("document.body.dataset.agentId") == first.evaluate("document.body.dataset.agentId")


def test_a_fragment_whose_session_ended_sends_the_page_to_sign_in_not_a_form_into_the_list(open_page, server):
    from playwright.sync_api import expect

    page = open_page()
    log_in(page, "bruno@example.com")
    connected(page)
    page.context.clear_cookies()  # the session is gone; the socket has not noticed yet
    page.expect_console_error(r"status of 401")
    page.locator("#conversation-list li.row").first.get_by_role("link").click()  # an htmx request
    expect(page).to_have_url(re.compile(r"/login"), timeout=LIVE_MS)
    expect(page.locator("form.login")).to_have_count(1)  # one login form, the page's own


def test_a_graceful_stop_shows_the_banner_within_2s_and_it_clears_within_2s_of_the_restart(open_page, server):
    from playwright.sync_api import expect

    page = open_page()
    page.expect_console_error(r"ERR_CONNECTION_REFUSED|ERR_CONNECTION_RESET|Failed to load resource")
    log_in(page, "ana@example.com")
    connected(page)
    banner = page.locator("#offline-banner")
    stopping = time.monotonic()
    try:
        server.stop(graceful=True)  # returns once gunicorn has exited
        expect(banner).to_be_visible(timeout=max(100, int(2_000 - (time.monotonic() - stopping) * 1000)))
        for button in page.locator("[data-needs-server]").all():
            expect(button).to_be_disabled()
    finally:
        server.start()  # returns once the server answers
    expect(banner).to_be_hidden(timeout=2_000)
    connected(page)


def test_a_live_update_at_the_top_of_a_long_list_keeps_the_new_row(open_page, server):
    """A morph must not hand one element's htmx behaviour to another: the "Loading more…"
    sentinel once became the new top row and swapped it for page 2 as soon as it was seen."""
    from playwright.sync_api import expect

    page = open_page()
    log_in(page, "admin@example.com")
    connected(page)
    tab(page, "All").click()
    rows = page.locator("#conversation-list li.row")
    expect(rows).to_have_count(50)
    expect(page.locator("#conversation-list li.more")).to_have_count(1)
    connected(page)  # the tab is a new page: its socket, not the first one's, must hear the change
    server.inbound(phone=f"+55118{int(time.time() * 1000) % 10**8:08d}", name="Arrived At The Top",
                   body="hello", external_id=f"top-{time.time()}")
    expect(rows.first.locator(".name")).to_have_text("Arrived At The Top", timeout=LIVE_MS)
    time.sleep(1)  # long enough for a stale "load more" to fire and swap
    expect(rows.first.locator(".name")).to_have_text("Arrived At The Top")
    expect(rows).to_have_count(50)


def test_switching_conversations_never_acts_on_the_one_shown_before(open_page, server):
    """Two pending conversations opened one after the other: Accept accepts the one on screen."""
    from playwright.sync_api import expect

    page = open_page()
    log_in(page, "ana@example.com")
    stamp = int(time.time() * 1000) % 10**7
    first = server.inbound(phone=f"+551197{stamp:07d}", name="First Pending", body="one", external_id=f"p1-{stamp}")
    second = server.inbound(phone=f"+551196{stamp:07d}", name="Second Pending", body="two", external_id=f"p2-{stamp}")
    page.reload()
    row(page, "First Pending").get_by_role("link").click()
    pane = page.locator("#conversation-pane")
    expect(pane.get_by_role("heading", name="First Pending")).to_be_visible()
    row(page, "Second Pending").get_by_role("link").click()
    expect(pane.get_by_role("heading", name="Second Pending")).to_be_visible()
    posts = []
    page.on("request", lambda r: r.method == "POST" and posts.append(r.url))
    pane.get_by_role("button", name="Accept").click()
    expect(pane.locator(".status")).to_have_text("active")
    time.sleep(0.3)
    assert [u for u in posts if "/accept" in u] == [f"{server.base}/conversations/{second}/accept"]
    assert str(first) not in page.url


def test_a_message_arriving_keeps_older_messages_loaded_and_the_place_being_read(open_page, server):
    """Reading back through a long conversation: a new message used to refresh the pane with its
    newest page only, dropping what "Load older messages" brought and jumping to the bottom."""
    from playwright.sync_api import expect

    stamp = int(time.time() * 1000) % 10**7
    phone, name = f"+551195{stamp:07d}", f"Long Story {stamp}"
    for n in range(1, 71):  # 70 messages: the newest 50 open, 20 more behind "Load older"
        server.inbound(phone=phone, name=name, body=f"part {n}", external_id=f"long-{stamp}-{n}")
    page = open_page()
    log_in(page, "ana@example.com")
    connected(page)
    row(page, name).get_by_role("link").click()
    pane = page.locator("#conversation-pane")
    bodies = pane.locator(".msg-body")
    expect(bodies).to_have_count(50)
    expect(bodies.last).to_have_text("part 70")
    expect(bodies.last).to_be_in_viewport()  # opens at the newest message

    pane.locator("#messages").hover()
    older = pane.get_by_role("button", name="Load older messages")
    for _ in range(40):  # wheel up to the top, as an agent reads back
        if older.is_visible() and older.evaluate("b => b.getBoundingClientRect().top >= 0"):
            break
        page.mouse.wheel(0, -600)
        time.sleep(0.05)
    older.click()
    expect(bodies).to_have_count(70)
    expect(bodies.first).to_have_text("part 1")
    pane.locator("#messages").hover()
    for _ in range(40):
        if page.eval_on_selector("#messages", "m => m.scrollTop") == 0:
            break
        page.mouse.wheel(0, -600)
        time.sleep(0.05)
    place = page.eval_on_selector("#messages", "m => m.scrollTop")
    expect(bodies.first).to_be_in_viewport()

    server.inbound(phone=phone, name=name, body="part 71", external_id=f"long-{stamp}-71")
    expect(bodies.last).to_have_text("part 71", timeout=LIVE_MS)
    expect(bodies).to_have_count(71)  # what "Load older" brought is still there
    assert abs(page.eval_on_selector("#messages", "m => m.scrollTop") - place) < 50  # still reading
    expect(bodies.first).to_be_in_viewport()
    expect(bodies.last).not_to_be_in_viewport()

    for _ in range(60):  # back down to the newest: a new message then comes into view
        if page.eval_on_selector("#messages", "m => m.scrollHeight - m.scrollTop - m.clientHeight") < 5:
            break
        page.mouse.wheel(0, 800)
        time.sleep(0.05)
    server.inbound(phone=phone, name=name, body="part 72", external_id=f"long-{stamp}-72")
    expect(bodies.last).to_have_text("part 72", timeout=LIVE_MS)
    expect(bodies.last).to_be_in_viewport()
    expect(bodies).to_have_count(72)
