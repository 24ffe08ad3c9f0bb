"""Message search: a full-text index of messages.body, filled from the messages already there

SQLite: the FTS5 table messages_fts and its triggers. PostgreSQL: the text-search configuration
chat_search (SEARCH_LANGUAGE, with unaccent when available), the generated column
messages.search_vector (computed for every existing row as it is added) and its GIN index.
chat/search.py owns the DDL, so a database built by db.create_all() and one built by the
migrations have the same index; its objects are outside the models' metadata (search.include_name).

Revision ID: 88c84bd5827b
Revises: c4a9e1d27b63
Create Date: 2026-12-04 10:00:00.000000

"""
from alembic import op

from chat import search


# revision identifiers, used by Alembic.
revision = '88c84bd5827b'
down_revision = 'c4a9e1d27b63'
branch_labels = None
depends_on = None


def upgrade():
    search.create_index(op.get_bind())


def downgrade():
    search.drop_index(op.get_bind())
