"""Message search (chat/search.py) on every test database: the search box finds conversations by
what was written in them (messages, replies, private notes), accents and a prefix included, phones
however they are typed, only where the agent may look, with an escaped, highlighted snippet;
results are cached like every list and a new message or note makes them stale, a delivery
state does not.
"""
from __future__ import annotations

import random
from contextlib import contextmanager

import flask_migrate
import pytest
from sqlalchemy import event, select, text

from chat import domain, fragments, search, seed
from chat.extensions import db
from chat.invalidation import Change, stale_after
from chat.models import PENDING, Conversation, Message, User, Viewer
from chat.visibility import assignee_tag
from tests.conftest import make_conversation
from tests.test_migrations import bare_app, empty_database_url, keep_logging  # noqa: F401 - fixtures

PHONE = "+556191234567"


@pytest.fixture
def written(app, world):
    """The world, and what its contacts and agents wrote (one message per conversation is "Hello")."""
    with app.app_context():
        add = lambda cid, body, **kw: db.session.add(Message(conversation_id=cid, body=body, **kw))  # noqa: E731
        add(world.pending_support, "Hi, my order 4411 never arrived")
        add(world.pending_sales, "A ação foi rápida, obrigado")
        add(world.active_ana, "<script>alert(1)</script> about your <b>invoice</b>", from_me=True, user_id=world.ana)
        add(world.active_ana, "customer is a VIP, refund approved", from_me=True, user_id=world.ana, private=True)
        add(world.pending_billing, "zebra crossing")  # Billing: not Ana's department
        add(world.active_bruno, "zebra again")  # Bruno's
        phone = make_conversation(PHONE, "Fiona Phone", PENDING, messages=("call me",))
        db.session.commit()
        world.phone = phone.id
    return world


# (query, conversations Ana finds, a fragment of the first item's snippet or None for "no snippet")
CASES = [
    ("order", {"pending_support"}, "<mark>order</mark>"),
    ("ORDER 4411", {"pending_support"}, "<mark>order</mark> <mark>4411</mark>"),
    ("orde", {"pending_support"}, "<mark>order</mark>"),  # the last word typed is a prefix
    ("4411 never", {"pending_support"}, "<mark>4411</mark> <mark>never</mark>"),
    ("acao", {"pending_sales"}, "<mark>ação</mark>"),  # accents as typed or not
    ("ação RAPIDA", {"pending_sales"}, "<mark>rápida</mark>"),
    ("refund", {"active_ana"}, "<mark>refund</mark>"),  # a word only in a private note
    ("vip approved", {"active_ana"}, "<mark>VIP</mark>"),
    ("zebra", set(), None),  # only in conversations Ana may not see
    ("order arrived 9999", set(), None),  # every word must be there
    ("+55 (61) 9123-4567", {"phone"}, None),  # the phone, however it is typed
    ("61 9123 4567", {"phone"}, None),
    ("(61) 91234567", {"phone"}, None),
    ("6191234567", {"phone"}, None),
    ("Paula", {"pending_support"}, None),  # names and phones as before
    ("+551100000005", {"active_ana"}, None),
    ("\"; DROP TABLE messages; --", set(), None),  # nothing typed is query syntax
    ("o*r NEAR(x)", set(), None),
]


def found(world, items) -> set[str]:
    names = {getattr(world, n): n for n in ("pending_support", "pending_sales", "pending_billing", "pending_nodept",
                                            "active_ana", "active_bruno", "closed_ana", "phone")}
    return {names[i["id"]] for i in items}


@pytest.mark.parametrize("q, expected, snippet", CASES, ids=[c[0] for c in CASES])
def test_search_finds_what_was_written(client, written, token, q, expected, snippet):
    response = client.get("/api/conversations", query_string={"status": "all", "q": q},
                          headers=token("ana@example.com"))
    assert response.status_code == 200
    items = response.get_json()["data"]
    assert found(written, items) == expected
    for item in items:
        assert "snippet" in item  # every item of a search says whether a message matched
    if expected:
        if snippet is None:
            assert items[0]["snippet"] is None
        else:
            assert snippet in items[0]["snippet"]


def test_an_admin_finds_what_agents_may_not_see(client, written, token):
    items = client.get("/api/conversations?status=all&q=zebra", headers=token("admin@example.com")).get_json()["data"]
    assert found(written, items) == {"pending_billing", "active_bruno"}
    items = client.get("/api/conversations?status=all&q=zebra", headers=token("bruno@example.com")).get_json()["data"]
    assert found(written, items) == {"active_bruno"}


def test_results_are_newest_first_in_the_tab_asked(client, written, token, app):
    with app.app_context():  # two conversations Ana sees mention "parcel"; the newer is first
        domain.receive_inbound("+551100000001", "where is my parcel?")
        domain.receive_inbound("+551100000004", "parcel lost")
    items = client.get("/api/conversations?status=all&q=parcel", headers=token("ana@example.com")).get_json()["data"]
    assert [i["id"] for i in items] == [written.pending_nodept, written.pending_support]
    items = client.get("/api/conversations?status=mine&q=parcel", headers=token("ana@example.com")).get_json()["data"]
    assert items == []


def test_a_list_without_a_search_has_no_snippets(client, written, token):
    items = client.get("/api/conversations?status=all", headers=token("ana@example.com")).get_json()["data"]
    assert items and all("snippet" not in i for i in items)


def test_the_snippet_is_escaped_text_with_only_marks_as_html(client, written, token, login):
    items = client.get("/api/conversations?status=all&q=invoice", headers=token("ana@example.com")).get_json()["data"]
    assert found(written, items) == {"active_ana"}
    snippet = items[0]["snippet"]
    assert snippet == "&lt;script&gt;alert(1)&lt;/script&gt; about your &lt;b&gt;<mark>invoice</mark>&lt;/b&gt;"
    html = login("ana@example.com").get("/inbox/list?tab=all&q=invoice", htmx=True).get_data(as_text=True)
    assert '<span class="preview snippet">' + snippet + "</span>" in html
    assert "<script>alert" not in html and "<b>invoice" not in html


def test_a_long_message_is_cut_around_the_match(app, written, client, token):
    with app.app_context():
        db.session.add(Message(conversation_id=written.pending_nodept, body=" ".join(
            [f"w{n}" for n in range(30)] + ["needle"] + [f"v{n}" for n in range(30)])))
        db.session.commit()
    items = client.get("/api/conversations?status=all&q=needle", headers=token("ana@example.com")).get_json()["data"]
    assert items[0]["snippet"] == "…w26 w27 w28 w29 <mark>needle</mark> v0 v1 v2 v3 v4 v5 v6 v7 v8 v9 v10…"


def test_the_snippet_is_of_the_newest_matching_message(app, written, client, token):
    with app.app_context():
        db.session.add(Message(conversation_id=written.pending_support, body="second order, also late"))
        db.session.commit()
    items = client.get("/api/conversations?status=all&q=order", headers=token("ana@example.com")).get_json()["data"]
    assert items[0]["snippet"] == "second <mark>order</mark>, also late"


def test_the_row_shows_the_snippet_instead_of_the_last_message(written, login):
    ana = login("ana@example.com")
    html = ana.get("/inbox/list?tab=all&q=4411", htmx=True).get_data(as_text=True)
    assert "Hi, my order <mark>4411</mark> never arrived" in html
    plain = ana.get("/inbox/list?tab=all&q=Paula", htmx=True).get_data(as_text=True)  # by name: the preview
    assert "Paula Pending" in plain and 'class="preview">Hello<' in plain.replace("\n", "")


@pytest.fixture
def sql(app):
    """sql() as a context manager: the statements sent meanwhile."""

    @contextmanager
    def count():
        sent: list[str] = []
        with app.app_context():
            engine = db.engine
        listener = lambda conn, cursor, statement, *args: sent.append(statement)  # noqa: E731
        event.listen(engine, "before_cursor_execute", listener)
        try:
            yield sent
        finally:
            event.remove(engine, "before_cursor_execute", listener)

    return count


def test_search_results_are_cached(written, login, client, token, sql):
    ana, headers = login("ana@example.com"), token("ana@example.com")
    first = ana.get("/inbox/list?tab=all&q=order", htmx=True)
    api_first = client.get("/api/conversations?status=all&q=order", headers=headers)
    assert first.headers["X-Cache"] == "MISS" and "<mark>order</mark>" in first.get_data(as_text=True)
    with sql() as sent:
        again = ana.get("/inbox/list?tab=all&q=order", htmx=True)
        api_again = client.get("/api/conversations?status=all&q=order", headers=headers)
    assert sent == []
    assert again.headers["X-Cache"] == "HIT" and again.get_data() == first.get_data()
    assert api_again.get_json()["cached"] is True and api_again.get_json()["data"] == api_first.get_json()["data"]


def test_a_new_message_or_note_makes_a_search_stale_a_delivery_state_does_not(app, written, login, client, token):
    ana, headers = login("ana@example.com"), token("ana@example.com")
    search_for = lambda q: client.get(f"/api/conversations?status=all&q={q}", headers=headers)  # noqa: E731
    assert search_for("kiwi").get_json()["data"] == [] and search_for("kiwi").get_json()["cached"] is True
    assert ana.get("/inbox/list?tab=all&q=kiwi", htmx=True).status_code == 200

    with app.app_context():  # a new conversation: a contact writes
        domain.receive_inbound("+5511955550000", "kiwi delivered broken", name="Kim Kiwi")
    assert [i["contact"]["name"] for i in search_for("kiwi").get_json()["data"]] == ["Kim Kiwi"]

    with app.app_context():  # a note changes no conversation row, and still counts
        domain.write_note(written.active_ana, db.session.get(User, written.ana), "kiwi allergy, careful")
    items = search_for("kiwi").get_json()["data"]
    assert [i["id"] for i in items][-1] == written.active_ana and "<mark>kiwi</mark>" in items[-1]["snippet"]
    assert "<mark>kiwi</mark> allergy" in ana.get("/inbox/list?tab=all&q=kiwi", htmx=True).get_data(as_text=True)

    assert search_for("kiwi").get_json()["cached"] is True
    with app.app_context():  # a reply's delivery state moving on: the search stays cached
        message = db.session.scalar(select(Message).where(Message.conversation_id == written.active_ana,
                                                          Message.private.is_(False), Message.from_me.is_(True)))
        message.delivery_state = "delivered"
        db.session.commit()
    assert search_for("kiwi").get_json()["cached"] is True


def test_a_new_message_is_heard_only_by_rooms_that_may_see_it(app, written):
    """The scoped tags of a new note reach the browsers of the conversation's agents, not others'."""
    with app.app_context():
        conversation = db.session.get(Conversation, written.active_ana)
        parent = {c.name: getattr(conversation, c.name) for c in Conversation.__table__.columns}
        viewer = Viewer.of(db.session.get(User, written.ana))
        list_tags = fragments.CONVERSATION_LIST.tags(viewer, fragments.list_args("all", q="kiwi"))
    mine = f"{search.TAG_SCOPE}:{assignee_tag(written.ana)}"
    assert mine in list_tags  # what the list element carries (data-cache-tags)
    note = {"id": 999, "conversation_id": written.active_ana, "private": True}
    stale = stale_after([Change("messages", "insert", [note])], lambda table, ids: {written.active_ana: parent})
    assert mine in stale.tags and mine in stale.rooms[f"user:{written.ana}"]
    assert f"user:{written.bruno}" not in stale.rooms
    assert not any(t.startswith(search.TAG_SCOPE + ":") for t in stale.rooms.get("dept:none", ()))
    updated = stale_after([Change("messages", "update", [note])], lambda table, ids: {written.active_ana: parent})
    assert not any(t.startswith(search.TAG_SCOPE + ":") for t in updated.tags)


def test_seeded_messages_are_searchable_and_later_ones_too(app, token, client):
    with app.app_context():
        seed.seed(agents=3, conversations=20, messages=120, rng=random.Random(7))
        indexed = db.session.scalar(select(Message.id).where(Message.body.like("%refund%")).limit(1))
        cid = db.session.scalar(select(Message.conversation_id).where(Message.id == indexed))
    headers = token("admin@example.com")
    items = client.get("/api/conversations?status=all&q=refund", headers=headers).get_json()["data"]
    assert cid in [i["id"] for i in items]
    with app.app_context():  # the insert trigger is back after the bulk insert
        domain.receive_inbound("+5511955550001", "a brand new pomegranate question")
    items = client.get("/api/conversations?status=all&q=pomegranate", headers=headers).get_json()["data"]
    assert len(items) == 1


@pytest.mark.parametrize("q, words, prefix, phone", [
    ("Order 4411", ("order", "4411"), True, None),
    ("a", ("a",), False, None),  # one letter is not a prefix
    ("+55 (61) 9123-4567", ("55", "61", "9123", "4567"), True, "556191234567"),
    ("9123-4", ("9123", "4"), False, None),  # too few digits to be a phone
    ("call 6191234567", ("call", "6191234567"), True, None),  # words: not a phone
    ("o'neil_x", ("o", "neil", "x"), False, None),
    ("", (), False, None),
])
def test_terms(q, words, prefix, phone):
    t = search.terms(q)
    assert (t.words, t.prefix, t.phone_digits) == (words, prefix, phone)


def test_the_migration_indexes_the_messages_already_there(bare_app):
    with bare_app.app_context():
        flask_migrate.upgrade(revision="c4a9e1d27b63")
        with db.engine.begin() as conn:
            conn.execute(text("INSERT INTO users (email, name, password_hash, role, active, created_at, session_version) "
                              "VALUES ('admin@example.com', 'Admin', 'x', 'admin', true, CURRENT_TIMESTAMP, 0)"))
            conn.execute(text("INSERT INTO contacts (name, phone, created_at) VALUES ('Old', '+5511', CURRENT_TIMESTAMP)"))
            conn.execute(text("INSERT INTO conversations (contact_id, status, last_message_at, last_message_body, "
                              "unread_count, created_at) VALUES (1, 'pending', CURRENT_TIMESTAMP, '', 0, CURRENT_TIMESTAMP)"))
            conn.execute(text("INSERT INTO messages (conversation_id, body, from_me, created_at, delivery_attempts, "
                              "delivery_retries, private) VALUES (1, 'a situação antiga', false, CURRENT_TIMESTAMP, 0, 0, false)"))
        flask_migrate.upgrade()
        from chat import queries

        admin = Viewer.of(db.session.get(User, 1))
        page = queries.list_conversations(admin, "all", q="situacao")
        assert [i["snippet"] for i in page["items"]] == ["a <mark>situação</mark> antiga"]
        db.session.remove()
