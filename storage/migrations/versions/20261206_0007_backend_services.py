"""backend services: clients registered with a public JWK Set, the registration generation
tokens carry, sealed and rotated signing keys, the replay store of client assertions, the
failed token requests that throttling counts

``api_client.secret_hash`` becomes optional (a client with keys has no secret). The signing key
rows written before this revision hold their private key in clear in ``private_jwk``; the
application seals them into ``sealed_private`` on first use (sealing needs the key-encryption
key, which a migration must not know), so ``private_jwk`` becomes optional too.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

SERIAL = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
JSON_BODY = sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), 'postgresql')


def _string(name: str, length: int, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sqlmodel.sql.sqltypes.AutoString(length=length), nullable=nullable)


def upgrade() -> None:
    with op.batch_alter_table('api_client', schema=None) as batch_op:
        batch_op.alter_column('secret_hash', existing_type=sa.Text(), nullable=True)
        batch_op.add_column(sa.Column('jwks', JSON_BODY, nullable=True))
        batch_op.add_column(sa.Column('jwks_url', sa.Text(), nullable=True))
        batch_op.add_column(
            sa.Column('generation', sa.Integer(), nullable=False, server_default='1')
        )
    with op.batch_alter_table('signing_key', schema=None) as batch_op:
        batch_op.alter_column('private_jwk', existing_type=JSON_BODY, nullable=True)
        batch_op.add_column(sa.Column('sealed_private', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('public_jwk', JSON_BODY, nullable=True))
        batch_op.add_column(sa.Column('retires_at', sa.DateTime(timezone=True), nullable=True))

    op.create_table(
        'client_assertion',
        _string('client_id', 128),
        _string('jti', 255),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('client_id', 'jti'),
    )
    with op.batch_alter_table('client_assertion', schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f('ix_client_assertion_expires_at'), ['expires_at'], unique=False
        )

    op.create_table(
        'token_failure',
        sa.Column('seq', SERIAL, nullable=False),
        _string('kind', 8),
        _string('subject', 128),
        sa.Column('failed_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('seq'),
    )
    with op.batch_alter_table('token_failure', schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f('ix_token_failure_failed_at'), ['failed_at'], unique=False
        )
        batch_op.create_index(
            'ix_token_failure_subject', ['kind', 'subject', 'failed_at'], unique=False
        )


def downgrade() -> None:
    # Sealed keys cannot go back to the clear column without the key-encryption key, and
    # clients without a secret cannot live in a table that needs one: refuse rather than
    # silently lose them.
    bind = op.get_bind()
    sealed = bind.execute(
        sa.text('SELECT COUNT(*) FROM signing_key WHERE private_jwk IS NULL')
    ).scalar()
    keyed = bind.execute(
        sa.text('SELECT COUNT(*) FROM api_client WHERE secret_hash IS NULL')
    ).scalar()
    if sealed or keyed:
        raise RuntimeError(
            'cannot downgrade below 0007: delete the sealed signing keys and the clients '
            'without a secret first (they would be unusable)'
        )
    op.drop_table('token_failure')
    op.drop_table('client_assertion')
    with op.batch_alter_table('signing_key', schema=None) as batch_op:
        batch_op.drop_column('retires_at')
        batch_op.drop_column('public_jwk')
        batch_op.drop_column('sealed_private')
        batch_op.alter_column('private_jwk', existing_type=JSON_BODY, nullable=False)
    with op.batch_alter_table('api_client', schema=None) as batch_op:
        batch_op.drop_column('generation')
        batch_op.drop_column('jwks_url')
        batch_op.drop_column('jwks')
        batch_op.alter_column('secret_hash', existing_type=sa.Text(), nullable=False)
