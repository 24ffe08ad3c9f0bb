"""Private notes and @mentions (issue 19, part 2).

A note is a message only agents see: written by any agent who may see the conversation (pending
and closed ones too), never sent through any channel (the provider of tests/provider.py sees
nothing after the worker ran, on the generic webhook and on WhatsApp), never the conversation's
last message. `@Name` in a note mentions the agents who may see the conversation: a Mention row,
the topbar's mentions fragment (cached, invalidated by the commit, pushed to that agent's room)
and, in Chromium, a mention that shows up live in the other agent's topbar.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from chat import delivery, domain, worker
from chat.extensions import db
from chat.models import Conversation, Delivery, Mention, Message, User
from tests.conftest import INBOUND_TOKEN, app_with_tables, make_config, make_user
from tests.provider import PHONE_NUMBER_ID, WHATSAPP_TOKEN, FakeProvider, whatsapp_signature
from tests.test_push import connect, events

SECRET = "notes-channel-secret"
APP_SECRET = "notes-whatsapp-app-secret"
PROVIDER = {"Authorization": f"Bearer {INBOUND_TOKEN}"}
UNSEEN = re.compile(r'data-unseen="(\d+)"')
# What a browser says while a test has stopped the server on purpose (tests/test_delivery_browser.py).
OFFLINE_ERRORS = r"ERR_CONNECTION_REFUSED|ERR_CONNECTION_RESET|ERR_FAILED|Failed to load resource|WebSocket"


# -- the app: with a channel when a test asks for one ---------------------------------------------
@pytest.fixture(params=["webhook", "whatsapp"])
def channel(request):
    return request.param


@pytest.fixture
def provider(channel):
    with FakeProvider(secret=SECRET if channel == "webhook" else None) as running:
        yield running


@pytest.fixture
def app(request, database_url, cache_config):
    """The app; for a test that names `channel`, with that channel configured by the environment
    (pointed at the fake provider) and a worker that gives up quickly."""
    settings = {}
    if "channel" in request.fixturenames:
        provider = request.getfixturevalue("provider")
        if request.getfixturevalue("channel") == "webhook":
            settings = {"CHANNEL_WEBHOOK_URL": provider.webhook_url, "CHANNEL_WEBHOOK_SECRET": SECRET}
        else:
            settings = {"WHATSAPP_PHONE_NUMBER_ID": PHONE_NUMBER_ID, "WHATSAPP_ACCESS_TOKEN": WHATSAPP_TOKEN,
                        "WHATSAPP_APP_SECRET": APP_SECRET, "WHATSAPP_VERIFY_TOKEN": "notes-verify",
                        "WHATSAPP_GRAPH_URL": provider.graph_url}
        settings.update(DELIVERY_SEND_TIMEOUT=0.5, DELIVERY_BACKOFF_BASE=0.05, DELIVERY_BACKOFF_MAX=0.2,
                        DELIVERY_MAX_ATTEMPTS=3)
    yield from app_with_tables(make_config(database_url, **cache_config, **settings))


def drain(app, limit: int = 20) -> int:
    """Run the worker until nothing is due (what a worker process does in a loop)."""
    done = 0
    with app.app_context():
        while done < limit and worker.work_once():
            done += 1
    return done


def user(email: str) -> User:
    return db.session.scalar(select(User).where(User.email == email))


def api(client, headers):
    class Api:
        def post(self, url, **kw):
            return client.post(url, headers={**headers, **kw.pop("headers", {})}, **kw)

        def get(self, url, **kw):
            return client.get(url, headers=headers, **kw)

        def note(self, conversation, body, status=201, **kw):
            response = self.post(f"/api/conversations/{conversation}/messages", json={"body": body, "private": True}, **kw)
            assert response.status_code == status, response.get_json()
            return response.get_json()

        def messages(self, conversation):
            return self.get(f"/api/conversations/{conversation}/messages").get_json()["data"]

    return Api()


def mention_rows(app) -> list[tuple[int, int, int | None]]:
    """(message id, mentioned agent id, author id) of every mention, in order."""
    with app.app_context():
        return [tuple(r) for r in db.session.execute(
            select(Mention.message_id, Mention.user_id, Mention.author_id).order_by(Mention.id))]


def summary_row(app, conversation_id: int) -> tuple:
    with app.app_context():
        c = db.session.get(Conversation, conversation_id)
        return (c.last_message_at, c.last_message_body, c.last_message_id, c.last_message_state, c.unread_count,
                c.status, c.user_id)


# -- never sent, on either channel ---------------------------------------------------------------
def _customer_writes(app, client, channel, body: str) -> int:
    """The customer's message comes in through the channel: the conversation it opened."""
    client.get("/login")  # the first request makes the environment's channel
    phone = "+5511955500777"
    if channel == "webhook":
        response = client.post("/api/inbound", headers=PROVIDER,
                               json={"phone": phone, "name": "Nadia Note", "body": body, "external_id": "in-1"})
        assert response.status_code == 201, response.get_json()
        return response.get_json()["data"]["conversation_id"]
    event = json.loads((Path(__file__).parent / "fixtures" / "whatsapp" / "text_message.json").read_text())
    value = event["entry"][0]["changes"][0]["value"]
    value["messages"][0].update({"from": phone[1:], "id": "wamid.notes-in-1"})
    value["messages"][0]["text"]["body"] = body
    value["contacts"][0]["wa_id"] = phone[1:]
    raw = json.dumps(event).encode()
    response = client.post("/webhooks/whatsapp", data=raw, content_type="application/json",
                           headers={"X-Hub-Signature-256": whatsapp_signature(APP_SECRET, raw)})
    assert response.status_code == 200, response.get_json()
    with app.app_context():
        return db.session.scalar(select(Conversation.id).order_by(Conversation.id.desc()).limit(1))


def test_a_note_never_reaches_the_provider_and_a_reply_does(app, client, world, token, provider, channel):
    """The note goes in first, the reply after it: the worker sends a conversation's deliveries in
    order, so had the note been queued it would have gone out before the reply the provider got."""
    conversation = _customer_writes(app, client, channel, "My parcel is late")
    ana = api(client, token("ana@example.com"))
    assert ana.post(f"/api/conversations/{conversation}/accept").status_code == 200
    before = summary_row(app, conversation)

    note = ana.note(conversation, "Customer is upset: @Alex can we refund the shipping?")["data"]
    assert note["private"] is True and note["delivery"]["state"] == "none"
    assert note["mentions"] == [{"id": world.admin, "name": "Alex Admin"}]
    assert summary_row(app, conversation) == before  # not the last message: nothing about it moved
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Delivery)) == 0  # no outbox row at all
    assert drain(app) == 0
    assert provider.requests == []

    reply = ana.post(f"/api/conversations/{conversation}/messages", json={"body": "Refunding the shipping now"})
    assert reply.status_code == 201 and reply.get_json()["data"]["private"] is False
    assert drain(app) == 1
    bodies = [json.dumps(r.json) for r in provider.requests]
    assert len(bodies) == 1 and "Refunding the shipping now" in bodies[0], bodies
    assert not any("refund the shipping?" in b or "Customer is upset" in b for b in bodies)

    items = ana.messages(conversation)
    assert [(m["body"][:8], m["private"]) for m in items] == [
        ("My parcel is late"[:8], False), ("Customer"[:8], True), ("Refundin", False)]
    assert ana.messages(conversation)[1]["delivery"] == {"state": "none", "reason": None, "attempts": 0}
    listed = next(c for c in ana.get("/api/conversations?status=mine").get_json()["data"] if c["id"] == conversation)
    assert listed["last_message"] == "Refunding the shipping now"


def test_the_worker_refuses_a_private_message_whatever_queued_it(app, client, world, token, provider, channel):
    """Defence in depth: a delivery row for a note (a bug elsewhere) is claimed, refused, finished."""
    client.get("/login")
    note = api(client, token("ana@example.com")).note(world.active_ana, "internal: do not send")["data"]
    with app.app_context():
        message = db.session.get(Message, note["id"])
        with pytest.raises(ValueError, match="private note"):
            delivery.enqueue(message, db.session.get(Conversation, world.active_ana))
        db.session.rollback()
        db.session.add(Delivery(message_id=note["id"], conversation_id=world.active_ana))
        db.session.commit()
    assert drain(app) == 0  # nothing was handed to a channel
    assert provider.requests == []
    with app.app_context():
        assert db.session.scalar(select(Delivery.done).where(Delivery.message_id == note["id"])) is True
        assert db.session.get(Message, note["id"]).delivery_state is None
    retried = client.post(f"/api/messages/{note['id']}/retry", headers=token("ana@example.com"))
    assert retried.status_code == 409 and "never sent" in retried.get_json()["error"]
    assert drain(app) == 0 and provider.requests == []


# -- who may write one, and what it changes ----------------------------------------------------------
def test_notes_on_every_status_the_agent_sees_and_404_elsewhere(app, client, world, token):
    ana, carla = api(client, token("ana@example.com")), api(client, token("carla@example.com"))
    for conversation in (world.pending_support, world.active_ana, world.closed_ana):
        before = summary_row(app, conversation)
        assert ana.note(conversation, f"note on {conversation}")["data"]["private"] is True
        assert summary_row(app, conversation) == before
    # A reply on the pending one is still refused: a note is not a way around accepting.
    refused = ana.post(f"/api/conversations/{world.pending_support}/messages", json={"body": "hi"})
    assert refused.status_code == 409
    assert carla.note(world.pending_support, "not my department", status=404)["error"] == "conversation not found"
    assert carla.note(world.active_ana, "not mine", status=404)


def test_a_note_keeps_the_conversation_list_as_the_customer_thread(app, client, world, token):
    ana = api(client, token("ana@example.com"))
    listed = lambda: next(c for c in ana.get("/api/conversations?status=mine").get_json()["data"]  # noqa: E731
                          if c["id"] == world.active_ana)
    before = listed()
    ana.note(world.active_ana, "a note must not become the preview")
    after = listed()
    assert after == before and after["last_message"] == "Hello" and after["unread_count"] == 2
    assert [m["private"] for m in ana.messages(world.active_ana)] == [False, True]


@pytest.mark.parametrize("payload, words", [
    ({"body": "x", "private": "yes"}, "private must be true or false"),
    ({"body": "x", "private": 1}, "private must be true or false"),
    ({"body": "x", "private": None}, "private must be true or false"),
    ({"body": "   ", "private": True}, "message body must not be empty"),
    ({"body": 5, "private": True}, "message body must be a string"),
    ({"body": "x", "private": True, "to": "everyone"}, "unknown field 'to'"),
])
def test_bad_input_is_a_400_and_stores_nothing(app, client, world, token, payload, words):
    headers = token("ana@example.com")
    response = client.post(f"/api/conversations/{world.active_ana}/messages", json=payload, headers=headers)
    assert response.status_code == 400 and words in response.get_json()["error"], response.get_json()
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Message)) == 7  # the world's own


def test_a_notes_idempotency_key_stores_it_once(app, client, world, token):
    ana = api(client, token("ana@example.com"))
    key = {"Idempotency-Key": "note-key-0001"}
    first = ana.note(world.pending_support, "@Bruno look at this one", headers=key)
    again = ana.note(world.pending_support, "@Bruno look at this one", status=200, headers=key)
    assert again["data"]["id"] == first["data"]["id"] and again["data"]["private"] is True
    assert mention_rows(app) == [(first["data"]["id"], world.bruno, world.ana)]  # told once
    # The same key for a reply with the same text is another message: 409.
    reply = ana.post(f"/api/conversations/{world.pending_support}/messages", json={"body": "@Bruno look at this one"},
                     headers=key)
    assert reply.status_code == 409 and "idempotency key" in reply.get_json()["error"]


# -- mentions: who is told --------------------------------------------------------------------------
@pytest.mark.parametrize("author, text, told", [
    ("ana", "@Bruno can you take this?", ["bruno"]),
    ("ana", "@bruno, @BRUNO and @Bruno Lima again", ["bruno"]),
    ("ana", "@Brúno with an accent", ["bruno"]),
    ("ana", "@joao and @JOÃO: João has one", ["joao"]),
    ("ana", "@Alex Admin and @Carla", ["admin"]),  # Carla is in Billing: she cannot see a Support queue
    ("bruno", "@Ana is ambiguous, @ana souza is not", ["souza"]),
    ("bruno", "@Ana Costa, then @Ana Souza", ["ana", "souza"]),
    ("ana", "I am @Ana Costa and mention nobody", []),  # the author
    ("ana", "write to bruno@example.com or @Brunoo", []),
    ("ana", "@Dora left the team", []),  # deactivated
])
def test_mentions_name_agents_by_first_or_full_name_and_only_those_who_may_see(app, world, author, text, told):
    with app.app_context():
        joao = make_user("joao@example.com", "João Pereira", "agent", [db.session.get(Conversation, world.pending_support)
                                                                         .department])
        souza = make_user("souza@example.com", "Ana Souza", "agent", joao.departments)
        dora = make_user("dora@example.com", "Dora Gone", "agent", joao.departments)
        dora.active = False
        db.session.commit()
        ids = {"ana": world.ana, "bruno": world.bruno, "admin": world.admin, "joao": joao.id, "souza": souza.id}
        note = domain.write_note(world.pending_support, user(f"{author}@example.com"), text)
        assert note.created and note.message.private
    assert sorted(r[1] for r in mention_rows(app)) == sorted(ids[name] for name in told)
    assert all(r[2] == ids[author] for r in mention_rows(app))


def test_a_mention_of_an_agent_who_cannot_see_the_conversation_tells_them_nothing(app, world, login):
    ana = login("ana@example.com")
    response = ana.post(f"/conversations/{world.active_ana}/messages",
                        {"body": "@Bruno @Alex thoughts?", "private": "1", "idempotency_key": "note-form-001"})
    assert response.status_code == 201
    page = response.get_data(as_text=True)
    assert "Not told of this note (they cannot see this conversation): Bruno Lima." in page
    assert mention_rows(app) == [(mention_rows(app)[0][0], world.admin, world.ana)]
    assert "told Alex Admin" in page


# -- the pane -------------------------------------------------------------------------------------
def test_the_pane_sends_a_note_with_its_switch_and_shows_it_as_a_note(app, world, login):
    ana = login("ana@example.com")
    pane = ana.get(f"/conversations/{world.active_ana}", htmx=True).get_data(as_text=True)
    assert re.search(r'<input type="checkbox" role="switch" name="private" value="1"', pane)
    response = ana.post(f"/conversations/{world.active_ana}/messages", {"body": "only for us", "private": "1"})
    assert response.status_code == 201
    html = response.get_data(as_text=True)
    note = re.search(r'<div class="msg note" data-message-id="\d+" data-private>(.*?)</div>', html, re.S)
    assert note and "only for us" in note.group(1) and "Private note · only agents see this" in note.group(1)
    assert "ticks" not in note.group(1) and "data-delivery" not in note.group(0)
    # Without the switch the same form sends a reply, with ticks.
    ana.post(f"/conversations/{world.active_ana}/messages", {"body": "for the customer"})
    html = ana.get(f"/conversations/{world.active_ana}/messages", htmx=True).get_data(as_text=True)
    assert re.search(r'<div class="msg out" data-message-id="\d+" data-delivery="[a-z]+">\s*<p class="msg-body">for the '
                     r'customer', html)
    with app.app_context():
        assert [m.private for m in db.session.scalars(select(Message).where(Message.from_me.is_(True))
                                                      .order_by(Message.id))] == [True, False]


def test_a_pending_pane_takes_notes_only(app, world, login):
    ana = login("ana@example.com")
    pane = ana.get(f"/conversations/{world.pending_support}", htmx=True).get_data(as_text=True)
    assert "Accept this conversation to reply." in pane
    assert f'id="note-{world.pending_support}"' in pane and '<input type="hidden" name="private" value="1">' in pane
    assert 'role="switch"' not in pane
    response = ana.post(f"/conversations/{world.pending_support}/messages", {"body": "@Bruno yours?", "private": "1"})
    assert response.status_code == 201 and "told Bruno Lima" in response.get_data(as_text=True)
    refused = ana.post(f"/conversations/{world.pending_support}/messages", {"body": "a reply"})
    assert refused.status_code == 409


# -- the topbar's mentions fragment -----------------------------------------------------------------
def test_the_mentions_fragment_counts_is_cached_and_a_new_mention_invalidates_it(app, world, login):
    bruno, ana = login("bruno@example.com"), login("ana@example.com")
    url = "/inbox/mentions"
    first = bruno.get(url, htmx=True)
    assert first.status_code == 200 and UNSEEN.search(first.get_data(as_text=True)).group(1) == "0"
    assert f'data-cache-key="mentions:user:{world.bruno}"' in first.get_data(as_text=True)
    hit = bruno.get(url, htmx=True)
    assert hit.headers["X-Cache"] == "HIT"
    etag = first.headers["ETag"]
    assert bruno.get(url, htmx=True, headers={"If-None-Match": etag}).status_code == 304

    bruno_socket, ana_socket = connect(app, bruno), connect(app, ana)
    bruno_socket.get_received(), ana_socket.get_received()
    with app.app_context():
        domain.write_note(world.pending_support, user("ana@example.com"), "@Bruno the customer wants a callback")
    heard = {k for keys in events(bruno_socket) for k in keys}
    assert f"mentions:user:{world.bruno}" in heard, heard
    assert not any(k.startswith("mentions:") for keys in events(ana_socket, wait=0.3) for k in keys)
    bruno_socket.disconnect(), ana_socket.disconnect()

    fresh = bruno.get(url, htmx=True, headers={"If-None-Match": etag})
    assert fresh.status_code == 200 and fresh.headers["ETag"] != etag
    html = fresh.get_data(as_text=True)
    assert UNSEEN.search(html).group(1) == "1" and '<span class="count">1</span>' in html
    assert "the customer wants a callback" in html and "Ana Costa" in html and "Paula Pending" in html
    assert f'href="/conversations/{world.pending_support}"' in html
    # Every page's topbar shows it; Ana (the author) has none.
    assert 'data-unseen="1"' in bruno.get("/dashboard").get_data(as_text=True)
    assert UNSEEN.search(ana.get(url, htmx=True).get_data(as_text=True)).group(1) == "0"


def test_mark_all_read_is_a_post_with_csrf_and_opening_marks_nothing(app, world, login):
    bruno = login("bruno@example.com")
    with app.app_context():
        domain.write_note(world.pending_support, user("ana@example.com"), "@Bruno one")
        domain.write_note(world.pending_nodept, user("ana@example.com"), "@Bruno two")
    assert bruno.get(f"/conversations/{world.pending_support}").status_code == 200  # a GET never writes
    assert UNSEEN.search(bruno.get("/inbox/mentions", htmx=True).get_data(as_text=True)).group(1) == "2"
    assert bruno.post("/inbox/mentions/seen", csrf=False).status_code == 400
    done = bruno.post("/inbox/mentions/seen")
    assert done.status_code == 200
    html = done.get_data(as_text=True)
    assert UNSEEN.search(html).group(1) == "0" and "Mark all read" not in html
    assert "@Bruno two" in html  # still listed, as seen
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Mention).where(Mention.seen.is_(False))) == 0
    assert UNSEEN.search(bruno.get("/inbox/mentions", htmx=True).get_data(as_text=True)).group(1) == "0"
    # Without htmx: back to the page it was pressed on.
    back = bruno.post("/inbox/mentions/seen", htmx=False, headers={"Referer": "http://localhost/dashboard"})
    assert back.status_code == 302 and back.headers["Location"].endswith("/dashboard")


def test_a_mention_leaves_the_list_when_its_conversation_leaves_the_agents_sight(app, world, login):
    bruno = login("bruno@example.com")
    with app.app_context():
        domain.write_note(world.pending_support, user("ana@example.com"), "@Bruno secret plan")
    assert "secret plan" in bruno.get("/inbox/mentions", htmx=True).get_data(as_text=True)  # cached now
    with app.app_context():
        domain.accept_conversation(world.pending_support, user("ana@example.com"))  # Ana's, not Bruno's
    html = bruno.get("/inbox/mentions", htmx=True).get_data(as_text=True)
    assert "secret plan" not in html and UNSEEN.search(html).group(1) == "0"


# -- in Chromium: a note with a mention, seen live by the agent it names -----------------------------------
@pytest.fixture(scope="module")
def live_provider():
    with FakeProvider(secret=SECRET) as running:
        yield running


@pytest.fixture(scope="module")
def server(tmp_path_factory, live_provider):
    from tests.live import LiveServer

    live = LiveServer(tmp_path_factory.mktemp("notes-browser"),
                      seed=("--agents", "3", "--conversations", "20", "--messages", "60"))
    live.env.update(CHANNEL_WEBHOOK_URL=live_provider.webhook_url, CHANNEL_WEBHOOK_SECRET=SECRET)
    live.start()
    yield live
    live.cleanup()


@pytest.fixture
def open_page(browser, server):
    from tests.live import new_page

    contexts, errors = [], []

    def _open():
        page = new_page(browser, server.base, errors)
        contexts.append(page.context)
        return page

    yield _open
    for context in contexts:
        context.close()
    if server.process is None or server.process.poll() is not None:
        server.start()  # a test that stopped it and failed half way
    unexpected = [e for e in errors if not re.search(OFFLINE_ERRORS, e)]
    assert not unexpected, "the browser reported errors:\n" + "\n".join(unexpected)


def _connected(page) -> None:
    page.wait_for_function("() => window.__inboxSocketConnected === true", timeout=10_000)


def _requests_with(provider, text: str) -> list:
    return [r for r in list(provider.requests) if text in json.dumps(r.json)]


def test_a_note_with_a_mention_in_chromium(open_page, server, live_provider):
    from playwright.sync_api import expect

    from tests.live import log_in, row

    stamp = time.time_ns() % 10**6
    server.inbound(phone=f"+55119444{stamp:06d}", name="Nina Notes", body="Where is my refund?",
                   external_id=f"notes-{stamp}")
    alex = open_page()
    log_in(alex, "admin@example.com")
    _connected(alex)
    mentions = alex.locator("#mentions")
    expect(mentions).to_have_attribute("data-unseen", "0")
    alex.evaluate("() => { window.__sameDocument = true; }")

    ana = open_page()
    log_in(ana, "ana@example.com")
    _connected(ana)
    row(ana, "Nina Notes").get_by_role("link").click()
    pane = ana.locator("#conversation-pane")
    pane.get_by_role("button", name="Accept").click()
    expect(pane.locator(".status")).to_have_text("active")

    # As a person does: the switch, the text, Send.
    switch = pane.get_by_role("switch", name="Private note")
    switch.click()
    expect(switch).to_be_checked()
    pane.locator("textarea[data-draft]").click()
    note_text = f"@Alex can we refund this one? #{stamp}"
    ana.keyboard.type(note_text)
    pane.get_by_role("button", name="Send").click()

    note = pane.locator(".msg.note[data-message-id]").filter(has_text=note_text)
    expect(note).to_have_count(1)
    expect(note.locator(".note-label")).to_have_text("Private note · only agents see this")
    expect(note.locator(".ticks")).to_have_count(0)
    expect(note).to_contain_text("told Alex Admin")
    assert note.evaluate("el => getComputedStyle(el).backgroundColor") == "rgb(254, 249, 195)"  # the yellow bubble
    expect(pane.locator("textarea[data-draft]")).to_have_value("")
    expect(switch).to_be_checked()  # still writing notes: the refreshed pane did not turn it off

    # The admin's topbar, live: the count, the list, a toast; no reload.
    expect(mentions).to_have_attribute("data-unseen", "1", timeout=5_000)
    expect(mentions.locator(".count")).to_have_text("1")
    toast = alex.locator("#toasts .toast")
    expect(toast).to_have_count(1)
    expect(toast).to_contain_text("Ana Costa mentioned you on Nina Notes")
    assert alex.evaluate("() => window.__sameDocument === true")
    mentions.locator("summary").click()
    item = mentions.locator(".mention.unseen").filter(has_text=note_text)
    expect(item).to_have_count(1)

    # A reply after the note reaches the provider; the note never does.
    switch.click()
    expect(switch).not_to_be_checked()
    pane.locator("textarea[data-draft]").click()
    ana.keyboard.type(f"We are refunding it today #{stamp}")
    pane.get_by_role("button", name="Send").click()
    deadline = time.monotonic() + 10
    while not _requests_with(live_provider, f"refunding it today #{stamp}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(_requests_with(live_provider, f"refunding it today #{stamp}")) == 1
    assert _requests_with(live_provider, note_text) == []

    # What was there when the page loaded is not news: a reload shows it, and no toast.
    alex.reload()
    expect(alex.locator("#mentions")).to_have_attribute("data-unseen", "1")
    time.sleep(0.5)
    expect(alex.locator("#toasts .toast")).to_have_count(0)
    # Mark all read: the count goes, in the list too.
    alex.locator("#mentions summary").click()
    alex.locator("#mentions").get_by_role("button", name="Mark all read").click()
    expect(alex.locator("#mentions")).to_have_attribute("data-unseen", "0")
    expect(alex.locator("#mentions .count")).to_have_count(0)


def test_a_note_written_offline_waits_as_a_note_and_is_stored_as_one(open_page, server, live_provider):
    """The outbox keeps the private flag: the queued copy is a note, and what reaches the server
    when it is back is a note, never a reply the provider gets."""
    from playwright.sync_api import expect

    from tests.live import log_in, tab

    page = open_page()
    log_in(page, "ana@example.com")
    _connected(page)
    tab(page, "Mine").click()
    first = page.locator("#conversation-list li.row").first
    expect(first).to_be_visible()
    first.get_by_role("link").click()
    pane = page.locator("#conversation-pane")
    switch = pane.get_by_role("switch", name="Private note")
    switch.click()
    expect(switch).to_be_checked()
    text = f"Written offline, for agents only #{time.time_ns() % 10**7}"

    server.stop()
    expect(page.locator("#offline-banner")).to_be_visible(timeout=10_000)
    pane.locator("textarea[data-draft]").click()
    page.keyboard.type(text)
    pane.get_by_role("button", name="Send").click()
    queued = pane.locator(".msg.queued")
    expect(queued).to_have_count(1)
    expect(queued).to_have_class(re.compile(r"\bnote\b"))
    expect(queued).to_contain_text("Private note")
    expect(queued).to_contain_text(text)

    server.start()
    expect(page.locator("#offline-banner")).to_be_hidden(timeout=10_000)
    expect(pane.locator(".msg.queued")).to_have_count(0, timeout=10_000)
    expect(pane.locator(".msg.note[data-message-id]").filter(has_text=text)).to_have_count(1)
    expect(pane.locator(".msg.out[data-message-id]").filter(has_text=text)).to_have_count(0)
    time.sleep(1.5)  # the embedded worker's next poll: it must find nothing to send
    assert _requests_with(live_provider, text) == []
    import sqlite3

    with sqlite3.connect(server.tmp / "live.db") as database:
        assert database.execute("SELECT private FROM messages WHERE body = ?", (text,)).fetchall() == [(1,)]
