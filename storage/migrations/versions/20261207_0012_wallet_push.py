"""wallet push: the pushes of citizens' health books to the identity wallet

One row per push of a person (her CCCD's person key), beside its outbox message (same id): the
digest and idempotency key sent, when it was sent and answered, and how it ended.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def _text(length: int) -> sa.types.TypeEngine:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def upgrade() -> None:
    op.create_table(
        'wallet_push',
        sa.Column('id', _text(36), nullable=False),
        sa.Column('person', _text(64), nullable=False),
        sa.Column('changes', sa.Integer(), nullable=False),
        sa.Column('outcome', _text(16), nullable=True),
        sa.Column('digest', _text(64), nullable=True),
        sa.Column('idempotency_key', _text(36), nullable=True),
        sa.Column('generation', sa.Integer(), nullable=True),
        sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('answered_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('answer', sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('wallet_push', schema=None) as batch_op:
        batch_op.create_index(
            'ix_wallet_push_person', ['person', 'outcome', 'generation'], unique=False
        )
        batch_op.create_index('ix_wallet_push_owed', ['outcome', 'person'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('wallet_push', schema=None) as batch_op:
        batch_op.drop_index('ix_wallet_push_owed')
        batch_op.drop_index('ix_wallet_push_person')
    op.drop_table('wallet_push')
