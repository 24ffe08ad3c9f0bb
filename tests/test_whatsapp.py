"""The WhatsApp Cloud API channel end to end: Meta's handshake, signed notifications in, replies
out through the Graph API, statuses forward only, echoes once.

Meta is tests/provider.py (a real HTTP server on a loopback port playing the Graph API); its
webhooks are the samples in tests/fixtures/whatsapp/, one file per kind of event, signed here as
Meta signs them. The worker is chat.worker.work_once, called where a worker process would loop.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from chat import worker
from chat.extensions import db
from chat.models import Channel, Contact, Conversation, DeliveryStatus, Message
from tests.conftest import app_with_tables, make_config
from tests.provider import (PHONE_NUMBER_ID, WHATSAPP_TOKEN, FakeProvider, whatsapp_notification, whatsapp_signature,
                            whatsapp_status)

FIXTURES = Path(__file__).parent / "fixtures" / "whatsapp"
APP_SECRET = "test-whatsapp-app-secret"
VERIFY_TOKEN = "test-whatsapp-verify-token"
WA_ID = "16505551234"  # the customer of the fixtures
PHONE = "+" + WA_ID


@pytest.fixture
def provider():
    with FakeProvider() as running:
        yield running


@pytest.fixture
def app(database_url, cache_config, provider):
    """The app with the WhatsApp channel configured by the environment's settings, pointed at
    the fake Graph API, with a short backoff so retries happen within a test."""
    yield from app_with_tables(make_config(
        database_url, **cache_config, WHATSAPP_PHONE_NUMBER_ID=PHONE_NUMBER_ID, WHATSAPP_ACCESS_TOKEN=WHATSAPP_TOKEN,
        WHATSAPP_APP_SECRET=APP_SECRET, WHATSAPP_VERIFY_TOKEN=VERIFY_TOKEN, WHATSAPP_GRAPH_URL=provider.graph_url,
        DELIVERY_SEND_TIMEOUT=0.5, DELIVERY_BACKOFF_BASE=0.05, DELIVERY_BACKOFF_MAX=0.2, DELIVERY_MAX_ATTEMPTS=4,
        DELIVERY_LEASE_SECONDS=5))


@pytest.fixture
def meta(app, client, world):
    """Meta's side of the webhook: posts fixtures, signed with the app secret unless told."""
    client.get("/login")  # the first request makes the environment's channel

    class Meta:
        def post(self, event: dict | bytes, signature: str | None = "sign", **headers):
            body = event if isinstance(event, bytes) else json.dumps(event).encode()
            if signature == "sign":
                signature = whatsapp_signature(APP_SECRET, body)
            if signature is not None:
                headers["X-Hub-Signature-256"] = signature
            return client.post("/webhooks/whatsapp", data=body, content_type="application/json", headers=headers)

        def send(self, event: dict):
            response = self.post(event)
            assert response.status_code == 200, response.get_json()
            return response.get_json()["data"]

    return Meta()


@pytest.fixture
def admin(app, client, token, world):
    headers = token("admin@example.com")

    class Api:
        def get(self, url, **kw):
            return client.get(url, headers=headers, **kw)

        def post(self, url, **kw):
            return client.post(url, headers=headers, **kw)

        def accept(self, conversation):
            response = self.post(f"/api/conversations/{conversation}/accept")
            assert response.status_code == 200, response.get_json()

        def reply(self, conversation, body):
            response = self.post(f"/api/conversations/{conversation}/messages", json={"body": body})
            assert response.status_code == 201, response.get_json()
            return response.get_json()["data"]

        def messages(self, conversation):
            return self.get(f"/api/conversations/{conversation}/messages").get_json()["data"]

        def message(self, conversation, message_id):
            return next(m for m in self.messages(conversation) if m["id"] == message_id)

        def conversation(self, conversation):
            listed = self.get("/api/conversations?status=all").get_json()["data"]
            return next(item for item in listed if item["id"] == conversation)

    return Api()


# -- the fixtures --------------------------------------------------------------------------
def load(kind: str) -> dict:
    return json.loads((FIXTURES / f"{kind}.json").read_text())


def value(event: dict) -> dict:
    return event["entry"][0]["changes"][0]["value"]


def text_message(body: str | None = None, message_id: str | None = None, wa_id: str = WA_ID,
                 name: str | None = None) -> dict:
    event = load("text_message")
    message, contact = value(event)["messages"][0], value(event)["contacts"][0]
    message["from"] = contact["wa_id"] = wa_id
    if body is not None:
        message["text"]["body"] = body
    if message_id is not None:
        message["id"] = message_id
    if name is not None:
        contact["profile"]["name"] = name
    return event


def status_event(kind: str, wamid: str, callback: str | None = None) -> dict:
    event = load(f"status_{kind}")
    status = value(event)["statuses"][0]
    status["id"] = wamid
    if callback is not None:
        status["biz_opaque_callback_data"] = callback
    return event


def echo_event(wamid: str, body: str, to: str = WA_ID) -> dict:
    event = load("message_echo")
    echo = value(event)["message_echoes"][0]
    echo.update(id=wamid, to=to)
    echo["text"]["body"] = body
    return event


def counts(app) -> dict:
    with app.app_context():
        return {model.__name__: db.session.scalar(select(func.count()).select_from(model))
                for model in (Message, Contact, Conversation, DeliveryStatus)}


def drain(app, limit: int = 20) -> int:
    done = 0
    with app.app_context():
        while done < limit and worker.work_once():
            done += 1
    return done


def work_once(app) -> bool:
    with app.app_context():
        return worker.work_once()


def drain_until(app, admin, conversation, message_id, state, seconds: float = 5.0) -> dict:
    deadline = time.monotonic() + seconds
    while (found := admin.message(conversation, message_id)["delivery"])["state"] != state \
            and time.monotonic() < deadline:
        drain(app)
        time.sleep(0.05)
    return found


def channel_id(app) -> int:
    with app.app_context():
        return db.session.scalar(select(Channel.id).where(Channel.kind == "whatsapp"))


@pytest.fixture
def chat(app, meta, admin):
    """A customer wrote on WhatsApp and the admin accepted: the conversation's id."""
    meta.send(text_message("Hi, is my order on its way?"))
    conversation = _conversation_of(app, PHONE)
    admin.accept(conversation)
    return conversation


def _conversation_of(app, phone: str) -> int:
    with app.app_context():
        return db.session.scalar(select(Conversation.id).join(Contact).where(Contact.phone == phone)
                                 .order_by(Conversation.id.desc()).limit(1))


def sent_reply(app, admin, provider, conversation, body="It ships today") -> tuple[dict, str]:
    """An agent's reply, handed to the fake Graph API: (the reply, the wamid answered)."""
    reply = admin.reply(conversation, body)
    assert drain(app) == 1
    return reply, provider.id_for(reply["id"])


# -- the subscription handshake ------------------------------------------------------------
def test_verification_echoes_the_challenge_for_our_verify_token(client, meta):
    response = client.get("/webhooks/whatsapp", query_string={
        "hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1158201444"})
    assert response.status_code == 200 and response.get_data(as_text=True) == "1158201444"
    assert response.mimetype == "text/plain"


@pytest.mark.parametrize("query", [
    {"hub.mode": "subscribe", "hub.verify_token": "not-our-token", "hub.challenge": "42"},
    {"hub.mode": "unsubscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "42"},
    {"hub.verify_token": VERIFY_TOKEN, "hub.challenge": "42"},
    {"hub.mode": "subscribe", "hub.challenge": "42"},
    {"hub.mode": "subscribe", "hub.verify_token": "", "hub.challenge": "42"},
])
def test_verification_refuses_a_wrong_token_or_mode(client, meta, query):
    response = client.get("/webhooks/whatsapp", query_string=query)
    assert response.status_code == 403 and "42" not in response.get_data(as_text=True)


# -- signatures ------------------------------------------------------------------------------
def _body(text: str) -> bytes:
    return json.dumps(text_message(text, message_id=f"wamid.{text}")).encode()


@pytest.mark.parametrize("case", ["missing", "wrong secret", "not hex", "no prefix", "another body",
                                  "replayed with a changed body", "same json, other bytes"])
def test_a_notification_without_a_valid_signature_is_401_and_stores_nothing(app, meta, case):
    body = _body("hello")
    headers = {
        "missing": (body, None),
        "wrong secret": (body, whatsapp_signature("another-app-secret", body)),
        "not hex": (body, "sha256=" + "z" * 64),
        "no prefix": (body, whatsapp_signature(APP_SECRET, body).removeprefix("sha256=")),
        "another body": (body, whatsapp_signature(APP_SECRET, _body("something else"))),
        "replayed with a changed body": (body.replace(b"hello", b"hellO"), whatsapp_signature(APP_SECRET, body)),
        # HMAC is over the raw bytes: the same JSON serialised differently is another body.
        "same json, other bytes": (json.dumps(json.loads(body), indent=2).encode(),
                                   whatsapp_signature(APP_SECRET, body)),
    }
    sent_body, signature = headers[case]
    before = counts(app)
    response = meta.post(sent_body, signature=signature)
    assert response.status_code == 401, response.get_json()
    assert counts(app) == before


def test_a_refused_status_changes_no_reply(app, meta, admin, provider, chat):
    reply, wamid = sent_reply(app, admin, provider, chat)
    event = json.dumps(status_event("read", wamid)).encode()
    assert meta.post(event, signature=whatsapp_signature("another-app-secret", event)).status_code == 401
    assert admin.message(chat, reply["id"])["delivery"]["state"] == "sent"
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(DeliveryStatus)) == 0


def test_a_notification_for_another_phone_number_is_403_even_signed_with_our_secret(app, meta):
    event = text_message("for someone else")
    value(event)["metadata"]["phone_number_id"] = "999000111222333"
    before = counts(app)
    response = meta.post(event)
    assert response.status_code == 403  # signed by our app: not a guess the throttle counts
    assert counts(app) == before


def test_a_notification_mixing_our_number_and_another_is_403(app, meta):
    event = text_message("ours")
    other = copy.deepcopy(event["entry"][0]["changes"][0])
    other["value"]["metadata"]["phone_number_id"] = "999000111222333"
    event["entry"][0]["changes"].append(other)
    before = counts(app)
    assert meta.post(event).status_code == 403
    assert counts(app) == before


def test_a_batch_larger_than_the_apps_body_limit_is_taken(app, meta):
    """Meta batches up to 1,000 updates; the app's 256 KiB limit is for everything else."""
    statuses = [whatsapp_status(f"wamid.unknown-{n:04}-" + "x" * 200, "delivered") for n in range(1000)]
    event = whatsapp_notification(statuses=statuses)
    assert len(json.dumps(event)) > app.config["MAX_CONTENT_LENGTH"]
    response = meta.post(event)
    assert response.status_code == 200 and response.get_json()["data"]["statuses"] == 1000


# -- messages in -----------------------------------------------------------------------------
def test_a_text_message_opens_a_pending_conversation_through_the_channel(app, meta, admin):
    before = counts(app)
    assert meta.send(load("text_message")) == {"messages": 1, "statuses": 0, "skipped": 0}
    conversation = _conversation_of(app, PHONE)
    with app.app_context():
        found = db.session.get(Conversation, conversation)
        assert (found.status, found.unread_count, found.channel_id) == ("pending", 1, channel_id(app))
        assert (found.contact.name, found.contact.phone) == ("Sheena Nelson", PHONE)
        stored = db.session.scalar(select(Message).where(Message.conversation_id == conversation))
        assert stored.external_id == value(load("text_message"))["messages"][0]["id"]
    assert [(m["body"], m["from_me"]) for m in admin.messages(conversation)] == \
        [("Does it come in another color?", False)]
    after = counts(app)
    assert after["Message"] == before["Message"] + 1 and after["Conversation"] == before["Conversation"] + 1

    # Meta retries a notification until it gets a 200: the same message id stores nothing new.
    meta.send(load("text_message"))
    assert counts(app) == after
    with app.app_context():
        assert db.session.get(Conversation, conversation).unread_count == 1


def test_the_profile_name_updates_the_contact_and_phones_are_plus_digits(app, meta):
    meta.send(text_message("first", message_id="wamid.first", wa_id="5511955554444", name="Old Name"))
    meta.send(text_message("second", message_id="wamid.second", wa_id="5511955554444", name="Maria Souza"))
    with app.app_context():
        (contact,) = db.session.scalars(select(Contact).where(Contact.phone == "+5511955554444")).all()
        assert contact.name == "Maria Souza"


@pytest.mark.parametrize("kind", ["reaction"])  # media kinds are stored (tests/test_attachments.py)
def test_unsupported_kinds_of_message_are_skipped_without_error(app, meta, kind):
    before = counts(app)
    assert meta.send(load(kind)) == {"messages": 0, "statuses": 0, "skipped": 0}
    assert counts(app) == before


def test_a_notification_about_no_phone_number_is_acknowledged_and_ignored(app, meta):
    # Other fields of the business account (templates, quality, account updates) carry no
    # phone number: signed by Meta, so 200 (a 401 would have Meta retry it for days).
    before = counts(app)
    assert meta.send(load("template_status_update")) == {"messages": 0, "statuses": 0, "skipped": 0}
    assert counts(app) == before


def test_a_text_batched_with_a_template_update_is_stored(app, meta, admin):
    event = load("text_message")
    event["entry"][0]["changes"] += load("template_status_update")["entry"][0]["changes"]
    assert meta.send(event)["messages"] == 1
    assert [m["body"] for m in admin.messages(_conversation_of(app, PHONE))] == ["Does it come in another color?"]


def test_a_text_next_to_an_unsupported_message_is_stored(app, meta, admin):
    event = load("text_message")
    value(event)["messages"].insert(0, value(load("reaction"))["messages"][0])
    assert meta.send(event)["messages"] == 1
    assert [m["body"] for m in admin.messages(_conversation_of(app, PHONE))] == ["Does it come in another color?"]


def test_an_unusable_item_is_skipped_and_the_rest_stored(app, meta, admin):
    event = text_message("fine", message_id="wamid.fine")
    bad = copy.deepcopy(value(event)["messages"][0])
    bad.update(id="wamid.bad", text={"body": "bell \x07 in it"})
    value(event)["messages"].insert(0, bad)
    assert meta.send(event) == {"messages": 1, "statuses": 0, "skipped": 1}  # 200: Meta must not retry
    assert [m["body"] for m in admin.messages(_conversation_of(app, PHONE))] == ["fine"]


# -- replies out -----------------------------------------------------------------------------
def test_a_reply_goes_out_through_the_graph_api_and_is_sent_with_its_wamid(app, admin, provider, chat):
    reply = admin.reply(chat, "Your order ships today")
    assert reply["delivery"] == {"state": "queued", "reason": None, "attempts": 0}
    assert provider.requests == []  # nothing is sent inside the agent's request
    assert drain(app) == 1
    (request,) = provider.requests
    assert request.path == f"/v23.0/{PHONE_NUMBER_ID}/messages"
    assert request.headers["authorization"] == f"Bearer {WHATSAPP_TOKEN}"
    assert request.json == {"messaging_product": "whatsapp", "recipient_type": "individual", "to": WA_ID,
                            "type": "text", "text": {"preview_url": False, "body": "Your order ships today"},
                            "biz_opaque_callback_data": str(reply["id"])}
    assert admin.message(chat, reply["id"])["delivery"] == {"state": "sent", "reason": None, "attempts": 1}
    with app.app_context():
        assert db.session.get(Message, reply["id"]).external_id == provider.id_for(reply["id"])
    assert admin.conversation(chat)["last_message_state"] == "sent"


def test_statuses_move_a_reply_forward_only_and_are_stored_once(app, meta, admin, provider, chat):
    reply, wamid = sent_reply(app, admin, provider, chat)
    state = lambda: admin.message(chat, reply["id"])["delivery"]  # noqa: E731

    assert meta.send(status_event("sent", wamid, str(reply["id"]))) == {"messages": 0, "statuses": 1, "skipped": 0}
    assert state() == {"state": "sent", "reason": None, "attempts": 1}
    meta.send(status_event("delivered", wamid))
    assert state()["state"] == "delivered"
    meta.send(status_event("delivered", wamid))  # Meta retried it
    assert state()["state"] == "delivered"
    meta.send(status_event("read", wamid))
    assert state() == {"state": "read", "reason": None, "attempts": 1}
    # Late and out of order: delivered and sent again, and a failure from another device.
    for late in ("delivered", "sent", "read", "failed"):
        meta.send(status_event(late, wamid))
    assert state() == {"state": "read", "reason": None, "attempts": 1}
    assert admin.conversation(chat)["last_message_state"] == "read"
    with app.app_context():
        stored = db.session.scalars(select(DeliveryStatus.status)
                                    .where(DeliveryStatus.provider_message_id == wamid)).all()
    assert sorted(stored) == ["delivered", "failed", "read", "sent"]
    assert len(provider.requests) == 1  # statuses send nothing


def test_read_before_delivered_ends_read(app, meta, admin, provider, chat):
    reply, wamid = sent_reply(app, admin, provider, chat)
    meta.send(status_event("read", wamid))
    meta.send(status_event("delivered", wamid))
    assert admin.message(chat, reply["id"])["delivery"]["state"] == "read"


def test_a_failed_status_says_why_in_plain_words(app, meta, admin, provider, chat):
    reply, wamid = sent_reply(app, admin, provider, chat)
    meta.send(status_event("failed", wamid))
    failed = admin.message(chat, reply["id"])["delivery"]
    assert failed["state"] == "failed" and failed["attempts"] == 1
    assert "24 hours" in failed["reason"] and "131047" in failed["reason"]
    assert admin.conversation(chat)["last_message_state"] == "failed"

    # Retry makes a new attempt Graph receives, under a new key.
    assert admin.post(f"/api/messages/{reply['id']}/retry").status_code == 200
    assert drain(app) == 1
    assert [r.json["biz_opaque_callback_data"] for r in provider.requests] == [str(reply["id"]),
                                                                              f"{reply['id']}-retry-1"]
    assert admin.message(chat, reply["id"])["delivery"] == {"state": "sent", "reason": None, "attempts": 2}


def test_a_status_that_beats_the_workers_record_is_applied_when_the_wamid_is_recorded(app, meta, admin, provider,
                                                                                      chat):
    reply = admin.reply(chat, "fast network")
    # The fake's wamids are wamid.<key>.<n>: the first it answers is wamid.<reply id>.0.
    meta.send(status_event("delivered", f"wamid.{reply['id']}.0"))
    drain(app)
    assert provider.id_for(reply["id"]) == f"wamid.{reply['id']}.0"
    assert admin.message(chat, reply["id"])["delivery"]["state"] == "delivered"


def test_a_status_for_an_unknown_wamid_is_200_and_ignored(app, meta, admin, provider, chat):
    reply, _ = sent_reply(app, admin, provider, chat)
    before = counts(app)
    assert meta.send(status_event("read", "wamid.never-sent-by-us"))["statuses"] == 1
    after = counts(app)
    assert after["Message"] == before["Message"] and after["Conversation"] == before["Conversation"]
    assert admin.message(chat, reply["id"])["delivery"]["state"] == "sent"


# -- send errors -----------------------------------------------------------------------------
@pytest.mark.parametrize("code, words", [(131026, "cannot receive"), (131047, "24 hours")])
def test_a_permanent_graph_error_fails_at_once_in_plain_words(app, admin, provider, chat, code, words):
    provider.meta_code = code
    provider.script("400")
    reply = admin.reply(chat, "to nobody")
    assert drain(app) == 1
    failed = admin.message(chat, reply["id"])["delivery"]
    assert failed["state"] == "failed" and failed["attempts"] == 1, failed
    assert words in failed["reason"] and str(code) in failed["reason"]
    assert len(provider.requests) == 1  # no retry by itself
    assert drain(app) == 0


@pytest.mark.parametrize("mode, words", [("429", "rate limit"), ("500", "answered 500")])
def test_a_temporary_graph_error_waits_then_sends(app, admin, provider, chat, mode, words):
    provider.script(mode)  # 429 comes with Retry-After: 1
    reply = admin.reply(chat, "retry me")
    assert work_once(app)  # once: the backoff after a 500 is shorter than a slow machine's pause
    waiting = admin.message(chat, reply["id"])["delivery"]
    assert waiting["state"] == "queued", waiting
    assert words in waiting["reason"] and "attempt 1 of 4" in waiting["reason"], waiting
    assert drain_until(app, admin, chat, reply["id"], "sent") == {"state": "sent", "reason": None, "attempts": 2}
    keys = [r.json["biz_opaque_callback_data"] for r in provider.requests]
    assert keys == [str(reply["id"])] * 2  # one key for the round
    assert provider.delivered_keys() == [str(reply["id"])]


def test_a_rate_limit_code_is_temporary_whatever_the_http_status(app, admin, provider, chat):
    provider.meta_code = 130429  # Meta answers its throttling code with a 400
    provider.script("400")
    reply = admin.reply(chat, "slow down")
    assert work_once(app)
    waiting = admin.message(chat, reply["id"])["delivery"]
    assert waiting["state"] == "queued" and "rate limit" in waiting["reason"]
    assert drain_until(app, admin, chat, reply["id"], "sent")["state"] == "sent"


def test_a_wrong_access_token_fails_and_says_so(app, admin, provider, chat):
    with app.app_context():
        channel = db.session.get(Channel, channel_id(app))
        channel.settings = {**channel.settings, "access_token": "expired-token"}
        db.session.commit()
    reply = admin.reply(chat, "hello")
    drain(app)
    failed = admin.message(chat, reply["id"])["delivery"]
    assert failed["state"] == "failed" and "access token" in failed["reason"]


# -- echoes ----------------------------------------------------------------------------------
def test_an_echo_of_a_sent_reply_is_not_stored_twice(app, meta, admin, provider, chat):
    reply, wamid = sent_reply(app, admin, provider, chat, "echo me")
    before = counts(app)
    meta.send(echo_event(wamid, "echo me"))
    assert counts(app) == before
    assert [m["body"] for m in admin.messages(chat)].count("echo me") == 1
    assert admin.message(chat, reply["id"])["delivery"]["state"] == "sent"
    assert len(provider.requests) == 1  # and it sent nothing


def test_an_echo_that_beats_the_workers_record_becomes_that_reply(app, meta, admin, provider, chat):
    reply = admin.reply(chat, "quick echo")
    meta.send(echo_event(f"wamid.{reply['id']}.0", "quick echo"))
    drain(app)
    items = admin.messages(chat)
    assert [m["body"] for m in items].count("quick echo") == 1
    assert admin.message(chat, reply["id"])["delivery"]["state"] == "sent"


def test_a_message_sent_from_the_phone_is_stored_once_as_sent_and_opens_nothing(app, meta, admin, chat):
    assert admin.post(f"/api/conversations/{chat}/close").status_code == 200
    before = counts(app)
    meta.send(load("message_echo"))
    meta.send(load("message_echo"))  # retried by Meta
    after = counts(app)
    assert after["Message"] == before["Message"] + 1 and after["Conversation"] == before["Conversation"]
    (echo,) = [m for m in admin.messages(chat) if m["body"] == "Yes, in blue and in green."]
    assert echo["from_me"] is True and echo["sender"] is None and echo["delivery"]["state"] == "sent"
    listed = admin.conversation(chat)
    assert listed["status"] == "closed" and listed["unread_count"] == 0
    with app.app_context():
        assert db.session.get(Contact, db.session.get(Conversation, chat).contact_id).phone == PHONE
        from chat.models import Delivery
        assert db.session.scalar(select(func.count()).select_from(Delivery)) == 0  # and sends nothing


def test_an_echo_to_someone_who_never_wrote_makes_a_closed_conversation(app, meta, admin):
    before = counts(app)
    meta.send(echo_event("wamid.first-contact", "Hello from our shop", to="5511944443333"))
    after = counts(app)
    assert (after["Message"], after["Contact"], after["Conversation"]) == \
        (before["Message"] + 1, before["Contact"] + 1, before["Conversation"] + 1)
    conversation = _conversation_of(app, "+5511944443333")
    listed = admin.conversation(conversation)
    assert listed["status"] == "closed" and listed["unread_count"] == 0
    with app.app_context():
        assert db.session.get(Conversation, conversation).channel_id == channel_id(app)


def test_an_echo_from_the_phone_takes_its_statuses(app, meta, admin, chat):
    wamid = value(load("message_echo"))["message_echoes"][0]["id"]
    meta.send(status_event("delivered", wamid))  # its status came first
    meta.send(load("message_echo"))
    meta.send(status_event("read", wamid))
    (echo,) = [m for m in admin.messages(chat) if m["from_me"]]
    assert echo["delivery"]["state"] == "read"


# -- odd shapes ------------------------------------------------------------------------------
def _ours(value_: dict) -> dict:
    return {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp", "metadata": {"phone_number_id": PHONE_NUMBER_ID}, **value_}}]}]}


@pytest.mark.parametrize("event", [
    {"object": "whatsapp_business_account", "entry": ["not an entry"]},
    {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": ["not a change"]}]},
    {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"value": {"metadata": "x"}}]}]},
    _ours({"messages": [{"from": WA_ID, "id": "wamid.odd1", "type": "text", "text": "not an object"}]}),
    _ours({"messages": ["not a message"], "message_echoes": ["not an echo"], "statuses": ["not a status"]}),
    _ours({"contacts": [{"wa_id": WA_ID, "profile": "not an object"}],
           "messages": [{"from": WA_ID, "id": "wamid.odd2", "type": "text", "text": {"body": "hi"}}]}),
    _ours({"statuses": [{"id": "wamid.odd3", "status": "failed", "errors": [{"code": 1, "error_data": "x"}]}]}),
    _ours({"statuses": [{"id": "wamid.odd4", "status": "deleted"}]}),
    _ours({"messages": [{"from": 16505551234, "id": 12, "type": "text", "text": {"body": "numbers"}}]}),
    [1, 2, 3],
])
def test_a_signed_notification_of_an_odd_shape_is_never_a_500(app, meta, event):
    response = meta.post(event)
    assert response.status_code in (200, 400, 401), response.get_data(as_text=True)[:300]


# -- what agents see -------------------------------------------------------------------------
def test_the_workers_send_and_a_status_webhook_refresh_the_cached_thread(app, meta, admin, provider, chat):
    reply = admin.reply(chat, "cache me")
    url = f"/api/conversations/{chat}/messages"
    admin.get(url)
    assert admin.get(url).get_json()["cached"] is True
    drain(app)  # the worker's commit, outside any request
    fresh = admin.get(url).get_json()
    assert fresh["cached"] is False and fresh["data"][-1]["delivery"]["state"] == "sent"
    admin.get(url)
    meta.send(status_event("read", provider.id_for(reply["id"])))
    fresh = admin.get(url).get_json()
    assert fresh["cached"] is False and fresh["data"][-1]["delivery"]["state"] == "read"
