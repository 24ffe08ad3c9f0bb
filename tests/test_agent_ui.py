"""What an agent at the keyboard, on a phone, or in another window observes (issue 8):
focus follows the work, a 390 px screen fits, and new work gets noticed."""
from __future__ import annotations

import re
import time

import pytest

from tests.conftest import REDIS_URL, redis_client
from tests.live import LiveServer, log_in, new_page, row, tab

PHONE = {"width": 390, "height": 844}
LONG_NAME = "Maximiliana" * 5 + "Ferreirass"  # 60 characters, not one space
LIVE_MS = 2_000


def seeded_server(tmp_path_factory, name: str, redis_url: str | None = None) -> LiveServer:
    live = LiveServer(tmp_path_factory.mktemp(name), redis_url=redis_url,
                      seed=("--agents", "3", "--conversations", "90", "--messages", "300"))
    live.start()
    return live


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = seeded_server(tmp_path_factory, "agent-ui")
    yield live
    live.cleanup()


@pytest.fixture(scope="module", params=["embedded", "redis"])
def live_server(request, server, tmp_path_factory):
    """The embedded server, and one with Redis as cache and Socket.IO queue: for live updates."""
    if request.param == "embedded":
        yield server
        return
    redis_client()
    live = seeded_server(tmp_path_factory, "agent-ui-redis", REDIS_URL)
    yield live
    live.cleanup()


@pytest.fixture
def open_page(browser):
    """open_page(server, viewport=None, init_script=None) -> a page in a context of its own."""
    pages, errors = [], []

    def _open(live: LiveServer, viewport: dict | None = None, permissions=(), init_script: str | None = None):
        page = new_page(browser, live.base, errors)
        if viewport:
            page.set_viewport_size(viewport)
        if permissions:
            page.context.grant_permissions(list(permissions), origin=live.base)
        if init_script:
            page.context.add_init_script(init_script)
        pages.append(page)
        return page

    yield _open
    for page in pages:
        page.context.close()
    assert not errors, "the browser reported errors:\n" + "\n".join(errors)


def focused(page) -> str:
    """A short description of the focused element: tag, id, classes and text."""
    return page.evaluate("""() => {
        const el = document.activeElement;
        return `${el.tagName.toLowerCase()}#${el.id}.${el.className} ${(el.textContent || '').trim().slice(0, 40)}`;
    }""")


def tabs_until(page, target, limit: int) -> int:
    """Press Tab until `target` (a locator) has focus, at most `limit` times; return how many."""
    for presses in range(1, limit + 1):
        page.keyboard.press("Tab")
        if target.evaluate("el => el === document.activeElement"):
            return presses
    pytest.fail(f"not reached in {limit} Tabs; focus is on {focused(page)!r}")


def connected(page) -> None:
    page.wait_for_function("() => window.__inboxSocketConnected === true", timeout=5_000)


# -- 1. keyboard ---------------------------------------------------------------------------------

def test_first_tab_on_the_inbox_reaches_the_skip_link(open_page, server):
    from playwright.sync_api import expect

    page = open_page(server)
    log_in(page, "ana@example.com")
    skip = page.get_by_role("link", name="Skip to conversation list")
    expect(skip).not_to_be_in_viewport()  # hidden until focused
    page.keyboard.press("Tab")
    expect(skip).to_be_focused()
    expect(skip).to_be_in_viewport()
    page.keyboard.press("Enter")
    expect(page.locator("#conversation-list li.row a").first).to_be_focused()


def test_keyboard_open_accept_send_and_escape_transfer(open_page, server):
    from playwright.sync_api import expect

    server.inbound(phone="+5511977700001", name="Kim Keyboard", body="Can a keyboard help me?",
                   external_id=f"kbd-{time.time()}")
    page = open_page(server)
    log_in(page, "ana@example.com")
    expect(page.locator("#conversation-list li.row")).not_to_have_count(0)
    assert page.locator("#conversation-list li.row").count() > 5  # Accept is far away in tab order

    page.wait_for_load_state("load")  # htmx has taken over the links
    row(page, "Kim Keyboard").get_by_role("link").focus()
    page.keyboard.press("Enter")
    pane = page.locator("#conversation-pane")
    expect(pane.get_by_role("heading", name="Kim Keyboard")).to_be_focused()  # in the pane now
    accept = pane.get_by_role("button", name="Accept")
    tabs_until(page, accept, limit=5)

    page.keyboard.press("Enter")
    expect(pane.locator(".status")).to_have_text("active")
    reply = pane.locator(".reply textarea")
    expect(reply).to_be_focused()

    page.keyboard.type("Typed without a mouse")
    tabs_until(page, pane.locator(".reply button[type=submit]"), limit=5)
    page.keyboard.press("Enter")
    expect(page.locator("#messages .msg.out").last).to_have_text(re.compile("Typed without a mouse"))
    expect(reply).to_be_focused()
    expect(reply).to_have_value("")

    transfer = pane.locator("details.transfer")
    pane.locator("details.transfer summary").focus()
    page.keyboard.press("Enter")
    expect(transfer).to_have_attribute("open", "")
    page.keyboard.press("Tab")  # into the menu: the agent select
    page.keyboard.press("Escape")
    expect(transfer).not_to_have_attribute("open", "")
    expect(pane.locator("details.transfer summary")).to_be_focused()


# -- 2. a phone ----------------------------------------------------------------------------------

def page_width(page) -> int:
    return page.evaluate("() => document.documentElement.scrollWidth")


def test_a_phone_shows_the_list_or_the_conversation_and_a_long_name_fits(open_page, server):
    from playwright.sync_api import expect

    server.inbound(phone="+5511977700002", name=LONG_NAME, body="Does my name fit?",
                   external_id=f"long-{time.time()}")
    page = open_page(server, viewport=PHONE)
    log_in(page, "ana@example.com")
    target = row(page, LONG_NAME)
    expect(target).to_be_visible()
    assert page_width(page) <= PHONE["width"]
    expect(page.locator("#pane")).to_be_hidden()  # nothing open: the list has the screen
    for name in ("Pending", "Mine", "Closed", "All"):
        expect(tab(page, name)).to_be_in_viewport(ratio=1)
    name = target.locator(".name")
    assert name.evaluate("el => el.scrollWidth > el.clientWidth"), "the name should be cut with an ellipsis"

    target.get_by_role("link").click()
    pane = page.locator("#conversation-pane")
    expect(pane.get_by_role("heading", name=LONG_NAME)).to_be_visible()
    expect(page.locator(".list-column")).to_be_hidden()  # the conversation has the screen
    assert page_width(page) <= PHONE["width"]
    for button in ("Accept",):
        expect(pane.get_by_role("button", name=button)).to_be_in_viewport(ratio=1)
    expect(pane.locator("details.transfer summary")).to_be_in_viewport(ratio=1)

    pane.get_by_role("button", name="Accept").click()
    expect(pane.locator(".status")).to_have_text("active")
    assert page_width(page) <= PHONE["width"]
    for control in (pane.get_by_role("button", name="Close"), pane.locator("details.transfer summary"),
                    pane.get_by_role("button", name="Send")):
        expect(control).to_be_in_viewport(ratio=1)

    back = pane.get_by_role("link", name="← Conversations")
    expect(back).to_be_visible()
    back.click()
    expect(page).to_have_url(re.compile(r"/inbox\?tab=pending$"))
    expect(page.locator("#conversation-list")).to_be_visible()
    expect(page.locator("#pane")).to_be_hidden()
    assert page_width(page) <= PHONE["width"]


def test_back_to_list_is_hidden_on_a_wide_screen(open_page, server):
    from playwright.sync_api import expect

    page = open_page(server)
    log_in(page, "ana@example.com")
    tab(page, "Mine").click()
    page.locator("#conversation-list li.row a").first.click()
    expect(page.locator("#conversation-pane h2")).to_be_visible()
    expect(page.locator(".back-to-list")).to_be_hidden()
    expect(page.locator(".list-column")).to_be_visible()


def test_back_to_list_returns_to_the_tab_it_came_from(open_page, server):
    from playwright.sync_api import expect

    page = open_page(server, viewport=PHONE)
    log_in(page, "ana@example.com")
    tab(page, "Mine").click()
    page.locator("#conversation-list li.row a").first.click()
    page.get_by_role("link", name="← Conversations").click()
    expect(page).to_have_url(re.compile(r"/inbox\?tab=mine$"))
    expect(tab(page, "Mine")).to_have_attribute("aria-current", "page")


# -- 3. new work is noticed -----------------------------------------------------------------------

# Records each desktop notification, then lets the real one through: the product is not stubbed.
RECORD_NOTIFICATIONS = """
(() => {
  if (!window.Notification) return;
  const Real = window.Notification;
  window.__notifications = [];
  window.Notification = function (title, options) {
    window.__notifications.push({ title, body: (options || {}).body || "" });
    return new Real(title, options);
  };
  Object.defineProperty(window.Notification, "permission", { get: () => Real.permission });
  window.Notification.requestPermission = Real.requestPermission.bind(Real);
  window.Notification.prototype = Real.prototype;
})();
"""


def pending_count(page) -> int:
    return int(tab(page, "Pending").locator(".count").inner_text())


def test_new_conversation_shows_in_title_glows_and_notifies(open_page, live_server):
    from playwright.sync_api import expect

    page = open_page(live_server, permissions=["notifications"], init_script=RECORD_NOTIFICATIONS)
    log_in(page, "ana@example.com")
    connected(page)
    before = pending_count(page)
    expect(page).to_have_title(f"({before}) Inbox · Support inbox")
    old_row = page.locator("#conversation-list li.row").first
    expect(old_row).not_to_have_class(re.compile(r"\bis-new\b"))  # nothing glows on first paint
    expect(page.get_by_role("button", name="Notify me")).to_have_count(0)  # already granted

    name = f"Nina New {int(time.time() * 1000) % 100000}"
    live_server.inbound(phone=f"+55119{int(time.time() * 1000) % 10**8:08d}", name=name,
                        body="I just wrote in", external_id=f"new-{time.time()}")
    fresh = row(page, name)
    expect(fresh).to_have_count(1, timeout=LIVE_MS)
    expect(fresh).to_have_class(re.compile(r"\bis-new\b"))
    expect(page.locator("#conversation-list li.row.is-new")).to_have_count(1)
    expect(page).to_have_title(f"({before + 1}) Inbox · Support inbox", timeout=LIVE_MS)
    page.wait_for_function("() => window.__notifications.length > 0")
    notes = page.evaluate("() => window.__notifications")
    assert [n["title"] for n in notes] == [name], notes

    page.reload()  # painted from the snapshot saved while the row glowed: nothing is new now
    assert page.evaluate("() => document.querySelectorAll('#conversation-list li.row.is-new').length") == 0
    expect(page).to_have_title(f"({before + 1}) Inbox · Support inbox")


def test_notify_me_asks_for_permission_from_a_click(open_page, server):
    from playwright.sync_api import expect

    page = open_page(server)
    log_in(page, "ana@example.com")
    assert page.evaluate("() => Notification.permission") == "default"
    button = page.get_by_role("button", name="Notify me")
    expect(button).to_be_visible()
    page.context.grant_permissions(["notifications"], origin=server.base)
    button.click()
    expect(button).to_have_count(0)


def test_load_more_rows_do_not_glow(open_page, server):
    from playwright.sync_api import expect

    page = open_page(server)
    log_in(page, "admin@example.com")
    tab(page, "All").click()
    rows = page.locator("#conversation-list li.row")
    first_page = rows.count()
    page.wait_for_load_state("load")
    # Scroll the list to its end; the window's scroll event is for htmx's `revealed`, which
    # watches the window only (`intersect` sees the list's own scrolling).
    page.evaluate("""() => {
        const list = document.querySelector('#conversation-list');
        list.scrollTop = list.scrollHeight;
        window.dispatchEvent(new Event('scroll'));
    }""")
    expect(rows).not_to_have_count(first_page)
    expect(page.locator("#conversation-list li.row.is-new")).to_have_count(0)


def test_a_list_filled_after_the_page_loads_does_not_glow(open_page, server):
    """A tab never saved as a snapshot arrives as a placeholder and is fetched after the page
    loads: those rows were never on screen before, and none of them is news."""
    from playwright.sync_api import expect

    page = open_page(server)
    log_in(page, "ana@example.com")
    expect(page.locator("#conversation-list li.row").first).to_be_visible()  # snapshots saved
    tab(page, "Closed").click()  # a tab this browser never saw: a placeholder, then a fetch
    expect(page.locator("#conversation-list li.row").first).to_be_visible()
    time.sleep(0.3)
    assert page.locator("#conversation-list li.row.is-new").count() == 0
