"""Invalidation derived from the commit: after every domain function, the next read of every
affected fragment and API list is fresh, and entries it did not affect stay cached.

Freshness is checked against an oracle: a second app on the same database with an empty
cache of its own, so it renders straight from the database.
"""
import re

import pytest
from sqlalchemy import select

from chat import catalog, create_app, domain
from chat.extensions import db
from chat.invalidation import has_pending_writes
from chat.models import Conversation, User
from tests.conftest import Agent, make_config

AGENTS = ("admin@example.com", "ana@example.com", "bruno@example.com", "carla@example.com")
FRAGMENTS = ["/inbox/list?tab=pending", "/inbox/list?tab=mine", "/inbox/list?tab=closed", "/dashboard",
             "/inbox/list?tab=all", "/inbox/counts"]
CONVERSATION_FRAGMENTS = ["/conversations/{id}/messages"]
API = ["/api/conversations?status=pending", "/api/conversations?status=mine", "/api/conversations?status=all"]
ETAG = re.compile(r'data-etag="[^"]*"')
CSRF = re.compile(r'(name="csrf_token" value=|"X-CSRFToken": |content=)"[^"]*"')


def user(email):
    return db.session.scalar(select(User).where(User.email == email))


# (name, action(world), reads that must stay cached: (agent, url))
ACTIONS = [
    ("inbound on a new contact", lambda w: domain.receive_inbound("+5511912340000", "new here"),
     [("ana@example.com", "/inbox/list?tab=mine"), ("carla@example.com", "/inbox/list?tab=closed")]),
    ("inbound on Bruno's active conversation", lambda w: domain.receive_inbound("+551100000006", "more"),
     [("ana@example.com", "/inbox/list?tab=pending"), ("carla@example.com", "/inbox/list?tab=all")]),
    ("inbound reopening a closed one", lambda w: domain.receive_inbound("+551100000007", "back"),
     [("carla@example.com", "/inbox/list?tab=mine")]),
    ("accept", lambda w: domain.accept_conversation(w.pending_support, user("bruno@example.com")),
     [("carla@example.com", "/inbox/list?tab=pending"), ("ana@example.com", "/inbox/list?tab=closed")]),
    ("reply", lambda w: domain.send_reply(w.active_ana, user("ana@example.com"), "hello again"),
     [("bruno@example.com", "/inbox/list?tab=mine"), ("carla@example.com", "/inbox/list?tab=pending")]),
    ("close", lambda w: domain.close_conversation(w.active_bruno, user("bruno@example.com")),
     [("ana@example.com", "/inbox/list?tab=mine"), ("carla@example.com", "/inbox/counts")]),
    ("transfer to an agent", lambda w: domain.transfer_conversation(
        w.active_ana, user("ana@example.com"), to_user_id=w.bruno),
     [("carla@example.com", "/inbox/list?tab=all")]),
    ("transfer to a department", lambda w: domain.transfer_conversation(
        w.active_ana, user("ana@example.com"), to_department_id=w.billing),
     [("bruno@example.com", "/inbox/list?tab=mine")]),
    ("mark read", lambda w: domain.mark_read(w.active_ana, user("ana@example.com")),
     [("bruno@example.com", "/inbox/list?tab=all"), ("carla@example.com", "/inbox/list?tab=pending")]),
    ("rename a department", lambda w: catalog.save_department("Customer care", "#16a34a", w.support), []),
    ("rename an agent", lambda w: catalog.save_agent(
        "bruno@example.com", "Bruno L.", "agent", [w.support], agent_id=w.bruno), []),
]


@pytest.fixture
def oracle(database_url):
    """An app on the same database with an empty in-process cache: the truth, uncached."""
    truth = create_app(make_config(database_url))
    yield truth
    with truth.app_context():
        db.engine.dispose()


def _normalise(body: str) -> str:
    """Per-session CSRF tokens and per-cache ETags differ by design; the content must not."""
    return ETAG.sub("", CSRF.sub(r'\1"-"', body))


def _reads(world, sessions, tokens):
    urls = FRAGMENTS + [u.format(id=getattr(world, n)) for u in CONVERSATION_FRAGMENTS
                        for n in ("active_ana", "active_bruno", "pending_support", "closed_ana")]
    out = {}
    for email in AGENTS:
        for url in urls:
            response = sessions[email].get(url, htmx=True)
            out[(email, url)] = (response.status_code, _normalise(response.get_data(as_text=True)),
                                 response.headers.get("X-Cache"))
        for url in API:
            response = sessions[email].client.get(url, headers=tokens[email])
            body = response.get_json()
            out[(email, url)] = (response.status_code, body and body.get("data"), response.headers.get("X-Cache"))
    return out


@pytest.mark.parametrize("name, action, stays", ACTIONS, ids=[a[0] for a in ACTIONS])
def test_every_domain_function_leaves_fresh_reads(app, world, login, token, oracle, name, action, stays):
    sessions = {email: login(email) for email in AGENTS}
    tokens = {email: token(email) for email in AGENTS}
    _reads(world, sessions, tokens)  # warm every entry
    with app.app_context():
        action(world)
    after = _reads(world, sessions, tokens)

    oracle_sessions = {}
    for email in AGENTS:
        agent = Agent(oracle.test_client())
        agent.login(email)
        oracle_sessions[email] = agent
    truth = _reads(world, oracle_sessions, tokens)
    stale = [key for key in after if after[key][:2] != truth[key][:2]]
    assert stale == [], f"stale after {name}: {stale}"
    for key in stays:
        assert after[key][2] == "HIT", f"{key} should have stayed cached after {name}"


def test_a_repeated_reply_invalidates_and_pushes_nothing(app, world, login):
    """A retry with a used idempotency key commits nothing: every entry stays a HIT, no
    generation moves and no browser is told to refetch."""
    from chat import metrics
    from chat.push import socketio

    ana = login("ana@example.com")
    url, data = f"/conversations/{world.active_ana}/messages", {"body": "once", "idempotency_key": "cache-key-0001"}
    assert ana.post(url, data).status_code == 201
    reads = ["/inbox/list?tab=mine", "/inbox/counts", f"/conversations/{world.active_ana}/messages"]
    for read in reads:
        ana.get(read, htmx=True)  # refill what the first send made stale
    socket = socketio.test_client(app, flask_test_client=ana.client)
    socket.get_received()
    invalidations = metrics.history.totals["invalidations"]
    assert ana.post(url, data).status_code == 200
    assert metrics.history.totals["invalidations"] == invalidations
    assert [e for e in socket.get_received() if e["name"] == "data:updated"] == []
    for read in reads:
        assert ana.get(read, htmx=True).headers["X-Cache"] == "HIT", read
    socket.disconnect()


def test_rollback_invalidates_nothing(app, world, login):
    ana = login("ana@example.com")
    ana.get("/inbox/list?tab=mine", htmx=True)
    with app.app_context():
        conversation = db.session.get(Conversation, world.active_ana)
        conversation.last_message_body = "never committed"
        db.session.flush()
        db.session.rollback()
    response = ana.get("/inbox/list?tab=mine", htmx=True)
    assert response.headers["X-Cache"] == "HIT" and "never committed" not in response.get_data(as_text=True)


def test_reads_inside_a_transaction_with_writes_bypass_the_cache(app, world, login):
    """No fill from uncommitted data: a rollback can never leave a phantom in the cache."""
    from chat import fragments
    from chat.models import Viewer

    ana = login("ana@example.com")
    with app.app_context():
        viewer = Viewer.of(user("ana@example.com"))
        assert not has_pending_writes(db.session)
        conversation = db.session.get(Conversation, world.active_ana)
        conversation.last_message_body = "phantom"
        db.session.flush()
        assert has_pending_writes(db.session)
        seen = fragments.conversation_list(viewer, "mine")
        assert seen["items"][0]["last_message"] == "phantom"  # the transaction sees its own write
        db.session.rollback()
        assert not has_pending_writes(db.session)
    response = ana.get("/inbox/list?tab=mine", htmx=True)
    assert "phantom" not in response.get_data(as_text=True)


def test_no_stale_read_across_apps(world, database_url, redis_cache_config):
    """Two app instances (think: two processes) sharing Redis: a commit in one is seen by the
    next read in the other."""
    writer = create_app(make_config(database_url, **redis_cache_config))
    other = create_app(make_config(database_url, **redis_cache_config))
    reader = Agent(other.test_client())
    reader.login("ana@example.com")
    try:
        assert "Andre Active" in reader.get("/inbox/list?tab=mine", htmx=True).get_data(as_text=True)
        with writer.app_context():
            domain.close_conversation(world.active_ana, user("ana@example.com"))
        assert "Andre Active" not in reader.get("/inbox/list?tab=mine", htmx=True).get_data(as_text=True)
    finally:
        for instance in (writer, other):
            with instance.app_context():
                db.engine.dispose()


def test_no_stale_set_through_the_app(app, world, login, monkeypatch):
    """A reader whose fetch read the database before a commit, and stores after the commit's
    invalidation, must not be served to anyone afterwards."""
    import threading

    from chat import queries

    original = queries.list_conversations
    fetched, release = threading.Event(), threading.Event()

    def slow_list(*args, **kwargs):
        result = original(*args, **kwargs)  # read the old data...
        if not fetched.is_set():
            fetched.set()
            release.wait(5)  # ...and store it only after the commit below
        return result

    monkeypatch.setattr(queries, "list_conversations", slow_list)
    ana = login("ana@example.com")
    ana.get("/inbox/counts", htmx=True)  # warm the session's own lookups
    reader = threading.Thread(target=lambda: ana.get("/inbox/list?tab=mine", htmx=True))
    reader.start()
    assert fetched.wait(5)
    with app.app_context():
        domain.close_conversation(world.active_ana, user("ana@example.com"))  # commit + invalidate
    release.set()
    reader.join(5)
    html = login("ana@example.com").get("/inbox/list?tab=mine", htmx=True).get_data(as_text=True)
    assert "Andre Active" not in html


def test_sign_out_invalidates_only_the_agents_own_entries(app, world, login):
    """A sign-out changes the session version, which no fragment shows: every other entry stays
    cached and no browser is told to refetch anything; the agent's sockets are ended instead."""
    from chat.invalidation import Change, stale_after
    from chat.push import socketio

    before = {"id": world.bruno, "name": "Bruno Lima", "session_version": 0}
    stale = stale_after([Change("users", "update", [before]),
                         Change("users", "update", [{**before, "session_version": 1}])])
    assert stale.ended_sessions == {world.bruno}
    assert stale.prefixes == {f"user:{world.bruno}", "token"} and not stale.tags and not stale.rooms

    ana = login("ana@example.com")
    watcher = socketio.test_client(app, flask_test_client=ana.client)
    for url in FRAGMENTS:
        ana.get(url, htmx=True)
    watcher.get_received()
    login("bruno@example.com").post("/logout", htmx=False)
    assert [ana.get(url, htmx=True).headers["X-Cache"] for url in FRAGMENTS] == ["HIT"] * len(FRAGMENTS)
    assert watcher.get_received() == []


def test_renaming_an_agent_does_not_end_sessions():
    from chat.invalidation import Change, stale_after

    before = {"id": 3, "name": "Bruno Lima", "session_version": 0}
    stale = stale_after([Change("users", "update", [before]), Change("users", "update", [{**before, "name": "B."}])])
    assert stale.ended_sessions == set() and "directory" in stale.tags
