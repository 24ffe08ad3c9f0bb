"""PostgreSQL restarted under load: a clear 503 while it is away (never a 500, never the sign-in
form), a reply retried with its idempotency key stored and delivered once, and every process
serving again within 5 s of its return. The database is a private server this test stops and
starts; the deployment is the embedded default (one gunicorn, its worker inside) or the scaled
one (two gunicorns sharing Redis, and a `flask worker` process)."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from contextlib import contextmanager

import pytest
import requests

from bench.common import http
from tests.conftest import REDIS_URL, redis_client, unavailable
from tests.live import BIN, ROOT, LiveServer, sign_in
from tests.provider import FakeProvider


@pytest.fixture
def postgres(tmp_path):
    from tests.private_postgres import PrivatePostgres

    try:
        server = PrivatePostgres()
    except (FileNotFoundError, OSError, subprocess.CalledProcessError) as exc:
        unavailable(f"cannot run a private PostgreSQL: {exc} {getattr(exc, 'stderr', '')}")
    yield server
    server.remove()


@contextmanager
def deployment(kind: str, tmp_path, postgres, provider):
    """The servers of one deployment kind over the private database, started; stopped after."""
    redis_url = None
    if kind == "scaled":
        redis_client()  # unavailable() when the machine's Redis does not answer
        redis_url = REDIS_URL
    first = LiveServer(tmp_path, redis_url=redis_url, database_url=postgres.url,
                       seed=("--conversations", "20", "--messages", "60"))
    first.env.update(CHANNEL_WEBHOOK_URL=provider.webhook_url, DELIVERY_POLL_SECONDS="0.2",
                     DELIVERY_BACKOFF_BASE="0.2", DELIVERY_BACKOFF_MAX="1")
    servers, worker = [first], None
    if kind == "scaled":
        first.env["DELIVERY_WORKER"] = "off"
        servers.append(first.twin())
    try:
        for server in servers:
            server.start()
        if kind == "scaled":
            log = (tmp_path / "worker.log").open("a")
            worker = subprocess.Popen([str(BIN / "flask"), "--app", "app", "worker"], cwd=ROOT, env=first.env,
                                      stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        yield servers
    finally:
        if worker is not None:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=15)
        for server in reversed(servers):
            server.stop()
        first.cleanup()


@pytest.mark.parametrize("kind", ["embedded", "scaled"])
def test_postgres_restart_under_load(tmp_path, postgres, kind):
    with FakeProvider() as provider, deployment(kind, tmp_path, postgres, provider) as servers:
        _restart_under_load(servers, postgres, provider)


def _restart_under_load(servers: list[LiveServer], postgres, provider: FakeProvider) -> None:
    server = servers[0]
    token = server.flask("agent", "token", "admin@example.com").strip()
    api = http()
    api.headers["Authorization"] = f"Bearer {token}"
    listed = api.get(f"{server.base}/api/conversations?status=all", timeout=5).json()["data"]
    conversation = next(c["id"] for c in listed if c["status"] == "active")

    results: list[tuple[float, int, str, float]] = []  # (started, status, what, ended)
    stop = threading.Event()

    def load(session, url, what, headers=None):
        n = 0
        while not stop.is_set():
            n += 1
            started = time.monotonic()
            try:
                r = session.get(url.replace("{n}", str(n)), timeout=5, headers=headers or {}, allow_redirects=False)
                results.append((started, r.status_code, f"{what} {r.headers.get('X-Cache')} "
                                f"{r.headers.get('Content-Type')}{' login' if 'Sign in' in r.text else ''}",
                                time.monotonic()))
            except requests.RequestException as exc:
                results.append((started, 0, f"{what} {type(exc).__name__}", time.monotonic()))
            time.sleep(0.05)

    threads = []
    for n, each in enumerate(servers):
        browser, _ = sign_in(each, "admin@example.com")
        name = f"process {n}:"
        threads += [threading.Thread(target=load, args=(api, f"{each.base}/api/conversations?status=all", f"{name} api")),
                    threading.Thread(target=load, args=(browser, f"{each.base}/inbox/list?tab=mine&department=1",
                                                        f"{name} fragment", {"HX-Request": "true"})),
                    threading.Thread(target=load, args=(browser, f"{each.base}/inbox?q=new-search-{{n}}", f"{name} page"))]
    for t in threads:
        t.start()
    try:
        time.sleep(1)
        postgres.stop("fast")
        down_at = time.monotonic()
        time.sleep(2)
        # A reply during the outage: a clear 503; the client keeps it and retries with its key.
        key = "outage-reply-0001"
        during = api.post(f"{server.base}/api/conversations/{conversation}/messages", json={"body": "sent while down"},
                          headers={"Idempotency-Key": key}, timeout=5)
        assert during.status_code == 503 and during.headers.get("Retry-After"), during.text
        assert "database" in during.json()["error"]
        starting_at = time.monotonic()  # the server may answer before pg_ctl start returns
        postgres.start()
        up_at = time.monotonic()
        stored = None
        while time.monotonic() < up_at + 10:
            stored = api.post(f"{server.base}/api/conversations/{conversation}/messages",
                              json={"body": "sent while down"}, headers={"Idempotency-Key": key}, timeout=5)
            if stored.status_code in (200, 201):
                break
            time.sleep(0.2)
        assert stored is not None and stored.status_code == 201, stored.text
        again = api.post(f"{server.base}/api/conversations/{conversation}/messages", json={"body": "sent while down"},
                         headers={"Idempotency-Key": key}, timeout=5)
        assert again.status_code == 200 and again.json()["data"]["id"] == stored.json()["data"]["id"]
        time.sleep(6)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)

    # Requests made entirely while the database was away (one started before it went may finish 200).
    outage = [r for r in results if down_at + 0.5 < r[0] and r[3] < starting_at]
    assert outage, "no request was made during the outage"
    # What the cache holds is still served (a hit needs no database); everything else is a clear 503.
    assert {(r[1], r[2].split(":", 1)[1]) for r in outage if r[1] != 503} <= {
        (200, " api HIT application/json"), (200, " fragment HIT text/html; charset=utf-8")}, \
        sorted({(r[1], r[2]) for r in outage})
    assert not any("login" in r[2] for r in outage)  # never the sign-in form
    for n in range(len(servers)):
        mine = [r for r in results if r[2].startswith(f"process {n}:")]
        # A new search needs the database: 503 while it is away.
        assert any(r[1] == 503 and " page " in r[2] for r in mine if down_at + 0.5 < r[0] and r[3] < starting_at)
        pages = [r for r in mine if r[0] > up_at and " page " in r[2] and r[1] == 200]
        assert pages and pages[0][3] - up_at < 5, f"process {n} not serving again within 5 s of the database's return"
        after = [r for r in mine if r[0] > up_at + 5]
        assert after and all(r[1] == 200 for r in after), sorted({(r[1], r[2]) for r in after if r[1] != 200})

    provider.wait_for(1, timeout=10)
    bodies = [r.json["body"] for r in provider.accepted()]
    assert bodies.count("sent while down") == 1  # delivered exactly once


def test_a_send_the_provider_answers_while_the_database_is_away_is_recorded_once_it_is_back(tmp_path, postgres):
    """The worker is mid-send when PostgreSQL stops; the provider takes the reply and answers while
    the database is away. Once it is back the reply shows `sent` (not "sending" until its lease
    ends), and the provider never gets it a second time."""
    with FakeProvider(hang_seconds=3) as provider, deployment("embedded", tmp_path, postgres, provider) as servers:
        server = servers[0]
        token = server.flask("agent", "token", "admin@example.com").strip()
        api = http()
        api.headers["Authorization"] = f"Bearer {token}"
        listed = api.get(f"{server.base}/api/conversations?status=all", timeout=5).json()["data"]
        conversation = next(c["id"] for c in listed if c["status"] == "active")
        body = "answered while the database was away"

        provider.script("hang")  # takes it, answers 3 s later
        stored = api.post(f"{server.base}/api/conversations/{conversation}/messages", json={"body": body},
                          headers={"Idempotency-Key": "away-0001"}, timeout=5)
        assert stored.status_code == 201, stored.text
        message_id = stored.json()["data"]["id"]
        provider.wait_for(1, timeout=10, accepted=False)  # the worker is waiting for the answer
        postgres.stop("fast")
        provider.wait_for(1, timeout=10)  # answered: the customer has it; the database is still away
        time.sleep(1)
        postgres.start()
        up_at = time.monotonic()

        state = None
        while time.monotonic() < up_at + 15:
            try:
                page = api.get(f"{server.base}/api/conversations/{conversation}/messages", timeout=5)
            except requests.RequestException:
                page = None
            if page is not None and page.status_code == 200:
                (message,) = [m for m in page.json()["data"] if m["id"] == message_id]
                state = message["delivery"]["state"]
                if state == "sent":
                    break
            time.sleep(0.2)
        assert state == "sent", f"still {state!r} {time.monotonic() - up_at:.1f} s after the database came back"
        time.sleep(1)
        assert [r.json["body"] for r in provider.requests].count(body) == 1, "sent to the provider again"
        assert "could not record the provider's answer" in server.log_path.read_text(errors="replace")
