"""The Alembic migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""
from __future__ import annotations

import logging
from pathlib import Path

import flask_migrate
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from chat import create_app, search
from chat.extensions import db
from tests.conftest import make_config, throwaway_postgres

MIGRATIONS = Path(__file__).resolve().parent.parent / "chat" / "migrations"


@pytest.fixture(autouse=True)
def keep_logging():
    """Alembic's env.py calls logging.config.fileConfig(); undo that so later tests log as before."""
    manager = logging.Logger.manager
    saved = {name: (lg.level, lg.disabled, lg.propagate, lg.handlers[:])
             for name, lg in manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    root = logging.getLogger()
    root_state = (root.level, root.handlers[:])
    yield
    for name, (level, disabled, propagate, handlers) in saved.items():
        lg = manager.loggerDict[name]
        lg.level, lg.disabled, lg.propagate, lg.handlers = level, disabled, propagate, handlers
    root.level, root.handlers = root_state[0], root_state[1]


@pytest.fixture
def empty_database_url(database_url):
    """An empty database of the same kind: the shared PostgreSQL one already has the app's tables."""
    if not database_url.startswith("postgresql"):
        yield database_url
        return
    with throwaway_postgres("chat_migrate") as url:
        yield url


@pytest.fixture
def bare_app(empty_database_url):
    """The app on an empty database, without create_all: only migrations make tables."""
    app = create_app(make_config(empty_database_url))
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def schema_diff(app) -> list:
    """What differs between the database and the models, leaving out the search index (chat/search.py's
    own objects, outside the models' metadata: the same filter `flask db migrate` uses)."""
    with app.app_context(), db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True,
                                                         "include_name": search.include_name})
        return compare_metadata(context, db.metadata)


def tables(app) -> set[str]:
    with app.app_context():
        return set(inspect(db.engine).get_table_names())


def test_upgrade_builds_exactly_the_models_schema(bare_app):
    assert tables(bare_app) == set()
    with bare_app.app_context():
        flask_migrate.upgrade()
    with bare_app.app_context():
        index_tables = search.own_tables(db.engine.dialect.name)
    assert tables(bare_app) == {t.name for t in db.metadata.sorted_tables} | {"alembic_version"} | index_tables
    assert schema_diff(bare_app) == []


def test_schema_comparison_notices_a_difference(bare_app):
    with bare_app.app_context():
        flask_migrate.upgrade()
        with db.engine.begin() as conn:
            conn.execute(text("DROP INDEX ix_contacts_name"))
            conn.execute(text("ALTER TABLE tags ADD COLUMN extra INTEGER"))
    diff = schema_diff(bare_app)
    assert [(d[0], d[1].name) for d in diff if d[0] == "add_index"] == [("add_index", "ix_contacts_name")]
    assert [(d[0], d[2], d[3].name) for d in diff if d[0] == "remove_column"] == [("remove_column", "tags", "extra")]


def test_flask_db_upgrade_command(bare_app):
    runner = bare_app.test_cli_runner()
    result = runner.invoke(args=["db", "upgrade"])
    assert result.exit_code == 0, result.output
    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    with bare_app.app_context(), db.engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == head
    # Upgrading an up-to-date database is a no-op, and the app's own commands work on it.
    assert runner.invoke(args=["db", "upgrade"]).exit_code == 0
    seeded = runner.invoke(args=["seed", "--agents", "3", "--conversations", "6", "--messages", "12"])
    assert seeded.exit_code == 0, seeded.output
    assert "Added 6 contacts, 6 conversations, 12 messages." in seeded.stdout


def test_downgrade_to_base_and_back(bare_app):
    with bare_app.app_context():
        flask_migrate.upgrade()
        flask_migrate.downgrade(revision="base")
    assert tables(bare_app) == {"alembic_version"}
    with bare_app.app_context():
        flask_migrate.upgrade()
    assert schema_diff(bare_app) == []


def test_migrations_are_one_line_from_the_initial_schema():
    script = ScriptDirectory(str(MIGRATIONS))
    revisions = list(script.walk_revisions())  # head first
    assert revisions[-1].down_revision is None
    assert [r.down_revision for r in revisions[:-1]] == [r.revision for r in revisions[1:]]
    assert script.get_heads() == [revisions[0].revision]


def test_upgrade_keeps_agents_and_starts_their_session_version_at_zero(bare_app):
    with bare_app.app_context():
        flask_migrate.upgrade(revision="0e0e314fe53c")
        with db.engine.begin() as conn:
            conn.execute(text("INSERT INTO users (email, name, password_hash, role, active, created_at) "
                              "VALUES ('ana@example.com', 'Ana', 'x', 'agent', true, CURRENT_TIMESTAMP)"))
        flask_migrate.upgrade()
        with db.engine.connect() as conn:
            assert conn.execute(text("SELECT session_version FROM users")).scalar_one() == 0


def test_idempotency_key_migration_keeps_messages_and_downgrades_cleanly(bare_app):
    with bare_app.app_context():
        flask_migrate.upgrade(revision="7c3f1a2b9d4e")
        with db.engine.begin() as conn:
            conn.execute(text("INSERT INTO users (email, name, password_hash, role, active, created_at) "
                              "VALUES ('ana@example.com', 'Ana', 'x', 'agent', true, CURRENT_TIMESTAMP)"))
            conn.execute(text("INSERT INTO contacts (name, phone, created_at) VALUES ('C', '+5511', CURRENT_TIMESTAMP)"))
            conn.execute(text("INSERT INTO conversations (contact_id, status, last_message_at, last_message_body, "
                              "unread_count, created_at) VALUES (1, 'active', CURRENT_TIMESTAMP, '', 0, CURRENT_TIMESTAMP)"))
            for body in ("old reply", "another old reply"):  # two rows of one agent, both without a key
                conn.execute(text("INSERT INTO messages (conversation_id, body, from_me, user_id, created_at) "
                                  "VALUES (1, :body, true, 1, CURRENT_TIMESTAMP)"), {"body": body})
        flask_migrate.upgrade()
        with db.engine.connect() as conn:
            assert conn.execute(text("SELECT idempotency_key FROM messages")).scalars().all() == [None, None]
        insert_keyed = text("INSERT INTO messages (conversation_id, body, from_me, user_id, idempotency_key, created_at) "
                            "VALUES (1, 'new', true, 1, 'outbox-0001', CURRENT_TIMESTAMP)")
        with db.engine.begin() as conn:
            conn.execute(insert_keyed)
        with pytest.raises(IntegrityError), db.engine.begin() as conn:
            conn.execute(insert_keyed)  # the same agent and key twice

        flask_migrate.downgrade(revision="7c3f1a2b9d4e")
        with db.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM messages")).scalar_one() == 3
        columns = {c["name"] for c in inspect(db.engine).get_columns("messages")}
        assert "idempotency_key" not in columns
        assert [u["name"] for u in inspect(db.engine).get_unique_constraints("messages")
                if u["name"] == "uq_messages_user_idempotency_key"] == []
