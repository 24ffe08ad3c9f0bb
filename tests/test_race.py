"""Two agents accepting the same conversation at the same moment: exactly one wins.

Runs on PostgreSQL, where the UPDATEs really run side by side (row locks, READ COMMITTED).
"""
import threading

import pytest
from sqlalchemy import select

from chat import domain
from chat.errors import Conflict
from chat.extensions import db
from chat.models import ACTIVE, Conversation, User
from tests.conftest import app_with_tables, make_config, make_conversation, make_user

ROUNDS = 15
AGENTS = 4


@pytest.fixture
def pg_app(postgres_url):
    yield from app_with_tables(make_config(postgres_url, SQLALCHEMY_ENGINE_OPTIONS={"pool_size": AGENTS + 2}))


def test_concurrent_accept_has_exactly_one_winner(pg_app):
    with pg_app.app_context():
        agents = [make_user(f"a{n}@example.com", f"Agent {n}") for n in range(AGENTS)]
        conversations = [make_conversation(f"+55119000{n:04d}", f"C{n}", "pending") for n in range(ROUNDS)]
        db.session.commit()
        agent_ids = [a.id for a in agents]
        conversation_ids = [c.id for c in conversations]

    for cid in conversation_ids:
        barrier = threading.Barrier(AGENTS)
        outcomes: dict[int, str] = {}

        def attempt(agent_id: int) -> None:
            with pg_app.app_context():
                agent = db.session.get(User, agent_id)
                barrier.wait()
                try:
                    domain.accept_conversation(cid, agent)
                    outcomes[agent_id] = "won"
                except Conflict:
                    outcomes[agent_id] = "409"
                finally:
                    db.session.remove()

        threads = [threading.Thread(target=attempt, args=(aid,)) for aid in agent_ids]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert sorted(outcomes.values()) == ["409"] * (AGENTS - 1) + ["won"], outcomes
        with pg_app.app_context():
            row = db.session.execute(select(Conversation.status, Conversation.user_id).where(Conversation.id == cid)).one()
            winner = next(aid for aid, result in outcomes.items() if result == "won")
            assert tuple(row) == (ACTIVE, winner)
