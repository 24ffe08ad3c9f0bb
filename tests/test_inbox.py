"""The inbox pages and fragments as an agent uses them."""
import re

import pytest

from tests.conftest import INBOUND_TOKEN


def ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'data-conversation-id="(\d+)"', html)]


def test_home_redirects_to_inbox(world, login):
    assert login("ana@example.com").get("/").headers["Location"].endswith("/inbox")


@pytest.mark.parametrize("tab, expected", [
    ("pending", ["pending_support", "pending_sales", "pending_nodept"]),
    ("mine", ["active_ana"]),
    ("closed", ["closed_ana"]),
    ("all", ["pending_support", "pending_sales", "pending_nodept", "active_ana", "closed_ana"]),
    ("bogus", ["pending_support", "pending_sales", "pending_nodept"]),
])
def test_tabs(world, login, tab, expected):
    html = login("ana@example.com").get(f"/inbox?tab={tab}").get_data(as_text=True)
    assert sorted(ids(html)) == sorted(getattr(world, n) for n in expected)


def test_page_and_fragment_render_the_same_list(world, login):
    ana = login("ana@example.com")
    page = ana.get("/inbox?tab=all").get_data(as_text=True)
    fragment = ana.get("/inbox/list?tab=all", htmx=True).get_data(as_text=True)
    assert fragment.strip() in page
    assert 'data-cache-key="conversations:user:' in fragment
    assert "<html" not in fragment


def test_rows_show_what_an_agent_needs(world, login):
    html = login("ana@example.com").get("/inbox?tab=mine").get_data(as_text=True)
    for text in ("Andre Active", "+551100000005", "Hello", "Support", "#16a34a", "Ana Costa"):
        assert text in html
    assert 'class="unread-badge"' in html and ">2</span>" in html


def test_newest_first(app, world, login):
    client = app.test_client()
    client.post("/api/inbound", json={"phone": "+551100000004", "body": "bump"},
                headers={"Authorization": f"Bearer {INBOUND_TOKEN}"})
    html = login("ana@example.com").get("/inbox?tab=pending").get_data(as_text=True)
    assert ids(html)[0] == world.pending_nodept


def test_department_filter_and_search(world, login):
    ana = login("ana@example.com")
    html = ana.get(f"/inbox/list?tab=pending&department={world.sales}", htmx=True).get_data(as_text=True)
    assert ids(html) == [world.pending_sales]
    assert ids(ana.get("/inbox/list?tab=all&q=andre", htmx=True).get_data(as_text=True)) == [world.active_ana]
    assert ids(ana.get("/inbox/list?tab=all&q=00000007", htmx=True).get_data(as_text=True)) == [world.closed_ana]
    empty = ana.get("/inbox/list?tab=all&q=zzz", htmx=True).get_data(as_text=True)
    assert ids(empty) == [] and "No conversation matches" in empty


def test_infinite_scroll_pages(app, world, login):
    app.config["PAGE_SIZE"] = 2
    ana = login("admin@example.com")
    html = ana.get("/inbox/list?tab=all", htmx=True).get_data(as_text=True)
    seen = ids(html)
    while (match := re.search(r'hx-get="([^"]*cursor=[^"]+)"', html)):
        html = ana.get(match.group(1).replace("&amp;", "&"), htmx=True).get_data(as_text=True)
        seen += ids(html)
    assert len(seen) == len(set(seen)) == 7


def test_counts_fragment(world, login):
    html = login("ana@example.com").get("/inbox/counts", htmx=True).get_data(as_text=True)
    counts = dict(re.findall(r'(Pending|Mine|Closed|All) <span class="count">(\d+)</span>', html))
    assert counts == {"Pending": "3", "Mine": "1", "Closed": "1", "All": "5"}
    assert 'data-cache-key="counts:user:' in html


def test_empty_states(world, login):
    carla = login("carla@example.com")
    assert "You have no active conversations" in carla.get("/inbox?tab=mine").get_data(as_text=True)


def test_conversation_page_and_pane(world, login):
    ana = login("ana@example.com")
    page = ana.get(f"/conversations/{world.active_ana}").get_data(as_text=True)
    pane = ana.get(f"/conversations/{world.active_ana}", htmx=True).get_data(as_text=True)
    assert "<html" in page and "<html" not in pane
    assert 'id="conversation-pane"' in pane and 'name="body"' in pane
    assert f'data-cache-key="conversation:{world.active_ana}:messages"' in pane


def test_opening_as_assignee_marks_read(app, world, login, token):
    admin_api = token("admin@example.com")
    login("admin@example.com").get(f"/conversations/{world.active_ana}")
    unread = lambda: next(i["unread_count"] for i in app.test_client().get(  # noqa: E731
        "/api/conversations?status=all", headers=admin_api).get_json()["data"] if i["id"] == world.active_ana)
    assert unread() == 2
    login("ana@example.com").get(f"/conversations/{world.active_ana}")
    assert unread() == 0


def test_messages_oldest_first_and_load_older(app, world, login):
    app.config["MESSAGE_PAGE_SIZE"] = 3
    ana = login("ana@example.com")
    for n in range(4):
        ana.post(f"/conversations/{world.active_ana}/messages", {"body": f"m{n}"})
    html = ana.get(f"/conversations/{world.active_ana}/messages", htmx=True).get_data(as_text=True)
    assert re.findall(r'<p class="msg-body">(.*?)</p>', html) == ["m1", "m2", "m3"]
    older_url = re.search(r'hx-get="([^"]*before=\d+)"', html).group(1).replace("&amp;", "&")
    older = ana.get(older_url, htmx=True).get_data(as_text=True)
    assert re.findall(r'<p class="msg-body">(.*?)</p>', older) == ["Hello", "m0"]
    assert "Load older" not in older


def test_a_refresh_keeps_every_message_loaded_from_since_on(app, world, login):
    """Once older pages were loaded, a refresh (pane or messages) asks ?since=<oldest shown id>:
    everything from there on, new messages included, and "load older" still below it."""
    app.config["MESSAGE_PAGE_SIZE"] = 3
    ana = login("ana@example.com")
    cid = world.active_ana
    for n in range(4):
        ana.post(f"/conversations/{cid}/messages", {"body": f"m{n}"})
    bodies = lambda html: re.findall(r'<p class="msg-body">(.*?)</p>', html)  # noqa: E731
    html = ana.get(f"/conversations/{cid}/messages", htmx=True).get_data(as_text=True)
    older = ana.get(re.search(r'hx-get="([^"]*before=\d+)"', html).group(1).replace("&amp;", "&"), htmx=True)
    shown = bodies(older.get_data(as_text=True)) + bodies(html)
    assert shown == ["Hello", "m0", "m1", "m2", "m3"]
    m0 = re.findall(r'data-message-id="(\d+)"', older.get_data(as_text=True))[1]

    ana.post(f"/conversations/{cid}/messages", {"body": "m4"})  # arrives while reading back
    for url in (f"/conversations/{cid}/messages?since={m0}", f"/conversations/{cid}?since={m0}"):
        html = ana.get(url, htmx=True).get_data(as_text=True)
        assert bodies(html) == ["m0", "m1", "m2", "m3", "m4"], url
        assert re.search(rf'hx-get="[^"]*before={m0}"', html), url  # "Hello" is still behind "load older"
    assert "before=" not in ana.get(f"/conversations/{cid}/messages?since=1", htmx=True).get_data(as_text=True)


def test_accept_reply_close_flow(world, login):
    bruno = login("bruno@example.com")
    cid = world.pending_support
    pane = bruno.post(f"/conversations/{cid}/accept")
    assert pane.status_code == 200 and "status-active" in pane.get_data(as_text=True)
    pane = bruno.post(f"/conversations/{cid}/messages", {"body": "Thanks for waiting"})
    assert "Thanks for waiting" in pane.get_data(as_text=True)
    assert cid in ids(bruno.get("/inbox?tab=mine").get_data(as_text=True))
    pane = bruno.post(f"/conversations/{cid}/close")
    assert "This conversation is closed" in pane.get_data(as_text=True)
    assert cid in ids(bruno.get("/inbox?tab=closed").get_data(as_text=True))


def test_forms_work_without_javascript(world, login):
    bruno = login("bruno@example.com")
    response = bruno.post(f"/conversations/{world.pending_support}/accept", htmx=False)
    assert response.status_code == 302 and response.headers["Location"].endswith(f"/conversations/{world.pending_support}")


def test_accept_lost_race_shows_409_in_the_pane(world, login):
    ana, bruno = login("ana@example.com"), login("bruno@example.com")
    assert ana.post(f"/conversations/{world.pending_support}/accept").status_code == 200
    response = login("admin@example.com").post(f"/conversations/{world.pending_support}/accept")
    assert response.status_code == 409 and "no longer pending" in response.get_data(as_text=True)
    assert bruno.post(f"/conversations/{world.pending_support}/accept").status_code == 409
    carla = login("carla@example.com")  # not in Support: never could see it
    assert carla.post(f"/conversations/{world.pending_support}/accept").status_code == 404


@pytest.mark.parametrize("body, message", [
    ("", "message body must not be empty"),
    ("   ", "message body must not be empty"),
    ("z" * 4097, "message body must be at most 4096 characters"),
])
def test_reply_bad_input(world, login, body, message):
    ana = login("ana@example.com")
    response = ana.post(f"/conversations/{world.active_ana}/messages", {"body": body})
    assert response.status_code == 400 and message in response.get_data(as_text=True)
    html = ana.get(f"/conversations/{world.active_ana}/messages", htmx=True).get_data(as_text=True)
    assert re.findall(r'<p class="msg-body">(.*?)</p>', html) == ["Hello"]


def test_post_without_csrf_is_refused_and_changes_nothing(world, login):
    ana = login("ana@example.com")
    response = ana.post(f"/conversations/{world.active_ana}/messages", {"body": "sneaky"}, csrf=False)
    assert response.status_code == 400 and "CSRF" in response.get_data(as_text=True)
    assert ana.post(f"/conversations/{world.pending_support}/accept", csrf=False).status_code == 400
    assert "sneaky" not in ana.get(f"/conversations/{world.active_ana}").get_data(as_text=True)
    assert world.pending_support in ids(ana.get("/inbox?tab=pending").get_data(as_text=True))


def test_html_in_bodies_is_shown_as_text(world, login):
    ana = login("ana@example.com")
    ana.post(f"/conversations/{world.active_ana}/messages", {"body": "<script>alert(1)</script>"})
    html = ana.get(f"/conversations/{world.active_ana}").get_data(as_text=True)
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_transfer_to_agent_and_department(world, login):
    ana = login("ana@example.com")
    response = ana.post(f"/conversations/{world.active_ana}/transfer", {"user_id": world.bruno})
    assert response.status_code == 200 and "Conversation transferred" in response.get_data(as_text=True)
    bruno = login("bruno@example.com")
    assert world.active_ana in ids(bruno.get("/inbox?tab=mine").get_data(as_text=True))
    bruno.post(f"/conversations/{world.active_ana}/transfer", {"department_id": world.billing})
    carla = login("carla@example.com")
    assert world.active_ana in ids(carla.get("/inbox?tab=pending").get_data(as_text=True))


def test_transfer_without_target_is_400(world, login):
    response = login("ana@example.com").post(f"/conversations/{world.active_ana}/transfer", {})
    assert response.status_code == 400 and "choose an agent or a department" in response.get_data(as_text=True)


def test_quick_replies_are_offered(world, login):
    pane = login("ana@example.com").get(f"/conversations/{world.active_ana}", htmx=True).get_data(as_text=True)
    assert f'data-insert-into="#reply-body-{world.active_ana}"' in pane and "Hello! How can I help?" in pane


def test_unknown_page_is_a_friendly_404(world, login):
    response = login("ana@example.com").get("/nowhere")
    assert response.status_code == 404 and "does not exist" in response.get_data(as_text=True)


@pytest.mark.parametrize("q", ["%", "_", "\\"])
def test_search_wildcards_are_literal(world, login, q):
    html = login("admin@example.com").get(f"/inbox/list?tab=all&q={q}", htmx=True).get_data(as_text=True)
    assert ids(html) == []


def stored_with_key(app, key: str) -> int:
    from sqlalchemy import func, select

    from chat.extensions import db
    from chat.models import Message

    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(Message).where(Message.idempotency_key == key))


@pytest.mark.parametrize("how", ["form field", "header"])
def test_reply_with_an_idempotency_key_is_201_then_200_and_stored_once(app, world, login, how):
    """The outbox's contract: 2xx means delivered, 201 the first time, 200 for a repeat."""
    ana = login("ana@example.com")
    url, key = f"/conversations/{world.active_ana}/messages", "outbox-key-0001"

    def send():
        if how == "header":
            return ana.post(url, {"body": "Sent once"}, headers={"Idempotency-Key": key})
        return ana.post(url, {"body": "Sent once", "idempotency_key": key})

    first, again = send(), send()
    assert (first.status_code, again.status_code) == (201, 200)
    for response in (first, again):
        assert re.findall(r'<p class="msg-body">(.*?)</p>', response.get_data(as_text=True)).count("Sent once") == 1
    assert stored_with_key(app, key) == 1


def test_a_reply_whose_answer_was_lost_is_delivered_once_when_retried(app, world, login):
    """The request committed but its answer never reached the browser (the conversation was
    closed meanwhile): the outbox retries it with the same key and learns it was delivered."""
    ana = login("ana@example.com")
    url, data = f"/conversations/{world.active_ana}/messages", {"body": "Are you there?", "idempotency_key": "lost-answer-1"}
    ana.post(url, data)  # the answer is lost
    assert ana.post(f"/conversations/{world.active_ana}/close").status_code == 200
    retry = ana.post(url, data)
    assert retry.status_code == 200 and "Are you there?" in retry.get_data(as_text=True)
    assert stored_with_key(app, "lost-answer-1") == 1
    # A new reply (a new key) to the closed conversation is refused as before: the state changed.
    refused = ana.post(url, {"body": "Are you there?", "idempotency_key": "lost-answer-2"})
    assert refused.status_code == 409 and "conversation is closed" in refused.get_data(as_text=True)


@pytest.mark.parametrize("data, status, message", [
    ({"body": "hi", "idempotency_key": "short"}, 400, "idempotency key must be 8 to 64 characters"),
    ({"body": "hi", "idempotency_key": "no spaces allowed"}, 400, "idempotency key must be 8 to 64 characters"),
    ({"body": "not the same", "idempotency_key": "outbox-key-0001"}, 409,
     "this idempotency key was already used for another message"),
])
def test_reply_key_errors_render_the_pane_with_the_message(world, login, data, status, message):
    ana = login("ana@example.com")
    url = f"/conversations/{world.active_ana}/messages"
    assert ana.post(url, {"body": "first", "idempotency_key": "outbox-key-0001"}).status_code == 201
    response = ana.post(url, data)
    assert response.status_code == status and message in response.get_data(as_text=True)
    html = ana.get(f"/conversations/{world.active_ana}/messages", htmx=True).get_data(as_text=True)
    assert re.findall(r'<p class="msg-body">(.*?)</p>', html) == ["Hello", "first"]


def test_reply_without_javascript_still_redirects(world, login):
    ana = login("ana@example.com")
    response = ana.post(f"/conversations/{world.active_ana}/messages", {"body": "plain form"}, htmx=False)
    assert response.status_code == 302
