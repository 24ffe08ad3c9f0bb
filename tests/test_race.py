"""Two agents accepting the same conversation at the same moment: exactly one wins. A reply
retried while the original is still in flight (same idempotency key): exactly one message.

Runs on PostgreSQL, where the UPDATEs really run side by side (row locks, READ COMMITTED).
"""
import threading

import pytest
from sqlalchemy import func, select

from chat import domain
from chat.errors import Conflict
from chat.extensions import db
from chat.models import ACTIVE, Conversation, Message, User
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


def test_concurrent_sends_with_one_idempotency_key_store_one_message(pg_app, monkeypatch):
    """The outbox's retry racing the original: the unique (user_id, idempotency_key) decides,
    the losers roll back and answer with the winner's message."""
    with pg_app.app_context():
        agent = make_user("outbox@example.com", "Outbox Agent")
        db.session.flush()
        conversations = [make_conversation(f"+55118000{n:04d}", f"R{n}", ACTIVE, user=agent) for n in range(ROUNDS)]
        db.session.commit()
        agent_id, conversation_ids = agent.id, [c.id for c in conversations]

    lookups = threading.local()
    real = domain._sent_with_key

    def counted(*args):
        lookups.n = getattr(lookups, "n", 0) + 1
        return real(*args)

    monkeypatch.setattr(domain, "_sent_with_key", counted)
    raced = 0  # requests that lost at the unique constraint (a second lookup), not at the first one
    for cid in conversation_ids:
        key = f"retry-{cid:08d}"
        barrier = threading.Barrier(AGENTS)
        outcomes: list[tuple[int, bool, int]] = []

        def attempt() -> None:
            with pg_app.app_context():
                agent = db.session.get(User, agent_id)
                barrier.wait()
                try:
                    message, created = domain.send_reply(cid, agent, "Same reply", idempotency_key=key)
                    outcomes.append((message.id, created, lookups.n))
                finally:
                    lookups.n = 0
                    db.session.remove()

        threads = [threading.Thread(target=attempt) for _ in range(AGENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert len(outcomes) == AGENTS, outcomes
        assert len({message_id for message_id, _, _ in outcomes}) == 1, outcomes
        assert sorted(created for _, created, _ in outcomes) == [False] * (AGENTS - 1) + [True], outcomes
        raced += sum(1 for _, created, n in outcomes if not created and n == 2)
        with pg_app.app_context():
            stored = db.session.scalar(select(func.count()).select_from(Message).where(
                Message.conversation_id == cid, Message.idempotency_key == key))
            assert stored == 1
    assert raced > 0, "no request ever reached the unique constraint: the race was not exercised"
