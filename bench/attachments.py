"""10. A thread of 50 images in the browser: Playwright driving Debian's chromium against gunicorn
(SQLite copy of the seeded database, files on disk), the conversation's newest page holding 50
customer photos (1200x900 JPEGs, as phones send them), each shown as its WebP thumbnail.

- First visit: navigation start -> every thumbnail in the viewport decoded (img.complete and a
  natural width), then the whole thread scrolled through so all 50 load; the bytes that crossed
  the network (Resource Timing's transferSize: the page, its fragments, its assets, the
  thumbnails) and how many thumbnails came from the server.
- Repeat visit (the same conversation opened again, as an agent going back to it): the same
  times and bytes. Thumbnails are private and immutable for a year and the thread comes from
  the snapshot, so the thumbnails should cost no request at all.
"""
from __future__ import annotations

import io
import random
from pathlib import Path

from .common import Gunicorn, app_env, copy_database, percentile, save_chart
from .browser import _launch, _page

IMAGES = 50

SEEN = """() => {
  const imgs = [...document.querySelectorAll('#conversation-pane .attachment.image img')];
  const pane = document.querySelector('#messages') || document.querySelector('#conversation-pane');
  const box = pane.getBoundingClientRect();
  const visible = imgs.filter(i => { const r = i.getBoundingClientRect(); return r.bottom > box.top && r.top < box.bottom; });
  return imgs.length >= %d && visible.length > 0 && visible.every(i => i.complete && i.naturalWidth > 0);
}""" % IMAGES
ALL_LOADED = """() => [...document.querySelectorAll('#conversation-pane .attachment.image img')]
  .every(i => i.complete && i.naturalWidth > 0)"""
BYTES = """() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const res = performance.getEntriesByType('resource');
  const thumbs = res.filter(r => r.name.includes('/attachments/'));
  return {total: (nav ? nav.transferSize : 0) + res.reduce((n, r) => n + r.transferSize, 0),
          thumbnails: thumbs.reduce((n, r) => n + r.transferSize, 0),
          thumbnail_requests: thumbs.filter(r => r.transferSize > 0).length,
          thumbnails_from_cache: thumbs.filter(r => r.transferSize === 0).length};
}"""


def _photo(seed: int) -> bytes:
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    image = Image.new("RGB", (1200, 900), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(40):
        x, y = rng.randrange(1200), rng.randrange(900)
        draw.ellipse((x, y, x + rng.randrange(40, 300), y + rng.randrange(40, 300)),
                     fill=tuple(rng.randrange(256) for _ in range(3)))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()


def _seed_images(database: Path, files: Path) -> tuple[int, int]:
    """50 stored photos on Ana's first active conversation, as the worker leaves them."""
    from sqlalchemy import select

    from chat import create_app, media_types
    from chat.extensions import db
    from chat.models import ACTIVE, Attachment, Conversation, Message, User
    from chat.storage import storage

    app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{database}", "SECRET_KEY": "bench-secret-key",
                      "INBOUND_TOKEN": "bench-inbound-token", "SOCKETIO_MESSAGE_QUEUE": None,
                      "ATTACHMENT_DIR": str(files)})
    size = 0
    with app.app_context():
        ana = db.session.scalar(select(User).where(User.email == "ana@example.com"))
        conversation = db.session.scalar(select(Conversation).where(Conversation.user_id == ana.id,
                                                                    Conversation.status == ACTIVE).limit(1))
        for n in range(IMAGES):
            data = _photo(n)
            size += len(data)
            message = Message(conversation_id=conversation.id, body="", from_me=False)
            db.session.add(message)
            db.session.flush()
            key = f"attachments/{conversation.id}/bench-{message.id}"
            storage().put(key, data, "image/jpeg")
            storage().put(key + "-thumb.webp", media_types.thumbnail(data), "image/webp")
            db.session.add(Attachment(message_id=message.id, conversation_id=conversation.id, state="stored",
                                      kind="image", content_type="image/jpeg", filename=f"photo-{n}.jpg",
                                      size=len(data), storage_key=key, thumb_key=key + "-thumb.webp"))
        db.session.commit()
        return conversation.id, size


def _visit(page, conversation_id: int) -> dict:
    page.goto(f"/conversations/{conversation_id}?tab=mine")
    page.wait_for_function(SEEN, timeout=30_000)
    painted = page.evaluate("() => performance.now()")
    messages = page.locator("#messages")
    for _ in range(30):  # the agent scrolls up through the thread: every thumbnail loads
        page.mouse.move(900, 400)
        page.mouse.wheel(0, -1500)
        if page.evaluate(ALL_LOADED):
            break
        page.wait_for_timeout(100)
    page.wait_for_function(ALL_LOADED, timeout=30_000)
    page.wait_for_load_state("networkidle")
    found = page.evaluate(BYTES)
    found["images"] = messages.locator(".attachment.image img").count()
    found["nav_to_visible_thumbnails_ms"] = round(painted, 1)
    return found


def run(ctx) -> dict:
    from playwright.sync_api import sync_playwright

    database = copy_database(ctx.database, ctx.workdir / "attachments.db")
    files = ctx.workdir / "attachments-files"
    conversation_id, photos_bytes = _seed_images(database, files)
    repeats = ctx.sizes.browser_repeats
    results: dict = {"settings": {"images": IMAGES, "photo_bytes_total": photos_bytes, "repeats": repeats,
                                  "storage": "disk", "browser": "Debian chromium via Playwright"}}
    with ctx.stack_scope() as stack:
        server = Gunicorn(ctx.workdir, app_env(database, ATTACHMENT_DIR=str(files)), name="attachments")
        stack.callback(server.stop)
        playwright = stack.enter_context(sync_playwright())
        browser = _launch(playwright)
        stack.callback(browser.close)
        page = _page(browser, server.base, "ana@example.com")
        first = _visit(page, conversation_id)
        repeat = [_visit(page, conversation_id) for _ in range(repeats)]
        page.context.close()
    results["first_visit"] = first
    results["repeat_visit"] = {
        "runs": repeat,
        "nav_to_visible_thumbnails_ms_p50": round(percentile([r["nav_to_visible_thumbnails_ms"] for r in repeat], 50), 1),
        "total_bytes_p50": percentile([r["total"] for r in repeat], 50),
        "thumbnail_requests_max": max(r["thumbnail_requests"] for r in repeat),
        "thumbnail_bytes_max": max(r["thumbnails"] for r in repeat),
    }
    return results


def chart(results: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    first, repeat = results["first_visit"], results["repeat_visit"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
    ax1.bar(["first visit", "repeat visit (p50)"],
            [first["nav_to_visible_thumbnails_ms"], repeat["nav_to_visible_thumbnails_ms_p50"]], color=["#64748b", "#2563eb"])
    ax1.set_ylabel("ms: navigation -> visible thumbnails decoded")
    ax2.bar(["first visit", "repeat visit (p50)"], [first["total"] / 1024, repeat["total_bytes_p50"] / 1024],
            color=["#64748b", "#16a34a"])
    ax2.set_ylabel("KB over the network")
    save_chart(fig, f"10. A thread of {results['settings']['images']} images (chromium)", path)


def summary(results: dict) -> list[tuple[str, str, str]]:
    first, repeat = results["first_visit"], results["repeat_visit"]
    n = results["settings"]["images"]
    return [
        ("attachments", f"thread of {n} images, first visit",
         f"navigation -> visible thumbnails {first['nav_to_visible_thumbnails_ms']} ms; {round(first['total'] / 1024)} KB "
         f"over the network, of which thumbnails {round(first['thumbnails'] / 1024)} KB in {first['thumbnail_requests']} "
         f"requests (the photos: {round(results['settings']['photo_bytes_total'] / 1024)} KB)"),
        ("attachments", f"thread of {n} images, repeat visit",
         f"p50 {repeat['nav_to_visible_thumbnails_ms_p50']} ms; {round(repeat['total_bytes_p50'] / 1024, 1)} KB over the "
         f"network; thumbnails fetched again: {repeat['thumbnail_requests_max']} ({repeat['thumbnail_bytes_max']} B)"),
    ]
