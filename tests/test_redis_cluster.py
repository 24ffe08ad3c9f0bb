"""The app on a Redis Cluster (REDIS_URL=redis+cluster://..., issue 12 item 5): a private
3-master cluster from Debian's redis-server (tests/redis_cluster.py), shared by this module and
tests/test_cache.py's "cluster" backend.

  a bad REDIS_URL stops the app, saying why ....... test_bad_redis_url_is_refused_at_startup
  every cache key in one slot (the hash tag) ...... test_every_cache_key_is_in_one_slot
  two processes: no stale read, push, sign-out ... tests/test_two_processes.py (its "cluster" half)
  sign-in limits count on the cluster ............. test_sign_in_limits_count_together_on_the_cluster
  panel and `flask cache stats` ................... test_panel_and_cache_stats_name_the_cluster
  a frozen node skipped, nothing stale after ...... test_frozen_cache_node_is_skipped_and_nothing_stale_after
  a lost master (CLUSTERDOWN) skipped too ......... test_a_cluster_that_lost_a_master_is_skipped_not_waited_on
"""
from __future__ import annotations

import re
import time

import pytest

from chat import create_app
from chat.cache import hash_tagged
from chat.extensions import db
from tests.conftest import CSRF_META, PASSWORD, app_with_tables, make_config, make_user
from tests.test_cache import make_cache


@pytest.mark.parametrize("url, message", [
    ("redis+cluster://", "name each node as host:port"),
    ("redis+cluster://10.0.0.1", "name each node as host:port"),
    ("redis+cluster://10.0.0.1:7000,10.0.0.2:port", "(got '10.0.0.2:port')"),
    ("redis+cluster://10.0.0.1:70000", "name each node as host:port"),
    ("redis+cluster://10.0.0.1:7000/1", "database 0 only"),
    ("redis+cluster://10.0.0.1:7000?ssl=true", "no options"),
    ("http://10.0.0.1:6379", "use redis://, rediss://, unix:// or, for a Redis Cluster, redis+cluster://"),
])
def test_bad_redis_url_is_refused_at_startup(url, message, tmp_path):
    with pytest.raises(ValueError, match=re.escape(message)):
        create_app(make_config(f"sqlite:///{tmp_path / 'x.db'}", REDIS_URL=url))


def test_a_password_never_shows_in_the_error(tmp_path):
    with pytest.raises(ValueError) as refused:
        create_app(make_config(f"sqlite:///{tmp_path / 'x.db'}", REDIS_URL="redis+cluster://:s3cret@10.0.0.1"))
    assert "s3cret" not in str(refused.value) and ":***@" in str(refused.value)


def test_hash_tag_of_the_key_prefix():
    assert hash_tagged("chat:") == "{chat:}"
    assert hash_tagged("{inbox}:eu:") == "{inbox}:eu:"  # an operator's own tag stands
    assert hash_tagged("a{}b:") == "{a{}b:}"  # an empty {} is no tag to Redis
    with pytest.raises(ValueError, match="may not be empty"):
        hash_tagged("")


def test_every_cache_key_is_in_one_slot(redis_cluster_config):
    """Entries, generations, the epoch and fill locks all carry the prefix's hash tag."""
    app, cache = make_cache(redis_cluster_config)
    client = cache.backend._write_client
    with app.app_context():
        for n in range(20):
            cache.get_or_fetch(f"conversations:user:{n}:tab:mine", lambda: n, tags=[f"dept:{n}"])
        cache.invalidate("conversations:user:3*")
        keys = list(client.scan_iter(match=cache.backend._get_prefix() + "*"))
    assert cache.backend._get_prefix() == "{" + redis_cluster_config["CACHE_KEY_PREFIX"] + "}"
    assert len(keys) > 40 and {client.keyslot(k) for k in keys} == {client.keyslot(keys[0])}
    node = cache.cluster_node()
    assert client.get_redis_connection(node).dbsize() >= len(keys)  # all on the master that owns the slot


# -- in-process apps on the cluster -------------------------------------------------------------
def form_sign_in(client, email: str, password: str):
    token = CSRF_META.search(client.get("/login").get_data(as_text=True)).group(1)
    return client.post("/login", data={"email": email, "password": password, "csrf_token": token},
                       environ_base={"REMOTE_ADDR": "192.0.2.7"})


@pytest.fixture
def cluster_apps(tmp_path, redis_cluster_config):
    """Two apps (think: two processes) over one SQLite database and the cluster; Ana in it."""
    config = make_config(f"sqlite:///{tmp_path / 'cluster.db'}", **redis_cluster_config)
    first, second = app_with_tables(config), app_with_tables(config)
    apps = [next(first), next(second)]
    with apps[0].app_context():
        make_user("ana@example.com", "Ana Costa", "admin")
        db.session.commit()
    yield apps
    for generator in (second, first):
        next(generator, None)


def test_sign_in_limits_count_together_on_the_cluster(cluster_apps):
    """Flask-Limiter's redis+cluster:// storage: attempts through two apps add up."""
    first, second = cluster_apps
    for n in range(5):
        assert form_sign_in((first, second)[n % 2].test_client(), "ana@example.com", "wrong").status_code == 401
    assert form_sign_in(second.test_client(), "ana@example.com", "wrong").status_code == 429
    storage = first.extensions["throttle"].limiter.storage
    assert type(storage).__name__ == "RedisClusterStorage"
    prefix = first.config["CACHE_KEY_PREFIX"] + "limits"
    assert list(storage.storage.scan_iter(match=prefix + "*"))


def test_panel_and_cache_stats_name_the_cluster(cluster_apps):
    app = cluster_apps[0]
    admin = app.test_client()
    assert form_sign_in(admin, "ana@example.com", PASSWORD).status_code == 302
    admin.get("/inbox")
    node = app.extensions["smart_cache"].cluster_node()
    page = admin.get("/admin/cache").get_data(as_text=True)
    assert f"Redis Cluster of 3 masters, this cache on {node.name}" in page
    assert 'data-stat="redis-breaker">closed<' in page  # the breaker of that master
    out = app.test_cli_runner().invoke(args=["cache", "stats"])
    assert out.exit_code == 0, out.output
    assert f"Backend: Redis Cluster of 3 masters, this cache on {node.name}" in out.output
    entries = int(re.search(r"\(([\d,]+) entries", out.output).group(1).replace(",", ""))
    assert entries >= 1


def test_frozen_cache_node_is_skipped_and_nothing_stale_after(redis_cluster, redis_cluster_config):
    """The master holding the cache frozen (SIGSTOP): one call waits for the timeout, the rest
    skip it at once without making the client re-read the cluster each time; after SIGCONT the
    probe closes the breaker and an invalidation lost meanwhile shows (the epoch moved)."""
    app, cache = make_cache(redis_cluster_config)
    other_app, other = make_cache(redis_cluster_config)  # never saw the outage
    refreshes = []
    nodes = cache.backend._write_client.nodes_manager
    original = nodes.initialize
    nodes.initialize = lambda *a, **kw: refreshes.append(1) or original(*a, **kw)
    with app.app_context():
        assert cache.get_or_fetch("conversation:1", lambda: "v1") == "v1"
        breaker, node = cache.breaker, cache.cluster_node()
        opens, skipped = breaker.opens, breaker.skipped
        redis_cluster.freeze(node.port)
        try:
            started = time.monotonic()
            for n in range(20):
                assert cache.get_or_fetch("conversation:1", lambda: f"db {n}") == f"db {n}"
            cache.invalidate("conversation:1")  # a commit during the outage: this write is lost
            elapsed = time.monotonic() - started
        finally:
            redis_cluster.thaw(node.port)
        assert breaker.opens >= opens + 1 and breaker.skipped >= skipped + 15
        assert len(refreshes) <= 2, refreshes  # not one layout refresh per skipped call
        assert elapsed < 3, f"20 reads with the cache's master frozen took {elapsed:.1f} s"
        time.sleep(breaker.retry_in() + 0.02)
        assert cache.get_or_fetch("conversation:1", lambda: "v2") == "v2"
        assert breaker.state == "closed"
    with other_app.app_context():
        assert other.get_or_fetch("conversation:1", lambda: "v3") == "v2"


def test_a_cluster_that_lost_a_master_is_skipped_not_waited_on(tmp_path, request):
    """With a master gone (no replica) the cluster refuses every command (CLUSTERDOWN) and
    redis-py sleeps 0.25 s and re-reads the layout before each refusal: the breaker opens on the
    first, so the next reads go to the database at once. (A cluster of its own: one is killed.)"""
    from tests.redis_cluster import PrivateRedisCluster

    cluster = PrivateRedisCluster(tmp_path, node_timeout_ms=500)
    request.addfinalizer(cluster.stop)
    app, cache = make_cache({"REDIS_URL": cluster.url, "CACHE_KEY_PREFIX": "chat-test:"})
    with app.app_context():
        assert cache.get_or_fetch("conversation:1", lambda: "v1") == "v1"
        node = cache.cluster_node()
        other = next(p for p in cluster.ports if p != node.port)
        cluster.kill(other)
        cluster.wait_for_state(node.port, "fail")
        breaker = cache.breaker
        for n in range(10):
            assert cache.get_or_fetch("conversation:1", lambda: f"db {n}") == f"db {n}"
        assert breaker.state == "open" and breaker.skipped >= 8  # not 10 waits of 0.25 s
