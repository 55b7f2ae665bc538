"""search index tables

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    
    op.create_table('search_date',
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('resource_type', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('resource_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('param', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('low', sa.DateTime(timezone=True), nullable=False),
    sa.Column('high', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('seq')
    )
    with op.batch_alter_table('search_date', schema=None) as batch_op:
        batch_op.create_index('ix_date_lookup', ['resource_type', 'param', 'low', 'high'], unique=False)
        batch_op.create_index('ix_date_owner', ['resource_type', 'resource_id'], unique=False)

    op.create_table('search_quantity',
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('resource_type', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('resource_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('param', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('value', sa.Numeric(), nullable=False),
    sa.Column('low', sa.Numeric(), nullable=False),
    sa.Column('high', sa.Numeric(), nullable=False),
    sa.Column('system', sa.Text(), nullable=True),
    sa.Column('code', sa.Text(), nullable=True),
    sa.Column('unit', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('seq')
    )
    with op.batch_alter_table('search_quantity', schema=None) as batch_op:
        batch_op.create_index('ix_quantity_lookup', ['resource_type', 'param', 'code', 'value'], unique=False)
        batch_op.create_index('ix_quantity_owner', ['resource_type', 'resource_id'], unique=False)

    op.create_table('search_reference',
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('resource_type', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('resource_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('param', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('target_type', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('target_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('url', sa.Text(), nullable=True),
    sa.Column('identifier_system', sa.Text(), nullable=True),
    sa.Column('identifier_value', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('seq')
    )
    with op.batch_alter_table('search_reference', schema=None) as batch_op:
        batch_op.create_index('ix_reference_lookup', ['resource_type', 'param', 'target_id', 'target_type'], unique=False)
        batch_op.create_index('ix_reference_owner', ['resource_type', 'resource_id'], unique=False)
        batch_op.create_index('ix_reference_target', ['target_type', 'target_id'], unique=False)

    op.create_table('search_string',
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('resource_type', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('resource_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('param', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False),
    sa.Column('normalized', sa.Text(), nullable=False),
    sa.Column('exact', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('seq')
    )
    with op.batch_alter_table('search_string', schema=None) as batch_op:
        batch_op.create_index('ix_string_lookup', ['resource_type', 'param', 'normalized'], unique=False, postgresql_ops={'normalized': 'text_pattern_ops'})
        batch_op.create_index('ix_string_owner', ['resource_type', 'resource_id'], unique=False)

    op.create_table('search_uri',
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('resource_type', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('resource_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('param', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('seq')
    )
    with op.batch_alter_table('search_uri', schema=None) as batch_op:
        batch_op.create_index('ix_uri_lookup', ['resource_type', 'param', 'value'], unique=False)
        batch_op.create_index('ix_uri_owner', ['resource_type', 'resource_id'], unique=False)




def downgrade() -> None:
    
    with op.batch_alter_table('search_uri', schema=None) as batch_op:
        batch_op.drop_index('ix_uri_owner')
        batch_op.drop_index('ix_uri_lookup')

    op.drop_table('search_uri')
    with op.batch_alter_table('search_string', schema=None) as batch_op:
        batch_op.drop_index('ix_string_owner')
        batch_op.drop_index('ix_string_lookup', postgresql_ops={'normalized': 'text_pattern_ops'})

    op.drop_table('search_string')
    with op.batch_alter_table('search_reference', schema=None) as batch_op:
        batch_op.drop_index('ix_reference_target')
        batch_op.drop_index('ix_reference_owner')
        batch_op.drop_index('ix_reference_lookup')

    op.drop_table('search_reference')
    with op.batch_alter_table('search_quantity', schema=None) as batch_op:
        batch_op.drop_index('ix_quantity_owner')
        batch_op.drop_index('ix_quantity_lookup')

    op.drop_table('search_quantity')
    with op.batch_alter_table('search_date', schema=None) as batch_op:
        batch_op.drop_index('ix_date_owner')
        batch_op.drop_index('ix_date_lookup')

    op.drop_table('search_date')

