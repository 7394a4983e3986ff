"""The agents' desk: provider updates already acted on, each ticket's topic, and the bot's posts per ticket.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 22:00:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table('handled_updates',
    sa.Column('channel', sa.String(length=16), nullable=False),
    sa.Column('key', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('channel', 'key', name=op.f('pk_handled_updates'))
    )
    op.create_table('desk_topics',
    sa.Column('ticket_id', _ID, nullable=False),
    sa.Column('chat_id', sa.BigInteger(), nullable=False),
    sa.Column('thread_id', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['ticket_id'], ['tickets.id'], name=op.f('fk_desk_topics_ticket_id_tickets')),
    sa.PrimaryKeyConstraint('ticket_id', 'chat_id', name=op.f('pk_desk_topics'))
    )
    op.create_table('desk_posts',
    sa.Column('chat_id', sa.BigInteger(), nullable=False),
    sa.Column('message_id', sa.BigInteger(), nullable=False),
    sa.Column('ticket_id', _ID, nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['ticket_id'], ['tickets.id'], name=op.f('fk_desk_posts_ticket_id_tickets')),
    sa.PrimaryKeyConstraint('chat_id', 'message_id', name=op.f('pk_desk_posts'))
    )
    op.create_index(op.f('ix_desk_posts_ticket_id'), 'desk_posts', ['ticket_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_desk_posts_ticket_id'), table_name='desk_posts')
    op.drop_table('desk_posts')
    op.drop_table('desk_topics')
    op.drop_table('handled_updates')
