"""search planner help: covering owner indexes, token column statistics

Measured at 1,000,000 resources (bench/search.py --explain): PostgreSQL took the columns of
search_token as independent and started "Observation by patient + code + date" from every
Observation with a common LOINC code (42k buffers, 60 ms); with dependency statistics it starts
from the patient (4k buffers, 5 ms), and the covering owner indexes make the per-candidate
checks index-only.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('search_token', schema=None) as batch_op:
        batch_op.drop_index('ix_token_owner')
        batch_op.create_index(
            'ix_token_owner', ['resource_type', 'resource_id', 'param', 'system', 'code'], unique=False
        )
    with op.batch_alter_table('search_date', schema=None) as batch_op:
        batch_op.drop_index('ix_date_owner')
        batch_op.create_index(
            'ix_date_owner',
            ['resource_type', 'resource_id', 'param'],
            unique=False,
            postgresql_include=['low', 'high'],
        )
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(
            'CREATE STATISTICS IF NOT EXISTS st_token_columns (dependencies) '
            'ON resource_type, param, system, code FROM search_token'
        )
        op.execute('ANALYZE search_token')


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute('DROP STATISTICS IF EXISTS st_token_columns')
    with op.batch_alter_table('search_date', schema=None) as batch_op:
        batch_op.drop_index('ix_date_owner')
        batch_op.create_index('ix_date_owner', ['resource_type', 'resource_id'], unique=False)
    with op.batch_alter_table('search_token', schema=None) as batch_op:
        batch_op.drop_index('ix_token_owner')
        batch_op.create_index('ix_token_owner', ['resource_type', 'resource_id'], unique=False)
