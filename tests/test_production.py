"""Production settings (issue 10): Secure cookies behind HTTPS or a proxy, a closable /metrics,
and the Content-Security-Policy header on every answer."""
from __future__ import annotations

import pytest

from chat.extensions import db
from chat.web import CONTENT_SECURITY_POLICY
from tests.conftest import CSRF_META, PASSWORD, app_with_tables, make_config, make_user


@pytest.fixture
def make_app(database_url):
    """make_app(**settings) → an app over the test database with Ana signed up, settings applied."""
    opened = []

    def _make(**settings):
        generator = app_with_tables(make_config(database_url, **settings))
        app = next(generator)
        opened.append(generator)
        with app.app_context():
            make_user("ana@example.com", "Ana Costa")
            db.session.commit()
        return app

    yield _make
    for generator in opened:
        next(generator, None)


def set_cookies(app, **environ) -> dict[str, str]:
    """Sign in with "keep me signed in"; the Set-Cookie headers by cookie name."""
    client = app.test_client()
    token = CSRF_META.search(client.get("/login", **environ).get_data(as_text=True)).group(1)
    response = client.post("/login", data={"email": "ana@example.com", "password": PASSWORD, "remember": "y",
                                           "csrf_token": token}, **environ)
    assert response.status_code == 302
    return {h.split("=", 1)[0]: h for h in response.headers.getlist("Set-Cookie")}


@pytest.mark.parametrize("settings, environ", [
    ({"PRODUCTION": True}, {}),
    ({"PREFERRED_URL_SCHEME": "https"}, {}),
    ({"PROXY_FIX": 1}, {"headers": {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.5"}}),
], ids=["PRODUCTION=1", "https", "behind a proxy"])
def test_production_cookies_are_secure_httponly_and_samesite(make_app, settings, environ):
    cookies = set_cookies(make_app(**settings), **environ)
    for name in ("session", "remember_token"):
        attributes = [a.strip().lower() for a in cookies[name].split(";")]
        assert "secure" in attributes and "httponly" in attributes and "samesite=lax" in attributes, cookies[name]


def test_embedded_default_cookies_work_over_plain_http(make_app):
    cookies = set_cookies(make_app())
    for name in ("session", "remember_token"):
        attributes = [a.strip().lower() for a in cookies[name].split(";")]
        assert "secure" not in attributes and "httponly" in attributes, cookies[name]


def test_proxy_fix_trusts_the_proxys_client_address(make_app):
    app = make_app(PROXY_FIX=1, METRICS_ALLOW="203.0.113.0/24")
    client = app.test_client()
    assert client.get("/metrics", headers={"X-Forwarded-For": "203.0.113.5"}).status_code == 200
    assert client.get("/metrics", headers={"X-Forwarded-For": "198.51.100.1"}).status_code == 403


def test_metrics_are_open_on_the_embedded_default(make_app):
    assert make_app().test_client().get("/metrics").status_code == 200


def test_metrics_token_closes_metrics(make_app):
    client = make_app(METRICS_TOKEN="scrape-secret").test_client()
    refused = client.get("/metrics")
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert b"chat_" not in refused.data
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    allowed = client.get("/metrics", headers={"Authorization": "Bearer scrape-secret"})
    assert allowed.status_code == 200 and b"chat_" in allowed.data


@pytest.mark.parametrize("allow, address, status", [
    ("127.0.0.1", "127.0.0.1", 200),
    ("10.0.0.0/8, ::1", "10.1.2.3", 200),
    ("10.0.0.0/8, ::1", "::1", 200),
    ("10.0.0.0/8", "192.0.2.1", 403),
])
def test_metrics_allow_list(make_app, allow, address, status):
    client = make_app(METRICS_ALLOW=allow).test_client()
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": address}).status_code == status


def test_metrics_token_or_allowed_address(make_app):
    client = make_app(METRICS_TOKEN="scrape-secret", METRICS_ALLOW="10.0.0.0/8").test_client()
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "10.0.0.9"}).status_code == 200
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "192.0.2.1"}).status_code == 401


@pytest.mark.parametrize("url", ["/login", "/api/conversations", "/metrics", "/no-such-page"])
def test_every_answer_carries_the_content_security_policy(make_app, url):
    response = make_app().test_client().get(url)
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    for directive in ("script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'", "base-uri 'self'",
                      "form-action 'self'", "object-src 'none'"):
        assert directive in CONTENT_SECURITY_POLICY
    assert "unsafe-eval" not in CONTENT_SECURITY_POLICY
