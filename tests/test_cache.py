"""SmartCache guarantees, each on every backend: in-process SimpleCache, a real Redis, and a
private 3-master Redis Cluster (its keys under one hash tag: chat.cache.hash_tagged).

Which test guards which guarantee (DESIGN.md, "What the cache guarantees"):
  empty results are cached ........ test_empty_values_are_values
  O(1) prefix invalidation ........ test_prefix_invalidation_is_one_write, test_prefix_is_by_whole_segments
  eviction-safe generations ....... test_lost_generation_never_revives_old_entries
  no stale set .................... test_no_stale_set
  single flight ................... test_single_flight_threads, test_single_flight_across_processes
  fail open ....................... test_fail_open_and_nothing_stale_after_outage
  no fill from uncommitted data ... test_bypass_neither_reads_nor_fills
  bounded memory .................. test_every_entry_has_a_ttl, test_in_process_backend_is_bounded
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from flask import Flask

from chat.cache import SmartCache, pattern_prefix, prefixes
from tests.conftest import unavailable

def make_cache(config: dict) -> tuple[Flask, SmartCache]:
    app = Flask(__name__)
    app.config.update(config)
    cache = SmartCache()
    cache.init_app(app)
    return app, cache


@pytest.fixture(params=["simple", "redis", "cluster"])
def backend(request):
    """(app, cache) on one backend. Redis keys live under a unique prefix, deleted afterwards;
    the cluster is this session's own."""
    if request.param == "simple":
        return make_cache({"CACHE_TYPE": "SimpleCache", "CACHE_THRESHOLD": 5000})
    if request.param == "cluster":
        return make_cache(request.getfixturevalue("redis_cluster_config"))
    return make_cache(request.getfixturevalue("redis_cache_config"))


@pytest.fixture(params=["redis", "cluster"])
def redis_backend(request):
    fixture = "redis_cluster_config" if request.param == "cluster" else "redis_cache_config"
    return make_cache(request.getfixturevalue(fixture))


def counting(value):
    calls = []

    def fetch():
        calls.append(1)
        return value

    return fetch, calls


def test_prefixes_and_patterns():
    assert prefixes("a:b:c") == ["a", "a:b", "a:b:c"]
    assert pattern_prefix("conversations:user:42*") == "conversations:user:42"
    assert pattern_prefix("conversations:user:42:*") == "conversations:user:42"
    assert pattern_prefix("conversation:7") == "conversation:7"
    for bad in ("conv*ersations", "*", "a:*:b", ":*"):
        with pytest.raises(ValueError):
            pattern_prefix(bad)


def test_hit_after_miss(backend):
    app, cache = backend
    with app.app_context():
        fetch, calls = counting({"items": [1, 2]})
        assert cache.get_or_fetch("conversations:user:1:tab:pending", fetch) == {"items": [1, 2]}
        assert cache.get_or_fetch("conversations:user:1:tab:pending", fetch) == {"items": [1, 2]}
        assert len(calls) == 1


@pytest.mark.parametrize("value", [[], 0, "", None, {}, False])
def test_empty_values_are_values(backend, value):
    app, cache = backend
    with app.app_context():
        fetch, calls = counting(value)
        for _ in range(3):
            assert cache.get_or_fetch("counts:user:1", fetch) == value
        assert len(calls) == 1


def test_invalidate_prefix_and_exact_key(backend):
    app, cache = backend
    with app.app_context():
        keys = ["conversations:user:42:tab:pending", "conversations:user:42:tab:mine",
                "conversations:user:420:tab:pending", "conversation:7"]
        fetches = {k: counting(k) for k in keys}
        for k in keys:
            cache.get_or_fetch(k, fetches[k][0])
        cache.invalidate("conversations:user:42*")
        for k in keys:
            cache.get_or_fetch(k, fetches[k][0])
        assert [len(fetches[k][1]) for k in keys] == [2, 2, 1, 1]
        cache.invalidate("conversation:7")
        cache.get_or_fetch("conversation:7", fetches["conversation:7"][0])
        assert len(fetches["conversation:7"][1]) == 2


def test_prefix_is_by_whole_segments(backend):
    app, cache = backend
    with app.app_context():
        fetch, calls = counting("x")
        cache.get_or_fetch("conversations:user:420", fetch)
        cache.invalidate("conversations:user:42*")
        cache.get_or_fetch("conversations:user:420", fetch)
        assert len(calls) == 1


def test_bad_pattern_raises(backend):
    app, cache = backend
    with app.app_context(), pytest.raises(ValueError, match="may only end a pattern"):
        cache.invalidate("conversations:*:pending")


def test_tags(backend):
    app, cache = backend
    with app.app_context():
        fetch, calls = counting("queue")
        cache.get_or_fetch("conversations:pending:scope:1,2", fetch, tags=["pending:dept:1", "pending:dept:2"])
        cache.invalidate_tag("pending:dept:3")
        cache.get_or_fetch("conversations:pending:scope:1,2", fetch, tags=["pending:dept:1", "pending:dept:2"])
        assert len(calls) == 1
        cache.invalidate_tag("pending:dept:2")
        cache.get_or_fetch("conversations:pending:scope:1,2", fetch, tags=["pending:dept:1", "pending:dept:2"])
        assert len(calls) == 2


def test_prefix_invalidation_is_one_write(backend):
    """O(1): invalidating a prefix writes one generation, however many entries sit under it."""
    app, cache = backend
    with app.app_context():
        for n in range(300):
            cache.get_or_fetch(f"conversations:user:42:page:{n}", lambda: n)
        written = []
        original = cache.backend.set
        cache.backend.set = lambda *a, **kw: written.append(a[0]) or original(*a, **kw)
        try:
            cache.invalidate("conversations:user:42*")
        finally:
            cache.backend.set = original
        assert written == ["g:conversations:user:42"]
        assert cache.get_or_fetch("conversations:user:42:page:5", lambda: "fresh") == "fresh"


def test_lost_generation_never_revives_old_entries(backend):
    """Delete a generation by hand (eviction, expiry, restart): old entries must not match again."""
    app, cache = backend
    with app.app_context():
        cache.get_or_fetch("conversation:9:messages", lambda: "v1")
        cache.invalidate("conversation:9*")
        cache.get_or_fetch("conversation:9:messages", lambda: "v2")
        cache.backend.delete("g:conversation:9")
        assert cache.get_or_fetch("conversation:9:messages", lambda: "v3") == "v3"
        cache.backend.delete("g:conversation:9")
        cache.backend.delete("g:@epoch")
        assert cache.get_or_fetch("conversation:9:messages", lambda: "v4") == "v4"


def test_no_stale_set(backend):
    """A reader that fetched before an invalidation cannot serve its result after it."""
    app, cache = backend
    started, release = threading.Event(), threading.Event()
    results = {}

    def slow_reader():
        with app.app_context():
            def fetch():
                started.set()
                release.wait(5)
                return "old"

            results["slow"] = cache.get_or_fetch("conversation:1:messages", fetch)

    with app.app_context():
        thread = threading.Thread(target=slow_reader)
        thread.start()
        assert started.wait(5)
        cache.invalidate("conversation:1*")  # the commit happened while the reader was fetching
        release.set()
        thread.join(5)
        assert results["slow"] == "old"  # its own request saw the old data: that is fine
        assert cache.get_or_fetch("conversation:1:messages", lambda: "new") == "new"


def test_single_flight_threads(backend):
    app, cache = backend
    calls = []
    barrier = threading.Barrier(20)

    def fetch():
        calls.append(1)
        time.sleep(0.2)
        return "value"

    def reader(out):
        with app.app_context():
            barrier.wait()
            out.append(cache.get_or_fetch("dashboard:user:1", fetch))

    out: list = []
    threads = [threading.Thread(target=reader, args=(out,)) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert out == ["value"] * 20 and len(calls) == 1


PROCESS_READER = textwrap.dedent("""
    import sys, time
    from flask import Flask
    from chat.cache import SmartCache
    from chat.redis_guard import redis_client
    url, prefix, counter, start_at = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    app = Flask("reader"); app.config.update(REDIS_URL=url, CACHE_KEY_PREFIX=prefix)
    cache = SmartCache(); cache.init_app(app)
    client = redis_client(url)
    def fetch():
        client.incr(counter)
        time.sleep(0.5)
        return "shared"
    with app.app_context():
        time.sleep(max(0.0, start_at - time.time()))
        print(cache.get_or_fetch("conversations:dept:1:status:pending", fetch))
""")


def test_single_flight_across_processes(redis_backend):
    """Processes share only Redis: the fill lock there makes one of them fetch."""
    app, cache = redis_backend
    client = cache.backend._write_client
    prefix = cache.backend._get_prefix()
    counter = prefix + "fetch-count"
    start_at = time.time() + 1.5  # let every interpreter start, then miss together
    url = app.config["REDIS_URL"]
    procs = [subprocess.Popen([sys.executable, "-c", PROCESS_READER, url, prefix, counter, str(start_at)],
                              stdout=subprocess.PIPE, text=True) for _ in range(4)]
    outputs = [p.communicate(timeout=30)[0].strip() for p in procs]
    assert outputs == ["shared"] * 4
    assert int(client.get(counter)) == 1


def test_bypass_neither_reads_nor_fills(backend):
    """A read inside a transaction with pending writes must not see or leave a phantom."""
    app, cache = backend
    with app.app_context():
        assert cache.get_or_fetch("counts:user:5", lambda: "committed") == "committed"
        assert cache.get_or_fetch("counts:user:5", lambda: "uncommitted", bypass=True) == "uncommitted"
        assert cache.get_or_fetch("counts:user:5", lambda: "other") == "committed"
        cache.invalidate("counts:user:5")
        cache.get_or_fetch("counts:user:5", lambda: "phantom", bypass=True)  # then rolled back
        assert cache.get_or_fetch("counts:user:5", lambda: "after rollback") == "after rollback"


def test_update_after_mutation_writes_through(backend):
    app, cache = backend
    with app.app_context():
        cache.get_or_fetch("conversation:3", lambda: "old pane")
        cache.get_or_fetch("conversations:user:1:tab:mine", lambda: "old list")
        cache.update_after_mutation("conversation:3", "new pane", ["conversations:user:1*"])
        assert cache.get_or_fetch("conversation:3", lambda: "fetched") == "new pane"
        assert cache.get_or_fetch("conversations:user:1:tab:mine", lambda: "new list") == "new list"


def test_clear_drops_everything(backend):
    app, cache = backend
    with app.app_context():
        cache.get_or_fetch("a:b", lambda: 1)
        cache.clear()
        assert cache.get_or_fetch("a:b", lambda: 2) == 2


def test_every_entry_has_a_ttl(backend):
    app, cache = backend
    with app.app_context():
        app.config["CACHE_TTL"] = {"static": 86_400, "moderate": 3_600, "dynamic": 1_800}
        seen = []
        original = cache.backend.set
        cache.backend.set = lambda k, v, timeout=None: seen.append((k, timeout)) or original(k, v, timeout=timeout)
        try:
            cache.get_or_fetch("departments", lambda: [], ttl="static")
            cache.get_or_fetch("agents", lambda: [], ttl="moderate")
            cache.get_or_fetch("conversation:1", lambda: [], ttl="dynamic")
        finally:
            cache.backend.set = original
        values = [(k, t) for k, t in seen if k.startswith("v:")]
        assert values == [("v:departments", 86_400), ("v:agents", 3_600), ("v:conversation:1", 1_800)]
        with pytest.raises(ValueError, match="unknown TTL class"):
            cache.get_or_fetch("x", lambda: 1, ttl="forever")
        if cache.is_redis:  # generations too: nothing in Redis lives forever
            client = cache.backend._write_client
            keys = list(client.scan_iter(match=cache.backend._get_prefix() + "*"))
            assert keys and all(client.ttl(k) > 0 for k in keys)


def test_in_process_backend_is_bounded():
    app, cache = make_cache({"CACHE_TYPE": "SimpleCache", "CACHE_THRESHOLD": 100})
    with app.app_context():
        for n in range(1000):
            cache.get_or_fetch(f"k:{n}", lambda: n)
        assert len(cache.backend._cache) <= 101
        assert cache.get_or_fetch("k:999", lambda: "again") in (999, "again")


@pytest.fixture
def private_redis(tmp_path):
    """A redis-server of our own on a free port, which the test may stop and start."""
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("redis-server is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def start():
        proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
        import redis

        client = redis.Redis(port=port)
        for _ in range(100):
            try:
                client.ping()
                return proc
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    state = {"proc": start()}

    def stop():
        state["proc"].terminate()
        state["proc"].wait(5)

    def restart_same_data():
        """Bring it back *with* its data, as after a network blip: the hard case."""
        state["proc"] = start()

    yield f"redis://127.0.0.1:{port}/0", stop, restart_same_data
    if state["proc"].poll() is None:
        stop()


def test_fail_open_and_nothing_stale_after_outage(private_redis, caplog):
    url, stop, start = private_redis
    app, cache = make_cache({"REDIS_URL": url})
    import redis

    with app.app_context():
        assert cache.get_or_fetch("conversation:1:messages", lambda: "v1") == "v1"
        # Keep a copy of everything, so the server comes back *with* its old entries.
        client = redis.Redis.from_url(url)
        dump = {k: client.dump(k) for k in client.keys("*")}
        stop()
        with caplog.at_level("WARNING", logger="chat.cache"):
            assert cache.get_or_fetch("conversation:1:messages", lambda: "v2 from db") == "v2 from db"
            cache.invalidate("conversation:1*")  # a commit during the outage: this write is lost
        assert any("unavailable" in r.message for r in caplog.records)
        start()
        client = redis.Redis.from_url(url)
        for k, v in dump.items():
            client.restore(k, 0, v, replace=True)
        time.sleep(cache.breaker.retry_in())  # the breaker skips Redis until then; then it probes
        # Another process that never saw the outage must not serve v1 either.
        other_app, other = make_cache({"REDIS_URL": url})
        assert cache.get_or_fetch("conversation:1:messages", lambda: "v3") == "v3"
        with other_app.app_context():
            assert other.get_or_fetch("conversation:1:messages", lambda: "v4") == "v3"


def test_app_fails_open_when_redis_stops(private_redis, database_url, caplog):
    """The whole app with its Redis gone: pages are served from the database, no error;
    when Redis is back, a change made meanwhile shows."""
    from chat import create_app, domain
    from chat.extensions import db
    from chat.models import User
    from tests.conftest import Agent, make_config, make_conversation, make_user

    url, stop, start = private_redis
    app = create_app(make_config(database_url, REDIS_URL=url))
    with app.app_context():
        db.create_all()
        ana = make_user("ana@example.com", "Ana")
        conversation = make_conversation("+5511900001111", "Olga Outage", "active", user=ana)
        db.session.commit()
        cid = conversation.id
    try:
        agent = Agent(app.test_client())
        assert agent.login("ana@example.com").status_code == 302
        assert agent.get("/inbox/list?tab=mine", htmx=True).status_code == 200
        stop()
        with caplog.at_level("WARNING", logger="chat.cache"):
            for path in ("/inbox?tab=mine", "/inbox/list?tab=mine", f"/conversations/{cid}"):
                assert agent.get(path).status_code == 200, path
            assert agent.post(f"/conversations/{cid}/messages", {"body": "sent during the outage"}).status_code == 201
        assert any("unavailable" in r.message for r in caplog.records)
        start()
        html = agent.get("/inbox/list?tab=mine", htmx=True).get_data(as_text=True)
        assert "sent during the outage" in html
        with app.app_context():
            domain.close_conversation(cid, db.session.get(User, 1))
        assert "Olga Outage" not in agent.get("/inbox/list?tab=mine", htmx=True).get_data(as_text=True)
    finally:
        with app.app_context():
            db.drop_all()
            db.engine.dispose()


def test_waiter_whose_filler_died_fetches_itself(redis_backend, monkeypatch):
    """Single flight never fails a reader: if the lock holder is gone, the waiter fetches."""
    import chat.cache as cache_module

    app, cache = redis_backend
    monkeypatch.setattr(cache_module, "LOCK_SECONDS", 0.3)
    with app.app_context():
        client = cache.backend._write_client
        gens = cache._generations(cache._guards("counts:user:9", ()))
        client.set(cache._lock_name("counts:user:9", gens), "a-filler-that-died", px=60_000)
        started = time.monotonic()
        assert cache.get_or_fetch("counts:user:9", lambda: "fetched myself") == "fetched myself"
        assert 0.25 <= time.monotonic() - started < 5
