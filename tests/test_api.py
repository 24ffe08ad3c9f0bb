"""The JSON API: bearer tokens, the {"data", "cached"} shape, and JSON errors."""
import pytest

from tests.conftest import INBOUND_TOKEN


@pytest.fixture
def ana(client, world, token):
    headers = token("ana@example.com")

    class Api:
        def get(self, url, **kw):
            return client.get(url, headers=headers, **kw)

        def post(self, url, **kw):
            return client.post(url, headers=headers, **kw)

    return Api()


def test_list_conversations_shape(ana, world):
    body = ana.get("/api/conversations?status=mine").get_json()
    assert body["cached"] is False
    (item,) = body["data"]
    assert set(item) >= {"id", "status", "contact", "user", "department", "last_message",
                         "last_message_at", "unread_count"}
    assert item["id"] == world.active_ana and item["status"] == "active"
    assert item["contact"]["name"] == "Andre Active" and item["user"]["name"] == "Ana Costa"
    assert item["department"]["name"] == "Support" and item["unread_count"] == 2
    assert item["last_message"] == "Hello"


@pytest.mark.parametrize("status, expected", [
    ("pending", {"pending_support", "pending_sales", "pending_nodept"}),
    ("mine", {"active_ana"}),
    ("closed", {"closed_ana"}),
])
def test_list_conversations_by_status(ana, world, status, expected):
    data = ana.get(f"/api/conversations?status={status}").get_json()["data"]
    assert {d["id"] for d in data} == {getattr(world, n) for n in expected}


def test_list_conversations_default_is_pending_and_bad_status_is_400(ana):
    assert ana.get("/api/conversations").status_code == 200
    response = ana.get("/api/conversations?status=bogus")
    assert response.status_code == 400 and "status must be one of" in response.get_json()["error"]


def test_newest_first_and_paged(app, ana, world):
    app.config["PAGE_SIZE"] = 2
    first = ana.get("/api/conversations?status=all").get_json()
    stamps = [d["last_message_at"] for d in first["data"]]
    assert len(stamps) == 2 and stamps == sorted(stamps, reverse=True)
    seen = [d["id"] for d in first["data"]]
    cursor = first["next_cursor"]
    while cursor:
        page = ana.get(f"/api/conversations?status=all&cursor={cursor}").get_json()
        seen += [d["id"] for d in page["data"]]
        cursor = page["next_cursor"]
    assert len(seen) == len(set(seen)) == 5


def test_messages_oldest_first_with_before_paging(app, ana, world, client):
    app.config["MESSAGE_PAGE_SIZE"] = 4
    for n in range(5):
        ana.post(f"/api/conversations/{world.active_ana}/messages", json={"body": f"reply {n}"})
    page = ana.get(f"/api/conversations/{world.active_ana}/messages").get_json()
    assert [m["body"] for m in page["data"]] == ["reply 1", "reply 2", "reply 3", "reply 4"]
    older = ana.get(f"/api/conversations/{world.active_ana}/messages?before={page['older_cursor']}").get_json()
    assert [m["body"] for m in older["data"]] == ["Hello", "reply 0"] and older["older_cursor"] is None
    assert ana.get(f"/api/conversations/{world.active_ana}/messages?before=abc").status_code == 400


def test_reply_201(ana, world):
    response = ana.post(f"/api/conversations/{world.active_ana}/messages", json={"body": "<b>hi</b>"})
    assert response.status_code == 201
    assert response.get_json()["data"]["body"] == "<b>hi</b>" and response.get_json()["data"]["from_me"] is True


def test_accept_then_409(ana, world, client, token):
    response = ana.post(f"/api/conversations/{world.pending_support}/accept")
    assert response.status_code == 200 and response.get_json()["data"]["status"] == "active"
    bruno = token("bruno@example.com")
    again = client.post(f"/api/conversations/{world.pending_support}/accept", headers=bruno)
    assert again.status_code == 409
    admin = client.post(f"/api/conversations/{world.pending_support}/accept", headers=token("admin@example.com"))
    assert admin.status_code == 409 and admin.get_json() == {"error": "conversation is no longer pending"}


def test_close(ana, world):
    response = ana.post(f"/api/conversations/{world.active_ana}/close")
    assert response.status_code == 200 and response.get_json()["data"]["status"] == "closed"
    assert ana.post(f"/api/conversations/{world.active_ana}/close").status_code == 409


@pytest.mark.parametrize("kwargs, status, error", [
    ({"json": {"body": ""}}, 400, "message body must not be empty"),
    ({"json": {"body": "   "}}, 400, "message body must not be empty"),
    ({"json": {"body": "x" * 4097}}, 400, "message body must be at most 4096 characters"),
    ({"json": {}}, 400, "message body must not be empty"),
    ({"json": ["body"]}, 400, "request body must be a JSON object"),
    ({"data": "{not json", "content_type": "application/json"}, 400, "request body must be a JSON object"),
])
def test_reply_bad_input_changes_nothing(ana, world, kwargs, status, error):
    before = ana.get(f"/api/conversations/{world.active_ana}/messages").get_json()["data"]
    response = ana.post(f"/api/conversations/{world.active_ana}/messages", **kwargs)
    assert response.status_code == status and response.get_json() == {"error": error}
    assert ana.get(f"/api/conversations/{world.active_ana}/messages").get_json()["data"] == before


@pytest.mark.parametrize("headers, error", [
    ({}, "missing bearer token"),
    ({"Authorization": "Bearer wrong"}, "invalid token"),
    ({"Authorization": "Basic abc"}, "missing bearer token"),
    ({"Authorization": f"Bearer {INBOUND_TOKEN}"}, "invalid token"),
])
def test_wrong_or_missing_token_is_401(client, world, headers, error):
    for method, url in [("get", "/api/conversations"), ("post", f"/api/conversations/{world.active_ana}/close")]:
        response = getattr(client, method)(url, headers=headers)
        assert response.status_code == 401 and response.get_json() == {"error": error}


def test_session_cookie_does_not_authenticate_the_api(world, login):
    ana = login("ana@example.com")
    response = ana.client.post(f"/api/conversations/{world.active_ana}/close")
    assert response.status_code == 401


def test_deactivated_agent_token_stops_working(app, client, world, token):
    from chat.extensions import db
    from chat.models import User

    headers = token("bruno@example.com")
    with app.app_context():
        db.session.get(User, world.bruno).active = False
        db.session.commit()
    assert client.get("/api/conversations", headers=headers).status_code == 401


def test_unknown_route_and_method_are_json(client, ana):
    assert ana.get("/api/nope").get_json() == {"error": "not found"}
    response = client.delete("/api/conversations")
    assert response.status_code == 405 and response.get_json() == {"error": "method not allowed"}


def test_reply_with_idempotency_key_is_201_then_200_with_the_same_message(client, world, token):
    headers = {**token("ana@example.com"), "Idempotency-Key": "api-retry-0001"}
    url = f"/api/conversations/{world.active_ana}/messages"
    first = client.post(url, headers=headers, json={"body": "Exactly once"})
    again = client.post(url, headers=headers, json={"body": "Exactly once"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.get_json()["data"] == first.get_json()["data"]
    bodies = [m["body"] for m in client.get(url, headers=headers).get_json()["data"]]
    assert bodies.count("Exactly once") == 1


@pytest.mark.parametrize("key, body, status, error", [
    ("short", "hi", 400, "idempotency key must be 8 to 64 characters: letters, digits, '-' or '_'"),
    ("x" * 65, "hi", 400, "idempotency key must be 8 to 64 characters: letters, digits, '-' or '_'"),
    ("api-retry-0001", "another body", 409, "this idempotency key was already used for another message"),
])
def test_reply_idempotency_key_errors(client, world, token, key, body, status, error):
    headers = token("ana@example.com")
    url = f"/api/conversations/{world.active_ana}/messages"
    assert client.post(url, headers={**headers, "Idempotency-Key": "api-retry-0001"}, json={"body": "first"}).status_code == 201
    before = client.get(url, headers=headers).get_json()["data"]
    response = client.post(url, headers={**headers, "Idempotency-Key": key}, json={"body": body})
    assert response.status_code == status and response.get_json() == {"error": error}
    assert client.get(url, headers=headers).get_json()["data"] == before
