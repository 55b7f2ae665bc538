"""subscriptions: the route table of active Subscriptions, the outbox message subject

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'subscription_route',
        sa.Column('subscription_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('resource_type', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('criteria', sa.Text(), nullable=False),
        sa.Column('ends_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('subscription_id'),
    )
    with op.batch_alter_table('subscription_route', schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f('ix_subscription_route_resource_type'), ['resource_type'], unique=False
        )
    with op.batch_alter_table('outbox_message', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('subject', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True)
        )
        batch_op.create_index('ix_outbox_subject', ['subject', 'created_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('outbox_message', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_subject')
        batch_op.drop_column('subject')
    with op.batch_alter_table('subscription_route', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_subscription_route_resource_type'))
    op.drop_table('subscription_route')
