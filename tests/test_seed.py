"""chat.seed: the demo data has the volume asked for and is internally consistent."""
from __future__ import annotations

from collections import defaultdict

import pytest
from sqlalchemy import func, select

from chat import seed as demo
from chat.extensions import db
from chat.models import (
    ACTIVE, CLOSED, PENDING, Contact, Conversation, Department, Message, User, user_departments, utcnow,
)


def count(model) -> int:
    return db.session.scalar(select(func.count()).select_from(model))


# (arguments, rows expected afterwards: users, departments, contacts, conversations, messages)
VOLUMES = [
    (dict(agents=5, contacts=40, conversations=30, messages=120, departments=3), (5, 3, 40, 30, 120)),
    (dict(agents=6, conversations=25, messages=25, departments=4), (6, 4, 25, 25, 25)),
    # Fewer contacts or messages than conversations: every conversation still gets one of each.
    (dict(agents=3, contacts=5, conversations=12, messages=4, departments=2), (3, 2, 12, 12, 12)),
    # The demo logins and two departments (the demo agents need them) are always there.
    (dict(agents=1, conversations=3, messages=9, departments=0), (3, 2, 3, 3, 9)),
    (dict(agents=3, contacts=7, conversations=0, messages=0, departments=8), (3, 8, 7, 0, 0)),
]


@pytest.mark.parametrize("kwargs, expected", VOLUMES)
def test_seed_creates_what_was_asked(app, kwargs, expected):
    users, departments, contacts, conversations, messages = expected
    with app.app_context():
        result = demo.seed(**kwargs)
        assert result == {"agents": users, "contacts": contacts, "conversations": conversations,
                          "messages": messages}
        assert (count(User), count(Department), count(Contact), count(Conversation), count(Message)) == expected


def test_seed_adds_on_top_of_existing_data(app, world):
    with app.app_context():
        before = {m: count(m) for m in (User, Contact, Conversation, Message)}
        demo.seed(agents=4, conversations=20, messages=50, departments=3)
        demo.seed(agents=4, conversations=20, messages=50, departments=3)
        # world has admin, ana, bruno (the demo logins) and carla; seed adds one more agent, once.
        assert count(User) == before[User] + 1
        assert count(Contact) == before[Contact] + 40
        assert count(Conversation) == before[Conversation] + 40
        assert count(Message) == before[Message] + 100
        phones = list(db.session.scalars(select(Contact.phone)))
        assert len(phones) == len(set(phones))


@pytest.fixture
def seeded(app):
    with app.app_context():
        demo.seed(agents=5, contacts=50, conversations=60, messages=400, departments=3)
    return app


def threads(app) -> tuple[list[Conversation], dict[int, list[Message]]]:
    conversations = list(db.session.scalars(select(Conversation)).unique())
    messages = defaultdict(list)
    for m in db.session.scalars(select(Message).order_by(Message.created_at, Message.id)).unique():
        messages[m.conversation_id].append(m)
    return conversations, messages


def test_every_conversation_shows_its_newest_message(seeded):
    with seeded.app_context():
        conversations, messages = threads(seeded)
        assert len(conversations) == 60
        for c in conversations:
            newest = messages[c.id][-1]
            assert (c.last_message_at, c.last_message_body) == (newest.created_at, newest.body), c.id
            assert c.created_at <= messages[c.id][0].created_at


def test_unread_counts_are_the_trailing_inbound_messages(seeded):
    with seeded.app_context():
        conversations, messages = threads(seeded)
        for c in conversations:
            assert c.unread_count >= 0
            if c.status == CLOSED:
                assert c.unread_count == 0, c.id
                continue
            trailing = 0
            for m in reversed(messages[c.id]):
                if m.from_me:
                    break
                trailing += 1
            assert c.unread_count == trailing, c.id
        assert any(c.unread_count > 0 for c in conversations)


def test_conversations_are_owned_like_the_inbox_expects(seeded):
    with seeded.app_context():
        members = defaultdict(set)
        for user_id, department_id in db.session.execute(select(user_departments)):
            members[department_id].add(user_id)
        agents = set(db.session.scalars(select(User.id).where(User.role == "agent")))
        conversations, messages = threads(seeded)
        assert {c.status for c in conversations} == {PENDING, ACTIVE, CLOSED}
        for c in conversations:
            if c.status == PENDING:
                assert c.user_id is None
                assert not any(m.from_me for m in messages[c.id])  # nobody has answered yet
            else:
                assert c.user_id in agents
                if c.department_id is not None and members[c.department_id]:
                    assert c.user_id in members[c.department_id]
            for m in messages[c.id]:
                assert m.user_id == (c.user_id if m.from_me else None)


@pytest.mark.parametrize("kwargs", [
    dict(agents=4, contacts=None, conversations=30, messages=120),
    dict(agents=4, contacts=45, conversations=30, messages=120),
    dict(agents=4, contacts=10, conversations=30, messages=5),
    dict(agents=4, contacts=6, conversations=0, messages=10),
    dict(agents=4, contacts=None, conversations=0, messages=10),
    dict(agents=4, contacts=0, conversations=0, messages=0),
])
def test_progress_adds_up_to_total_rows(app, kwargs):
    calls = []
    with app.app_context():
        demo.seed(**kwargs, progress=calls.append)
    assert all(n > 0 for n in calls)
    assert sum(calls) == demo.total_rows(**kwargs)


def test_progress_is_reported_in_batches(app, monkeypatch):
    monkeypatch.setattr(demo, "BATCH", 7)
    calls = []
    with app.app_context():
        demo.seed(agents=3, conversations=20, messages=30, progress=calls.append)
    assert max(calls) == 7 and len(calls) > 3
    assert sum(calls) == demo.total_rows(3, None, 20, 30)


def test_seeded_times_are_never_in_the_future(app):
    # Demo rows dated ahead of now would sort above every real conversation that arrives later.
    with app.app_context():
        demo.seed(agents=3, conversations=200, messages=2000, departments=3)
        now = utcnow()
        for model, column in ((Contact, Contact.created_at), (Conversation, Conversation.created_at),
                              (Conversation, Conversation.last_message_at), (Message, Message.created_at)):
            newest = db.session.scalar(select(func.max(column)))
            assert newest <= now, f"{model.__name__}.{column.key} is {newest - now} in the future"
