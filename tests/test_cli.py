"""The flask commands: seed, agent token, agent create, inbound-token."""
from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select

from chat.extensions import db
from chat.models import CLOSED, PENDING, ACTIVE, Contact, Conversation, Department, Message, User
from tests.conftest import INBOUND_TOKEN, Agent

SMALL = ["seed", "--agents", "4", "--conversations", "30", "--messages", "120"]
DEMO = {"admin@example.com": "admin", "ana@example.com": "agent", "bruno@example.com": "agent"}


def counts(app) -> dict:
    with app.app_context():
        return {
            model.__tablename__: db.session.scalar(select(func.count()).select_from(model))
            for model in (User, Department, Contact, Conversation, Message)
        }


def users(app) -> list[tuple]:
    with app.app_context():
        return [(u.id, u.email, u.role) for u in db.session.scalars(select(User).order_by(User.id))]


def can_log_in(app, email: str, password: str) -> bool:
    return Agent(app.test_client()).login(email, password).status_code == 302


def invoke_ok(runner, args, **kwargs):
    result = runner.invoke(args=args, **kwargs)
    assert result.exit_code == 0, result.output
    return result


# --- seed --------------------------------------------------------------------------------------


def test_seed_small(app, runner):
    result = invoke_ok(runner, SMALL)
    assert "Added 30 contacts, 30 conversations, 120 messages." in result.stdout
    assert "admin@example.com, ana@example.com, bruno@example.com" in result.stdout
    assert counts(app) == {"users": 4, "departments": 3, "contacts": 30, "conversations": 30, "messages": 120}
    with app.app_context():
        roles = {u.email: u.role for u in db.session.scalars(select(User))}
        assert {email: roles.get(email) for email in DEMO} == DEMO
        departments = list(db.session.scalars(select(Department)))
        assert len(departments) >= 2
        assert all(re.fullmatch(r"#[0-9a-f]{6}", d.color) for d in departments)
        assert len({d.color for d in departments}) == len(departments)
        statuses = set(db.session.scalars(select(Conversation.status).distinct()))
        assert statuses == {PENDING, ACTIVE, CLOSED}
    for email in DEMO:
        assert can_log_in(app, email, "demo-pass"), email
    assert not can_log_in(app, "ana@example.com", "wrong-pass")


def test_seed_demo_agents_get_departments(app, runner):
    invoke_ok(runner, SMALL)
    with app.app_context():
        by_email = {u.email: u for u in db.session.scalars(select(User))}
        assert [d.name for d in by_email["ana@example.com"].departments] == ["Sales", "Support"]
        assert [d.name for d in by_email["bruno@example.com"].departments] == ["Support"]


def test_seed_twice_keeps_the_same_users(app, runner):
    invoke_ok(runner, SMALL)
    first = users(app)
    second_run = invoke_ok(runner, SMALL)
    assert "Added 30 contacts, 30 conversations, 120 messages." in second_run.stdout
    assert users(app) == first
    assert counts(app) == {"users": 4, "departments": 3, "contacts": 60, "conversations": 60, "messages": 240}
    for email in DEMO:
        assert can_log_in(app, email, "demo-pass"), email


def test_seed_if_empty_adds_nothing_the_second_time(app, runner):
    first = invoke_ok(runner, [*SMALL, "--if-empty"])
    assert "Added 30 contacts, 30 conversations, 120 messages." in first.stdout
    after_first = counts(app)
    second = invoke_ok(runner, [*SMALL, "--if-empty"])
    assert "Added 0 contacts, 0 conversations, 0 messages." in second.stdout
    assert counts(app) == after_first


def test_seed_if_empty_still_ensures_the_demo_logins(app, runner):
    invoke_ok(runner, SMALL)
    with app.app_context():
        db.session.delete(db.session.scalar(select(User).where(User.email == "bruno@example.com")))
        db.session.commit()
    invoke_ok(runner, [*SMALL, "--if-empty"])
    assert can_log_in(app, "bruno@example.com", "demo-pass")


@pytest.mark.parametrize("args, message", [
    (["--agents", "-1"], "agents must not be negative"),
    (["--conversations", "-5"], "conversations must not be negative"),
    (["--messages", "-1"], "messages must not be negative"),
    (["--contacts", "-2"], "contacts must not be negative"),
    (["--departments", "-1"], "departments must not be negative"),
    (["--messages", "lots"], "'lots' is not a valid integer"),
])
def test_seed_rejects_bad_numbers(app, runner, args, message):
    result = runner.invoke(args=["seed", *args])
    assert result.exit_code == 2
    assert message in result.output
    assert set(counts(app).values()) == {0}


# --- agent token -------------------------------------------------------------------------------


def conversations_api(client, token: str):
    return client.get("/api/conversations", headers={"Authorization": f"Bearer {token}"})


def test_agent_token_prints_only_the_token_and_it_authenticates(app, world, runner):
    result = invoke_ok(runner, ["agent", "token", "ana@example.com"])
    lines = result.output.splitlines()
    assert len(lines) == 1
    token = lines[0]
    assert re.fullmatch(r"[A-Za-z0-9_-]{32,}", token)
    response = conversations_api(app.test_client(), token)
    assert response.status_code == 200, response.get_data(as_text=True)
    names = {c["contact"]["name"] for c in response.get_json()["data"]}
    assert names == {"Paula Pending", "Sam Sales", "Nora Nodept"}  # what ana sees as pending


def test_new_agent_token_replaces_the_old_one(app, world, runner):
    old = invoke_ok(runner, ["agent", "token", "bruno@example.com"]).output.strip()
    new = invoke_ok(runner, ["agent", "token", " BRUNO@example.com "]).output.strip()
    assert new != old
    client = app.test_client()
    assert conversations_api(client, old).status_code == 401
    assert conversations_api(client, new).status_code == 200


def test_agent_token_for_unknown_email_fails_clearly(app, world, runner):
    before = users(app)
    result = runner.invoke(args=["agent", "token", "nobody@example.com"])
    assert result.exit_code != 0
    assert "no agent with email nobody@example.com" in result.output
    assert result.stdout == ""
    assert users(app) == before


# --- agent create ------------------------------------------------------------------------------


def test_agent_create_prompts_for_the_password(app, world, runner):
    result = invoke_ok(runner, ["agent", "create", "Dora@Example.com", "--name", "Dora Dias", "--role", "admin"],
                       input="long-enough\nlong-enough\n")
    assert "Created dora@example.com (admin)." in result.output
    assert "long-enough" not in result.output  # hidden input
    with app.app_context():
        dora = db.session.scalar(select(User).where(User.email == "dora@example.com"))
        assert (dora.name, dora.role, dora.active, dora.departments) == ("Dora Dias", "admin", True, [])
    assert can_log_in(app, "dora@example.com", "long-enough")


def test_agent_create_defaults_to_agent_role(app, world, runner):
    result = invoke_ok(runner, ["agent", "create", "eve@example.com", "--name", "Eve", "--password", "long-enough"])
    assert "Created eve@example.com (agent)." in result.output
    assert can_log_in(app, "eve@example.com", "long-enough")


@pytest.mark.parametrize("args, message", [
    (["dora@example.com", "--name", "Dora", "--password", "short"], "password must have at least 8 characters"),
    (["not-an-email", "--name", "Dora", "--password", "long-enough"], "email does not look like an address"),
    (["dora@example.com", "--name", " ", "--password", "long-enough"], "name is required"),
    (["ana@example.com", "--name", "Ana", "--password", "long-enough"],
     "an agent with email ana@example.com already exists"),
    (["dora@example.com", "--password", "long-enough"], "Missing option '--name'"),
    (["dora@example.com", "--name", "Dora", "--role", "root", "--password", "long-enough"], "'root' is not one of"),
])
def test_agent_create_rejects_bad_input(app, world, runner, args, message):
    before = users(app)
    result = runner.invoke(args=["agent", "create", *args])
    assert result.exit_code != 0
    assert message in result.output
    assert users(app) == before


# --- inbound-token -----------------------------------------------------------------------------


def test_inbound_token_prints_the_configured_token(app, runner):
    result = invoke_ok(runner, ["inbound-token"])
    assert result.output.splitlines() == [INBOUND_TOKEN]
    response = app.test_client().post("/api/inbound", json={"phone": "+5511999990000", "body": "Hi"},
                                      headers={"Authorization": f"Bearer {result.output.strip()}"})
    assert response.status_code == 201, response.get_data(as_text=True)
