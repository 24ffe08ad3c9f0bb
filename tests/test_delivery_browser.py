"""Delivery as the agent sees it, in Chromium against a live gunicorn whose embedded worker
sends replies to a fake provider (tests/provider.py): ticks move forward live (no reload) in
the thread and in the list row, a refused reply says why and Retry sends it again, and a
reply sent offline reaches the provider exactly once (DESIGN.md, "What delivery guarantees",
"What the browser client guarantees").
"""
from __future__ import annotations

import re
import sqlite3
import time

import pytest

from bench.common import http
from tests.live import INBOUND_TOKEN, LiveServer, log_in, new_page, tab
from tests.provider import FakeProvider

SECRET = "browser-channel-secret"
LIVE_MS = 10_000  # the worker sends within about a second, a push refreshes within 200 ms: on an idle machine
OFFLINE_ERRORS = r"ERR_CONNECTION_REFUSED|ERR_CONNECTION_RESET|ERR_FAILED|Failed to load resource|WebSocket"
WAITING = re.compile(r"\bticks-(queued|sending|sent)\b")


@pytest.fixture(scope="module")
def provider():
    with FakeProvider(secret=SECRET) as running:
        yield running


@pytest.fixture(scope="module")
def server(tmp_path_factory, provider):
    live = LiveServer(tmp_path_factory.mktemp("delivery-browser"),
                      seed=("--agents", "3", "--conversations", "40", "--messages", "160"))
    live.env.update(CHANNEL_WEBHOOK_URL=provider.webhook_url, CHANNEL_WEBHOOK_SECRET=SECRET)
    live.start()
    yield live
    live.cleanup()


@pytest.fixture
def open_page(browser, server, provider):
    """open_page() -> a page in a fresh context; fails on browser errors other than those of
    the server being away; restarts the server if a test left it stopped."""
    contexts, errors = [], []
    provider.default = "ok"

    def _open():
        page = new_page(browser, server.base, errors)
        contexts.append(page.context)
        return page

    yield _open
    for context in contexts:
        context.close()
    if server.process is None or server.process.poll() is not None:
        server.start()
    unexpected = [e for e in errors if not re.search(OFFLINE_ERRORS, e)]
    assert not unexpected, "the browser reported errors:\n" + "\n".join(unexpected)


def connected(page) -> None:
    page.wait_for_function("() => window.__inboxSocketConnected === true", timeout=10_000)


def open_mine(page, nth: int = 0):
    """Ana's Mine tab, then the nth conversation in it: (conversation id, its pane)."""
    from playwright.sync_api import expect

    tab(page, "Mine").click()
    target = page.locator("#conversation-list li.row").nth(nth)
    expect(target).to_be_visible()
    name = target.locator(".name").inner_text()
    target.get_by_role("link").click()
    pane = page.locator("#conversation-pane")
    expect(pane.get_by_role("heading", name=name)).to_be_visible()
    return int(re.search(r"/conversations/(\d+)", page.url).group(1)), pane


def type_and_send(page, pane, text: str) -> None:
    """As a person does: click into the reply box, type, press Send."""
    box = pane.locator("textarea[data-draft]")
    box.click()
    page.keyboard.type(text)
    pane.get_by_role("button", name="Send").click()


def sent_message(pane, text: str):
    """The reply with this text in the thread (the stored one, not a queued copy)."""
    return pane.locator(".msg.out[data-message-id]:not(.queued)").filter(
        has=pane.page.locator(".msg-body", has_text=text))


def post_status(server: LiveServer, provider_id: str, status: str, reason: str | None = None) -> None:
    """The provider calls back with a status, as it would over the internet."""
    payload = {"id": provider_id, "status": status, **({"reason": reason} if reason else {})}
    response = http().post(f"{server.base}/api/status", json=payload, timeout=5,
                           headers={"Authorization": f"Bearer {INBOUND_TOKEN}"})
    assert response.status_code in (200, 201, 202), response.text


def requests_with_body(provider: FakeProvider, text: str) -> list:
    return [r for r in list(provider.requests) if (r.json or {}).get("body") == text]


def wait_for_requests(provider: FakeProvider, text: str, count: int, timeout: float = 10) -> list:
    deadline = time.monotonic() + timeout
    while len(requests_with_body(provider, text)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    found = requests_with_body(provider, text)
    assert len(found) >= count, f"the provider got {len(found)} requests with {text!r}, expected {count}"
    return found


def record_traffic(page) -> list[str]:
    """What the page heard and asked, timed: the socket's frames and its requests (a failure
    says whether the push never came, came and was not acted on, or was answered stale)."""
    started, seen = time.monotonic(), []

    def note(what: str) -> None:
        seen.append(f"{time.monotonic() - started:7.3f} {what[:160]}")

    def on_socket(ws) -> None:
        note(f"socket open {ws.url}")
        ws.on("framereceived", lambda frame: note(f"<- {frame}"))
        ws.on("close", lambda _: note("socket closed"))

    page.on("websocket", on_socket)
    page.on("request", lambda r: note(f"{r.method} {r.url}"))
    page.on("response", lambda r: note(f"{r.status} {r.url}"))
    page.on("requestfailed", lambda r: note(f"failed {r.url}"))
    return seen


def mark_the_document(page) -> None:
    """A flag on the window: still there later means the page was never reloaded."""
    page.evaluate("() => { window.__sameDocument = true; }")


def same_document(page) -> bool:
    return page.evaluate("() => window.__sameDocument === true")


def ticks_lead_the_preview(page, conversation_id: int) -> None:
    """In the list row the ticks sit just before the preview, on its line, as in a chat app."""
    ticks = page.locator(f"#row-{conversation_id} .row-bottom .ticks").bounding_box()
    preview = page.locator(f"#row-{conversation_id} .row-bottom .preview").bounding_box()
    gap = preview["x"] - (ticks["x"] + ticks["width"])
    assert 0 <= gap <= 10, f"{gap:.0f} px between the ticks and the preview: {ticks}, {preview}"
    middle = lambda box: box["y"] + box["height"] / 2  # noqa: E731
    assert abs(middle(ticks) - middle(preview)) <= 4, (ticks, preview)


def messages_in_db(server: LiveServer, body: str) -> int:
    with sqlite3.connect(server.tmp / "live.db") as db:
        return db.execute("SELECT count(*) FROM messages WHERE body = ?", (body,)).fetchone()[0]


def test_ticks_move_from_clock_to_blue_live_in_the_thread_and_the_list(open_page, server, provider):
    from playwright.sync_api import expect

    page = open_page()
    log_in(page, "ana@example.com")
    connected(page)
    conversation_id, pane = open_mine(page)
    mark_the_document(page)
    text = f"Shipped! #{time.time_ns() % 10**7}"  # short: the row must not push it to the right

    type_and_send(page, pane, text)
    message = sent_message(pane, text)
    expect(message).to_have_count(1)
    ticks = message.locator(".msg-meta .ticks")
    expect(ticks).to_have_class(WAITING)  # the clock, or already one tick
    expect(pane.locator("textarea[data-draft]")).to_have_value("")

    (request,) = wait_for_requests(provider, text, 1)
    message_id = int(message.get_attribute("data-message-id"))
    assert request.key == str(message_id) and request.signature_ok is True
    provider_id = provider.id_for(message_id)
    assert provider_id == f"prov-{message_id}"
    expect(ticks).to_have_class(re.compile(r"\bticks-sent\b"), timeout=LIVE_MS)
    expect(ticks).to_have_text("✓")
    expect(ticks).to_have_attribute("aria-label", "Sent")
    list_ticks = page.locator(f"#row-{conversation_id} .row-bottom .ticks")
    expect(list_ticks).to_have_class(re.compile(r"\bticks-sent\b"), timeout=LIVE_MS)

    post_status(server, provider_id, "delivered")
    expect(ticks).to_have_class(re.compile(r"\bticks-delivered\b"), timeout=LIVE_MS)
    expect(ticks).to_have_text("✓✓")
    expect(ticks).to_have_attribute("aria-label", "Delivered")
    expect(list_ticks).to_have_class(re.compile(r"\bticks-delivered\b"), timeout=LIVE_MS)

    post_status(server, provider_id, "read")
    expect(ticks).to_have_class(re.compile(r"\bticks-read\b"), timeout=LIVE_MS)
    expect(ticks).to_have_text("✓✓")
    expect(ticks).to_have_attribute("aria-label", "Read")
    expect(list_ticks).to_have_class(re.compile(r"\bticks-read\b"), timeout=LIVE_MS)
    expect(list_ticks).to_have_text("✓✓")
    ticks_lead_the_preview(page, conversation_id)
    colour = ticks.evaluate("el => getComputedStyle(el).color")
    assert colour == "rgb(14, 165, 233)", colour  # blue, not the muted grey of delivered

    post_status(server, provider_id, "delivered")  # late and out of order: forward only
    time.sleep(0.6)
    expect(ticks).to_have_class(re.compile(r"\bticks-read\b"))
    assert same_document(page), "the page was reloaded"
    assert len(requests_with_body(provider, text)) == 1
    message.scroll_into_view_if_needed()
    page.screenshot(path="/tmp/ticks.png")


def test_a_refused_reply_says_why_and_retry_sends_it_again(open_page, server, provider):
    from playwright.sync_api import expect

    page = open_page()
    log_in(page, "ana@example.com")
    connected(page)
    conversation_id, pane = open_mine(page, nth=1)
    mark_the_document(page)
    text = f"Can you confirm the address? {time.time()}"

    provider.script("400")  # the next send is refused for good: 422
    type_and_send(page, pane, text)
    message = sent_message(pane, text)
    expect(message).to_have_count(1)
    message_id = int(message.get_attribute("data-message-id"))
    ticks = message.locator(".msg-meta .ticks")
    expect(ticks).to_have_class(re.compile(r"\bticks-failed\b"), timeout=LIVE_MS)
    expect(ticks).to_have_text("!")
    expect(ticks).to_have_attribute("aria-label", "Not delivered")
    note = message.locator(".delivery-note")
    expect(note).to_contain_text(re.compile(r"^Not delivered: the provider answered 422"))
    expect(note).to_contain_text("unknown recipient")
    retry = note.get_by_role("button", name="Retry")
    expect(retry).to_be_visible()
    expect(page.locator(f"#row-{conversation_id} .row-bottom .ticks")).to_have_class(
        re.compile(r"\bticks-failed\b"), timeout=LIVE_MS)
    (refused,) = wait_for_requests(provider, text, 1)
    assert refused.key == str(message_id) and refused.answered == "422"
    time.sleep(0.3)
    message.scroll_into_view_if_needed()
    page.screenshot(path="/tmp/ticks-failed.png")

    retry.click()
    again = wait_for_requests(provider, text, 2)
    assert [r.key for r in again] == [str(message_id), f"{message_id}-retry-1"]
    assert again[1].answered == "ok"
    expect(ticks).to_have_class(re.compile(r"\bticks-sent\b"), timeout=LIVE_MS)
    expect(ticks).to_have_text("✓")
    expect(message.locator(".delivery-note")).to_have_count(0)
    expect(page.locator(f"#retry-{message_id}")).to_have_count(0)
    expect(page.locator(f"#row-{conversation_id} .row-bottom .ticks")).to_have_class(
        re.compile(r"\bticks-sent\b"), timeout=LIVE_MS)

    post_status(server, f"prov-{message_id}-retry-1", "delivered")  # the new attempt's id
    expect(ticks).to_have_class(re.compile(r"\bticks-delivered\b"), timeout=LIVE_MS)
    time.sleep(0.5)
    assert len(requests_with_body(provider, text)) == 2  # nothing more than the one retry
    assert same_document(page), "the page was reloaded"


def test_a_reply_sent_offline_is_stored_once_and_reaches_the_provider_once(open_page, server, provider):
    from playwright.sync_api import expect

    page = open_page()
    traffic = record_traffic(page)
    log_in(page, "ana@example.com")
    connected(page)
    conversation_id, pane = open_mine(page, nth=2)
    text = f"Written in a tunnel {time.time()}"

    server.stop()
    expect(page.locator("#offline-banner")).to_be_visible(timeout=10_000)
    type_and_send(page, pane, text)
    queued = pane.locator(".msg.queued")
    expect(queued).to_have_count(1)
    expect(queued).to_contain_text(text)
    expect(queued).to_contain_text("Queued")
    expect(pane.locator("textarea[data-draft]")).to_have_value("")
    assert requests_with_body(provider, text) == []

    server.start()
    expect(page.locator("#offline-banner")).to_be_hidden(timeout=10_000)
    expect(pane.locator(".msg.queued")).to_have_count(0, timeout=10_000)
    message = sent_message(pane, text)
    expect(message).to_have_count(1)
    (request,) = wait_for_requests(provider, text, 1)
    message_id = int(message.get_attribute("data-message-id"))
    assert request.key == str(message_id)
    try:
        expect(message.locator(".msg-meta .ticks")).to_have_class(re.compile(r"\bticks-sent\b"), timeout=LIVE_MS)
    except AssertionError as failure:  # what the server did meanwhile says whose fault it is
        log = server.log_path.read_text(errors="replace")[-4000:]
        heard = "\n".join(traffic[-60:])
        raise AssertionError(f"{failure}\n-- the server's log, last lines --\n{log}"
                             f"\n-- what the page heard and asked, last --\n{heard}") from None
    # The page asked to connect once per connection: a second CONNECT is refused ("44"), and
    # socket.io's client then stops listening while it still says it is connected.
    assert not [line for line in traffic if " <- 44" in line], "the server refused a second CONNECT"
    time.sleep(1.5)  # another flush, a reconnect or the worker's next poll must not send it again
    assert messages_in_db(server, text) == 1
    assert len(requests_with_body(provider, text)) == 1
    expect(message).to_have_count(1)


def test_a_socket_the_server_refused_starts_again_and_ticks_still_move_live(open_page, server, provider):
    """The server refuses the page's Socket.IO connection (as it refuses a second CONNECT sent
    while the first awaited its answer, which a reconnect racing the "online again" probe did):
    socket.io's client tears itself down, yet still says it is connected. The page must start
    it again, catch up on what changed meanwhile, and go on hearing pushes."""
    from playwright.sync_api import expect

    page = open_page()
    sockets = []

    def through(ws) -> None:  # the page's websocket, passed on to the server unchanged
        ws.connect_to_server()
        sockets.append(ws)

    page.route_web_socket(re.compile(r"/socket\.io/"), through)
    log_in(page, "ana@example.com")
    connected(page)
    conversation_id, pane = open_mine(page, nth=4)
    text = f"Heard again {time.time()}"
    type_and_send(page, pane, text)
    ticks = sent_message(pane, text).locator(".msg-meta .ticks")
    expect(ticks).to_have_class(re.compile(r"\bticks-sent\b"), timeout=LIVE_MS)
    message_id = int(sent_message(pane, text).get_attribute("data-message-id"))
    assert sockets, "the page's socket never upgraded to a websocket"

    mark_the_document(page)
    sockets[-1].send('44{"message":"Unable to connect"}')  # Engine.IO message, Socket.IO CONNECT_ERROR
    post_status(server, f"prov-{message_id}", "delivered")  # meanwhile: nobody is listening
    expect(ticks).to_have_class(re.compile(r"\bticks-delivered\b"), timeout=LIVE_MS)
    connected(page)
    post_status(server, f"prov-{message_id}", "read")  # and pushes are heard again
    expect(ticks).to_have_class(re.compile(r"\bticks-read\b"), timeout=LIVE_MS)
    assert same_document(page)


def test_an_answer_that_comes_back_late_never_leaves_an_older_state_on_screen(open_page, server, provider):
    """The agent re-opens the conversation; that answer is slow (held here) and, meanwhile,
    the customer's phone reports the reply delivered and a push refreshes the thread. The late
    answer, rendered before, must not turn the ticks back for good."""
    from playwright.sync_api import expect

    page = open_page()
    log_in(page, "ana@example.com")
    connected(page)
    conversation_id, pane = open_mine(page, nth=3)
    mark_the_document(page)
    text = f"On its way {time.time()}"
    type_and_send(page, pane, text)
    message = sent_message(pane, text)
    ticks = message.locator(".msg-meta .ticks")
    expect(ticks).to_have_class(re.compile(r"\bticks-sent\b"), timeout=LIVE_MS)
    message_id = int(message.get_attribute("data-message-id"))

    held = []

    def hold(route):  # the first: the server answers now, the browser gets it later
        if held:
            route.continue_()
        else:
            held.append((route, route.fetch()))

    pane_url = re.compile(rf"/conversations/{conversation_id}(\?.*)?$")
    page.route(pane_url, hold)
    page.evaluate("""() => { window.__paneSwapped = false;
        document.addEventListener("htmx:afterSwap", e => {
          if (e.detail.target.id === "pane") { window.__paneSwapped = true; } }); }""")
    page.locator(f"#row-{conversation_id}").get_by_role("link").click()
    deadline = time.monotonic() + 5
    while not held and time.monotonic() < deadline:
        page.wait_for_timeout(20)
    assert held, "re-opening the conversation asked nothing of the server"
    route, late = held[0]
    assert late.status == 200 and "ticks-sent" in late.text()  # rendered before the status came

    post_status(server, f"prov-{message_id}", "delivered")
    expect(ticks).to_have_class(re.compile(r"\bticks-delivered\b"), timeout=LIVE_MS)

    route.fulfill(response=late)
    page.wait_for_function("() => window.__paneSwapped === true", timeout=5_000)
    page.unroute(pane_url)
    expect(ticks).to_have_class(re.compile(r"\bticks-delivered\b"), timeout=LIVE_MS)
    time.sleep(0.5)
    expect(ticks).to_have_class(re.compile(r"\bticks-delivered\b"))
    assert same_document(page), "the page was reloaded"
