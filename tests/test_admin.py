"""Admin pages (departments, tags, quick replies, agents), the contacts list and the dashboard."""
from __future__ import annotations

import html
import re
from html.parser import HTMLParser

import pytest
from sqlalchemy import select

from chat.extensions import db
from chat.models import Conversation, Department, QuickReply, Tag, User
from tests.conftest import CSRF_META, PASSWORD, Agent, make_user

ERROR_RE = re.compile(r'<p class="form-error" role="alert">(.*?)</p>', re.S)


def form_error(response) -> str | None:
    match = ERROR_RE.search(response.get_data(as_text=True))
    return html.unescape(match.group(1)).strip() if match else None


def snapshot(app) -> dict:
    """Every row of every table: what 'changes nothing' compares."""
    with app.app_context():
        return {
            table.name: sorted(
                tuple(row) for row in db.session.execute(table.select().order_by(*table.primary_key))
            )
            for table in db.metadata.sorted_tables
        }


def one(app, model, **where):
    with app.app_context():
        return db.session.scalar(select(model).filter_by(**where))


def anonymous(app) -> Agent:
    """A signed-out browser that has a valid CSRF token, so only the login check can stop it."""
    agent = Agent(app.test_client())
    agent.csrf = CSRF_META.search(agent.client.get("/login").get_data(as_text=True)).group(1)
    return agent


def can_log_in(app, email: str, password: str) -> bool:
    return Agent(app.test_client()).login(email, password).status_code == 302


class Tables(HTMLParser):
    """Cell texts of every <tr> on a page, grouped by the nearest heading above the table."""

    def __init__(self, text: str):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.heading = ""
        self._in_h2 = self._row = self._cell = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        if tag in ("h1", "h2"):
            self._in_h2, self.heading = True, ""
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("h1", "h2"):
            self._in_h2 = False
        elif tag in ("td", "th") and self._cell is not None:
            self._row.append(self._cell.strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables.setdefault(self.heading, []).append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._in_h2:
            self.heading += data.strip()
        if self._cell is not None:
            self._cell += data


# --- who may open the admin pages -------------------------------------------------------------

ADMIN_GETS = ["/admin/", "/admin/departments", "/admin/tags", "/admin/quick-replies", "/admin/agents",
              "/admin/agents/{ana}"]
ADMIN_POSTS = [
    ("/admin/departments", {"name": "Returns", "color": "#123456"}),
    ("/admin/departments/{support}", {"name": "Renamed", "color": "#123456"}),
    ("/admin/departments/{support}/delete", {}),
    ("/admin/tags", {"name": "vip", "color": "#123456"}),
    ("/admin/quick-replies", {"shortcut": "bye", "body": "Bye!"}),
    ("/admin/quick-replies/1/delete", {}),
    ("/admin/agents/new", {"email": "new@example.com", "name": "New", "role": "admin",
                           "password": "long-enough"}),
    ("/admin/agents/{ana}", {"email": "ana@example.com", "name": "Ana", "role": "admin", "active": "on"}),
]


@pytest.mark.parametrize("url", ADMIN_GETS)
def test_admin_pages_need_an_admin(app, world, login, url):
    url = url.format(**vars(world))
    response = app.test_client().get(url)
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    response = login("ana@example.com").get(url)
    assert response.status_code == 403
    assert "Only admins can open this page." in response.get_data(as_text=True)


@pytest.mark.parametrize("url, data", ADMIN_POSTS)
def test_admin_posts_need_an_admin_and_a_csrf_token(app, world, login, url, data):
    url = url.format(**vars(world))
    before = snapshot(app)
    response = anonymous(app).post(url, data, htmx=False)
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    assert login("ana@example.com").post(url, data, htmx=False).status_code == 403
    response = login("admin@example.com").post(url, data, htmx=False, csrf=False)
    assert response.status_code == 400
    assert "Form expired" in response.get_data(as_text=True)
    assert snapshot(app) == before


def test_admin_home_opens_departments(world, login):
    response = login("admin@example.com").get("/admin/")
    assert response.status_code == 302
    assert response.headers["Location"] == "/admin/departments"


def test_unknown_section_is_404(world, login):
    admin = login("admin@example.com")
    assert admin.get("/admin/widgets").status_code == 404
    assert admin.post("/admin/widgets", {"name": "x"}, htmx=False).status_code == 404


# --- departments, tags, quick replies ----------------------------------------------------------


def test_sections_list_their_rows(app, world, login):
    with app.app_context():
        db.session.add(Tag(name="urgent", color="#dc2626"))
        db.session.commit()
    admin = login("admin@example.com")
    departments = admin.get("/admin/departments").get_data(as_text=True)
    assert re.findall(r'name="name" value="([^"]+)"', departments) == ["Billing", "Sales", "Support"]
    assert 'value="#16a34a"' in departments
    tags = admin.get("/admin/tags").get_data(as_text=True)
    assert re.findall(r'name="name" value="([^"]+)"', tags) == ["urgent"]
    replies = admin.get("/admin/quick-replies").get_data(as_text=True)
    assert 'value="hello"' in replies and "Hello! How can I help?" in replies


def test_empty_section_says_so(world, login):
    page = login("admin@example.com").get("/admin/tags").get_data(as_text=True)
    assert "Nothing here yet" in page


@pytest.mark.parametrize("section, model, form, stored", [
    ("departments", Department, {"name": "  Returns ", "color": "#AABBCC"}, {"name": "Returns", "color": "#aabbcc"}),
    ("tags", Tag, {"name": "vip", "color": "#9333ea"}, {"name": "vip", "color": "#9333ea"}),
    ("quick-replies", QuickReply, {"shortcut": "bye", "body": "Have a great day!"},
     {"shortcut": "bye", "body": "Have a great day!"}),
])
def test_create(app, world, login, section, model, form, stored):
    admin = login("admin@example.com")
    response = admin.post(f"/admin/{section}", form, htmx=False)
    assert response.status_code == 302 and response.headers["Location"] == f"/admin/{section}"
    row = one(app, model, **stored)
    assert row is not None
    page = admin.get(f"/admin/{section}").get_data(as_text=True)
    assert html.escape(f"Saved {form[next(iter(form))]}.") in page  # the flash
    assert f'action="/admin/{section}/{row.id}"' in page


@pytest.mark.parametrize("section, model, create, update", [
    ("departments", Department, {"name": "Returns", "color": "#111111"}, {"name": "Refunds", "color": "#222222"}),
    ("tags", Tag, {"name": "vip", "color": "#111111"}, {"name": "gold", "color": "#222222"}),
    ("quick-replies", QuickReply, {"shortcut": "bye", "body": "Bye"}, {"shortcut": "ciao", "body": "Ciao!"}),
])
def test_update(app, world, login, section, model, create, update):
    admin = login("admin@example.com")
    admin.post(f"/admin/{section}", create, htmx=False)
    item_id = one(app, model, **create).id
    response = admin.post(f"/admin/{section}/{item_id}", update, htmx=False)
    assert response.status_code == 302
    with app.app_context():
        row = db.session.get(model, item_id)
        assert {k: getattr(row, k) for k in update} == update
        assert db.session.scalar(select(model).filter_by(**create)) is None


@pytest.mark.parametrize("section, model, create", [
    ("departments", Department, {"name": "Returns", "color": "#111111"}),
    ("tags", Tag, {"name": "vip", "color": "#111111"}),
    ("quick-replies", QuickReply, {"shortcut": "bye", "body": "Bye"}),
])
def test_delete(app, world, login, section, model, create):
    admin = login("admin@example.com")
    admin.post(f"/admin/{section}", create, htmx=False)
    item_id = one(app, model, **create).id
    response = admin.post(f"/admin/{section}/{item_id}/delete", htmx=False)
    assert response.status_code == 302 and response.headers["Location"] == f"/admin/{section}"
    with app.app_context():
        assert db.session.get(model, item_id) is None
    assert "Deleted." in admin.get(f"/admin/{section}").get_data(as_text=True)


def test_deleting_a_department_keeps_its_conversations_and_agents(app, world, login):
    response = login("admin@example.com").post(f"/admin/departments/{world.support}/delete", htmx=False)
    assert response.status_code == 302
    with app.app_context():
        assert db.session.get(Department, world.support) is None
        pending = db.session.get(Conversation, world.pending_support)
        assert pending is not None and pending.department_id is None
        ana = db.session.get(User, world.ana)
        assert [d.name for d in ana.departments] == ["Sales"]


@pytest.mark.parametrize("section", ["departments", "tags", "quick-replies"])
def test_update_or_delete_unknown_item_is_404_and_changes_nothing(app, world, login, section):
    admin = login("admin@example.com")
    before = snapshot(app)
    form = {"name": "X", "color": "#123456", "shortcut": "x", "body": "x"}
    assert admin.post(f"/admin/{section}/9999", form, htmx=False).status_code == 404
    assert admin.post(f"/admin/{section}/9999/delete", htmx=False).status_code == 404
    assert snapshot(app) == before


@pytest.fixture
def tagged(app, world):
    with app.app_context():
        db.session.add(Tag(name="urgent", color="#dc2626"))
        db.session.commit()
    return world


@pytest.mark.parametrize("section, form, message", [
    ("departments", {"name": "", "color": "#123456"}, "name is required"),
    ("departments", {"color": "#123456"}, "name is required"),
    ("departments", {"name": "x" * 81, "color": "#123456"}, "name must be at most 80 characters"),
    ("departments", {"name": "Returns", "color": "red"}, "colour must look like #1a2b3c"),
    ("departments", {"name": "Returns", "color": "#12345"}, "colour must look like #1a2b3c"),
    ("departments", {"name": "Sales", "color": "#123456"}, "a department named 'Sales' already exists"),
    ("departments", {"name": " Sales ", "color": "#123456"}, "a department named 'Sales' already exists"),
    ("tags", {"name": "", "color": "#123456"}, "name is required"),
    ("tags", {"name": "x" * 61, "color": "#123456"}, "name must be at most 60 characters"),
    ("tags", {"name": "vip", "color": "#GGGGGG"}, "colour must look like #1a2b3c"),
    ("tags", {"name": "urgent", "color": "#123456"}, "a tag named 'urgent' already exists"),
    ("quick-replies", {"shortcut": "", "body": "Hi"}, "shortcut is required"),
    ("quick-replies", {"shortcut": "hi", "body": "  "}, "text is required"),
    ("quick-replies", {"shortcut": "x" * 41, "body": "Hi"}, "shortcut must be at most 40 characters"),
    ("quick-replies", {"shortcut": "hello", "body": "Hi"}, "a quick reply with shortcut 'hello' already exists"),
])
def test_create_with_bad_input_shows_error_and_changes_nothing(app, tagged, login, section, form, message):
    admin = login("admin@example.com")
    before = snapshot(app)
    response = admin.post(f"/admin/{section}", form, htmx=False)
    assert response.status_code == 400
    assert form_error(response) == message
    assert snapshot(app) == before
    # The form keeps what was typed so it can be corrected (bad colours fall back to the default).
    for field, value in form.items():
        if value.strip() and field != "color":
            assert html.escape(value) in response.get_data(as_text=True)


@pytest.mark.parametrize("form, message", [
    ({"name": "", "color": "#123456"}, "name is required"),
    ({"name": "Help desk", "color": "green"}, "colour must look like #1a2b3c"),
    ({"name": "Sales", "color": "#123456"}, "a department named 'Sales' already exists"),
])
def test_update_with_bad_input_shows_error_and_changes_nothing(app, world, login, form, message):
    admin = login("admin@example.com")
    before = snapshot(app)
    response = admin.post(f"/admin/departments/{world.support}", form, htmx=False)
    assert response.status_code == 400
    assert form_error(response) == message
    assert snapshot(app) == before
    # The list still shows the stored names, not the rejected edit.
    names = re.findall(r'name="name" value="([^"]+)"', response.get_data(as_text=True))
    assert names[:3] == ["Billing", "Sales", "Support"]


# --- agents ------------------------------------------------------------------------------------


def test_agents_list(world, login):
    page = login("admin@example.com").get("/admin/agents").get_data(as_text=True)
    rows = {r[1]: r for r in Tables(page).tables["Agents"] if len(r) > 2 and "@" in r[1]}
    assert set(rows) == {"admin@example.com", "ana@example.com", "bruno@example.com", "carla@example.com"}
    assert rows["ana@example.com"][:5] == ["Ana Costa", "ana@example.com", "agent", "Sales, Support", "active"]
    assert rows["admin@example.com"][2:4] == ["admin", "—"]
    assert f'href="/admin/agents/{world.ana}"' in page


def test_create_agent(app, world, login):
    admin = login("admin@example.com")
    response = admin.post("/admin/agents/new", {
        "email": " Dora@Example.com ", "name": "Dora Dias", "role": "agent",
        "department_ids": [str(world.billing), str(world.sales)], "password": "long-enough",
    }, htmx=False)
    assert response.status_code == 302 and response.headers["Location"] == "/admin/agents"
    assert "Saved Dora Dias." in admin.get("/admin/agents").get_data(as_text=True)
    with app.app_context():
        dora = db.session.scalar(select(User).where(User.email == "dora@example.com"))
        assert (dora.name, dora.role, dora.active) == ("Dora Dias", "agent", True)
        assert [d.name for d in dora.departments] == ["Billing", "Sales"]
    assert can_log_in(app, "dora@example.com", "long-enough")


def test_create_admin(app, world, login):
    response = login("admin@example.com").post("/admin/agents/new", {
        "email": "eve@example.com", "name": "Eve", "role": "admin", "password": "long-enough",
    }, htmx=False)
    assert response.status_code == 302
    assert one(app, User, email="eve@example.com").role == "admin"


NEW_AGENT = {"email": "dora@example.com", "name": "Dora", "role": "agent", "password": "long-enough"}


@pytest.mark.parametrize("change, message", [
    ({"password": "short"}, "password must have at least 8 characters"),
    ({"password": ""}, "password must have at least 8 characters"),
    ({"email": "not-an-email"}, "email does not look like an address"),
    ({"email": "dora@example"}, "email does not look like an address"),
    ({"email": "do ra@example.com"}, "email does not look like an address"),
    ({"email": ""}, "email is required"),
    ({"name": ""}, "name is required"),
    ({"name": "x" * 121}, "name must be at most 120 characters"),
    ({"role": "root"}, "role must be one of admin, agent"),
    ({"department_ids": ["9999"]}, "unknown department"),
    ({"email": "ana@example.com"}, "an agent with email ana@example.com already exists"),
    ({"email": "ANA@Example.com"}, "an agent with email ana@example.com already exists"),
])
def test_create_agent_with_bad_input_shows_error_and_changes_nothing(app, world, login, change, message):
    admin = login("admin@example.com")
    before = snapshot(app)
    response = admin.post("/admin/agents/new", {**NEW_AGENT, **change}, htmx=False)
    assert response.status_code == 400
    assert form_error(response) == message
    assert snapshot(app) == before
    page = response.get_data(as_text=True)
    assert "Add an agent" in page and "carla@example.com" in page  # the list is still there


def test_edit_agent_form_shows_current_values(world, login):
    page = login("admin@example.com").get(f"/admin/agents/{world.ana}").get_data(as_text=True)
    assert "Edit Ana Costa" in page
    assert 'name="email" value="ana@example.com"' in page
    checked = re.findall(r'name="department_ids" value="(\d+)" checked', page)
    assert sorted(map(int, checked)) == sorted([world.support, world.sales])
    assert re.search(r'name="active" checked', page)
    assert re.search(r'<option value="agent" selected>', page)


def test_edit_unknown_agent_is_404(app, world, login):
    admin = login("admin@example.com")
    before = snapshot(app)
    assert admin.get("/admin/agents/9999").status_code == 404
    assert admin.post("/admin/agents/9999", {"email": "x@example.com", "name": "X", "role": "agent"},
                      htmx=False).status_code == 404
    assert snapshot(app) == before


def test_edit_agent(app, world, login):
    admin = login("admin@example.com")
    response = admin.post(f"/admin/agents/{world.ana}", {
        "email": "ana.costa@example.com", "name": "Ana C.", "role": "admin", "active": "on",
        "department_ids": [str(world.billing)], "password": "",
    }, htmx=False)
    assert response.status_code == 302 and response.headers["Location"] == "/admin/agents"
    with app.app_context():
        ana = db.session.get(User, world.ana)
        assert (ana.email, ana.name, ana.role, ana.active) == ("ana.costa@example.com", "Ana C.", "admin", True)
        assert [d.name for d in ana.departments] == ["Billing"]
    # An empty password field keeps the old password.
    assert can_log_in(app, "ana.costa@example.com", PASSWORD)


def test_edit_agent_sets_new_password(app, world, login):
    response = login("admin@example.com").post(f"/admin/agents/{world.bruno}", {
        "email": "bruno@example.com", "name": "Bruno Lima", "role": "agent", "active": "on",
        "password": "a-new-password",
    }, htmx=False)
    assert response.status_code == 302
    assert can_log_in(app, "bruno@example.com", "a-new-password")
    assert not can_log_in(app, "bruno@example.com", PASSWORD)


@pytest.mark.parametrize("change, message", [
    ({"password": "short"}, "password must have at least 8 characters"),
    ({"email": "bruno@example.com"}, "an agent with email bruno@example.com already exists"),
    ({"email": "nope"}, "email does not look like an address"),
    ({"name": " "}, "name is required"),
    ({"department_ids": [str(9999)]}, "unknown department"),
])
def test_edit_agent_with_bad_input_shows_error_and_changes_nothing(app, world, login, change, message):
    admin = login("admin@example.com")
    before = snapshot(app)
    form = {"email": "ana@example.com", "name": "Ana Costa", "role": "agent", "active": "on", **change}
    response = admin.post(f"/admin/agents/{world.ana}", form, htmx=False)
    assert response.status_code == 400
    assert form_error(response) == message
    assert "Edit Ana Costa" in response.get_data(as_text=True)
    assert snapshot(app) == before


def test_deactivated_agent_cannot_sign_in_or_keep_using_a_session(app, world, login):
    ana = login("ana@example.com")
    assert ana.get("/dashboard").status_code == 200
    response = login("admin@example.com").post(f"/admin/agents/{world.ana}", {
        "email": "ana@example.com", "name": "Ana Costa", "role": "agent",  # no "active": unticked
    }, htmx=False)
    assert response.status_code == 302
    assert one(app, User, id=world.ana).active is False
    page = login("admin@example.com").get("/admin/agents").get_data(as_text=True)
    assert "deactivated" in page
    refused = Agent(app.test_client()).login("ana@example.com")
    assert refused.status_code == 401
    assert "This account is deactivated" in refused.get_data(as_text=True)
    # A session opened before the deactivation stops working too.
    stale = ana.get("/dashboard")
    assert stale.status_code == 302 and stale.headers["Location"].startswith("/login")


def test_reactivated_agent_can_sign_in_again(app, world, login):
    admin = login("admin@example.com")
    form = {"email": "ana@example.com", "name": "Ana Costa", "role": "agent"}
    admin.post(f"/admin/agents/{world.ana}", form, htmx=False)
    assert not can_log_in(app, "ana@example.com", PASSWORD)
    admin.post(f"/admin/agents/{world.ana}", {**form, "active": "on"}, htmx=False)
    assert can_log_in(app, "ana@example.com", PASSWORD)


@pytest.mark.parametrize("form", [
    {"role": "agent", "active": "on"},  # demoted
    {"role": "admin"},  # deactivated
    {"role": "agent"},  # both
])
def test_last_admin_cannot_be_demoted_or_deactivated(app, world, login, form):
    admin = login("admin@example.com")
    before = snapshot(app)
    response = admin.post(f"/admin/agents/{world.admin}",
                          {"email": "admin@example.com", "name": "Alex Admin", **form}, htmx=False)
    assert response.status_code == 400
    assert form_error(response) == "the last admin cannot be demoted or deactivated"
    assert snapshot(app) == before
    assert admin.get("/admin/agents").status_code == 200  # still an admin


def test_an_admin_can_be_demoted_when_another_remains(app, world, login):
    with app.app_context():
        make_user("root@example.com", "Root", "admin")
        db.session.commit()
    admin = login("admin@example.com")
    response = admin.post(f"/admin/agents/{world.admin}",
                          {"email": "admin@example.com", "name": "Alex Admin", "role": "agent", "active": "on"},
                          htmx=False)
    assert response.status_code == 302
    assert one(app, User, id=world.admin).role == "agent"
    assert admin.get("/admin/agents").status_code == 403  # the demoted admin lost the admin pages


def test_a_deactivated_admin_can_be_demoted_while_one_active_admin_remains(app, world, login):
    with app.app_context():
        old = make_user("old@example.com", "Old Admin", "admin")
        old.active = False
        db.session.commit()
        old_id = old.id
    response = login("admin@example.com").post(
        f"/admin/agents/{old_id}", {"email": "old@example.com", "name": "Old Admin", "role": "agent"},
        htmx=False)
    assert response.status_code == 302, form_error(response)
    assert one(app, User, id=old_id).role == "agent"


# --- contacts ----------------------------------------------------------------------------------

WORLD_CONTACTS = ["Andre Active", "Bea Bruno", "Bill Billing", "Carlos Closed", "Nora Nodept",
                  "Paula Pending", "Sam Sales"]


def contact_names(response) -> list[str]:
    return re.findall(r"<td>([^<]+)</td>\s*<td class=\"mono\">", response.get_data(as_text=True))


def test_contacts_needs_login(app, world):
    response = app.test_client().get("/contacts")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")


def test_contacts_lists_everyone_by_name(world, login):
    response = login("bruno@example.com").get("/contacts")
    assert response.status_code == 200
    assert contact_names(response) == WORLD_CONTACTS
    assert "+551100000006" in response.get_data(as_text=True)


CONTACT_SEARCHES = [
    ("paula", ["Paula Pending"]),
    ("PAULA", ["Paula Pending"]),
    ("  sam ", ["Sam Sales"]),
    ("b", ["Bea Bruno", "Bill Billing"]),
    ("+551100000006", ["Bea Bruno"]),
    ("0000007", ["Carlos Closed"]),
    ("5511", WORLD_CONTACTS),
]


def test_contacts_search_by_name_and_phone(world, login):
    ana = login("ana@example.com")
    found = {q: contact_names(ana.get("/contacts", query_string={"q": q})) for q, _ in CONTACT_SEARCHES}
    assert found == dict(CONTACT_SEARCHES)


def test_contacts_search_without_match_says_so(world, login):
    page = login("ana@example.com").get("/contacts?q=zzz").get_data(as_text=True)
    assert "No contact matches “zzz”." in page


def test_contacts_paging(app, world, login):
    app.config["PAGE_SIZE"] = 3
    ana = login("ana@example.com")
    first = ana.get("/contacts")
    assert contact_names(first) == WORLD_CONTACTS[:3]
    assert 'hx-get="/contacts?page=2"' in first.get_data(as_text=True)
    second = ana.get("/contacts?page=2", htmx=True)
    assert contact_names(second) == WORLD_CONTACTS[3:6]
    assert 'hx-get="/contacts?page=3"' in second.get_data(as_text=True)
    last = ana.get("/contacts?page=3", htmx=True)
    assert contact_names(last) == WORLD_CONTACTS[6:]
    assert "hx-get" not in last.get_data(as_text=True)
    # Nonsense page numbers show the first page.
    assert contact_names(ana.get("/contacts?page=0")) == WORLD_CONTACTS[:3]


def test_contacts_paging_keeps_the_search(app, world, login):
    app.config["PAGE_SIZE"] = 2
    ana = login("ana@example.com")
    first = ana.get("/contacts?q=a", htmx=True)
    assert 'hx-get="/contacts?q=a&amp;page=2"' in first.get_data(as_text=True)
    names = contact_names(first) + contact_names(ana.get("/contacts?q=a&page=2", htmx=True))
    names += contact_names(ana.get("/contacts?q=a&page=3", htmx=True))
    names += contact_names(ana.get("/contacts?q=a&page=4", htmx=True))
    assert names == [n for n in WORLD_CONTACTS if "a" in n.lower()]


def test_contacts_htmx_request_gets_rows_only(world, login):
    ana = login("ana@example.com")
    full = ana.get("/contacts?q=paula").get_data(as_text=True)
    assert "<html" in full and 'id="contact-rows"' in full
    fragment = ana.get("/contacts?q=paula", htmx=True).get_data(as_text=True)
    assert fragment.lstrip().startswith("<tr>")
    assert "<html" not in fragment and "<table" not in fragment and "<tbody" not in fragment
    assert "Paula Pending" in fragment


# --- dashboard ---------------------------------------------------------------------------------


def dashboard(agent: Agent) -> dict:
    response = agent.get("/dashboard")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    status = dict(re.findall(r'status-(\w+)">.*?class="stat-value">(\d+)<', page))
    tables = Tables(page).tables
    by_agent = {r[0]: tuple(map(int, r[1:])) for r in tables["By agent"][1:] if len(r) == 3}
    by_dept = {r[0]: tuple(map(int, r[1:])) for r in tables["By department"][1:] if len(r) == 4}
    return {"status": {k: int(v) for k, v in status.items()}, "agent": by_agent, "department": by_dept}


@pytest.mark.parametrize("email, expected", [
    ("admin@example.com", {
        "status": {"pending": 4, "active": 2, "closed": 1},
        "agent": {"Ana Costa": (1, 1), "Bruno Lima": (1, 0)},
        "department": {"Billing": (1, 0, 0), "Sales": (1, 0, 0), "Support": (1, 2, 1), "No department": (1, 0, 0)},
    }),
    ("ana@example.com", {
        "status": {"pending": 3, "active": 1, "closed": 1},
        "agent": {"Ana Costa": (1, 1)},
        "department": {"Sales": (1, 0, 0), "Support": (1, 1, 1), "No department": (1, 0, 0)},
    }),
    ("bruno@example.com", {
        "status": {"pending": 2, "active": 1, "closed": 0},
        "agent": {"Bruno Lima": (1, 0)},
        "department": {"Support": (1, 1, 0), "No department": (1, 0, 0)},
    }),
    ("carla@example.com", {
        "status": {"pending": 2, "active": 0, "closed": 0},
        "agent": {},
        "department": {"Billing": (1, 0, 0), "No department": (1, 0, 0)},
    }),
])
def test_dashboard_counts_what_the_viewer_can_see(world, login, email, expected):
    assert dashboard(login(email)) == expected


def test_dashboard_needs_login(app, world):
    response = app.test_client().get("/dashboard")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")


def test_dashboard_when_nothing_is_assigned(app, login):
    with app.app_context():
        make_user("solo@example.com", "Solo", "agent")
        db.session.commit()
    page = login("solo@example.com").get("/dashboard").get_data(as_text=True)
    assert "No assigned conversations yet." in page and "No conversations yet." in page
