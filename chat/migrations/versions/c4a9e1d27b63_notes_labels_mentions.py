"""Private notes (messages.private), labels on conversations, mentions in notes

Revision ID: c4a9e1d27b63
Revises: 51311c8aff4f
Create Date: 2026-12-03 09:30:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'c4a9e1d27b63'
down_revision = '51311c8aff4f'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('private', sa.Boolean(), server_default=sa.false(), nullable=False))
    op.create_table(
        'conversation_labels',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('conversation_id', sa.Integer(), nullable=False),
        sa.Column('tag_id', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['conversation_id'], ['conversations.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['tag_id'], ['tags.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('conversation_id', 'tag_id', name='uq_conversation_labels_conversation_tag'),
    )
    op.create_index('ix_conversation_labels_tag', 'conversation_labels', ['tag_id', 'conversation_id'])
    op.create_table(
        'mentions',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('message_id', sa.Integer(), nullable=False),
        sa.Column('conversation_id', sa.Integer(), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('author_id', sa.Integer(), nullable=True),
        sa.Column('seen', sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['message_id'], ['messages.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['conversation_id'], ['conversations.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['author_id'], ['users.id'], ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('message_id', 'user_id', name='uq_mentions_message_user'),
    )
    op.create_index('ix_mentions_user_seen', 'mentions', ['user_id', 'seen', 'id'])


def downgrade():
    op.drop_index('ix_mentions_user_seen', table_name='mentions')
    op.drop_table('mentions')
    op.drop_index('ix_conversation_labels_tag', table_name='conversation_labels')
    op.drop_table('conversation_labels')
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_column('private')
