"""Indexes the reports read by (tickets by creation and resolution, messages and events by time), and a
merged customer's pointer to the one it was merged into (kept, so a merge can be undone).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 02:00:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('customers') as batch:
        batch.add_column(sa.Column('merged_into', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True))
        batch.create_foreign_key('fk_customers_merged_into', 'customers', ['merged_into'], ['id'])
    op.create_index('ix_tickets_created_at', 'tickets', ['created_at'])
    op.create_index('ix_tickets_resolved_at', 'tickets', ['resolved_at'])
    op.create_index('ix_messages_created_at_channel_direction_delivery_state', 'messages',
                    ['created_at', 'channel', 'direction', 'delivery_state'])
    op.create_index('ix_events_kind_created_at', 'events', ['kind', 'created_at'])
    op.create_index('ix_events_customer_id', 'events', ['customer_id'])  # a merge moves a customer's events
    op.create_index('ix_customers_merged_into', 'customers', ['merged_into'])


def downgrade() -> None:
    op.drop_index('ix_customers_merged_into', 'customers')
    op.drop_index('ix_events_customer_id', 'events')
    op.drop_index('ix_events_kind_created_at', 'events')
    op.drop_index('ix_messages_created_at_channel_direction_delivery_state', 'messages')
    op.drop_index('ix_tickets_resolved_at', 'tickets')
    op.drop_index('ix_tickets_created_at', 'tickets')
    with op.batch_alter_table('customers') as batch:
        batch.drop_constraint('fk_customers_merged_into', type_='foreignkey')
        batch.drop_column('merged_into')
