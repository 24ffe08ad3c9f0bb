"""Replies reach the customer: the outbox, the worker, statuses forward only, echoes, Retry.

The provider is tests/provider.py: a real HTTP server on a loopback port. The worker is
chat.worker.work_once, called here where a worker process would loop.
"""
from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select

from chat import catalog, delivery, worker
from chat.extensions import db
from chat.models import ACTIVE, Delivery, DeliveryStatus, Message
from tests.conftest import INBOUND_TOKEN, app_with_tables, make_config, make_conversation, make_user
from tests.provider import FakeProvider
from tests.test_push import connect, events

SECRET = "channel-signing-secret"
PROVIDER = {"Authorization": f"Bearer {INBOUND_TOKEN}"}


@pytest.fixture
def provider():
    with FakeProvider(secret=SECRET) as running:
        yield running


@pytest.fixture
def app(database_url, cache_config, provider):
    """The app with the generic webhook channel configured by the environment's settings, a
    short send timeout and backoff so retries happen within a test."""
    yield from app_with_tables(make_config(
        database_url, **cache_config, CHANNEL_WEBHOOK_URL=provider.webhook_url, CHANNEL_WEBHOOK_SECRET=SECRET,
        DELIVERY_SEND_TIMEOUT=0.5, DELIVERY_BACKOFF_BASE=0.05, DELIVERY_BACKOFF_MAX=0.2, DELIVERY_MAX_ATTEMPTS=4,
        DELIVERY_LEASE_SECONDS=5))


@pytest.fixture
def ana(app, client, world, token):
    headers = token("ana@example.com")
    client.get("/login")  # the first request makes the environment's channel

    class Api:
        def get(self, url, **kw):
            return client.get(url, headers=headers, **kw)

        def post(self, url, **kw):
            return client.post(url, headers=headers, **kw)

        def reply(self, body, conversation=world.active_ana):
            response = self.post(f"/api/conversations/{conversation}/messages", json={"body": body})
            assert response.status_code == 201, response.get_json()
            return response.get_json()["data"]

        def message(self, message_id, conversation=world.active_ana):
            items = self.get(f"/api/conversations/{conversation}/messages").get_json()["data"]
            return next(m for m in items if m["id"] == message_id)

    return Api()


def drain(app, limit: int = 20) -> int:
    """Run the worker until nothing is due (what a worker process does in a loop)."""
    done = 0
    with app.app_context():
        while done < limit and worker.work_once():
            done += 1
    return done


def status(client, provider_id, state, reason=None):
    payload = {"id": provider_id, "status": state, **({"reason": reason} if reason else {})}
    return client.post("/api/status", json=payload, headers=PROVIDER)


def test_a_reply_commits_with_its_delivery_and_the_worker_sends_it_signed(app, client, ana, provider, world):
    sent = ana.reply("Your order ships today")
    assert sent["delivery"] == {"state": "queued", "reason": None, "attempts": 0}
    with app.app_context():  # the outbox row is there as soon as the reply is: nothing to lose
        assert db.session.scalar(select(func.count()).select_from(Delivery).where(Delivery.message_id == sent["id"])) == 1
    assert provider.requests == []  # nothing was sent inside the agent's request

    assert drain(app) == 1
    (request,) = provider.requests
    assert request.signature_ok is True and request.key == str(sent["id"])
    assert request.json == {"id": str(sent["id"]), "conversation_id": world.active_ana, "to": "+551100000005",
                            "body": "Your order ships today", "type": "text"}
    assert ana.message(sent["id"])["delivery"] == {"state": "sent", "reason": None, "attempts": 1}
    listed = ana.get("/api/conversations?status=mine").get_json()["data"][0]
    assert listed["last_message"] == "Your order ships today" and listed["last_message_state"] == "sent"


@pytest.fixture
def app_without_channel(database_url, cache_config):
    """The app as `make run` starts it without channel settings (emptied afterwards, like `app`)."""
    yield from app_with_tables(make_config(database_url, **cache_config))


def test_without_a_channel_a_reply_says_not_sent(app_without_channel):
    app = app_without_channel
    with app.app_context():
        ana = make_user("ana@example.com", "Ana")
        db.session.flush()
        conversation = make_conversation("+5511900000001", "No Channel", ACTIVE, user=ana)
        db.session.commit()
        cid = conversation.id
        headers = {"Authorization": f"Bearer {catalog.issue_api_token('ana@example.com')}"}
    client = app.test_client()
    sent = client.post(f"/api/conversations/{cid}/messages", json={"body": "hello?"}, headers=headers).get_json()["data"]
    assert sent["delivery"] == {"state": "none", "reason": "not sent: no channel", "attempts": 0}
    retried = client.post(f"/api/messages/{sent['id']}/retry", headers=headers)
    assert retried.status_code == 409 and "no channel" in retried.get_json()["error"]
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Delivery)) == 0


def test_a_refused_reply_stores_neither_message_nor_delivery(app, ana, world):
    response = ana.post(f"/api/conversations/{world.closed_ana}/messages", json={"body": "too late"})
    assert response.status_code == 409
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Delivery)) == 0
        assert db.session.scalar(select(func.count()).select_from(Message).where(Message.body == "too late")) == 0


def test_statuses_move_forward_only_and_are_stored_once(app, client, ana, provider):
    sent = ana.reply("tracking number 4411")
    drain(app)
    pid = provider.id_for(sent["id"])
    assert status(client, pid, "delivered").get_json()["data"]["outcome"] == "applied"
    assert status(client, pid, "delivered").get_json()["data"]["outcome"] == "duplicate"
    assert ana.message(sent["id"])["delivery"]["state"] == "delivered"
    assert status(client, pid, "read").get_json()["data"]["outcome"] == "applied"
    # Late and out of order: sent, delivered again, and failed from another device change nothing.
    for late in ("sent", "failed"):
        assert status(client, pid, late).status_code == 200
    assert ana.message(sent["id"])["delivery"] == {"state": "read", "reason": None, "attempts": 1}
    with app.app_context():
        stored = db.session.scalars(select(DeliveryStatus.status).where(DeliveryStatus.provider_message_id == pid)).all()
    assert sorted(stored) == ["delivered", "failed", "read", "sent"]


def test_read_before_delivered_ends_read(app, client, ana, provider):
    sent = ana.reply("hi")
    drain(app)
    pid = provider.id_for(sent["id"])
    assert status(client, pid, "read").get_json()["data"]["outcome"] == "applied"
    assert status(client, pid, "delivered").get_json()["data"]["outcome"] == "stale"
    assert ana.message(sent["id"])["delivery"]["state"] == "read"


def test_a_failed_status_says_why_and_retry_sends_a_new_attempt(app, client, ana, provider):
    sent = ana.reply("are you there?")
    drain(app)
    status(client, provider.id_for(sent["id"]), "failed", "recipient blocked the business")
    failed = ana.message(sent["id"])["delivery"]
    assert failed["state"] == "failed" and failed["reason"] == "recipient blocked the business"
    assert ana.post(f"/api/messages/{sent['id']}/retry").get_json()["data"]["delivery"]["state"] == "queued"
    assert drain(app) == 1
    keys = [r.key for r in provider.requests]
    assert keys == [str(sent["id"]), f"{sent['id']}-retry-1"]  # a new attempt under a new key
    assert ana.message(sent["id"])["delivery"] == {"state": "sent", "reason": None, "attempts": 2}
    again = ana.post(f"/api/messages/{sent['id']}/retry")
    assert again.status_code == 409 and "only a failed reply" in again.get_json()["error"]


def test_a_status_for_an_id_never_sent_is_200_and_ignored(client, ana):
    response = status(client, "never-sent-by-us", "delivered")
    assert response.status_code == 200 and response.get_json()["data"]["outcome"] == "unknown"


@pytest.mark.parametrize("payload, message", [
    ({"id": "x", "status": "bounced"}, "status must be one of"),
    ({"status": "read"}, "id must be"),
    ({"id": "x", "status": "failed", "reason": 5}, "reason must be a string"),
    ({"id": "x", "status": "read", "extra": 1}, "unknown field"),
])
def test_bad_status_reports_are_400(client, ana, payload, message):
    response = client.post("/api/status", json=payload, headers=PROVIDER)
    assert response.status_code == 400 and message in response.get_json()["error"]


def test_status_reports_need_the_provider_token(client, ana):
    assert client.post("/api/status", json={"id": "x", "status": "read"}).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert client.post("/api/status", json={"id": "x", "status": "read"}, headers=wrong).status_code == 401


def test_a_status_that_beats_the_workers_record_is_applied_when_the_id_is_recorded(app, client, ana, provider):
    sent = ana.reply("fast network")
    # The provider's ids are prov-<key>: its delivered report arrives before the worker recorded the id.
    assert status(client, f"prov-{sent['id']}", "delivered").get_json()["data"]["outcome"] == "unknown"
    drain(app)
    assert ana.message(sent["id"])["delivery"]["state"] == "delivered"


def test_temporary_errors_back_off_and_retry_by_themselves(app, ana, provider):
    provider.script("500", "503")
    sent = ana.reply("retry me")
    with app.app_context():
        assert worker.work_once()  # once: the backoff is short enough for a loop to take it again
    waiting = ana.message(sent["id"])["delivery"]
    assert waiting["state"] == "queued" and "answered 500" in waiting["reason"] and "attempt 1 of 4" in waiting["reason"]
    deadline = time.monotonic() + 5
    while ana.message(sent["id"])["delivery"]["state"] != "sent" and time.monotonic() < deadline:
        drain(app)
        time.sleep(0.05)
    assert ana.message(sent["id"])["delivery"] == {"state": "sent", "reason": None, "attempts": 3}
    assert [r.key for r in provider.requests] == [str(sent["id"])] * 3  # one key for the whole round
    assert provider.delivered_keys() == [str(sent["id"])]


def test_429_waits_for_retry_after(app, ana, provider):
    provider.retry_after = "30"
    provider.script("429")
    sent = ana.reply("slow down")
    drain(app)
    with app.app_context():
        row = db.session.scalar(select(Delivery).where(Delivery.message_id == sent["id"]))
        wait = (row.run_after - row.created_at).total_seconds()
    assert 29 <= wait <= 31
    assert "trying again in 30 s" in ana.message(sent["id"])["delivery"]["reason"]
    assert drain(app) == 0  # not due yet


def test_a_permanent_error_fails_at_once_with_the_providers_reason(app, ana, provider):
    provider.script("400")
    sent = ana.reply("to nobody")
    drain(app)
    assert ana.message(sent["id"])["delivery"] == {
        "state": "failed", "reason": "the provider answered 422: unknown recipient", "attempts": 1}
    assert len(provider.requests) == 1


def test_exhausted_retries_fail_with_the_last_reason(app, ana, provider):
    provider.default = "500"
    sent = ana.reply("never")
    deadline = time.monotonic() + 5
    while ana.message(sent["id"])["delivery"]["state"] != "failed" and time.monotonic() < deadline:
        drain(app)
        time.sleep(0.05)
    failed = ana.message(sent["id"])["delivery"]
    assert failed["state"] == "failed" and failed["reason"] == "gave up after 4 attempts: the provider answered 500: " \
        "provider is having a bad day" and failed["attempts"] == 4


def test_a_hanging_provider_is_a_timeout_and_a_retry(app, ana, provider):
    provider.hang_seconds = 1.5
    provider.script("hang")
    sent = ana.reply("hello?")
    drain(app)
    waiting = ana.message(sent["id"])["delivery"]
    assert waiting["state"] == "queued" and "did not answer in time" in waiting["reason"]


def test_connection_refused_is_temporary(app, ana, provider):
    provider.stop()
    sent = ana.reply("anyone?")
    drain(app)
    assert "could not connect" in ana.message(sent["id"])["delivery"]["reason"]
    provider.start()
    deadline = time.monotonic() + 5
    while ana.message(sent["id"])["delivery"]["state"] != "sent" and time.monotonic() < deadline:
        drain(app)
        time.sleep(0.05)
    assert ana.message(sent["id"])["delivery"]["state"] == "sent"


def test_replies_of_one_conversation_go_out_in_order(app, ana, provider):
    # Its retry is due 0.5 s to 1 s later: never within the first drain, however slow the machine.
    app.config.update(DELIVERY_BACKOFF_BASE=1, DELIVERY_BACKOFF_MAX=1)
    provider.script("500")
    first, second = ana.reply("first"), ana.reply("second")
    drain(app)  # the first failed for now; the second must wait for it
    assert [r.json["body"] for r in provider.requests] == ["first"]
    deadline = time.monotonic() + 5
    while len(provider.accepted()) < 2 and time.monotonic() < deadline:
        drain(app)
        time.sleep(0.05)
    assert [r.json["body"] for r in provider.accepted()] == ["first", "second"]


def test_a_lease_that_expires_passes_the_delivery_to_another_worker(app, ana, provider):
    app.config["DELIVERY_LEASE_SECONDS"] = 2  # long enough for a loaded machine's second claim
    sent = ana.reply("who has it?")
    with app.app_context():
        dead = delivery.claim()  # a worker claims it, then dies without a word
        assert dead is not None and delivery.claim() is None  # nobody else may take it meanwhile
    assert ana.message(sent["id"])["delivery"]["state"] == "sending"
    time.sleep(2.1)
    assert drain(app) == 1
    assert ana.message(sent["id"])["delivery"]["state"] == "sent"
    with app.app_context():  # the dead worker waking up late cannot record anything
        assert delivery.record_sent(dead, "prov-late") is False
    assert ana.message(sent["id"])["delivery"]["state"] == "sent"


def test_an_echo_of_a_sent_reply_is_not_stored_twice(app, client, ana, provider, world):
    sent = ana.reply("echo me")
    drain(app)
    echo = {"phone": "+551100000005", "body": "echo me", "external_id": provider.id_for(sent["id"]), "from_me": True}
    response = client.post("/api/inbound", json=echo, headers=PROVIDER)
    assert response.status_code == 200 and response.get_json()["data"]["message_id"] == sent["id"]
    bodies = [m["body"] for m in ana.get(f"/api/conversations/{world.active_ana}/messages").get_json()["data"]]
    assert bodies.count("echo me") == 1
    assert len(provider.requests) == 1  # and it triggered no send


def test_an_echo_that_beats_the_workers_record_becomes_that_reply(app, client, ana, provider, world):
    sent = ana.reply("quick echo")
    echo = {"phone": "+551100000005", "body": "quick echo", "external_id": f"prov-{sent['id']}", "from_me": True}
    assert client.post("/api/inbound", json=echo, headers=PROVIDER).status_code == 201
    drain(app)
    items = ana.get(f"/api/conversations/{world.active_ana}/messages").get_json()["data"]
    assert [m["body"] for m in items].count("quick echo") == 1
    assert ana.message(sent["id"])["delivery"]["state"] == "sent"


def test_a_message_sent_from_the_phone_is_stored_once_as_sent(app, client, ana, world):
    echo = {"phone": "+551100000005", "body": "sent from the phone", "external_id": "phone-1", "from_me": True}
    first = client.post("/api/inbound", json=echo, headers=PROVIDER)
    again = client.post("/api/inbound", json=echo, headers=PROVIDER)
    assert (first.status_code, again.status_code) == (201, 200)
    item = ana.message(first.get_json()["data"]["message_id"])
    assert item["from_me"] is True and item["delivery"]["state"] == "sent"
    mine = ana.get("/api/conversations?status=mine").get_json()["data"][0]
    assert mine["status"] == "active" and mine["unread_count"] == 2  # an echo opens nothing, counts nothing
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Delivery)) == 0  # and sends nothing


def test_inbound_remembers_its_channel_and_the_reply_goes_back_through_it(app, client, ana, provider, token):
    made = client.post("/api/inbound", json={"phone": "+5511977776666", "body": "hi", "external_id": "in-1"},
                       headers=PROVIDER).get_json()["data"]
    admin = token("admin@example.com")
    client.post(f"/api/conversations/{made['conversation_id']}/accept", headers=admin)
    reply = client.post(f"/api/conversations/{made['conversation_id']}/messages", json={"body": "hello"},
                        headers=admin).get_json()["data"]
    drain(app)
    assert provider.requests[-1].json["to"] == "+5511977776666"
    with app.app_context():
        from chat.models import Channel, Conversation
        conversation = db.session.get(Conversation, made["conversation_id"])
        assert db.session.get(Channel, conversation.channel_id).name == "Webhook (environment)"
    assert reply["delivery"]["state"] == "queued"


def test_a_status_change_reaches_the_browsers_showing_the_thread(app, client, ana, provider, login, world):
    sent = ana.reply("watch my ticks")
    drain(app)
    socket = connect(app, login("ana@example.com"))
    bruno = connect(app, login("bruno@example.com"))
    socket.get_received(), bruno.get_received()
    status(client, provider.id_for(sent["id"]), "delivered")
    keys = [k for batch in events(socket) for k in batch]
    assert f"conversation:{world.active_ana}:messages" in keys or f"conversation:{world.active_ana}" in keys
    assert not any(f"conversation:{world.active_ana}" in k for batch in events(bruno, 0.3) for k in batch)


def test_a_status_change_invalidates_the_cached_thread(app, client, ana, provider, world):
    sent = ana.reply("cache me")
    drain(app)
    url = f"/api/conversations/{world.active_ana}/messages"
    ana.get(url)
    assert ana.get(url).get_json()["cached"] is True
    status(client, provider.id_for(sent["id"]), "read")
    fresh = ana.get(url).get_json()
    assert fresh["cached"] is False and next(m for m in fresh["data"] if m["id"] == sent["id"])["delivery"]["state"] == "read"


def test_a_status_of_an_older_reply_reaches_the_thread_too(app, client, ana, provider, login, world):
    """Only the newest message's state is on the conversation's row; an older reply's change is
    heard where its conversation is (invalidation's rooms_of_parent)."""
    older, newer = ana.reply("first of two"), ana.reply("second of two")
    drain(app)
    socket = connect(app, login("ana@example.com"))
    bruno = connect(app, login("bruno@example.com"))
    socket.get_received(), bruno.get_received()
    status(client, provider.id_for(older["id"]), "read")
    keys = [k for batch in events(socket) for k in batch]
    assert f"conversation:{world.active_ana}:messages" in keys
    assert not any(f"conversation:{world.active_ana}" in k for batch in events(bruno, 0.3) for k in batch)
    assert ana.message(older["id"])["delivery"]["state"] == "read"
    assert ana.message(newer["id"])["delivery"]["state"] == "sent"
    assert ana.get("/api/conversations?status=mine").get_json()["data"][0]["last_message_state"] == "sent"
