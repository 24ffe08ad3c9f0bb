"""The fragment registry (chat/fragments.py), walked: every declared fragment is served at its
URL, carries its cache key as data-cache-key, revalidates to 304, and after a change that
touches it, the rooms its viewer is in are told a key or tag that names it.
"""
import html
import re
import time

import pytest

from chat import domain, fragments, visibility
from chat.extensions import db
from chat.models import User, Viewer
from chat.push import socketio

KEY = re.compile(r'data-cache-key="([^"]*)"')


def _user(email: str) -> User:
    return db.session.query(User).filter_by(email=email).one()


# One example per declared fragment: who looks at it, with which arguments, and a change
# that touches what it shows.
EXAMPLES = {
    "list": ("ana@example.com", lambda w: fragments.list_args("mine"),
             lambda w: domain.send_reply(w.active_ana, _user("ana@example.com"), "a reply")),
    "counts": ("bruno@example.com", lambda w: fragments.list_args("pending"),
               lambda w: domain.receive_inbound("+551199999999", "new, in no department")),
    "pane": ("ana@example.com", lambda w: {"conversation_id": w.active_ana},
             lambda w: domain.close_conversation(w.active_ana, _user("ana@example.com"))),
    "messages": ("ana@example.com", lambda w: {"conversation_id": w.active_ana, "before": None},
                 lambda w: domain.send_reply(w.active_ana, _user("ana@example.com"), "another reply")),
    "dashboard": ("admin@example.com", lambda w: {},
                  lambda w: domain.close_conversation(w.active_bruno, _user("bruno@example.com"))),
    "mentions": ("bruno@example.com", lambda w: {},
                 lambda w: domain.write_note(w.pending_support, _user("ana@example.com"), "@Bruno a look?")),
}


def test_every_declared_fragment_has_an_example():
    assert set(EXAMPLES) == set(fragments.FRAGMENTS)


def _meta(app, email: str, fragment, args: dict):
    with app.test_request_context():
        viewer = Viewer.of(_user(email))
        return viewer, fragments.meta(fragment, viewer, args)


def _keys_heard(client, wait: float = 1.0) -> set[str]:
    deadline, heard = time.monotonic() + wait, set()
    while time.monotonic() < deadline:
        heard |= {k for e in client.get_received() if e["name"] == "data:updated" for k in e["args"][0]["keys"]}
        if heard:
            return heard
        time.sleep(0.02)
    return heard


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_fragment_is_served_revalidated_and_refreshed(app, world, login, name):
    fragment = fragments.FRAGMENTS[name]
    email, make_args, change = EXAMPLES[name]
    agent = login(email)
    viewer, meta = _meta(app, email, fragment, make_args(world))

    first = agent.get(meta.url, htmx=True)
    assert first.status_code == 200, first.get_data(as_text=True)[:300]
    body = first.get_data(as_text=True)
    assert KEY.findall(body)[0] == meta.key, "data-cache-key is the declared key"
    assert f'hx-get="{html.escape(meta.url)}"' in body, "the element refetches its declared URL"
    etag = first.headers["ETag"]
    again = agent.get(meta.url, htmx=True, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.get_data() == b""

    watcher = socketio.test_client(app, flask_test_client=agent.client)
    watcher.get_received()
    with app.app_context():
        change(world)
    heard = _keys_heard(watcher)
    watcher.disconnect()
    # What the browser client matches: the element's key, a prefix of it, or one of its tags.
    assert any(meta.key.startswith(k) or k in meta.tags for k in heard), (meta.key, meta.tags, heard)
    refreshed = agent.get(meta.url, htmx=True, headers={"If-None-Match": etag})
    assert refreshed.status_code == 200 and refreshed.headers["ETag"] != etag


@pytest.mark.parametrize("email", ["admin@example.com", "ana@example.com", "bruno@example.com",
                                   "carla@example.com"])
def test_every_tag_a_viewer_shows_is_heard_in_one_of_its_rooms(app, world, email):
    """A fragment whose tag no room of its viewer hears would never refresh live."""
    args = {"list": fragments.list_args("pending"), "counts": fragments.list_args(),
            "pane": {"conversation_id": world.pending_nodept},
            "messages": {"conversation_id": world.pending_nodept, "before": None}, "dashboard": {},
            "mentions": {}}
    for tab in visibility.TABS:
        for name, fragment in fragments.FRAGMENTS.items():
            viewer, meta = _meta(app, email, fragment, {**args[name], "tab": tab} if name == "list" else args[name])
            rooms = visibility.rooms_for(viewer)
            for tag in meta.tags:
                assert any(visibility.hears(room, tag) for room in rooms), (email, name, tab, tag)
