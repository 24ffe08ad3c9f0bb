"""POST /api/inbound: the messaging provider's webhook."""
import threading

import pytest

from tests.conftest import INBOUND_TOKEN

AUTH = {"Authorization": f"Bearer {INBOUND_TOKEN}"}


def post(client, payload, headers=AUTH, **kw):
    return client.post("/api/inbound", json=payload, headers=headers, **kw)


def test_new_contact_opens_pending_conversation(client, world, token):
    response = post(client, {"phone": "+5511955554444", "name": "Zé", "body": "Oi", "external_id": "w-1"})
    assert response.status_code == 201
    data = response.get_json()["data"]
    assert set(data) == {"conversation_id", "message_id"}
    pending = client.get("/api/conversations?status=pending", headers=token("bruno@example.com")).get_json()
    item = next(i for i in pending["data"] if i["id"] == data["conversation_id"])
    assert item["contact"]["name"] == "Zé" and item["last_message"] == "Oi" and item["unread_count"] == 1


def test_same_external_id_twice_stores_one_message(client, world, token):
    payload = {"phone": "+5511955554444", "body": "retry me", "external_id": "w-2"}
    first = post(client, payload)
    second = post(client, payload)
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.get_json()["data"] == second.get_json()["data"]
    cid = first.get_json()["data"]["conversation_id"]
    messages = client.get(f"/api/conversations/{cid}/messages", headers=token("admin@example.com")).get_json()
    assert [m["body"] for m in messages["data"]] == ["retry me"]


def test_concurrent_retries_store_one_message(app, client, world, token):
    """Webhooks retried at the same moment: the unique external_id makes one of them win."""
    payload = {"phone": "+5511944443333", "body": "race", "external_id": "w-race"}
    results = []

    def deliver():
        results.append(post(app.test_client(), payload))

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.status_code for r in results).count(201) == 1
    assert len({tuple(r.get_json()["data"].values()) for r in results}) == 1
    cid = results[0].get_json()["data"]["conversation_id"]
    messages = client.get(f"/api/conversations/{cid}/messages", headers=token("admin@example.com")).get_json()
    assert len(messages["data"]) == 1


def test_reopens_closed_conversation(client, world, token):
    response = post(client, {"phone": "+551100000007", "body": "back again"})
    assert response.get_json()["data"]["conversation_id"] == world.closed_ana
    pending = client.get("/api/conversations?status=pending", headers=token("admin@example.com")).get_json()
    assert world.closed_ana in {i["id"] for i in pending["data"]}


@pytest.mark.parametrize("headers, error", [
    ({}, "missing bearer token"),
    ({"Authorization": "Bearer nope"}, "invalid token"),
])
def test_token_required(client, world, headers, error):
    response = post(client, {"phone": "+5511955554444", "body": "x"}, headers=headers)
    assert response.status_code == 401 and response.get_json() == {"error": error}


@pytest.mark.parametrize("payload, error", [
    ({"phone": "+5511955554444", "body": ""}, "message body must not be empty"),
    ({"phone": "+5511955554444", "body": " \t"}, "message body must not be empty"),
    ({"phone": "+5511955554444", "body": "y" * 4097}, "message body must be at most 4096 characters"),
    ({"body": "hi"}, "phone is required"),
    ({"phone": "call me", "body": "hi"}, "phone must be 5 to 20 digits, optionally starting with +"),
    ([1, 2], "request body must be a JSON object"),
])
def test_bad_payload_is_400_and_stores_nothing(client, world, token, payload, error):
    before = client.get("/api/conversations?status=all", headers=token("admin@example.com")).get_json()["data"]
    response = post(client, payload)
    assert response.status_code == 400 and response.get_json() == {"error": error}
    after = client.get("/api/conversations?status=all", headers=token("admin@example.com")).get_json()["data"]
    assert after == before


def test_malformed_json_is_400(client, world):
    response = client.post("/api/inbound", data="{oops", content_type="application/json", headers=AUTH)
    assert response.status_code == 400 and response.get_json() == {"error": "request body must be a JSON object"}


def test_inbound_needs_no_csrf_but_html_forms_do(client, world):
    assert post(client, {"phone": "+5511955554444", "body": "x"}).status_code == 201
