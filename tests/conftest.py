"""Fixtures: an app on each real database, a known little world, and signed-in clients.

CHAT_TEST_DATABASES (comma separated: sqlite, postgresql) picks the databases every test
runs on. PostgreSQL tests create and drop a throwaway database; with CI=true a missing
server fails them instead of skipping.
"""
from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
from sqlalchemy import text
from werkzeug.security import generate_password_hash

from chat import create_app
from chat.extensions import db
from chat.models import (
    ACTIVE, CLOSED, PENDING, Contact, Conversation, Department, Message, QuickReply, User,
)

DATABASES = [d.strip() for d in os.environ.get("CHAT_TEST_DATABASES", "sqlite").split(",") if d.strip()]
# The cache backends every app-level test runs on: the in-process default and a real Redis.
CACHES = [c.strip() for c in os.environ.get("CHAT_TEST_CACHES", "simple").split(",") if c.strip()]
REDIS_URL = os.environ.get("CHAT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_ADMIN_URL = os.environ.get("CHAT_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() == "true"
PASSWORD = "demo-pass"
# A cheap hash keeps fixtures fast; the app itself uses Werkzeug's default (scrypt).
PASSWORD_HASH = generate_password_hash(PASSWORD, method="pbkdf2:sha256:1000")
INBOUND_TOKEN = "inbound-test-token"


def unavailable(reason: str):
    """A server or tool the test needs is missing: skip, but fail under CI=true."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: tests must not skip)")
    pytest.skip(reason)


@contextmanager
def throwaway_postgres(prefix: str = "chat_test"):
    """The URL of a new, empty PostgreSQL database, dropped on exit."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        unavailable(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}")
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL database for this test session, dropped at the end."""
    with throwaway_postgres() as url:
        yield url


def redis_client(url: str = REDIS_URL):
    """A client of the machine's Redis, or unavailable() when it does not answer."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        unavailable(f"Redis is not reachable at {url}: {exc}")
    return client


def _redis_cache_config():
    client = redis_client()
    prefix = f"chat-test-{uuid.uuid4().hex[:10]}:"
    yield {"REDIS_URL": REDIS_URL, "CACHE_KEY_PREFIX": prefix}
    for key in client.scan_iter(match=prefix + "*", count=1000):  # only what this test created
        client.delete(key)


@pytest.fixture(params=CACHES)
def cache_config(request):
    """Flask config for the cache backend; Redis keys get a prefix of their own, removed after."""
    if request.param == "simple":
        yield {}
    elif request.param == "redis":
        yield from _redis_cache_config()
    else:
        raise ValueError(f"unknown test cache {request.param!r}")


@pytest.fixture
def redis_cache_config():
    """A Redis cache configuration whatever CHAT_TEST_CACHES says (for multi-process promises)."""
    yield from _redis_cache_config()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """A private 3-master Redis Cluster (tests/redis_cluster.py), started once when a test first
    asks for it and stopped at the end of the session."""
    from tests.redis_cluster import PrivateRedisCluster

    try:
        cluster = PrivateRedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    except FileNotFoundError as exc:
        unavailable(str(exc))
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_cluster_config(redis_cluster):
    """The app's config for the private cluster, under a key prefix of its own (the cluster is
    this session's alone and goes with it: nothing to delete)."""
    return {"REDIS_URL": redis_cluster.url, "CACHE_KEY_PREFIX": f"chat-test-{uuid.uuid4().hex[:10]}:"}


@pytest.fixture(params=DATABASES)
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    if request.param == "postgresql":
        return request.getfixturevalue("postgres_url")
    raise ValueError(f"unknown test database {request.param!r}")


# Attachments' bytes of in-process test apps: one directory of this test process, removed at exit
# (never the repository's instance/).
ATTACHMENT_DIR = tempfile.mkdtemp(prefix="chat-test-attachments-")
atexit.register(shutil.rmtree, ATTACHMENT_DIR, True)


def make_config(database_url: str, **extra) -> dict:
    return {
        "TESTING": True,
        "ATTACHMENT_DIR": ATTACHMENT_DIR,
        "SECRET_KEY": "test-secret",
        "INBOUND_TOKEN": INBOUND_TOKEN,
        "SQLALCHEMY_DATABASE_URI": database_url,
        # Socket.IO across processes is tested with real processes (test_push.py); in-process
        # apps keep events local so hundreds of test apps don't each start a Redis listener.
        "SOCKETIO_MESSAGE_QUEUE": None,
        **extra,
    }


def app_with_tables(config: dict):
    """An app whose database has the tables; emptied afterwards (the PostgreSQL one is shared)."""
    app = create_app(config)
    with app.app_context():
        db.create_all()
    yield app
    with app.app_context():
        db.session.remove()
        if db.engine.dialect.name == "postgresql":
            tables = ", ".join(f'"{t.name}"' for t in db.metadata.sorted_tables)
            with db.engine.begin() as conn:
                conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        db.engine.dispose()


@pytest.fixture
def app(database_url, cache_config):
    yield from app_with_tables(make_config(database_url, **cache_config))


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


def make_user(email: str, name: str, role: str = "agent", departments=()) -> User:
    user = User(email=email, name=name, role=role, password_hash=PASSWORD_HASH)
    user.departments = list(departments)
    db.session.add(user)
    return user


def make_conversation(phone: str, name: str, status: str, department=None, user=None,
                      messages=("Hello",), unread: int = 0) -> Conversation:
    contact = Contact(name=name, phone=phone)
    conversation = Conversation(contact=contact, status=status, department=department, user=user,
                                unread_count=unread, last_message_body=messages[-1] if messages else "")
    db.session.add(conversation)
    db.session.flush()
    for body in messages:
        db.session.add(Message(conversation_id=conversation.id, body=body, from_me=False))
    return conversation


@pytest.fixture
def world(app):
    """Departments, agents and one conversation in each interesting state, by name.

    support: ana, bruno · sales: ana · billing: carla · admin sees everything.
    """
    with app.app_context():
        support = Department(name="Support", color="#16a34a")
        sales = Department(name="Sales", color="#2563eb")
        billing = Department(name="Billing", color="#d97706")
        db.session.add_all([support, sales, billing])
        admin = make_user("admin@example.com", "Alex Admin", "admin")
        ana = make_user("ana@example.com", "Ana Costa", "agent", [support, sales])
        bruno = make_user("bruno@example.com", "Bruno Lima", "agent", [support])
        carla = make_user("carla@example.com", "Carla Dias", "agent", [billing])
        db.session.flush()
        convs = {
            "pending_support": make_conversation("+551100000001", "Paula Pending", PENDING, support),
            "pending_sales": make_conversation("+551100000002", "Sam Sales", PENDING, sales),
            "pending_billing": make_conversation("+551100000003", "Bill Billing", PENDING, billing),
            "pending_nodept": make_conversation("+551100000004", "Nora Nodept", PENDING),
            "active_ana": make_conversation("+551100000005", "Andre Active", ACTIVE, support, ana, unread=2),
            "active_bruno": make_conversation("+551100000006", "Bea Bruno", ACTIVE, support, bruno),
            "closed_ana": make_conversation("+551100000007", "Carlos Closed", CLOSED, support, ana),
        }
        db.session.add(QuickReply(shortcut="hello", body="Hello! How can I help?"))
        db.session.commit()
        return SimpleNamespace(
            admin=admin.id, ana=ana.id, bruno=bruno.id, carla=carla.id,
            support=support.id, sales=sales.id, billing=billing.id,
            **{k: v.id for k, v in convs.items()},
        )


CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)"')


@dataclass
class Agent:
    """A browser-like session for one agent: logs in through the form, posts with CSRF."""

    client: object
    csrf: str | None = None

    def login(self, email: str, password: str = PASSWORD):
        page = self.client.get("/login")
        token = CSRF_META.search(page.get_data(as_text=True)).group(1)
        response = self.client.post(
            "/login", data={"email": email, "password": password, "csrf_token": token}
        )
        self.csrf = token  # still valid: the session keeps the token it was signed for
        return response

    def get(self, url: str, htmx: bool = False, **kwargs):
        headers = kwargs.pop("headers", {})
        if htmx:
            headers["HX-Request"] = "true"
        return self.client.get(url, headers=headers, **kwargs)

    def post(self, url: str, data: dict | None = None, htmx: bool = True, csrf: bool = True, **kwargs):
        headers = kwargs.pop("headers", {})
        if htmx:
            headers["HX-Request"] = "true"
        if csrf:
            headers["X-CSRFToken"] = self.csrf
        return self.client.post(url, data=data or {}, headers=headers, **kwargs)


@pytest.fixture
def login(app):
    """login('ana@example.com') → a signed-in Agent with its own cookie jar."""

    def _login(email: str) -> Agent:
        agent = Agent(app.test_client())
        response = agent.login(email)
        assert response.status_code == 302, response.get_data(as_text=True)[:500]
        return agent

    return _login


@pytest.fixture(scope="session")
def browser():
    """Debian's chromium under Playwright, shared by the browser tests."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed")
    from tests.live import launch_chromium

    with sync_playwright() as p:
        browser = launch_chromium(p)
        yield browser
        browser.close()


@pytest.fixture
def token(app):
    """token('ana@example.com') → that agent's API bearer header."""
    from chat import catalog

    def _token(email: str) -> dict:
        with app.app_context():
            return {"Authorization": f"Bearer {catalog.issue_api_token(email)}"}

    return _token


__all__ = ["ACTIVE", "CLOSED", "PENDING"]
