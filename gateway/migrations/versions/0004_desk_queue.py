"""Posts waiting for a busy agents' group, drained in order by one job per group.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 23:30:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table('desk_queue',
    sa.Column('id', _ID, autoincrement=True, nullable=False),
    sa.Column('chat_id', sa.BigInteger(), nullable=False),
    sa.Column('ticket_id', _ID, nullable=False),
    sa.Column('message_id', _ID, nullable=False),
    sa.Column('queued_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('listed_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['ticket_id'], ['tickets.id'], name=op.f('fk_desk_queue_ticket_id_tickets')),
    sa.ForeignKeyConstraint(['message_id'], ['messages.id'], name=op.f('fk_desk_queue_message_id_messages')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_desk_queue'))
    )
    op.create_index('ix_desk_queue_chat_id_id', 'desk_queue', ['chat_id', 'id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_desk_queue_chat_id_id', table_name='desk_queue')
    op.drop_table('desk_queue')
