"""The channel admin pages: channels made and edited through the forms, stored in the database,
their secrets never shown back (issue: "Channels are configured by an admin")."""
from __future__ import annotations

import html
import re

import pytest
from sqlalchemy import select

from chat import catalog
from chat.extensions import db
from chat.models import Channel, Conversation
from tests.live import LiveServer, log_in
from tests.test_admin import Tables, anonymous, form_error, snapshot
from tests.test_csp import visit, watched_page  # noqa: F401 (watched_page: a fixture, used below)

WEBHOOK_FORM = {"kind": "webhook", "name": "Provider", "url": "https://provider.example/send",
                "secret": "hook-signing-secret-1", "active": "on"}
WHATSAPP_FORM = {"kind": "whatsapp", "name": "WhatsApp BR", "phone_number_id": "106540352242922",
                 "access_token": "EAAG-access-token-secret-2", "app_secret": "meta-app-secret-3",
                 "verify_token": "verify-token-secret-4", "active": "on"}
FORMS = {"webhook": WEBHOOK_FORM, "whatsapp": WHATSAPP_FORM}
SECRETS = ("hook-signing-secret-1", "EAAG-access-token-secret-2", "meta-app-secret-3", "verify-token-secret-4",
           "typed-but-refused-secret")


def stored(app, name: str) -> Channel | None:
    with app.app_context():
        channel = db.session.scalar(select(Channel).where(Channel.name == name))
        if channel is not None:
            db.session.expunge(channel)
        return channel


def add(admin, form: dict, **change):
    return admin.post("/admin/channels/new", {**form, **change}, htmx=False)


def assert_no_secret(response) -> None:
    page = response.get_data(as_text=True)
    for secret in SECRETS:
        assert secret not in page
    # Every password input is empty.
    inputs = re.findall(r'<input type="password"[^>]*>', page)
    assert inputs == re.findall(r'<input type="password" name="\w+" value=""[^>]*>', page)


@pytest.fixture
def admin(world, login):
    return login("admin@example.com")


@pytest.fixture
def two(app, admin):
    """A webhook channel and a WhatsApp channel, made through the form: their ids."""
    for form in (WEBHOOK_FORM, WHATSAPP_FORM):
        assert add(admin, form).status_code == 302
    return {kind: stored(app, form["name"]).id for kind, form in FORMS.items()}


# --- who may open them -------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["/admin/channels", "/admin/channels?kind=whatsapp", "/admin/channels/{webhook}"])
def test_channel_pages_need_an_admin(app, two, login, url):
    url = url.format(**two)
    response = app.test_client().get(url)
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    response = login("ana@example.com").get(url)
    assert response.status_code == 403
    assert "Only admins can open this page." in response.get_data(as_text=True)


@pytest.mark.parametrize("url, data", [
    ("/admin/channels/new", {**WEBHOOK_FORM, "name": "Another"}),
    ("/admin/channels/{webhook}", {**WEBHOOK_FORM, "secret": "", "url": "https://elsewhere.example/"}),
    ("/admin/channels/{whatsapp}/delete", {}),
])
def test_channel_posts_need_an_admin_and_a_csrf_token(app, two, login, url, data):
    url = url.format(**two)
    before = snapshot(app)
    response = anonymous(app).post(url, data, htmx=False)
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    assert login("ana@example.com").post(url, data, htmx=False).status_code == 403
    response = login("admin@example.com").post(url, data, htmx=False, csrf=False)
    assert response.status_code == 400
    assert "Form expired" in response.get_data(as_text=True)
    assert snapshot(app) == before


# --- making and listing them -------------------------------------------------------------------


@pytest.mark.parametrize("kind, settings", [
    ("webhook", {"url": "https://provider.example/send", "secret": "hook-signing-secret-1"}),
    ("whatsapp", {"phone_number_id": "106540352242922", "access_token": "EAAG-access-token-secret-2",
                  "app_secret": "meta-app-secret-3", "verify_token": "verify-token-secret-4"}),
])
def test_create_channel(app, admin, kind, settings):
    response = add(admin, FORMS[kind])
    assert response.status_code == 302 and response.headers["Location"] == "/admin/channels"
    page = admin.get("/admin/channels")
    assert f"Saved {FORMS[kind]['name']}." in page.get_data(as_text=True)
    assert_no_secret(page)
    channel = stored(app, FORMS[kind]["name"])
    assert (channel.kind, channel.settings, channel.active, channel.is_default) == (kind, settings, True, False)


def test_create_without_optional_settings(app, admin):
    response = add(admin, {"kind": "webhook", "name": "Unsigned", "url": "http://10.0.0.5:8080/hook"})
    assert response.status_code == 302
    channel = stored(app, "Unsigned")
    assert (channel.settings, channel.active) == ({"url": "http://10.0.0.5:8080/hook"}, False)  # unchecked


def test_list_shows_channels_without_their_secrets(app, two, admin):
    response = admin.get("/admin/channels")
    assert response.status_code == 200
    assert_no_secret(response)
    rows = {r[0]: r for r in Tables(response.get_data(as_text=True)).tables["Channels"][1:]}
    assert rows["Provider"][1:3] == ["Generic webhook", "URL replies are POSTed to: https://provider.example/send"]
    assert rows["Provider"][3] == "Signing secret (HMAC-SHA256): set"
    assert rows["Provider"][4:6] == ["active", ""]
    wa = rows["WhatsApp BR"]
    assert wa[1] == "WhatsApp Cloud API" and "Phone number ID: 106540352242922" in wa[2]
    assert re.sub(r"\s+", " ", wa[3]) == "Access token: set App secret (webhook signatures): set Verify token: set"
    assert f'href="/admin/channels/{two["whatsapp"]}"' in response.get_data(as_text=True)


def test_list_shows_the_urls_providers_call(admin):
    page = admin.get("/admin/channels").get_data(as_text=True)
    for url in ("http://localhost/webhooks/whatsapp", "POST http://localhost/api/inbound",
                "POST http://localhost/api/status"):
        assert url in page
    assert "No channel yet" in page


def test_edit_page_shows_only_the_urls_of_its_kind(two, admin):
    page = admin.get(f"/admin/channels/{two['whatsapp']}").get_data(as_text=True)
    assert "http://localhost/webhooks/whatsapp" in page and "/api/inbound" not in page
    page = admin.get(f"/admin/channels/{two['webhook']}").get_data(as_text=True)
    assert "http://localhost/api/inbound" in page and "/webhooks/whatsapp" not in page


@pytest.mark.parametrize("query, shown, hidden", [
    ("", "url", "phone_number_id"),
    ("?kind=webhook", "url", "phone_number_id"),
    ("?kind=whatsapp", "phone_number_id", "url"),
    ("?kind=sms", "url", "phone_number_id"),
])
def test_the_kind_select_asks_for_that_kinds_fields(admin, query, shown, hidden):
    page = admin.get(f"/admin/channels{query}", htmx=True).get_data(as_text=True)
    fields = page[page.index('id="channel-settings"'):]
    assert f'name="{shown}"' in fields and f'name="{hidden}"' not in fields
    assert 'hx-get="/admin/channels" hx-target="#channel-settings"' in page


def test_channel_made_from_the_environment_says_so_and_hides_its_secret(app, admin):
    with app.app_context():
        catalog.channels_from_environment({"CHANNEL_WEBHOOK_URL": "https://env.example/hook",
                                           "CHANNEL_WEBHOOK_SECRET": "hook-signing-secret-1"})
        channel_id = db.session.scalar(select(Channel.id))
    for url in ("/admin/channels", f"/admin/channels/{channel_id}"):
        response = admin.get(url)
        assert_no_secret(response)
        assert "from environment variables: restarting the app sets" in response.get_data(as_text=True)


# --- editing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, hints", [
    ("webhook", ["set — leave blank to keep"]),
    ("whatsapp", ["set — leave blank to keep"] * 3),
])
def test_edit_form_shows_settings_but_never_a_secret(two, admin, kind, hints):
    response = admin.get(f"/admin/channels/{two[kind]}")
    assert response.status_code == 200
    assert_no_secret(response)
    page = response.get_data(as_text=True)
    assert f"Edit {FORMS[kind]['name']}" in page
    assert re.findall(r'<span class="muted">(set — leave blank to keep|not set)</span>', page) == hints
    first = "url" if kind == "webhook" else "phone_number_id"
    assert re.search(rf'name="{first}"\s+value="{re.escape(FORMS[kind][first])}"', page)
    assert re.search(r'name="active" checked', page) and not re.search(r'name="is_default" checked', page)


def test_edit_form_says_not_set_for_a_missing_secret(app, admin):
    add(admin, WEBHOOK_FORM, secret="")
    page = admin.get(f"/admin/channels/{stored(app, 'Provider').id}").get_data(as_text=True)
    assert re.findall(r'<span class="muted">(set — leave blank to keep|not set)</span>', page) == ["not set"]
    assert re.search(r'<input type="password" name="secret" value=""[^>]*>', page)


def test_edit_with_blank_secrets_keeps_them(app, two, admin):
    response = admin.post(f"/admin/channels/{two['whatsapp']}", {
        "name": "WhatsApp Brasil", "phone_number_id": "999", "access_token": "", "app_secret": "",
        "verify_token": "", "graph_url": "https://graph.example/v1", "active": "on",
    }, htmx=False)
    assert response.status_code == 302 and response.headers["Location"] == "/admin/channels"
    channel = stored(app, "WhatsApp Brasil")
    assert channel.settings == {"phone_number_id": "999", "access_token": "EAAG-access-token-secret-2",
                                "app_secret": "meta-app-secret-3", "verify_token": "verify-token-secret-4",
                                "graph_url": "https://graph.example/v1"}


def test_edit_with_a_new_secret_replaces_only_that_one(app, two, admin):
    response = admin.post(f"/admin/channels/{two['whatsapp']}", {
        **WHATSAPP_FORM, "access_token": "a-brand-new-token", "app_secret": "", "verify_token": "",
    }, htmx=False)
    assert response.status_code == 302
    settings = stored(app, "WhatsApp BR").settings
    assert (settings["access_token"], settings["app_secret"], settings["verify_token"]) == (
        "a-brand-new-token", "meta-app-secret-3", "verify-token-secret-4")
    assert "a-brand-new-token" not in admin.get(f"/admin/channels/{two['whatsapp']}").get_data(as_text=True)


def test_edit_can_deactivate_and_keeps_the_kind(app, two, admin):
    response = admin.post(f"/admin/channels/{two['webhook']}", {**WEBHOOK_FORM, "kind": "whatsapp", "secret": "",
                                                                 "active": ""}, htmx=False)
    assert response.status_code == 302
    channel = stored(app, "Provider")
    assert (channel.kind, channel.active, channel.settings["secret"]) == ("webhook", False, "hook-signing-secret-1")


def test_making_one_channel_default_undefaults_the_other(app, admin):
    add(admin, WEBHOOK_FORM, is_default="on")
    add(admin, WHATSAPP_FORM, is_default="on")
    assert (stored(app, "Provider").is_default, stored(app, "WhatsApp BR").is_default) == (False, True)
    response = admin.post(f"/admin/channels/{stored(app, 'Provider').id}", {**WEBHOOK_FORM, "secret": "",
                                                                           "is_default": "on"}, htmx=False)
    assert response.status_code == 302
    assert (stored(app, "Provider").is_default, stored(app, "WhatsApp BR").is_default) == (True, False)
    rows = Tables(admin.get("/admin/channels").get_data(as_text=True)).tables["Channels"][1:]
    assert [(r[0], r[5]) for r in rows] == [("Provider", "default"), ("WhatsApp BR", "")]


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, change, message", [
    ("webhook", {"url": "ftp://provider.example/send"}, "URL replies are POSTed to must be an http:// or https:// URL"),
    ("webhook", {"url": "provider.example"}, "URL replies are POSTed to must be an http:// or https:// URL"),
    ("webhook", {"url": ""}, "URL replies are POSTed to is required"),
    ("webhook", {"url": "https://provider.example/\x07"},
     "URL replies are POSTed to must not contain control characters"),
    ("webhook", {"url": "https://provider.example/" + "x" * 1000},
     "URL replies are POSTed to must be at most 1000 characters"),
    ("webhook", {"name": ""}, "name is required"),
    ("webhook", {"name": "   "}, "name is required"),
    ("webhook", {"name": "x" * 81}, "name must be at most 80 characters"),
    ("webhook", {"kind": "sms"}, "kind must be one of webhook, whatsapp"),
    ("webhook", {"kind": ""}, "kind must be one of webhook, whatsapp"),
    ("whatsapp", {"phone_number_id": "12ab"}, "Phone number ID must be digits"),
    ("whatsapp", {"phone_number_id": ""}, "Phone number ID is required"),
    ("whatsapp", {"access_token": ""}, "Access token is required"),
    ("whatsapp", {"app_secret": ""}, "App secret (webhook signatures) is required"),
    ("whatsapp", {"verify_token": ""}, "Verify token is required"),
    ("whatsapp", {"graph_url": "graph.facebook.com"},
     "Graph API base URL (blank: Meta's) must be an http:// or https:// URL"),
])
def test_create_with_bad_input_shows_error_and_changes_nothing(app, admin, kind, change, message):
    before = snapshot(app)
    form = {**FORMS[kind], **change}
    for field, _, secret in catalog.CHANNEL_FIELDS.get(form["kind"], ()):
        if secret and form.get(field):
            form[field] = "typed-but-refused-secret"  # typed, then never shown back
    response = add(admin, form)
    assert response.status_code == 400
    assert form_error(response) == message
    assert snapshot(app) == before
    assert_no_secret(response)
    page = response.get_data(as_text=True)
    assert "Add a channel" in page
    shown = ["name"] + [f for f, _, secret in catalog.CHANNEL_FIELDS.get(form["kind"], ()) if not secret]
    for field in shown:  # the form keeps what was typed, secrets aside
        if form.get(field, "").strip() and "\x07" not in form[field]:
            assert f'value="{html.escape(form[field])}"' in page


def test_create_with_a_taken_name_is_refused(app, two, admin):
    before = snapshot(app)
    response = add(admin, {**WEBHOOK_FORM, "name": " WhatsApp BR "})
    assert response.status_code == 400
    assert form_error(response) == "a channel named 'WhatsApp BR' already exists"
    assert snapshot(app) == before
    assert_no_secret(response)


@pytest.mark.parametrize("change, message", [
    ({"url": "nope"}, "URL replies are POSTed to must be an http:// or https:// URL"),
    ({"url": ""}, "URL replies are POSTed to is required"),
    ({"name": ""}, "name is required"),
    ({"name": "WhatsApp BR"}, "a channel named 'WhatsApp BR' already exists"),
])
def test_edit_with_bad_input_shows_error_and_changes_nothing(app, two, admin, change, message):
    before = snapshot(app)
    form = {**WEBHOOK_FORM, "secret": "typed-but-refused-secret", **change}
    response = admin.post(f"/admin/channels/{two['webhook']}", form, htmx=False)
    assert response.status_code == 400
    assert form_error(response) == message
    assert snapshot(app) == before
    assert_no_secret(response)
    page = response.get_data(as_text=True)
    assert "Edit Provider" in page  # the stored name, not the refused one
    assert "set — leave blank to keep" in page  # the stored secret is still there


def test_unknown_channel_is_404_and_changes_nothing(app, two, admin):
    before = snapshot(app)
    assert admin.get("/admin/channels/9999").status_code == 404
    assert admin.post("/admin/channels/9999", WEBHOOK_FORM, htmx=False).status_code == 404
    assert admin.post("/admin/channels/9999/delete", htmx=False).status_code == 404
    assert snapshot(app) == before


# --- deleting ----------------------------------------------------------------------------------


def test_delete_channel(app, two, admin):
    response = admin.post(f"/admin/channels/{two['webhook']}/delete", htmx=False)
    assert response.status_code == 302 and response.headers["Location"] == "/admin/channels"
    assert "Deleted the channel." in admin.get("/admin/channels").get_data(as_text=True)
    assert stored(app, "Provider") is None and stored(app, "WhatsApp BR") is not None
    assert admin.get(f"/admin/channels/{two['webhook']}").status_code == 404


def test_deleting_a_channel_keeps_the_conversations_it_carried(app, two, world, admin):
    with app.app_context():
        db.session.get(Conversation, world.pending_support).channel_id = two["whatsapp"]
        db.session.commit()
    assert admin.post(f"/admin/channels/{two['whatsapp']}/delete", htmx=False).status_code == 302
    with app.app_context():
        conversation = db.session.get(Conversation, world.pending_support)
        assert conversation is not None and conversation.channel_id is None


# --- in a real browser: the Content-Security-Policy, and the kind select swapping fields ----------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = LiveServer(tmp_path_factory.mktemp("channel-admin"), seed=("--agents", "2", "--conversations", "2"))
    live.env.update(CHANNEL_WEBHOOK_URL="https://provider.example/send", CHANNEL_WEBHOOK_SECRET="hook-signing-secret-1")
    live.start()
    yield live
    live.cleanup()


def test_channel_pages_in_a_browser(watched_page):
    from playwright.sync_api import expect

    page = watched_page
    log_in(page, "admin@example.com")
    visit(page, "/admin/channels")
    expect(page.get_by_role("cell", name="Webhook (environment)", exact=False)).to_be_visible()
    page.get_by_label("Kind").select_option("whatsapp")  # htmx swaps in the WhatsApp fields
    expect(page.get_by_label("Phone number ID")).to_be_visible()
    expect(page.locator("input[name=url]")).to_have_count(0)
    page.get_by_label("Name").fill("WhatsApp BR")
    page.get_by_label("Phone number ID").fill("106540352242922")
    page.get_by_label("Access token").fill("EAAG-access-token-secret-2")
    page.get_by_label("App secret (webhook signatures)").fill("meta-app-secret-3")
    page.get_by_label("Verify token").fill("verify-token-secret-4")
    page.get_by_role("button", name="Add channel").click()
    expect(page.get_by_text("Saved WhatsApp BR.")).to_be_visible()
    page.get_by_role("row", name=re.compile("WhatsApp BR")).get_by_role("link", name="Edit").click()
    expect(page.get_by_role("heading", name="Edit WhatsApp BR")).to_be_visible()
    expect(page.get_by_label("Access token")).to_have_value("")
    page.wait_for_load_state("networkidle")
    content = page.content()
    assert not any(secret in content for secret in SECRETS)
