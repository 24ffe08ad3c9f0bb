"""The cache as a user of the app sees it: hits run no SQL, headers say HIT or MISS,
fragments revalidate with ETag/304, and one agent's entries never reach another.

Guarantees guarded here: per-user isolation (test_per_user_isolation,
test_same_permissions_share_the_pending_queue), "a cache hit runs zero SQL queries"
(test_hits_run_zero_queries, test_api_hit_runs_zero_queries), ETag/304
(test_fragment_revalidation_with_etag).
"""
import logging
import re
from contextlib import contextmanager

import pytest
from sqlalchemy import event

from chat.extensions import db


@pytest.fixture
def queries(app):
    """queries() as a context manager: yields a list that collects every SQL statement sent."""

    @contextmanager
    def count():
        sent: list[str] = []
        with app.app_context():
            engine = db.engine

        def listener(conn, cursor, statement, *args):
            sent.append(statement)

        event.listen(engine, "before_cursor_execute", listener)
        try:
            yield sent
        finally:
            event.remove(engine, "before_cursor_execute", listener)

    return count


HTMX_URLS = ["/inbox/list?tab=pending", "/inbox/list?tab=mine", "/inbox/list?tab=all&q=andre",
             "/inbox/counts", "/conversations/{active_ana}", "/conversations/{active_ana}/messages", "/dashboard"]
PAGE_URLS = ["/inbox", "/inbox?tab=closed", "/conversations/{active_ana}", "/dashboard", "/contacts"]


def without_csrf(html: bytes) -> bytes:
    return re.sub(rb'(name="csrf_token" value=")[^"]*"', rb'\1"', html)


def test_hits_run_zero_queries(world, login, queries):
    ana = login("ana@example.com")
    urls = [(u.format(active_ana=world.active_ana), True) for u in HTMX_URLS] + \
           [(u.format(active_ana=world.active_ana), False) for u in PAGE_URLS]
    for url, htmx in urls:
        first = ana.get(url, htmx=htmx)
        assert first.status_code == 200, url
        with queries() as sent:
            again = ana.get(url, htmx=htmx)
        assert again.status_code == 200 and again.headers["X-Cache"] == "HIT", url
        assert sent == [], (url, sent)
        # The same HTML, but for the pane's CSRF tokens: signed with the time, to the second.
        assert without_csrf(again.get_data()) == without_csrf(first.get_data()) or not htmx, url


def test_first_read_is_a_miss(world, login):
    ana = login("ana@example.com")
    assert ana.get("/inbox/list?tab=closed", htmx=True).headers["X-Cache"] == "MISS"
    assert ana.get("/inbox/list?tab=closed", htmx=True).headers["X-Cache"] == "HIT"


def test_api_hit_runs_zero_queries(client, world, token, queries):
    headers = token("ana@example.com")
    for url in ("/api/conversations?status=pending", f"/api/conversations/{world.active_ana}/messages"):
        first = client.get(url, headers=headers).get_json()
        assert first["cached"] is False
        with queries() as sent:
            again = client.get(url, headers=headers)
        assert again.get_json()["cached"] is True and again.headers["X-Cache"] == "HIT"
        assert again.get_json()["data"] == first["data"]
        assert sent == [], url


def test_fragment_revalidation_with_etag(world, login, queries):
    ana = login("ana@example.com")
    url = "/inbox/list?tab=mine"
    first = ana.get(url, htmx=True)
    etag = first.headers["ETag"]
    assert etag and "no-cache" in first.headers["Cache-Control"]
    with queries() as sent:
        revalidated = ana.get(url, htmx=True, headers={"If-None-Match": etag})
    assert revalidated.status_code == 304 and revalidated.get_data() == b"" and sent == []
    assert revalidated.headers["ETag"] == etag
    ana.post(f"/conversations/{world.active_ana}/messages", {"body": "changes the list"})
    changed = ana.get(url, htmx=True, headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"] != etag
    assert "changes the list" in changed.get_data(as_text=True)


def test_etag_differs_per_viewer(world, login):
    ana, bruno = login("ana@example.com"), login("bruno@example.com")
    url = f"/conversations/{world.pending_support}"
    ana_etag = ana.get(url, htmx=True).headers["ETag"]
    bruno_response = bruno.get(url, htmx=True, headers={"If-None-Match": ana_etag})
    assert bruno_response.status_code == 200  # never a 304 onto another agent's copy


def test_per_user_isolation(world, login):
    ana, bruno = login("ana@example.com"), login("bruno@example.com")
    for url in ("/inbox/list?tab=mine", "/inbox/list?tab=all", "/inbox/counts"):
        a = ana.get(url, htmx=True).get_data(as_text=True)
        b = bruno.get(url, htmx=True).get_data(as_text=True)
        assert a != b, url
    assert "Andre Active" in ana.get("/inbox/list?tab=mine", htmx=True).get_data(as_text=True)
    assert "Andre Active" not in bruno.get("/inbox/list?tab=mine", htmx=True).get_data(as_text=True)
    assert "Sam Sales" not in bruno.get("/inbox/list?tab=pending", htmx=True).get_data(as_text=True)


def test_same_permissions_share_the_pending_queue(app, world, login, queries):
    """The pending queue of a department set is one entry for all its agents."""
    from chat import catalog

    with app.app_context():
        catalog.save_agent(email="dora@example.com", name="Dora", role="agent",
                           department_ids=[world.support], password="demo-pass")
    bruno, dora = login("bruno@example.com"), login("dora@example.com")
    first = bruno.get("/inbox/list?tab=pending", htmx=True)
    dora.get("/inbox/counts", htmx=True)  # Dora's own lookups (her user record) are hers to miss
    with queries() as sent:
        shared = dora.get("/inbox/list?tab=pending", htmx=True)
    assert shared.headers["X-Cache"] == "HIT" and sent == []
    strip = lambda r: re.sub(r'data-etag="[^"]*"', "", r.get_data(as_text=True))  # noqa: E731 - per viewer
    assert strip(shared) == strip(first)


def test_logs_hits_misses_and_invalidations(world, login, caplog):
    ana = login("ana@example.com")
    with caplog.at_level(logging.DEBUG, logger="chat.cache"):
        ana.get("/inbox/list?tab=closed", htmx=True)
        ana.get("/inbox/list?tab=closed", htmx=True)
        ana.post(f"/conversations/{world.active_ana}/close")
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert ("DEBUG", "MISS conversations:user:%d:tab:closed" % world.ana) in messages
    # the second read is served from the rendered fragment (its own key, family "html")
    assert any(level == "DEBUG" and text.startswith("HIT html:") for level, text in messages)
    assert ("INFO", f"INVALIDATE conversation:{world.active_ana}*") in messages


def test_many_browsers_told_at_once_cost_one_fetch(app, world, login, monkeypatch):
    """Push is not a stampede: when many agents refetch the same stale fragment at once,
    single flight makes it one database fetch; the rest are hits."""
    import threading

    from prometheus_client import REGISTRY

    from chat import catalog, domain, queries

    with app.app_context():
        for n in range(12):
            catalog.save_agent(email=f"s{n}@example.com", name=f"S{n}", role="agent",
                               department_ids=[world.support], password="demo-pass")
    agents = [login(f"s{n}@example.com") for n in range(12)]
    for agent in agents:
        agent.get("/inbox/counts", htmx=True)  # their own user lookups, out of the way
    agents[0].get("/inbox/list?tab=pending", htmx=True)
    with app.app_context():
        domain.receive_inbound("+551100000001", "a change everyone is told about")
    def misses():
        return REGISTRY.get_sample_value("chat_cache_misses_total", {"family": "conversations"}) or 0

    before = misses()
    fetched = []
    real = queries.pending_queue
    monkeypatch.setattr(queries, "pending_queue",
                        lambda department_id, pages=1: fetched.append(department_id) or real(department_id, pages))
    barrier = threading.Barrier(len(agents))
    bodies = []

    def refetch(agent):
        barrier.wait()
        bodies.append(agent.get("/inbox/list?tab=pending", htmx=True).get_data(as_text=True))

    threads = [threading.Thread(target=refetch, args=(a,)) for a in agents]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(bodies) == len(agents)
    assert all("a change everyone is told about" in b for b in bodies)
    # Two entries filled once each: Support's queue (the one query) and the list merged from it.
    assert fetched == [world.support]
    assert misses() - before == 2
