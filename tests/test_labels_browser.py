"""Labels as two agents see them, in Chromium against a live gunicorn: Ana puts a label on her
conversation from the pane; the admin, who has the same conversation in a list, sees it on the
row without reloading, filters the list by it, renames the tag in another tab (every list and
pane showing it follows, live), and sees it go when Ana takes it off."""
from __future__ import annotations

import re

import pytest

from tests.live import LiveServer, log_in, pages, tab


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = LiveServer(tmp_path_factory.mktemp("labels-browser"),
                      seed=("--agents", "3", "--conversations", "40", "--messages", "120"))
    live.start()
    yield live
    live.cleanup()


@pytest.fixture
def open_page(browser, server):
    with pages(browser, server.base) as open_page:
        yield open_page


def connected(page) -> None:
    page.wait_for_function("() => window.__inboxSocketConnected === true", timeout=10_000)


def chip(scope, name: str):
    return scope.locator(".label-chip").filter(has_text=re.compile(rf"^\s*{re.escape(name)}\s*×?\s*$"))


def test_labels_are_put_on_filtered_by_renamed_and_taken_off_live_across_two_agents(open_page, server):
    from playwright.sync_api import expect

    ana = open_page()
    log_in(ana, "ana@example.com")
    tab(ana, "Mine").click()
    first = ana.locator("#conversation-list li.row").first
    expect(first).to_be_visible()
    name = first.locator(".name").inner_text()
    conversation_id = int(first.get_attribute("data-conversation-id"))
    first.get_by_role("link").click()
    pane = ana.locator("#conversation-pane")
    expect(pane.get_by_role("heading", name=name)).to_be_visible()
    connected(ana)

    admin = open_page()
    log_in(admin, "admin@example.com")
    tab(admin, "All").click()
    search = admin.get_by_role("searchbox")
    search.click()
    admin.keyboard.type(name)  # as a person looks for it
    admin_row = admin.locator(f"#row-{conversation_id}")
    expect(admin_row).to_be_visible()
    expect(admin_row.locator(".label-chip")).to_have_count(0)
    connected(admin)
    admin.evaluate("() => { window.__sameDocument = true; }")

    # Ana: "+ Label…" → urgent → Add.
    pane.get_by_label("Add a label").select_option("urgent")
    pane.get_by_role("button", name="Add", exact=True).click()
    expect(chip(pane, "urgent")).to_be_visible()
    expect(pane.get_by_label("Add a label").locator("option", has_text="urgent")).to_have_count(0)
    expect(chip(ana.locator(f"#row-{conversation_id}"), "urgent")).to_be_visible()
    # The admin's list heard it: the row shows the label, no reload.
    expect(chip(admin_row, "urgent")).to_be_visible(timeout=5_000)
    colour = chip(admin_row, "urgent").evaluate("el => getComputedStyle(el, '::before').backgroundColor")
    assert colour == "rgb(220, 38, 38)", colour

    # The admin filters the list by the label (the search cleared): only labelled conversations.
    search.fill("")
    admin.get_by_label("Label", exact=True).select_option("urgent")
    expect(admin.locator("#conversation-list li.row")).to_have_count(1, timeout=5_000)
    expect(admin_row).to_be_visible()

    # In another tab the admin renames the tag: both agents' lists and Ana's pane follow live.
    settings = admin.context.new_page()
    settings.goto("/admin/tags")
    form = settings.locator("form.inline-form").filter(has=settings.locator('input[name="name"][value="urgent"]'))
    form.get_by_label("Name").fill("urgent-now")
    form.get_by_role("button", name="Save").click()
    expect(settings.locator('input[name="name"][value="urgent-now"]')).to_have_count(1)
    settings.close()
    expect(chip(admin_row, "urgent-now")).to_be_visible(timeout=5_000)
    expect(chip(ana.locator(f"#row-{conversation_id}"), "urgent-now")).to_be_visible(timeout=5_000)
    expect(chip(pane, "urgent-now")).to_be_visible(timeout=5_000)

    # Ana takes it off: gone from her pane, and from the admin's filtered list.
    pane.get_by_role("button", name="Remove label urgent-now").click()
    expect(pane.locator(".labels .label-chip")).to_have_count(0)
    expect(ana.locator(f"#row-{conversation_id} .label-chip")).to_have_count(0, timeout=5_000)
    expect(admin.locator(f"#row-{conversation_id}")).to_have_count(0, timeout=5_000)
    assert admin.evaluate("() => window.__sameDocument === true"), "the admin's page was reloaded"
    ana.screenshot(path="/tmp/labels.png")
