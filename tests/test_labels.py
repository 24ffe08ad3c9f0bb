"""Labels: the admin's tags put on conversations by agents, through the pane and the API; shown
on list rows, filtering the list, counted on the dashboard; a label's change or a tag's rename
makes exactly what shows it stale (both databases, both cache backends)."""
from __future__ import annotations

import pytest

from chat import catalog
from chat.extensions import db
from chat.models import Tag


@pytest.fixture
def tags(app, world):
    with app.app_context():
        urgent = Tag(name="Urgent", color="#dc2626")
        vip = Tag(name="VIP", color="#7c3aed")
        refund = Tag(name="Refund", color="#0891b2")
        db.session.add_all([urgent, vip, refund])
        db.session.commit()
        return {"urgent": urgent.id, "vip": vip.id, "refund": refund.id}


@pytest.fixture
def api(client, world, token):
    """api('ana@example.com') -> a small JSON client with that agent's token."""

    def _for(email: str):
        headers = token(email)

        class Api:
            def get(self, url):
                return client.get(url, headers=headers)

            def post(self, url, json=None):
                return client.post(url, headers=headers, json=json)

            def delete(self, url):
                return client.delete(url, headers=headers)

        return Api()

    return _for


def labels_in_list(api, url: str) -> dict[int, list[str]]:
    return {item["id"]: [label["name"] for label in item["labels"]] for item in api.get(url).get_json()["data"]}


def test_an_agent_labels_a_conversation_and_the_list_shows_and_filters_by_it(api, world, tags):
    ana = api("ana@example.com")
    assert labels_in_list(ana, "/api/conversations?status=mine") == {world.active_ana: []}

    added = ana.post(f"/api/conversations/{world.active_ana}/labels", json={"label": "urgent"})  # any case
    assert added.status_code == 201
    assert added.get_json()["data"] == [{"name": "Urgent", "color": "#dc2626"}]
    again = ana.post(f"/api/conversations/{world.active_ana}/labels", json={"label": "Urgent"})
    assert again.status_code == 200 and len(again.get_json()["data"]) == 1  # on it once
    assert ana.post(f"/api/conversations/{world.active_ana}/labels", json={"label": "VIP"}).status_code == 201
    ana.post(f"/api/conversations/{world.pending_support}/labels", json={"label": "VIP"})

    # The cached list saw the commits: the labels are there, by name.
    assert labels_in_list(ana, "/api/conversations?status=mine") == {world.active_ana: ["Urgent", "VIP"]}
    assert labels_in_list(ana, "/api/conversations?status=all&label=VIP") == {
        world.active_ana: ["Urgent", "VIP"], world.pending_support: ["VIP"]}
    assert labels_in_list(ana, "/api/conversations?status=all&label=urgent") == {world.active_ana: ["Urgent", "VIP"]}
    assert labels_in_list(ana, "/api/conversations?status=all&label=Refund") == {}
    assert labels_in_list(ana, "/api/conversations?status=all&label=no-such-label") == {}

    removed = ana.delete(f"/api/conversations/{world.active_ana}/labels/Urgent")
    assert removed.status_code == 200 and removed.get_json()["data"] == [{"name": "VIP", "color": "#7c3aed"}]
    assert labels_in_list(ana, "/api/conversations?status=all&label=urgent") == {}
    assert labels_in_list(ana, "/api/conversations?status=mine") == {world.active_ana: ["VIP"]}
    missing = ana.delete(f"/api/conversations/{world.active_ana}/labels/Urgent")
    assert missing.status_code == 404 and "no label 'Urgent'" in missing.get_json()["error"]


def test_bad_labels_are_clear_errors_and_hidden_conversations_are_404(api, world, tags):
    ana, carla = api("ana@example.com"), api("carla@example.com")
    unknown = ana.post(f"/api/conversations/{world.active_ana}/labels", json={"label": "Nope"})
    assert unknown.status_code == 400 and "no label named 'Nope'" in unknown.get_json()["error"]
    for bad in ({}, {"label": ""}, {"label": 7}, {"label": ["VIP"]}):
        response = ana.post(f"/api/conversations/{world.active_ana}/labels", json=bad)
        assert response.status_code == 400, (bad, response.get_json())
    extra = ana.post(f"/api/conversations/{world.active_ana}/labels", json={"label": "VIP", "colour": "red"})
    assert extra.status_code == 400 and "unknown field 'colour'" in extra.get_json()["error"]
    # Carla (billing) may not see Ana's conversation: it does not exist for her.
    assert carla.post(f"/api/conversations/{world.active_ana}/labels", json={"label": "VIP"}).status_code == 404
    assert carla.delete(f"/api/conversations/{world.active_ana}/labels/VIP").status_code == 404
    assert ana.post("/api/conversations/999999/labels", json={"label": "VIP"}).status_code == 404


def test_the_dashboard_counts_by_label_over_what_the_viewer_sees(api, world, tags, login):
    ana = api("ana@example.com")
    ana.post(f"/api/conversations/{world.active_ana}/labels", json={"label": "VIP"})
    ana.post(f"/api/conversations/{world.pending_support}/labels", json={"label": "VIP"})
    api("carla@example.com").post(f"/api/conversations/{world.pending_billing}/labels", json={"label": "VIP"})
    admin, agent = login("admin@example.com"), login("ana@example.com")
    everything = admin.get("/dashboard").get_data(as_text=True)
    assert "By label" in everything
    row = everything[everything.index("By label"):]
    # Admin: pending 2 (support, billing), active 1.
    assert '<span class="label-chip" style="--label: #7c3aed">VIP</span></td><td class="num">2</td><td class="num">1</td>' in row
    mine = agent.get("/dashboard").get_data(as_text=True)
    row = mine[mine.index("By label"):]
    # Ana does not see billing's queue.
    assert '<span class="label-chip" style="--label: #7c3aed">VIP</span></td><td class="num">1</td><td class="num">1</td>' in row


def test_pane_forms_put_labels_on_and_take_them_off(login, world, tags):
    ana = login("ana@example.com")
    pane = ana.get(f"/conversations/{world.active_ana}", htmx=True).get_data(as_text=True)
    assert 'aria-label="Add a label"' in pane and '<option value="VIP">VIP</option>' in pane

    added = ana.post(f"/conversations/{world.active_ana}/labels", {"label": "VIP"})
    assert added.status_code == 200
    html = added.get_data(as_text=True)
    assert '<span class="label-name">VIP</span>' in html
    assert '<option value="VIP">VIP</option>' not in html  # offered no more
    listed = ana.get("/inbox/list?tab=mine", htmx=True).get_data(as_text=True)
    assert '<span class="label-chip" style="--label: #7c3aed">VIP</span>' in listed
    filtered = ana.get(f"/inbox/list?tab=all&label_id={tags['vip']}", htmx=True).get_data(as_text=True)
    assert f'id="row-{world.active_ana}"' in filtered and f'id="row-{world.pending_support}"' not in filtered

    refused = ana.post(f"/conversations/{world.active_ana}/labels", {"label": "Nope"})
    assert refused.status_code == 400 and "no label named" in refused.get_data(as_text=True)
    removed = ana.post(f"/conversations/{world.active_ana}/labels/remove", {"label": "VIP"})
    assert removed.status_code == 200 and '<span class="label-name">VIP</span>' not in removed.get_data(as_text=True)
    assert '--label: #7c3aed' not in ana.get("/inbox/list?tab=mine", htmx=True).get_data(as_text=True)


def test_renaming_or_recolouring_a_tag_refreshes_every_list_and_pane_showing_it(app, api, world, tags, login):
    ana = api("ana@example.com")
    ana.post(f"/api/conversations/{world.active_ana}/labels", json={"label": "VIP"})
    agent = login("ana@example.com")
    list_url, pane_url = "/inbox/list?tab=mine", f"/conversations/{world.active_ana}"
    first_pane = agent.get(pane_url, htmx=True)  # opening it reads its unread messages: before the list
    first_list = agent.get(list_url, htmx=True)
    assert agent.get(list_url, htmx=True, headers={"If-None-Match": first_list.headers["ETag"]}).status_code == 304

    with app.app_context():
        catalog.save_tag("Gold", "#ca8a04", tags["vip"])

    relisted = agent.get(list_url, htmx=True, headers={"If-None-Match": first_list.headers["ETag"]})
    assert relisted.status_code == 200
    assert '<span class="label-chip" style="--label: #ca8a04">Gold</span>' in relisted.get_data(as_text=True)
    repaned = agent.get(pane_url, htmx=True, headers={"If-None-Match": first_pane.headers["ETag"]})
    assert repaned.status_code == 200 and '<span class="label-name">Gold</span>' in repaned.get_data(as_text=True)
    assert labels_in_list(ana, "/api/conversations?status=all&label=gold") == {world.active_ana: ["Gold"]}
    assert labels_in_list(ana, "/api/conversations?status=all&label=vip") == {}  # the old name is no label now
    # A list filtered by the label (by id, as the page's filter asks) keeps it through the rename.
    kept = agent.get(f"/inbox/list?tab=all&label_id={tags['vip']}", htmx=True).get_data(as_text=True)
    assert f'id="row-{world.active_ana}"' in kept and ">Gold</span>" in kept


def test_a_label_change_is_stale_where_its_conversation_is_and_nowhere_else(app, world, tags):
    """The invalidation map alone: a label row counts as its conversation's row."""
    from chat.invalidation import Change, stale_after

    conversation = {"id": world.active_ana, "status": "active", "user_id": world.ana, "department_id": world.support}
    label = {"id": 1, "conversation_id": world.active_ana, "tag_id": tags["vip"]}
    for kind in ("insert", "delete"):
        stale = stale_after([Change("conversation_labels", kind, [label])],
                            parents=lambda table, ids: {world.active_ana: conversation})
        assert stale.prefixes == {f"conversation:{world.active_ana}"}
        assert stale.tags == {"convs:all", "convs:all:active", f"convs:user:{world.ana}"}  # not a queue's any more
        assert set(stale.rooms) == {"admins", f"user:{world.ana}"}  # who may see it; not billing's room
    renamed = stale_after([Change("tags", "update", [{"id": tags["vip"], "name": "Gold", "color": "#ca8a04"}])])
    assert renamed.prefixes == {"tags"} and renamed.tags == {"labels"} and set(renamed.rooms) == {"agents"}
