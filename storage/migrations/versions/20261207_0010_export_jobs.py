"""export jobs: the Bulk Data $export requests, their progress, checkpoint and files

One row per export; ``active_client`` is unique so a client runs one export at a time.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel
from sqlalchemy.dialects import postgresql


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def _json(*, none_as_null: bool = False) -> sa.types.TypeEngine:
    return sa.JSON(none_as_null=none_as_null).with_variant(
        postgresql.JSONB(none_as_null=none_as_null, astext_type=sa.Text()), 'postgresql'
    )


def _text(length: int) -> sa.types.TypeEngine:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def upgrade() -> None:
    op.create_table(
        'export_job',
        sa.Column('id', _text(36), nullable=False),
        sa.Column('client_id', _text(128), nullable=False),
        sa.Column('organization', _text(128), nullable=True),
        sa.Column('principal_kind', _text(16), nullable=False),
        sa.Column('scopes', sa.Text(), nullable=False),
        sa.Column('level', _text(16), nullable=False),
        sa.Column('parameters', _json(), nullable=False),
        sa.Column('request_url', sa.Text(), nullable=False),
        sa.Column('request_id', _text(128), nullable=True),
        sa.Column('transaction_time', sa.DateTime(timezone=True), nullable=False),
        sa.Column('status', _text(16), nullable=False),
        sa.Column('active_client', _text(128), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('lease_owner', _text(36), nullable=True),
        sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('exported', sa.Integer(), nullable=False),
        sa.Column('checkpoint', _json(none_as_null=True), nullable=True),
        sa.Column('files', _json(), nullable=False),
        sa.Column('failure', sa.Text(), nullable=True),
        sa.Column('polled_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('active_client'),
    )
    with op.batch_alter_table('export_job', schema=None) as batch_op:
        batch_op.create_index('ix_export_job_expires_at', ['expires_at'], unique=False)
        batch_op.create_index('ix_export_job_status', ['status'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('export_job', schema=None) as batch_op:
        batch_op.drop_index('ix_export_job_status')
        batch_op.drop_index('ix_export_job_expires_at')
    op.drop_table('export_job')
