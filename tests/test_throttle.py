"""Throttling guesses (issue 10): sign-in per account and per client address, bearer tokens per
address, on real storage: in memory, and Redis under a private key prefix (deleted afterwards).
Windows are shortened through config so a test can wait one out."""
from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy import select

from chat.extensions import db
from chat.models import User
from tests.conftest import (CSRF_META, INBOUND_TOKEN, PASSWORD, app_with_tables, make_config, make_user,
                            redis_client)
from tests.live import free_port

WINDOW = 2  # seconds


def _storage(kind: str):
    if kind == "memory":
        yield {}
        return
    client = redis_client()
    prefix = f"chat-test-{uuid.uuid4().hex[:10]}:"
    yield {"REDIS_URL": "redis://127.0.0.1:6379/0", "CACHE_KEY_PREFIX": prefix}
    for key in client.scan_iter(match=prefix + "*", count=1000):
        client.delete(key)


@pytest.fixture(params=["memory", "redis"])
def storage(request):
    """Flask config for the limits' storage: in memory, or Redis under a private prefix."""
    yield from _storage(request.param)


def throttled_app(database_url, **extra):
    return app_with_tables(make_config(
        database_url, SIGN_IN_LIMIT_PER_ACCOUNT=f"5 per {WINDOW} seconds",
        SIGN_IN_LIMIT_PER_ADDRESS=f"8 per {WINDOW} seconds", TOKEN_LIMIT_PER_ADDRESS=f"3 per {WINDOW} seconds",
        **extra))


@pytest.fixture
def app(database_url, storage):
    yield from throttled_app(database_url, **storage)


@pytest.fixture
def world_factory():
    """world_factory(app generator) → the app, with Ana and Bruno in its database (added once
    per database), closed after the test."""
    opened = []

    def _open(generator):
        app = next(generator)
        opened.append(generator)
        with app.app_context():
            if db.session.scalar(select(User).where(User.email == "ana@example.com")) is None:
                make_user("ana@example.com", "Ana Costa")
                make_user("bruno@example.com", "Bruno Lima")
                db.session.commit()
        return app

    yield _open
    for generator in reversed(opened):
        next(generator, None)


def sign_in(client, email: str, password: str, address: str = "192.0.2.1"):
    token = CSRF_META.search(client.get("/login").get_data(as_text=True)).group(1)
    return client.post("/login", data={"email": email, "password": password, "csrf_token": token},
                       environ_base={"REMOTE_ADDR": address})


def test_sixth_wrong_password_is_429_and_the_right_one_works_after_the_window(app, world, client):
    for _ in range(5):
        assert sign_in(client, "ana@example.com", "wrong-pass").status_code == 401
    response = sign_in(client, "ana@example.com", "wrong-pass")
    assert response.status_code == 429
    assert 1 <= int(response.headers["Retry-After"]) <= WINDOW
    page = response.get_data(as_text=True)
    assert "Too many sign-in attempts" in page and 'name="password"' in page  # the login page, saying so
    assert sign_in(client, "ana@example.com", PASSWORD).status_code == 429  # the account waits it out
    time.sleep(WINDOW + 0.2)
    assert sign_in(client, "ana@example.com", PASSWORD).status_code == 302


def test_account_limit_holds_across_addresses_and_spares_other_accounts(app, world, client):
    for n in range(5):
        assert sign_in(client, "ana@example.com", "wrong-pass", address=f"198.51.100.{n}").status_code == 401
    assert sign_in(client, "ANA@example.com ", "wrong-pass", address="203.0.113.9").status_code == 429
    assert sign_in(client, "bruno@example.com", PASSWORD).status_code == 302


def test_right_password_clears_the_account_count(app, world):
    for n in range(3):  # 12 wrong passwords for the account within the window, from 3 addresses
        address = f"192.0.2.{10 + n}"
        for _ in range(4):
            assert sign_in(app.test_client(), "ana@example.com", "wrong-pass", address).status_code == 401
        assert sign_in(app.test_client(), "ana@example.com", PASSWORD, address).status_code == 302


def test_address_limit_counts_refused_sign_ins_over_many_accounts(app, world, client):
    emails = [f"nobody{n}@example.com" for n in range(8)]
    for email in emails:
        assert sign_in(client, email, "guess").status_code == 401
    assert sign_in(client, "ana@example.com", PASSWORD).status_code == 429  # this address waits
    assert sign_in(client, "ana@example.com", PASSWORD, address="192.0.2.2").status_code == 302


def test_successful_sign_ins_from_one_address_are_not_limited(app, world):
    for _ in range(12):  # an office behind one NAT signing in at 9:00
        assert sign_in(app.test_client(), "bruno@example.com", PASSWORD).status_code == 302


def test_wrong_api_tokens_are_throttled_per_address(app, world, client, token):
    good = token("ana@example.com")
    for _ in range(3):
        assert client.get("/api/conversations", headers={"Authorization": "Bearer guess"}).status_code == 401
    response = client.get("/api/conversations", headers=good)
    assert response.status_code == 429 and "Retry-After" in response.headers
    assert "too many invalid tokens" in response.get_json()["error"]
    other = client.get("/api/conversations", headers=good, environ_base={"REMOTE_ADDR": "192.0.2.77"})
    assert other.status_code == 200
    # the webhook's token is counted on its own
    inbound = client.post("/api/inbound", json={"phone": "+5511955554444", "body": "hi"},
                          headers={"Authorization": f"Bearer {INBOUND_TOKEN}"})
    assert inbound.status_code == 201
    time.sleep(WINDOW + 0.2)
    assert client.get("/api/conversations", headers=good).status_code == 200


def test_wrong_webhook_tokens_are_throttled_per_address(app, world, client):
    for _ in range(3):
        response = client.post("/api/inbound", json={"phone": "+5511955554444", "body": "hi"},
                               headers={"Authorization": "Bearer guess"})
        assert response.status_code == 401
    response = client.post("/api/inbound", json={"phone": "+5511955554444", "body": "hi"},
                           headers={"Authorization": f"Bearer {INBOUND_TOKEN}"})
    assert response.status_code == 429 and response.get_json()["error"].startswith("too many invalid tokens")


def test_valid_tokens_are_never_throttled(app, world, client, token):
    good = token("ana@example.com")
    for _ in range(20):
        assert client.get("/api/conversations", headers=good).status_code == 200


@pytest.fixture
def redis_storage():
    yield from _storage("redis")


def test_redis_limits_are_shared_by_processes_and_kept_under_the_prefix(database_url, redis_storage, world_factory):
    storage = redis_storage
    first, second = (world_factory(throttled_app(database_url, **storage)) for _ in range(2))
    for _ in range(3):
        assert sign_in(first.test_client(), "ana@example.com", "wrong-pass").status_code == 401
    for _ in range(2):
        assert sign_in(second.test_client(), "ana@example.com", "wrong-pass").status_code == 401
    assert sign_in(first.test_client(), "ana@example.com", "wrong-pass").status_code == 429
    keys = redis_client().keys(storage["CACHE_KEY_PREFIX"] + "limits:*")
    assert keys  # the limits live under this deployment's prefix, apart from any other
    assert not redis_client().keys("LIMITS:*" + storage["CACHE_KEY_PREFIX"] + "*")


def test_redis_outage_does_not_fail_sign_in_and_limits_carry_on_in_memory(database_url, world_factory):
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    app = world_factory(throttled_app(database_url, REDIS_URL=dead, CACHE_KEY_PREFIX="chat-test-dead:"))
    client = app.test_client()
    for _ in range(5):
        assert sign_in(client, "ana@example.com", "wrong-pass").status_code == 401
    assert sign_in(client, "ana@example.com", "wrong-pass").status_code == 429
    assert sign_in(client, "bruno@example.com", PASSWORD).status_code == 302
