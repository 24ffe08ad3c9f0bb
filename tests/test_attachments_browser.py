"""Attachments as an agent sees them, in Chromium against a live gunicorn whose embedded worker
fetches the files from the provider (tests/provider.py's server): a customer's photo arrives
while Ana has the conversation open (first "Receiving…", then its thumbnail, live, no reload);
with the server stopped, a reload still shows it (the thumbnail is immutable and private: the
browser keeps it, and the thread's snapshot names it)."""
from __future__ import annotations

import io
import os
import time
from contextlib import contextmanager

import pytest
from PIL import Image, ImageDraw

from tests.live import ROOT, LiveServer, http, log_in, pages, row
from tests.provider import FakeProvider

PHONE = "+5511944441234"
SECRET = "attachments-browser-secret"


@pytest.fixture(scope="module")
def provider():
    with FakeProvider(secret=SECRET) as running:
        yield running


@pytest.fixture(scope="module")
def server(tmp_path_factory, provider):
    live = LiveServer(tmp_path_factory.mktemp("attachments-browser"),
                      seed=("--agents", "3", "--conversations", "20", "--messages", "60"))
    # Replies go to the provider's webhook; it fetches an agent's files from signed links here.
    live.env.update(CHANNEL_WEBHOOK_URL=provider.webhook_url, CHANNEL_WEBHOOK_SECRET=SECRET, PUBLIC_URL=live.base)
    live.start()
    yield live
    live.cleanup()


@pytest.fixture
def open_page(browser, server):
    with pages(browser, server.base) as open_page:
        yield open_page


def photo() -> bytes:
    """A recognisable picture: a parcel with a torn corner."""
    image = Image.new("RGB", (1200, 900), (226, 232, 240))
    draw = ImageDraw.Draw(image)
    draw.rectangle((250, 200, 950, 750), fill=(180, 130, 70), outline=(90, 60, 30), width=12)
    draw.line((250, 470, 950, 470), fill=(230, 210, 160), width=40)
    draw.polygon([(950, 200), (800, 200), (950, 380)], fill=(226, 232, 240))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()


def wait_for_thumbnail(page, selector: str, timeout: int = 5_000) -> None:
    """Until an image of `selector` is decoded (loaded, with a natural width): seen, not just in the DOM."""
    page.wait_for_function("(s) => [...document.querySelectorAll(s)].some(i => i.complete && i.naturalWidth > 0)",
                           arg=selector, timeout=timeout)


@contextmanager
def reloaded_offline(page, server):
    """The server stopped and the page reloaded from what the browser kept; started again after."""
    from playwright.sync_api import expect

    time.sleep(0.3)  # the snapshot of the last swap is written after settling
    server.stop()
    try:
        expect(page.locator("#offline-banner")).to_be_visible(timeout=10_000)
        page.reload()
        expect(page.locator("#offline-banner")).to_be_visible(timeout=10_000)
        yield
    finally:
        server.start()


def test_a_customers_photo_shows_live_then_offline(open_page, server, provider):
    from playwright.sync_api import expect

    server.inbound(phone=PHONE, name="Paula Parcel", body="my order came like this",
                   external_id=f"paula-1-{time.time()}")
    page = open_page()
    log_in(page, "ana@example.com")
    # A device the agent used before: the service worker controls the page and keeps it.
    page.wait_for_function("() => navigator.serviceWorker && !!navigator.serviceWorker.controller", timeout=10_000)
    page.reload()
    page.wait_for_function("() => window.__inboxSocketConnected === true", timeout=10_000)
    row(page, "Paula Parcel").get_by_role("link").click()
    pane = page.locator("#conversation-pane")
    expect(pane.get_by_role("heading", name="Paula Parcel")).to_be_visible()

    url = provider.serve_file("/files/parcel.jpg", photo(), "image/jpeg")
    server.inbound(phone=PHONE, body="", external_id=f"paula-2-{time.time()}",
                   attachments=[{"url": url, "filename": "parcel.jpg", "caption": "the box, torn"}])
    thumb = pane.locator(".attachment.image img")
    expect(thumb).to_be_visible(timeout=10_000)
    wait_for_thumbnail(page, "#conversation-pane .attachment.image img", timeout=10_000)
    assert thumb.get_attribute("alt") == "the box, torn"
    expect(pane.locator(".caption")).to_have_text("the box, torn")
    # A click opens the full file (a new tab: the image, inline, as sniffed).
    with page.context.expect_page() as opened:
        pane.locator(".attachment.image").click()
    full = opened.value
    full.wait_for_load_state()
    assert full.evaluate("document.contentType") == "image/jpeg"
    full.close()
    if os.environ.get("CHAT_SCREENSHOTS") == "1":
        page.mouse.move(0, 0)
        page.screenshot(path=str(ROOT / "docs" / "attachments.png"))

    with reloaded_offline(page, server):
        again = page.locator("#conversation-pane .attachment.image img")
        expect(again).to_be_visible()
        wait_for_thumbnail(page, "#conversation-pane .attachment.image img")


def test_a_pasted_image_is_sent_with_ticks_and_shows_offline(open_page, server, provider):
    from playwright.sync_api import expect

    from tests.live import tab

    page = open_page()
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    log_in(page, "ana@example.com")
    page.wait_for_function("() => navigator.serviceWorker && !!navigator.serviceWorker.controller", timeout=10_000)
    page.reload()
    page.wait_for_function("() => window.__inboxSocketConnected === true", timeout=10_000)
    tab(page, "Mine").click()
    page.locator("#conversation-list li.row").first.get_by_role("link").click()
    pane = page.locator("#conversation-pane")
    box = pane.locator("form.reply textarea[name=body]")
    expect(box).to_be_visible()
    # A screenshot on the agent's clipboard, pasted into the reply box with Ctrl+V.
    page.evaluate("""async () => {
        const canvas = document.createElement("canvas");
        canvas.width = 640; canvas.height = 360;
        const g = canvas.getContext("2d");
        g.fillStyle = "#1d4ed8"; g.fillRect(0, 0, 640, 360);
        g.fillStyle = "#fde047"; g.fillRect(80, 80, 300, 160);
        const blob = await new Promise(done => canvas.toBlob(done, "image/png"));
        await navigator.clipboard.write([new ClipboardItem({"image/png": blob})]);
    }""")
    box.click()
    box.type("Here is where to click")
    page.keyboard.press("Control+V")
    chosen = pane.locator(".reply-files .reply-file")
    expect(chosen).to_have_count(1)
    expect(chosen).to_contain_text("KB")
    pane.get_by_role("button", name="Send").click()
    sent = pane.locator(".msg.out").filter(has=page.locator(".attachment.image img")).last
    expect(sent).to_be_visible(timeout=10_000)
    expect(sent.locator(".msg-body")).to_have_text("Here is where to click")
    expect(chosen).to_have_count(0)
    # Delivered through the webhook with a link the customer's system fetched the bytes from.
    expect(sent).to_have_attribute("data-delivery", "sent", timeout=10_000)
    sent_payload = [r.json for r in provider.requests if r.json and r.json.get("attachments")][-1]
    link = sent_payload["attachments"][0]["url"]
    assert link.startswith(server.base + "/files/") and sent_payload["attachments"][0]["content_type"] == "image/png"
    fetched = http().get(link, timeout=5)  # no session: the signed link is the permission
    assert fetched.status_code == 200 and fetched.content[:8] == b"\x89PNG\r\n\x1a\n"
    with reloaded_offline(page, server):
        wait_for_thumbnail(page, "#conversation-pane .msg.out .attachment.image img")
        expect(page.locator("#conversation-pane label.attach")).to_be_visible()
        expect(page.locator("#conversation-pane input[name=file]")).to_be_disabled()  # files need the server
