"""Who sees what: pending by department, active and closed by assignee, admins everything.

Anything else is 404 in pages, fragments and the API alike.
"""
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
