"""users.session_version: signing out ends every session of the agent

Revision ID: 7c3f1a2b9d4e
Revises: 0e0e314fe53c
Create Date: 2026-11-25 10:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '7c3f1a2b9d4e'
down_revision = '0e0e314fe53c'
branch_labels = None
depends_on = None


def upgrade():
    # The server default fills existing rows, so every agent starts at version 0.
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('session_version', sa.Integer(), server_default='0', nullable=False))


def downgrade():
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('session_version')
