"""composite search index

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    
    op.create_table('search_composite',
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('resource_type', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('resource_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('param', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('system', sa.Text(), nullable=True),
    sa.Column('code', sa.Text(), nullable=False),
    sa.Column('second_system', sa.Text(), nullable=True),
    sa.Column('second_code', sa.Text(), nullable=True),
    sa.Column('second_unit', sa.Text(), nullable=True),
    sa.Column('num_low', sa.Numeric(), nullable=True),
    sa.Column('num_high', sa.Numeric(), nullable=True),
    sa.Column('date_low', sa.DateTime(timezone=True), nullable=True),
    sa.Column('date_high', sa.DateTime(timezone=True), nullable=True),
    sa.Column('text_normalized', sa.Text(), nullable=True),
    sa.Column('text_exact', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('seq')
    )
    with op.batch_alter_table('search_composite', schema=None) as batch_op:
        batch_op.create_index('ix_composite_lookup', ['resource_type', 'param', 'code', 'system'], unique=False)
        batch_op.create_index('ix_composite_owner', ['resource_type', 'resource_id'], unique=False)




def downgrade() -> None:
    
    with op.batch_alter_table('search_composite', schema=None) as batch_op:
        batch_op.drop_index('ix_composite_owner')
        batch_op.drop_index('ix_composite_lookup')

    op.drop_table('search_composite')

