"""messages.idempotency_key: a retried reply is stored once

Revision ID: b5d2e8c41f07
Revises: 7c3f1a2b9d4e
Create Date: 2026-11-25 12:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'b5d2e8c41f07'
down_revision = '7c3f1a2b9d4e'
branch_labels = None
depends_on = None


def upgrade():
    # Nullable: inbound messages and every existing row have no key, and NULLs never collide
    # in a unique constraint (SQLite and PostgreSQL alike). Batch mode: SQLite rebuilds the table.
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('idempotency_key', sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint('uq_messages_user_idempotency_key', ['user_id', 'idempotency_key'])


def downgrade():
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_constraint('uq_messages_user_idempotency_key', type_='unique')
        batch_op.drop_column('idempotency_key')
