"""Attachments: files on messages, fetched by workers, kept in storage

Revision ID: d7f3a9c1e2b4
Revises: 88c84bd5827b
Create Date: 2026-12-03 14:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'd7f3a9c1e2b4'
down_revision = '88c84bd5827b'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'attachments',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('message_id', sa.Integer(), nullable=False),
        sa.Column('conversation_id', sa.Integer(), nullable=False),
        sa.Column('channel_id', sa.Integer(), nullable=True),
        sa.Column('source', sa.String(length=2000), nullable=True),
        sa.Column('kind', sa.String(length=16), nullable=True),
        sa.Column('declared_type', sa.String(length=255), nullable=True),
        sa.Column('content_type', sa.String(length=255), nullable=True),
        sa.Column('filename', sa.String(length=255), nullable=True),
        sa.Column('caption', sa.Text(), nullable=True),
        sa.Column('size', sa.Integer(), nullable=True),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('reason', sa.Text(), nullable=True),
        sa.Column('storage_key', sa.String(length=500), nullable=True),
        sa.Column('thumb_key', sa.String(length=500), nullable=True),
        sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
        sa.Column('run_after', sa.DateTime(), nullable=False),
        sa.Column('lease_until', sa.DateTime(), nullable=True),
        sa.Column('lease_token', sa.String(length=64), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['message_id'], ['messages.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['conversation_id'], ['conversations.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['channel_id'], ['channels.id'], ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_attachments_message', 'attachments', ['message_id', 'id'])
    op.create_index('ix_attachments_due', 'attachments', ['state', 'run_after'])


def downgrade():
    op.drop_index('ix_attachments_due', table_name='attachments')
    op.drop_index('ix_attachments_message', table_name='attachments')
    op.drop_table('attachments')
