"""6. In the browser: Playwright driving Debian's chromium against gunicorn (bench app, default
in-process cache), SQLite copy of the seeded database.

- First visit: navigation start -> the shim's `inbox:painted` (list rendered by the server).
- Repeat visit (snapshots in localStorage, the server sends empty shells): the shim's start
  (static/client/paint.js marks it, `performance.mark("inbox:paint-start")`: nothing is
  routed, the service worker serves the files as it does for an agent) -> `inbox:painted`
  (list painted from the snapshot, before the rest of the client is parsed), plus navigation start
  -> painted, and how many fragment requests (HX-Request) the visit made.
- Live update: Ana and Bruno both on Pending; a contact writes in (POST /api/inbound); time
  from sending that request to the message text appearing in Bruno's list (a MutationObserver
  in his page; both clocks are this machine's wall clock). Few browsers heard it (the event's
  `audience`), so the shim refetches at once: this is push + fragment fetch + morph.
- Live update of a long list: the admin wheel-scrolls "All" until 200 rows are loaded and
  reads in the middle; a contact writes in; time to the new row in the list, and whether the
  200 rows and the scroll position were kept (the refresh refetches every loaded page, morphed).
- Offline: with the server stopped, a reload of the inbox (answered by the service worker,
  painted from snapshots): navigation start -> list painted; and a reply sent offline: time
  from the server answering again to the reply delivered (the outbox sends it by itself).
"""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from .common import (CHROMIUM_ARGS, INBOUND_TOKEN, PASSWORD, Gunicorn, Unavailable, app_env, chromium_executable,
                     copy_database, http, percentile, save_chart)

# The first paint of the page (snapshots.js, once its fragments are on screen); a later
# inbox:painted (a conversation opened offline from its snapshot) is another paint.
INIT = """
window.__painted = null;
document.addEventListener("inbox:painted", function () {
  if (window.__painted === null) { window.__painted = performance.now(); }
});
"""


def _launch(playwright):
    exe = chromium_executable()
    if not os.access(exe, os.X_OK):
        raise Unavailable(f"chromium not found ({exe}); `make chromium` installs it")
    return playwright.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)


def _page(browser, base: str, email: str):
    """A signed-in page (its own context: cookies, localStorage and service worker)."""
    context = browser.new_context(base_url=base, viewport={"width": 1366, "height": 800})
    context.set_default_timeout(15_000)
    context.add_init_script(INIT)
    page = context.new_page()
    page.goto("/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/inbox*")
    return page


def _visit(page) -> dict:
    fragments = []

    def on_request(request):
        if request.headers.get("hx-request") == "true":
            fragments.append(request.url)

    page.on("request", on_request)
    try:
        page.goto("/inbox?tab=pending")
        page.wait_for_function("() => window.__painted !== null")
        page.wait_for_load_state("networkidle")
        timing = page.evaluate("""() => ({
            painted: window.__painted,
            shimStart: (performance.getEntriesByName("inbox:paint-start")[0] || {}).startTime || null,
            rows: document.querySelectorAll('#conversation-list li.row').length})""")
    finally:
        page.remove_listener("request", on_request)
    return {"nav_to_painted_ms": round(timing["painted"], 1),
            "shim_to_painted_ms": round(timing["painted"] - timing["shimStart"], 2) if timing["shimStart"] else None,
            "fragment_requests": len(fragments), "rows": timing["rows"]}


def run(ctx) -> dict:
    from playwright.sync_api import sync_playwright

    from chat.fragments import SNAPSHOT_COOKIE

    repeats = ctx.sizes.browser_repeats
    database = copy_database(ctx.database, ctx.workdir / "browser.db")
    results: dict = {"settings": {"browser": "Debian chromium via Playwright", "cache": "in-process (default)",
                                  "repeats": repeats, "viewport": "1366x800"}}
    with ctx.stack_scope() as stack:
        server = Gunicorn(ctx.workdir, app_env(database), name="browser")
        stack.callback(server.stop)
        playwright = stack.enter_context(sync_playwright())
        browser = _launch(playwright)
        stack.callback(browser.close)

        ana = _page(browser, server.base, "ana@example.com")
        ana.evaluate("() => localStorage.clear()")
        ana.context.clear_cookies(name=SNAPSHOT_COOKIE)
        first = _visit(ana)  # no snapshots yet: the server renders the list
        repeat = [_visit(ana) for _ in range(repeats)]
        results["first_visit"] = first
        results["repeat_visit"] = {
            "runs": repeat,
            "shim_to_painted_ms_p50": _p(repeat, "shim_to_painted_ms", 50),
            "shim_to_painted_ms_max": max(r["shim_to_painted_ms"] for r in repeat),
            "nav_to_painted_ms_p50": _p(repeat, "nav_to_painted_ms", 50),
            "fragment_requests_max": max(r["fragment_requests"] for r in repeat),
        }

        bruno = _page(browser, server.base, "bruno@example.com")
        for page in (ana, bruno):
            page.goto("/inbox?tab=pending")
            page.wait_for_function("() => window.__inboxSocketConnected === true")
        session = http()
        live = []
        for n in range(repeats):
            body = f"bench live {uuid.uuid4().hex[:8]}"
            live.append(_inbound_until_listed(bruno, session, server.base, body,
                                              phone=f"+55118{uuid.uuid4().int % 10**8:08d}", body=body))
            time.sleep(0.3)
        results["live_update"] = {"runs_ms": live, "p50_ms": round(percentile(live, 50), 1),
                                  "max_ms": max(live)}
        admin = _page(browser, server.base, "admin@example.com")
        results["long_list_update"] = _long_list_update(admin, session, server.base, repeats)
        for done in (ana, bruno, admin):  # one agent's browser, as offline reading is: no other tabs
            done.context.close()
        offline_page = _page(browser, server.base, "ana@example.com")
        results["offline"] = _offline(offline_page, server, ctx, database, repeats)
    return results


def _offline(page, server, ctx, database, repeats: int) -> dict:
    """Offline reload -> list painted, and a queued reply delivered once the server is back."""
    page.wait_for_function("() => navigator.serviceWorker && !!navigator.serviceWorker.controller")
    page.goto("/inbox?tab=mine")  # through the worker: kept for offline
    page.locator("#conversation-list li.row").first.get_by_role("link").click()
    page.wait_for_selector("#conversation-pane textarea[data-draft]")
    page.wait_for_function("() => window.__inboxSocketConnected === true")
    time.sleep(0.3)
    port = server.port
    server.stop()
    reloads = []
    for _ in range(repeats):
        page.reload()
        page.wait_for_function("() => window.__painted !== null")
        reloads.append(round(page.evaluate("() => window.__painted"), 1))
    page.wait_for_selector("#offline-banner:not([hidden])")
    text = f"bench offline {uuid.uuid4().hex[:8]}"
    page.locator("#conversation-pane textarea[data-draft]").fill(text)
    page.locator("#conversation-pane").get_by_role("button", name="Send").click()
    page.wait_for_selector("#conversation-pane .msg.queued")
    restarted = Gunicorn(ctx.workdir, app_env(database), name="browser-offline-again", port=port)
    answered = time.monotonic()
    try:
        page.wait_for_function("""(text) => !document.querySelector('#conversation-pane .msg.queued') &&
            [...document.querySelectorAll('#conversation-pane .msg-body')].some(m => m.textContent === text)""",
                               arg=text, timeout=20_000)
        delivered_ms = round((time.monotonic() - answered) * 1000, 1)
    finally:
        restarted.stop()
    return {"reload_to_painted_ms": reloads, "reload_to_painted_ms_p50": round(percentile(reloads, 50), 1),
            "queued_reply_delivered_after_ms": delivered_ms}


def _inbound_until_listed(page, session, base: str, text: str, **message) -> float:
    """POST a contact's message to the webhook; ms until `text` shows in the page's list (a
    MutationObserver in the page; both clocks are this machine's wall clock)."""
    page.evaluate("""(text) => {
        window.__seen = null;
        const observer = new MutationObserver(() => {
            const list = document.querySelector('#conversation-list');
            if (list && list.textContent.includes(text)) { window.__seen = Date.now(); observer.disconnect(); }
        });
        observer.observe(document.body, {childList: true, subtree: true, characterData: true});
    }""", text)
    t0 = time.time() * 1000
    response = session.post(base + "/api/inbound", timeout=10, json=message,
                            headers={"Authorization": f"Bearer {INBOUND_TOKEN}"})
    if response.status_code not in (200, 201):
        raise RuntimeError(f"inbound answered {response.status_code}")
    page.wait_for_function("() => window.__seen !== null", timeout=10_000)
    return round(page.evaluate("() => window.__seen") - t0, 1)


def _long_list_update(page, session, base: str, repeats: int, loaded: int = 200) -> dict:
    """A live update on a list the agent scrolled through: time, rows and scroll kept."""
    page.goto("/inbox?tab=all")
    page.wait_for_function("() => window.__inboxSocketConnected === true")
    rows = page.locator("#conversation-list li.row")
    rows.first.hover()
    deadline = time.monotonic() + 30
    while rows.count() < loaded and time.monotonic() < deadline:
        page.mouse.wheel(0, 2000)
        time.sleep(0.05)
    page.mouse.wheel(0, -1500)
    time.sleep(0.3)
    runs = []
    for _ in range(repeats):
        before = page.evaluate("""() => ({rows: document.querySelectorAll('#conversation-list li.row').length,
                                          top: document.querySelector('#conversation-list').scrollTop})""")
        name = f"Long list {uuid.uuid4().hex[:8]}"
        ms = _inbound_until_listed(page, session, base, name,
                                   phone=f"+55117{uuid.uuid4().int % 10**8:08d}", name=name, body="hi")
        time.sleep(0.3)  # let the swap settle before reading the place
        after = page.evaluate("""() => ({rows: document.querySelectorAll('#conversation-list li.row').length,
                                         top: document.querySelector('#conversation-list').scrollTop})""")
        runs.append({"ms": ms, "rows_before": before["rows"], "rows_after": after["rows"],
                     "scroll_moved_px": round(abs(after["top"] - before["top"]), 1)})
    return {"loaded_rows": runs[0]["rows_before"], "runs": runs,
            "p50_ms": round(percentile([r["ms"] for r in runs], 50), 1),
            "rows_kept": all(r["rows_after"] >= r["rows_before"] for r in runs),
            "max_scroll_moved_px": max(r["scroll_moved_px"] for r in runs)}


def _p(runs, key, p):
    return round(percentile([r[key] for r in runs if r[key] is not None], p), 2)


def chart(results: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    repeat = results["repeat_visit"]
    labels = ["first visit:\nnavigation -> painted", "repeat visit:\nnavigation -> painted",
              "repeat visit:\nshim start -> painted"]
    values = [results["first_visit"]["nav_to_painted_ms"], repeat["nav_to_painted_ms_p50"],
              repeat["shim_to_painted_ms_p50"]]
    ax1.barh(labels, values, color=["#64748b", "#2563eb", "#16a34a"])
    ax1.axvline(500, color="#dc2626", linestyle="--", label="promise: first load 500 ms")
    ax1.axvline(5, color="#d97706", linestyle=":", label="promise: repeat 5 ms")
    ax1.set_xscale("log")
    ax1.set_xlabel(f"ms (log); repeat visits made {repeat['fragment_requests_max']} fragment requests at most")
    ax1.invert_yaxis()
    ax1.legend(fontsize=7)
    live = results["live_update"]["runs_ms"]
    ax2.plot(range(1, len(live) + 1), live, "o-", label="change -> Bruno's DOM")
    ax2.axhline(50, color="#dc2626", linestyle="--", label="promise: 50 ms")
    ax2.set_xlabel("change #")
    ax2.set_ylabel("ms")
    ax2.set_ylim(bottom=0)
    ax2.legend(fontsize=7)
    save_chart(fig, "6. In the browser (chromium)", path)


def summary(results: dict) -> list[tuple[str, str, str]]:
    repeat, live = results["repeat_visit"], results["live_update"]
    return [
        ("browser", "first visit", f"navigation -> list painted {results['first_visit']['nav_to_painted_ms']} ms, "
                                   f"{results['first_visit']['fragment_requests']} fragment requests"),
        ("browser", "repeat visit", f"shim start -> list painted p50 {repeat['shim_to_painted_ms_p50']} ms "
                                    f"(navigation -> painted {repeat['nav_to_painted_ms_p50']} ms), "
                                    f"{repeat['fragment_requests_max']} fragment requests"),
        ("browser", "change -> other agent's DOM", f"p50 {live['p50_ms']} ms, max {live['max_ms']} ms "
                                                   "(few heard it: refetched at once)"),
        ("browser", "offline reload -> list painted",
         f"p50 {results['offline']['reload_to_painted_ms_p50']} ms (server stopped; service worker + snapshots)"),
        ("browser", "reply sent offline -> delivered",
         f"{results['offline']['queued_reply_delivered_after_ms']} ms after the server answered again"),
        ("browser", f"change -> a list scrolled to {results['long_list_update']['loaded_rows']} rows",
         f"p50 {results['long_list_update']['p50_ms']} ms, rows kept: {results['long_list_update']['rows_kept']}, "
         f"scroll moved at most {results['long_list_update']['max_scroll_moved_px']} px"),
    ]
