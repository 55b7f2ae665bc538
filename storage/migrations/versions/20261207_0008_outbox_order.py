"""outbox order: messages of one sequence (a Subscription's notifications about one resource)
carry its key and their place in it, so the relay sends them in order

Pending notifications queued before this revision get their key and version from the payload,
so they are ordered too; delivered and failed ones are history and stay as they were.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

NOTIFY = 'subscription.notify'


def upgrade() -> None:
    with op.batch_alter_table('outbox_message', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                'sequence_key', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True
            )
        )
        batch_op.add_column(sa.Column('sequence', sa.Integer(), nullable=True))
        batch_op.create_index('ix_outbox_sequence', ['sequence_key', 'sequence'], unique=False)
    bind = op.get_bind()
    messages = sa.table(
        'outbox_message',
        sa.column('id', sa.String),
        sa.column('topic', sa.String),
        sa.column('payload', sa.JSON),
        sa.column('delivered_at', sa.DateTime),
        sa.column('failed_at', sa.DateTime),
        sa.column('sequence_key', sa.String),
        sa.column('sequence', sa.Integer),
    )
    pending = bind.execute(
        sa.select(messages.c.id, messages.c.payload).where(
            messages.c.topic == NOTIFY,
            messages.c.delivered_at.is_(None),
            messages.c.failed_at.is_(None),
        )
    ).all()
    for message_id, payload in pending:
        key = f"Subscription/{payload['subscription']}|{payload['focus']}"
        bind.execute(
            messages.update()
            .where(messages.c.id == message_id)
            .values(sequence_key=key, sequence=int(payload['version']))
        )


def downgrade() -> None:
    with op.batch_alter_table('outbox_message', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_sequence')
        batch_op.drop_column('sequence')
        batch_op.drop_column('sequence_key')
