"""PostgreSQL restarted under load: a clear 503 while it is away (never a 500, never the sign-in
form), a reply retried with its idempotency key stored and delivered once, and everything served
again within 5 s of its return. The database is a private server this test stops and starts."""
from __future__ import annotations

import subprocess
import threading
import time

import pytest
import requests

from bench.common import http
from tests.conftest import unavailable
from tests.live import INBOUND_TOKEN, LiveServer, sign_in
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


def test_postgres_restart_under_load(tmp_path, postgres):
    with FakeProvider() as provider:
        server = LiveServer(tmp_path, database_url=postgres.url, seed=("--conversations", "20", "--messages", "60"))
        server.env.update(CHANNEL_WEBHOOK_URL=provider.webhook_url, DELIVERY_POLL_SECONDS="0.2",
                          DELIVERY_BACKOFF_BASE="0.2", DELIVERY_BACKOFF_MAX="1")
        server.start()
        try:
            _restart_under_load(server, postgres, provider)
        finally:
            server.stop()


def _restart_under_load(server: LiveServer, postgres, provider: FakeProvider) -> None:
    token = server.flask("agent", "token", "admin@example.com").strip()
    api = http()
    api.headers["Authorization"] = f"Bearer {token}"
    browser, _ = sign_in(server, "admin@example.com")
    listed = api.get(f"{server.base}/api/conversations?status=all", timeout=5).json()["data"]
    conversation = next(c["id"] for c in listed if c["status"] == "active")

    results: list[tuple[float, int, str]] = []  # (time, status, what)
    stop = threading.Event()

    def load(session, url, what, headers=None):
        n = 0
        while not stop.is_set():
            n += 1
            try:
                r = session.get(url.replace("{n}", str(n)), timeout=5, headers=headers or {}, allow_redirects=False)
                results.append((time.monotonic(), r.status_code, f"{what} {r.headers.get('X-Cache')} "
                                f"{r.headers.get('Content-Type')}{' login' if 'Sign in' in r.text else ''}"))
            except requests.RequestException as exc:
                results.append((time.monotonic(), 0, f"{what} {type(exc).__name__}"))
            time.sleep(0.05)

    threads = [threading.Thread(target=load, args=(api, f"{server.base}/api/conversations?status=all", "api")),
               threading.Thread(target=load, args=(browser, f"{server.base}/inbox/list?tab=mine&department=1", "fragment",
                                                   {"HX-Request": "true"})),
               threading.Thread(target=load, args=(browser, f"{server.base}/inbox?q=new-search-{{n}}", "page"))]
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

    outage = [r for r in results if down_at + 0.5 < r[0] < up_at]
    assert outage, "no request was made during the outage"
    # What the cache holds is still served (a hit needs no database); everything else is a clear 503.
    assert {(r[1], r[2]) for r in outage if r[1] != 503} <= {
        (200, "api HIT application/json"), (200, "fragment HIT text/html; charset=utf-8")}, sorted({(r[1], r[2]) for r in outage})
    assert any(r[1] == 503 and r[2].startswith("page") for r in outage)  # a new search needs the database
    assert not any("login" in r[2] for r in outage)  # never the sign-in form
    recovered = [r for r in results if r[0] > up_at and r[1] == 200]
    assert recovered and recovered[0][0] - up_at < 5, "not serving again within 5 s of the database's return"
    after = [r for r in results if r[0] > up_at + 5]
    assert after and all(r[1] == 200 for r in after), sorted({(r[1], r[2]) for r in after if r[1] != 200})

    provider.wait_for(1, timeout=10)
    bodies = [r.json["body"] for r in provider.accepted()]
    assert bodies.count("sent while down") == 1  # delivered exactly once
