"""Signing in and out, and what anonymous visitors get."""
import pytest


def test_login_page(client):
    response = client.get("/login")
    assert response.status_code == 200 and b"Sign in" in response.data


def test_login_and_logout(world, login):
    ana = login("ana@example.com")
    assert ana.get("/inbox").status_code == 200
    assert b"Ana Costa" in ana.get("/inbox").data
    response = ana.post("/logout", htmx=False)
    assert response.status_code == 302 and response.headers["Location"].endswith("/login")
    assert ana.get("/inbox").status_code == 302


@pytest.mark.parametrize("email, password", [
    ("ana@example.com", "wrong-pass"), ("nobody@example.com", "demo-pass"), ("ANA@example.com ", "nope"),
])
def test_wrong_credentials(world, client, email, password):
    from tests.conftest import Agent

    response = Agent(client).login(email, password)
    assert response.status_code == 401 and b"Email or password is wrong." in response.data
    assert client.get("/inbox").status_code == 302


def test_email_is_case_insensitive(world, client):
    from tests.conftest import Agent

    assert Agent(client).login("  Ana@Example.com ").status_code == 302


def test_deactivated_agent_cannot_sign_in(app, world, client):
    from chat.extensions import db
    from chat.models import User
    from tests.conftest import Agent

    with app.app_context():
        db.session.get(User, world.bruno).active = False
        db.session.commit()
    response = Agent(client).login("bruno@example.com")
    assert response.status_code == 401 and b"deactivated" in response.data


def test_login_without_csrf_token_is_refused(world, client):
    response = client.post("/login", data={"email": "ana@example.com", "password": "demo-pass"})
    assert response.status_code == 400 and b"CSRF" in response.data
    assert client.get("/inbox").status_code == 302


def test_next_only_follows_local_paths(world, client):
    from tests.conftest import CSRF_META

    token = CSRF_META.search(client.get("/login").get_data(as_text=True)).group(1)
    data = {"email": "ana@example.com", "password": "demo-pass", "csrf_token": token}
    response = client.post("/login?next=//evil.example/x", data=data)
    assert response.headers["Location"] == "/inbox"


@pytest.mark.parametrize("url", ["/", "/inbox", "/inbox/list", "/inbox/counts", "/conversations/1",
                                 "/conversations/1/messages", "/contacts", "/dashboard", "/admin/"])
def test_anonymous_is_sent_to_login(world, client, url):
    response = client.get(url)
    assert response.status_code == 302 and "/login" in response.headers["Location"]


def test_logout_needs_csrf(world, login):
    ana = login("ana@example.com")
    assert ana.post("/logout", htmx=False, csrf=False).status_code == 400
    assert ana.get("/inbox").status_code == 200
