"""health card keys: the keys that sign SMART Health Cards, apart from the token keys

Rotated rows (``rotated_at``) keep their public key, since the cards they signed must keep
verifying, and lose their sealed private key.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel
from sqlalchemy.dialects import postgresql


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'health_card_key',
        sa.Column('kid', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('algorithm', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column('sealed_private', sa.Text(), nullable=True),
        sa.Column(
            'public_jwk',
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'),
            nullable=False,
        ),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('rotated_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('kid'),
    )


def downgrade() -> None:
    op.drop_table('health_card_key')
