"""channels, the delivery outbox, provider statuses and each reply's delivery state

Revision ID: 51311c8aff4f
Revises: b5d2e8c41f07
Create Date: 2026-12-02 14:01:31.357240

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '51311c8aff4f'
down_revision = 'b5d2e8c41f07'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('channels',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('name', sa.String(length=80), nullable=False),
    sa.Column('settings', sa.JSON(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('is_default', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('delivery_statuses',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('provider_message_id', sa.String(length=255), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('received_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('provider_message_id', 'status', name='uq_delivery_statuses_id_status')
    )
    op.create_table('deliveries',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('message_id', sa.Integer(), nullable=False),
    sa.Column('conversation_id', sa.Integer(), nullable=False),
    sa.Column('channel_id', sa.Integer(), nullable=True),
    sa.Column('done', sa.Boolean(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('run_after', sa.DateTime(), nullable=False),
    sa.Column('lease_until', sa.DateTime(), nullable=True),
    sa.Column('lease_token', sa.String(length=32), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['channel_id'], ['channels.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['conversation_id'], ['conversations.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['message_id'], ['messages.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('message_id')
    )
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.create_index('ix_deliveries_conversation', ['conversation_id', 'done', 'id'], unique=False)
        batch_op.create_index('ix_deliveries_due', ['done', 'run_after', 'id'], unique=False)

    with op.batch_alter_table('conversations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('channel_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('last_message_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('last_message_state', sa.String(length=16), nullable=True))
        batch_op.create_foreign_key('fk_conversations_channel_id', 'channels', ['channel_id'], ['id'], ondelete='SET NULL')

    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('delivery_state', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('delivery_reason', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('delivery_attempts', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('delivery_retries', sa.Integer(), server_default='0', nullable=False))

    # Every conversation's newest message, as the app now keeps it (replies stored before this
    # have no delivery state: they were never sent, and show none).
    op.execute("UPDATE conversations SET last_message_id = "
               "(SELECT max(messages.id) FROM messages WHERE messages.conversation_id = conversations.id)")



def downgrade():
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_column('delivery_retries')
        batch_op.drop_column('delivery_attempts')
        batch_op.drop_column('delivery_reason')
        batch_op.drop_column('delivery_state')

    with op.batch_alter_table('conversations', schema=None) as batch_op:
        batch_op.drop_constraint('fk_conversations_channel_id', type_='foreignkey')
        batch_op.drop_column('last_message_state')
        batch_op.drop_column('last_message_id')
        batch_op.drop_column('channel_id')

    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_deliveries_due')
        batch_op.drop_index('ix_deliveries_conversation')

    op.drop_table('deliveries')
    op.drop_table('delivery_statuses')
    op.drop_table('channels')
