"""The workflow's state on tickets (review, SLA breach, survey) and departments (review).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 00:00:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('tickets') as batch:
        batch.add_column(sa.Column('review', sa.Boolean(), server_default=sa.false(), nullable=False))
        batch.add_column(sa.Column('sla_breached_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('survey_sent_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('csat_score', sa.SmallInteger(), nullable=True))
        batch.add_column(sa.Column('csat_at', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('departments') as batch:
        batch.add_column(sa.Column('review', sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('departments') as batch:
        batch.drop_column('review')
    with op.batch_alter_table('tickets') as batch:
        batch.drop_column('csat_at')
        batch.drop_column('csat_score')
        batch.drop_column('survey_sent_at')
        batch.drop_column('sla_breached_at')
        batch.drop_column('review')
