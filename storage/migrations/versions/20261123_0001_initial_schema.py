"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-23
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel
from sqlalchemy.dialects import postgresql

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    
    op.create_table('api_client',
    sa.Column('client_id', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('secret_hash', sa.Text(), nullable=False),
    sa.Column('organization', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('scopes', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('client_id')
    )
    op.create_table('outbox_message',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('topic', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('payload', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('available_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('failed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('outbox_message', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_outbox_message_available_at'), ['available_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_outbox_message_delivered_at'), ['delivered_at'], unique=False)

    op.create_table('resource',
    sa.Column('resource_type', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('last_updated', sa.DateTime(timezone=True), nullable=False),
    sa.Column('deleted', sa.Boolean(), nullable=False),
    sa.Column('content', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.PrimaryKeyConstraint('resource_type', 'id')
    )
    with op.batch_alter_table('resource', schema=None) as batch_op:
        batch_op.create_index('ix_resource_type_updated', ['resource_type', 'last_updated'], unique=False)

    op.create_table('resource_history',
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('resource_type', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('last_updated', sa.DateTime(timezone=True), nullable=False),
    sa.Column('deleted', sa.Boolean(), nullable=False),
    sa.Column('method', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
    sa.Column('content', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.PrimaryKeyConstraint('seq'),
    sa.UniqueConstraint('resource_type', 'id', 'version_id', name='uq_history_version')
    )
    with op.batch_alter_table('resource_history', schema=None) as batch_op:
        batch_op.create_index('ix_history_type_updated', ['resource_type', 'last_updated'], unique=False)
        batch_op.create_index(batch_op.f('ix_resource_history_last_updated'), ['last_updated'], unique=False)

    op.create_table('search_token',
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('resource_type', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('resource_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('param', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('system', sa.Text(), nullable=True),
    sa.Column('code', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('seq')
    )
    with op.batch_alter_table('search_token', schema=None) as batch_op:
        batch_op.create_index('ix_token_lookup', ['resource_type', 'param', 'code', 'system'], unique=False)
        batch_op.create_index('ix_token_owner', ['resource_type', 'resource_id'], unique=False)

    op.create_table('signing_key',
    sa.Column('kid', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('algorithm', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('private_jwk', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('kid')
    )



def downgrade() -> None:
    
    op.drop_table('signing_key')
    with op.batch_alter_table('search_token', schema=None) as batch_op:
        batch_op.drop_index('ix_token_owner')
        batch_op.drop_index('ix_token_lookup')

    op.drop_table('search_token')
    with op.batch_alter_table('resource_history', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_resource_history_last_updated'))
        batch_op.drop_index('ix_history_type_updated')

    op.drop_table('resource_history')
    with op.batch_alter_table('resource', schema=None) as batch_op:
        batch_op.drop_index('ix_resource_type_updated')

    op.drop_table('resource')
    with op.batch_alter_table('outbox_message', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_outbox_message_delivered_at'))
        batch_op.drop_index(batch_op.f('ix_outbox_message_available_at'))

    op.drop_table('outbox_message')
    op.drop_table('api_client')

