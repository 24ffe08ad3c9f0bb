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


# -- one identity: signing out ends the session everywhere ----------------------------------
def _copy_cookies(source, target) -> None:
    """What an attacker or a second tab holds: the same cookies, taken before sign-out."""
    for name in ("session", "remember_token"):
        cookie = source.get_cookie(name)
        if cookie is not None:
            target.set_cookie(name, cookie.value)


def test_session_cookie_replayed_after_sign_out_is_sent_to_login(app, world, login):
    ana = login("ana@example.com")
    replay = app.test_client()
    _copy_cookies(ana.client, replay)
    assert replay.get("/inbox").status_code == 200
    ana.post("/logout", htmx=False)
    response = replay.get("/inbox")
    assert response.status_code == 302 and "/login" in response.headers["Location"]


def test_remember_me_cookie_replayed_after_sign_out_is_sent_to_login(app, world, client):
    from tests.conftest import CSRF_META, PASSWORD, Agent

    token = CSRF_META.search(client.get("/login").get_data(as_text=True)).group(1)
    client.post("/login", data={"email": "ana@example.com", "password": PASSWORD, "remember": "y",
                                "csrf_token": token})
    remembered = client.get_cookie("remember_token").value
    fresh = app.test_client()  # a new browser with only the remember-me cookie
    fresh.set_cookie("remember_token", remembered)
    assert fresh.get("/inbox").status_code == 200
    Agent(client, token).post("/logout", htmx=False)
    replay = app.test_client()
    replay.set_cookie("remember_token", remembered)
    response = replay.get("/inbox")
    assert response.status_code == 302 and "/login" in response.headers["Location"]


def test_sign_out_in_one_browser_ends_the_agents_other_sessions(world, login):
    laptop, phone, bruno = login("ana@example.com"), login("ana@example.com"), login("bruno@example.com")
    laptop.post("/logout", htmx=False)
    assert phone.get("/inbox").status_code == 302
    assert bruno.get("/inbox").status_code == 200  # another agent's session is untouched
    assert login("ana@example.com").get("/inbox").status_code == 200  # signing in again works


@pytest.mark.parametrize("change, ends", [
    ({"password": "a-new-password"}, True),
    ({"active": False}, True),
    ({"name": "Ana C."}, False),
], ids=["password change", "deactivation", "rename"])
def test_password_change_and_deactivation_end_sessions(app, world, login, change, ends):
    from chat import catalog

    ana = login("ana@example.com")
    fields = {"email": "ana@example.com", "name": "Ana Costa", "role": "agent",
              "department_ids": [world.support, world.sales], **change}
    with app.app_context():
        catalog.save_agent(agent_id=world.ana, **fields)
    assert ana.get("/inbox").status_code == (302 if ends else 200)


def test_sessions_from_before_session_versions_are_anonymous(app, world, client):
    with client.session_transaction() as session:
        session["_user_id"] = str(world.ana)  # what Flask-Login stored before "<id>:<version>"
    assert client.get("/inbox").status_code == 302


# -- /session: what the browser probes ------------------------------------------------------------
def test_session_probe_when_signed_in(world, login):
    response = login("ana@example.com").get("/session")
    assert response.status_code == 200 and response.get_json() == {"agent_id": world.ana}
    assert response.headers["Cache-Control"] == "no-store"


def test_session_probe_when_signed_out(world, login, client):
    ana = login("ana@example.com")
    ana.post("/logout", htmx=False)
    for who in (ana.client, client):
        for htmx in ({}, {"HX-Request": "true"}):
            response = who.get("/session", headers=htmx)
            assert response.status_code == 401 and response.get_json() == {"error": "sign in"}
            assert response.headers["Cache-Control"] == "no-store" and "Location" not in response.headers


def test_session_probe_runs_no_sql_on_a_cache_hit(app, world, login):
    from sqlalchemy import event

    from chat.extensions import db

    ana = login("ana@example.com")
    ana.get("/session")
    sent = []
    with app.app_context():
        engine = db.engine
    listener = lambda *args: sent.append(args[2])  # noqa: E731 - (conn, cursor, statement, ...)
    event.listen(engine, "before_cursor_execute", listener)
    try:
        assert ana.get("/session").status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    assert sent == []


# -- htmx never gets the login form inside a fragment ---------------------------------------------
@pytest.mark.parametrize("current_url, next_path", [
    ("http://localhost/inbox?tab=mine", "/inbox?tab=mine"),
    ("http://localhost/conversations/7", "/conversations/7"),
    (None, "/inbox"),
    ("http://localhost//evil.example/x", "/inbox"),
])
def test_htmx_request_without_session_gets_401_and_hx_redirect(world, client, current_url, next_path):
    from urllib.parse import parse_qs, urlsplit

    headers = {"HX-Request": "true"} | ({"HX-Current-URL": current_url} if current_url else {})
    response = client.get("/inbox/list?tab=mine", headers=headers)
    assert response.status_code == 401 and "Location" not in response.headers
    redirect = urlsplit(response.headers["HX-Redirect"])
    assert redirect.path == "/login" and parse_qs(redirect.query) == {"next": [next_path]}
    assert b"<form" not in response.data


def test_htmx_request_after_sign_out_gets_hx_redirect(world, login):
    laptop, phone = login("ana@example.com"), login("ana@example.com")
    laptop.post("/logout", htmx=False)
    page = f"/conversations/{world.active_ana}"
    response = phone.post(f"{page}/messages", data={"body": "hi"},
                          headers={"HX-Current-URL": f"http://localhost{page}"})
    assert response.status_code == 401
    assert response.headers["HX-Redirect"] == f"/login?next={page}"
    assert phone.get("/session").status_code == 401
