"""A cache hit through Redis costs one round trip.

Counted at the socket: every batch of commands a Redis connection of this process sends and
waits for is one round trip (a pipeline is one; an MGET is one).
"""
from __future__ import annotations

from contextlib import contextmanager

import pytest
import redis


@pytest.fixture
def redis_app(database_url, redis_cache_config):
    from tests.conftest import app_with_tables, make_config

    yield from app_with_tables(make_config(database_url, **redis_cache_config))


@pytest.fixture
def round_trips(monkeypatch):
    """round_trips() as a context manager: yields a list of the commands of each round trip."""
    trips: list[list[str]] = []
    recording = [False]
    send = redis.connection.AbstractConnection.send_packed_command

    def counted(self, command, check_health=True):
        if recording[0]:
            chunks = command if isinstance(command, list) else [command]
            data = b"".join(c if isinstance(c, (bytes, bytearray)) else bytes(c) for c in chunks)
            names = [part.split(b"\r\n")[2].decode() for part in data.split(b"*")[1:]
                     if part[:1].isdigit() and b"\r\n$" in part[:8]]
            trips.append(names)
        return send(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted)

    @contextmanager
    def record():
        trips.clear()
        recording[0] = True
        try:
            yield trips
        finally:
            recording[0] = False

    return record


def cache_trips(trips: list[list[str]]) -> list[list[str]]:
    """The cache's round trips: without the API rate limiter's (one EVALSHA, chat/throttle.py)."""
    return [t for t in trips if t != ["EVALSHA"]]


def test_list_hit_and_304_cost_one_round_trip(redis_app, world, round_trips):
    """A list hit is one MGET: the viewer's generations and entry, the ETag's generations and
    the rendered HTML (what this viewer's last request for this URL looked up). A 304 too."""
    from tests.conftest import Agent

    ana = Agent(redis_app.test_client())
    assert ana.login("ana@example.com").status_code == 302
    url = "/inbox/list?tab=pending"
    first = ana.get(url, htmx=True)
    assert first.status_code == 200
    with round_trips() as trips:
        hit = ana.get(url, htmx=True)
    assert hit.status_code == 200 and hit.headers["X-Cache"] == "HIT"
    assert hit.get_data() == first.get_data()
    assert trips == [["MGET"]], trips
    revalidate = {"If-None-Match": hit.headers["ETag"]}
    with round_trips() as trips:  # the first revalidation of this URL: the viewer, then the ETag
        assert ana.get(url, htmx=True, headers=revalidate).status_code == 304
    assert trips == [["MGET"], ["MGET"]], trips
    with round_trips() as trips:
        assert ana.get(url, htmx=True, headers=revalidate).status_code == 304
    assert trips == [["MGET"]], trips


def test_read_ahead_never_serves_what_a_commit_changed(redis_app, world, round_trips):
    """The ETag and HTML read with the viewer are the current ones: after a commit the next
    request sees it (new ETag, new HTML) in its one round trip."""
    from chat.extensions import db
    from chat.models import Conversation
    from tests.conftest import Agent

    ana = Agent(redis_app.test_client())
    assert ana.login("ana@example.com").status_code == 302
    url = "/inbox/list?tab=pending"
    ana.get(url, htmx=True)
    before = ana.get(url, htmx=True)
    assert "Paula Pending" in before.get_data(as_text=True)
    with redis_app.app_context():
        db.session.get(Conversation, world.pending_support).contact.name = "Paula Renamed"
        db.session.commit()
    stale = ana.get(url, htmx=True, headers={"If-None-Match": before.headers["ETag"]})
    assert stale.status_code == 200 and stale.headers["ETag"] != before.headers["ETag"]
    assert "Paula Renamed" in stale.get_data(as_text=True)
    with round_trips() as trips:
        after = ana.get(url, htmx=True)
    assert "Paula Renamed" in after.get_data(as_text=True) and after.headers["ETag"] == stale.headers["ETag"]
    assert len(trips) >= 1


def test_api_hit_costs_one_round_trip_beyond_the_viewer(redis_app, world, round_trips):
    from chat import catalog

    with redis_app.app_context():
        headers = {"Authorization": f"Bearer {catalog.issue_api_token('ana@example.com')}"}
    client = redis_app.test_client()
    url = "/api/conversations?status=pending"
    assert client.get(url, headers=headers).get_json()["cached"] is False
    with round_trips() as trips:
        again = client.get(url, headers=headers)
    assert again.get_json()["cached"] is True and again.headers["X-Cache"] == "HIT"
    assert cache_trips(trips) == [["MGET"], ["MGET"]], trips


def test_a_stale_etag_gets_the_current_html(redis_app, world, round_trips):
    """The HTML is read with the ETag only when the browser does not revalidate; a browser
    whose copy is stale still gets the current HTML, from the cache."""
    from tests.conftest import Agent

    ana = Agent(redis_app.test_client())
    assert ana.login("ana@example.com").status_code == 302
    url = "/inbox/list?tab=pending"
    first = ana.get(url, htmx=True)
    with round_trips() as trips:
        stale = ana.get(url, htmx=True, headers={"If-None-Match": 'W/"old"'})
    assert stale.status_code == 200 and stale.headers["X-Cache"] == "HIT"
    assert stale.get_data() == first.get_data() and stale.headers["ETag"] == first.headers["ETag"]
    assert trips == [["MGET"], ["MGET"], ["MGET"]], trips
