"""citizen sessions: the health-book page's sign-ins, revocable on the server

The cookie carries a random secret; ``id`` is its SHA-256. Logout sets ``revoked_at``.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def _text(length: int) -> sa.types.TypeEngine:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def upgrade() -> None:
    op.create_table(
        'citizen_session',
        sa.Column('id', _text(64), nullable=False),
        sa.Column('person', _text(36), nullable=False),
        sa.Column('method', _text(16), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('citizen_session', schema=None) as batch_op:
        batch_op.create_index('ix_citizen_session_person', ['person'], unique=False)
        batch_op.create_index('ix_citizen_session_expires_at', ['expires_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('citizen_session', schema=None) as batch_op:
        batch_op.drop_index('ix_citizen_session_expires_at')
        batch_op.drop_index('ix_citizen_session_person')
    op.drop_table('citizen_session')
