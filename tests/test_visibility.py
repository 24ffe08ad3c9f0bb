"""Who sees what: pending by department, active and closed by assignee, admins everything.

Anything else is 404 in pages, fragments and the API alike.
"""
import re

import pytest

CONVERSATIONS = ["pending_support", "pending_sales", "pending_billing", "pending_nodept",
                 "active_ana", "active_bruno", "closed_ana"]
VISIBLE = {
    "admin@example.com": set(CONVERSATIONS),
    "ana@example.com": {"pending_support", "pending_sales", "pending_nodept", "active_ana", "closed_ana"},
    "bruno@example.com": {"pending_support", "pending_nodept", "active_bruno"},
    "carla@example.com": {"pending_billing", "pending_nodept"},
}


@pytest.mark.parametrize("email", sorted(VISIBLE))
def test_pages_fragments_and_api_apply_the_same_rule(world, login, token, email):
    agent = login(email)
    auth = token(email)
    for name in CONVERSATIONS:
        cid = getattr(world, name)
        expected = 200 if name in VISIBLE[email] else 404
        assert agent.get(f"/conversations/{cid}").status_code == expected, (email, name, "page")
        assert agent.get(f"/conversations/{cid}", htmx=True).status_code == expected, (email, name, "pane")
        assert agent.get(f"/conversations/{cid}/messages", htmx=True).status_code == expected, (email, name)
        api = agent.client.get(f"/api/conversations/{cid}/messages", headers=auth)
        assert api.status_code == expected, (email, name, "api")
        if expected == 404:
            assert api.get_json() == {"error": "conversation not found"}


@pytest.mark.parametrize("email", sorted(VISIBLE))
def test_all_tab_lists_exactly_the_visible_conversations(world, login, token, email):
    response = login(email).get("/inbox/list?tab=all", htmx=True)
    html = response.get_data(as_text=True)
    listed = {name for name in CONVERSATIONS if f'data-conversation-id="{getattr(world, name)}"' in html}
    assert listed == VISIBLE[email]
    api = login(email).client.get("/api/conversations?status=all", headers=token(email)).get_json()
    assert {item["id"] for item in api["data"]} == {getattr(world, n) for n in VISIBLE[email]}


def test_actions_on_invisible_conversations_are_404(world, login):
    carla = login("carla@example.com")  # Billing: never saw Support's conversations
    for action in ("accept", "close", "messages", "transfer"):
        response = carla.post(f"/conversations/{world.active_bruno}/{action}", {"body": "x", "user_id": world.carla})
        assert response.status_code == 404, action
    ana = login("ana@example.com")  # Support, but it is Bruno's now
    for action in ("close", "messages", "transfer"):
        response = ana.post(f"/conversations/{world.active_bruno}/{action}", {"body": "x", "user_id": world.ana})
        assert response.status_code == 404, action


def test_unknown_conversation_is_404(world, login, token):
    assert login("admin@example.com").get("/conversations/999999").status_code == 404
    assert login("admin@example.com").client.get(
        "/api/conversations/999999/messages", headers=token("admin@example.com")).status_code == 404


def test_two_admins_each_see_their_own_mine_and_badges(app, world, login):
    """Admins share the lists every admin sees alike (Pending, Closed, All), not Mine: each
    admin's Mine tab and its badge are that admin's own, cached or not."""
    from chat import domain
    from chat.extensions import db
    from chat.models import User
    from tests.conftest import make_user

    with app.app_context():
        zoe = make_user("zoe@example.com", "Zoe Admin", "admin")
        db.session.commit()
        domain.accept_conversation(world.pending_support, db.session.get(User, world.admin))
    alex, zoe = login("admin@example.com"), login("zoe@example.com")
    for _ in range(2):  # the second round is served from the cache
        alex_mine = alex.get("/inbox/list?tab=mine", htmx=True).get_data(as_text=True)
        zoe_mine = zoe.get("/inbox/list?tab=mine", htmx=True).get_data(as_text=True)
        assert f'data-conversation-id="{world.pending_support}"' in alex_mine
        assert "data-conversation-id=" not in zoe_mine
        alex_counts = alex.get("/inbox/counts?tab=mine", htmx=True).get_data(as_text=True)
        zoe_counts = zoe.get("/inbox/counts?tab=mine", htmx=True).get_data(as_text=True)
        assert re.search(r'Mine <span class="count">1</span>', alex_counts), alex_counts
        assert re.search(r'Mine <span class="count">0</span>', zoe_counts), zoe_counts


def test_a_reply_leaves_the_admins_pending_and_closed_tabs_cached(app, world, login):
    """Narrow invalidation: a reply in an active conversation changes no pending or closed
    conversation, so those admin lists stay cached; the admins' All tab and the assignee's Mine
    go stale."""
    from chat import domain
    from chat.extensions import db
    from chat.invalidation import Change, stale_after
    from chat.models import User

    active = {"id": world.active_ana, "status": "active", "user_id": world.ana, "department_id": world.support}
    stale = stale_after([Change("conversations", "update", [active, {**active, "last_message_body": "hi"}])])
    assert stale.tags == {"convs:all", "convs:all:active", f"convs:user:{world.ana}"}
    accepted = stale_after([Change("conversations", "update", [
        {**active, "id": world.pending_support, "status": "pending", "user_id": None},
        {**active, "id": world.pending_support}])])
    assert {"convs:all:pending", "convs:all:active", f"convs:dept:{world.support}"} <= accepted.tags

    admin = login("admin@example.com")
    tabs = ("pending", "closed", "all", "mine")
    before = {tab: admin.get(f"/inbox/list?tab={tab}", htmx=True).headers["ETag"] for tab in tabs}
    with app.app_context():
        domain.send_reply(world.active_ana, db.session.get(User, world.ana), "on its way")
    after = {tab: admin.get(f"/inbox/list?tab={tab}", htmx=True) for tab in tabs}
    assert after["pending"].headers["ETag"] == before["pending"]
    assert after["closed"].headers["ETag"] == before["closed"]
    assert after["all"].headers["ETag"] != before["all"]
    assert "on its way" in after["all"].get_data(as_text=True)
