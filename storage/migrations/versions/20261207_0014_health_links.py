"""health links: the citizen's SMART Health Links and the files of their manifests

``health_link`` keeps the SHA-256 of the manifest URL's secret, a scrypt hash of the passcode
and the link's key sealed with the key-encryption key; ``attempts_left`` is the lifetime budget
of passcode checks. ``health_link_file`` holds a manifest's ``location`` files (already
encrypted) until fetched once or expired.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def _text(length: int) -> sa.types.TypeEngine:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def upgrade() -> None:
    op.create_table(
        'health_link',
        sa.Column('id', _text(36), nullable=False),
        sa.Column('token_digest', _text(64), nullable=False),
        sa.Column('patient_id', _text(64), nullable=False),
        sa.Column('person', _text(36), nullable=False),
        sa.Column('label', _text(80), nullable=True),
        sa.Column('passcode_hash', _text(255), nullable=False),
        sa.Column('sealed_key', sa.Text(), nullable=False),
        sa.Column('attempts_left', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('token_digest'),
    )
    with op.batch_alter_table('health_link', schema=None) as batch_op:
        batch_op.create_index('ix_health_link_person', ['person'], unique=False)
    op.create_table(
        'health_link_file',
        sa.Column('token_digest', _text(64), nullable=False),
        sa.Column('link_id', _text(36), nullable=False),
        sa.Column('content_type', _text(64), nullable=False),
        sa.Column('jwe', sa.Text(), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('token_digest'),
    )
    with op.batch_alter_table('health_link_file', schema=None) as batch_op:
        batch_op.create_index('ix_health_link_file_expires_at', ['expires_at'], unique=False)
        batch_op.create_index('ix_health_link_file_link_id', ['link_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('health_link_file', schema=None) as batch_op:
        batch_op.drop_index('ix_health_link_file_link_id')
        batch_op.drop_index('ix_health_link_file_expires_at')
    op.drop_table('health_link_file')
    with op.batch_alter_table('health_link', schema=None) as batch_op:
        batch_op.drop_index('ix_health_link_person')
    op.drop_table('health_link')
