"""Redis misbehaving never stalls a request for long (DESIGN.md, "Runs on one machine, scales on
real engines"; issue 12, item 1): a private redis-server frozen with SIGSTOP, killed, restarted
empty. The circuit breaker (chat.redis_guard.CircuitBreaker) opens after a timeout, later calls skip
Redis at once, one call probes after the interval, and after recovery nothing stale is served.

  breaker opens, calls skip Redis ....... test_frozen_redis_opens_the_breaker_and_reads_skip_it
  half-open probe, 0 stale after ........ test_breaker_probes_and_closes_and_nothing_stale_after_sigcont
  killed, restarted empty ............... test_killed_redis_restarted_empty_serves_nothing_stale
  commit never waits on push ............ test_commit_and_sign_in_while_redis_is_frozen
  panel and /metrics show the breaker ... test_panel_and_metrics_show_the_breaker
  a socket waits until push is heard .... test_a_socket_is_accepted_once_its_process_hears_redis
  push lost, then every socket refreshes  test_the_listener_subscribing_again_revalidates_its_sockets

Timings are asserted only as generous guards against the old multi-second stalls; the
behaviour is asserted on the breaker's counters.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest
from flask import Flask

from chat.cache import SmartCache
from chat.redis_guard import CircuitBreaker, redis_client
from tests.conftest import unavailable


class Redis:
    """A redis-server of our own on a free port: ours to freeze, kill and restart empty."""

    def __init__(self, workdir) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            unavailable("redis-server is not installed")
        self.workdir = workdir
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None
        self.start()

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.workdir)], stdout=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        for _ in range(200):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    def freeze(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.thaw()
            self.proc.terminate()
            self.proc.wait(5)


@pytest.fixture
def private_redis(tmp_path):
    server = Redis(tmp_path)
    yield server
    server.stop()


def make_cache(url: str) -> tuple[Flask, SmartCache]:
    app = Flask(__name__)
    app.config.update(REDIS_URL=url)
    cache = SmartCache()
    cache.init_app(app)
    return app, cache


def wait_for_probe(breaker: CircuitBreaker) -> None:
    """Let the open interval pass: the next call is the half-open probe."""
    time.sleep(breaker.retry_in() + 0.02)


def test_frozen_redis_opens_the_breaker_and_reads_skip_it(private_redis):
    app, cache = make_cache(private_redis.url)
    with app.app_context():
        assert cache.get_or_fetch("conversation:1", lambda: "v1") == "v1"
        breaker = cache.breaker
        assert breaker.state == "closed"
        opens, skipped = breaker.opens, breaker.skipped
        private_redis.freeze()
        started = time.monotonic()
        for n in range(20):
            assert cache.get_or_fetch("conversation:1", lambda: f"db {n}") == f"db {n}"
        elapsed = time.monotonic() - started
        assert breaker.opens >= opens + 1
        assert breaker.state in ("open", "half-open")
        # One call waited for the timeout; the others failed at once without asking Redis.
        assert breaker.skipped >= skipped + 15
        assert elapsed < 3, f"20 reads on a frozen Redis took {elapsed:.1f} s"  # was 24 s for two requests


def test_breaker_probes_and_closes_and_nothing_stale_after_sigcont(private_redis):
    app, cache = make_cache(private_redis.url)
    other_app, other = make_cache(private_redis.url)  # a second cache that makes no call during the outage
    with app.app_context():
        assert cache.get_or_fetch("conversation:1:messages", lambda: "v1") == "v1"
        breaker = cache.breaker
        private_redis.freeze()
        assert cache.get_or_fetch("conversation:1:messages", lambda: "v2") == "v2"  # times out: opens
        skipped = breaker.skipped
        cache.invalidate("conversation:1*")  # a commit during the outage: skipped, never sent
        assert breaker.skipped == skipped + 1
        private_redis.thaw()
        # Still open: skipped until the interval has passed, served from the database.
        if breaker.retry_in() > 0.05:
            assert cache.get_or_fetch("conversation:1:messages", lambda: "v3") == "v3"
            assert breaker.state == "open"
        wait_for_probe(breaker)
        assert cache.get_or_fetch("conversation:1:messages", lambda: "v4") == "v4"  # the probe: new epoch
        assert breaker.state == "closed"
        assert cache.get_or_fetch("conversation:1:messages", lambda: "v5") == "v4"  # cached again
    with other_app.app_context():
        assert other.get_or_fetch("conversation:1:messages", lambda: "other") == "v4"  # never v1


def test_no_read_uses_the_old_epoch_while_another_thread_moves_it(private_redis):
    """Recovery writes the new epoch; until that write is done, no other thread (or greenlet:
    under gevent every Redis call yields) may read entries under the old one. It once marked the
    cache healthy before the write, and a reader slipped in and served what a lost invalidation
    had left stale (bench/faults.py: 1 stale read right after SIGCONT)."""
    import threading

    app, cache = make_cache(private_redis.url)
    with app.app_context():
        assert cache.get_or_fetch("conversation:1:messages", lambda: "old") == "old"
        private_redis.freeze()
        assert cache.get_or_fetch("conversation:1:messages", lambda: "db") == "db"  # times out: opens
        cache.invalidate("conversation:1*")  # a commit meanwhile: skipped, never sent, lost
        private_redis.thaw()
        wait_for_probe(cache.breaker)
        # Another client of the same server (limits, push) makes the probe: the breaker closes
        # while the cache still has its epoch to move.
        redis_client(private_redis.url).ping()
        assert cache.breaker.state == "closed"
        backend, writing, readers_done = cache.backend, threading.Event(), []
        real_set = backend.set

        def slow_epoch_write(key, *args, **kwargs):
            if "@epoch" in key:
                writing.set()
                time.sleep(0.3)  # a slow round trip: other threads run meanwhile
            return real_set(key, *args, **kwargs)

        backend.set = slow_epoch_write

        def reader():
            writing.wait(5)
            with app.app_context():
                readers_done.append(cache.get_or_fetch("conversation:1:messages", lambda: "new"))

        other = threading.Thread(target=reader)
        other.start()
        try:
            assert cache.get_or_fetch("conversation:1:messages", lambda: "new") == "new"  # recovers
        finally:
            other.join(5)
            backend.set = real_set
        assert readers_done == ["new"]


def test_killed_redis_restarted_empty_serves_nothing_stale(private_redis):
    app, cache = make_cache(private_redis.url)
    with app.app_context():
        assert cache.get_or_fetch("conversations:user:1", lambda: ["a"]) == ["a"]
        breaker = cache.breaker
        private_redis.kill()
        started = time.monotonic()
        for _ in range(10):
            assert cache.get_or_fetch("conversations:user:1", lambda: ["a", "b"]) == ["a", "b"]
        cache.invalidate_tag("convs:user:1")
        assert time.monotonic() - started < 3
        assert breaker.state in ("open", "half-open") and breaker.skipped >= 5
        private_redis.start()  # empty
        wait_for_probe(breaker)
        assert cache.get_or_fetch("conversations:user:1", lambda: ["a", "b", "c"]) == ["a", "b", "c"]
        assert breaker.state == "closed"
        assert cache.get_or_fetch("conversations:user:1", lambda: ["stale?"]) == ["a", "b", "c"]


# -- the whole app -------------------------------------------------------------------------------
@pytest.fixture
def redis_app(private_redis, tmp_path):
    """The app with a private Redis as cache, limits and Socket.IO message queue."""
    from chat import create_app
    from chat.extensions import db
    from tests.conftest import make_config, make_conversation, make_user

    app = create_app(make_config(f"sqlite:///{tmp_path / 'faults.db'}", REDIS_URL=private_redis.url,
                                 SOCKETIO_MESSAGE_QUEUE=private_redis.url))
    with app.app_context():
        db.create_all()
        ana = make_user("ana@example.com", "Ana")
        make_user("admin@example.com", "Alex Admin", "admin")
        conversation = make_conversation("+5511900002222", "Fiona Frozen", "active", user=ana)
        db.session.commit()
        app.config["TEST_CONVERSATION"] = conversation.id
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def test_commit_and_sign_in_while_redis_is_frozen(redis_app, private_redis, caplog):
    from chat import push
    from chat.cache import smart_cache
    from tests.conftest import Agent

    cid = redis_app.config["TEST_CONVERSATION"]
    agent = Agent(redis_app.test_client())
    assert agent.login("ana@example.com").status_code == 302
    assert "Fiona Frozen" in agent.get("/inbox/list?tab=mine", htmx=True).get_data(as_text=True)
    private_redis.freeze()
    started = time.monotonic()
    with caplog.at_level("WARNING"):
        response = agent.post(f"/conversations/{cid}/messages", {"body": "written while frozen"})
        assert response.status_code == 201
        # Sign-in counts attempts in Redis: a frozen one must not stall it either.
        assert Agent(redis_app.test_client()).login("admin@example.com").status_code == 302
        assert time.monotonic() - started < 3
        with redis_app.app_context():
            assert push.flush(5), "the publisher is stuck on the frozen Redis"
    # The event was dropped (breaker open) or sent with a short timeout, never waited on.
    assert any("push dropped" in r.message or "could not push" in r.message for r in caplog.records)
    with redis_app.app_context():
        breaker = smart_cache.breaker
    private_redis.thaw()
    wait_for_probe(breaker)
    html = agent.get(f"/conversations/{cid}").get_data(as_text=True)
    assert "written while frozen" in html
    assert breaker.state == "closed"
    # After recovery a commit is pushed again, through the queue.
    with redis_app.app_context():
        from chat import domain
        from chat.extensions import db
        from chat.models import User
        domain.close_conversation(cid, db.session.get(User, 1))
        assert push.flush(5)
    assert "Fiona Frozen" not in agent.get("/inbox/list?tab=mine", htmx=True).get_data(as_text=True)


def test_panel_and_metrics_show_the_breaker(redis_app, private_redis):
    from chat.cache import smart_cache
    from tests.conftest import Agent

    admin = Agent(redis_app.test_client())
    assert admin.login("admin@example.com").status_code == 302
    panel = admin.get("/admin/cache/panel", htmx=True).get_data(as_text=True)
    assert re.search(r'data-stat="redis-breaker">closed<', panel)

    def opens_total() -> float:
        text = redis_app.test_client().get("/metrics").get_data(as_text=True)
        return float(re.search(r"^chat_redis_breaker_opens_total (\S+)$", text, re.M).group(1))

    before = opens_total()
    private_redis.freeze()
    assert admin.get("/inbox/list?tab=all", htmx=True).status_code == 200
    panel = admin.get("/admin/cache/panel", htmx=True).get_data(as_text=True)
    assert re.search(r'data-stat="redis-breaker">open<', panel)
    assert re.search(r"calls skipped", panel)
    text = redis_app.test_client().get("/metrics").get_data(as_text=True)
    assert re.search(r"^chat_redis_breaker_state 2\.0$", text, re.M)
    assert re.search(r"^chat_redis_skipped_total [1-9]", text, re.M)
    assert opens_total() >= before + 1
    with redis_app.app_context():
        breaker = smart_cache.breaker
    private_redis.thaw()
    wait_for_probe(breaker)
    assert admin.get("/inbox/list?tab=all", htmx=True).status_code == 200
    panel = admin.get("/admin/cache/panel", htmx=True).get_data(as_text=True)
    assert re.search(r'data-stat="redis-breaker">closed<', panel)



# -- push through a Redis that comes and goes ------------------------------------------------------
@pytest.fixture
def push_server(private_redis, tmp_path):
    """gunicorn (gevent) with the shared test Redis as its cache and the private one as its
    Socket.IO message queue: ours to kill while the rest of the app stays up."""
    from tests.conftest import REDIS_URL, redis_client
    from tests.live import LiveServer

    redis_client()  # the machine's Redis answers (or the test fails under CI=true)
    server = LiveServer(tmp_path, redis_url=REDIS_URL)
    server.env["SOCKETIO_MESSAGE_QUEUE"] = private_redis.url
    server.start()
    yield server
    server.cleanup()


def _socket(server, received: list, before_connect=lambda: None):
    import socketio

    from tests.live import cookie_header, form_log_in

    client = socketio.Client(reconnection=False)
    client.on("data:updated", received.append)
    agent = form_log_in(server.base, "ana@example.com")
    before_connect()
    client.connect(server.base, headers={"Cookie": cookie_header(agent)}, transports=["polling"],
                   wait_timeout=10)
    return client


def _wait_for(received: list, wanted, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in list(received):
            if wanted(event):
                return event
        time.sleep(0.05)
    raise AssertionError(f"no such data:updated within {timeout} s; got {received}")


def test_a_socket_is_accepted_once_its_process_hears_redis(push_server, private_redis):
    """python-socketio starts a process's Redis listener at its first connection and subscribes
    from a background task: a socket accepted before that misses the commits made right after
    its page revalidated, for good (seen as a browser that never showed a message sent while it
    reconnected to a restarted server). Here the listener's first try finds Redis down, so it
    tries again a second later: the socket is accepted only once it is subscribed, and hears
    the commit made right after."""
    restarted = threading.Timer(0.3, private_redis.start)
    started: list[float] = []

    def redis_down() -> None:
        private_redis.kill()
        restarted.start()
        started.append(time.monotonic())

    received: list = []
    client = _socket(push_server, received, before_connect=redis_down)
    try:
        waited = time.monotonic() - started[0]
        assert waited > 0.5, waited  # for the listener's second try, a second after its first
        restarted.join()
        cid = push_server.inbound(phone="+5511900007777", name="Right After Connect", body="hi",
                                  external_id=f"after-connect-{time.time()}")
        _wait_for(received, lambda e: f"conversation:{cid}" in e["keys"])
    finally:
        client.disconnect()


def test_the_listener_subscribing_again_revalidates_its_sockets(push_server, private_redis):
    """The listener's connection lost (Redis restarted, a network cut): what was published until it
    subscribes again reached no socket of this process, so each of them is told to revalidate
    everything ("*", with the audience that spreads the refetches)."""
    import redis

    received: list = []
    client = _socket(push_server, received)
    try:
        admin = redis.Redis.from_url(private_redis.url)
        listeners = [c["id"] for c in admin.client_list() if int(c.get("sub", 0))]
        assert listeners, admin.client_list()
        for listener in listeners:
            admin.client_kill_filter(_id=listener)
        event = _wait_for(received, lambda e: e["keys"] == ["*"], timeout=6)
        assert event["audience"] >= 1
    finally:
        client.disconnect()
