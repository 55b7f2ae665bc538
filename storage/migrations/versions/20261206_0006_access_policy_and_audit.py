"""access policy and audit: provenance of every version, patient compartment rows, access
grants, the hash-chained audit trail, client roles

Versions stored before this revision get the operator as author (``author_client`` operator,
no Organization) and their resources no owner and no restriction (``emr-hub reindex`` reads
their security labels again). ``patient_compartment`` and ``access_grant`` are
filled by ``emr-hub reindex`` for resources stored before (every write fills them from now on).

The audit tables refuse UPDATE and DELETE through triggers (PostgreSQL and SQLite alike): the
trail is append-only for the application; only someone who drops the triggers can change it,
and ``emr-hub audit verify`` then finds the broken link.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

SERIAL = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
AUDIT_TABLES = ('audit_event', 'audit_patient', 'audit_entity')
GENESIS = '0' * 64


def _string(name: str, length: int, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sqlmodel.sql.sqltypes.AutoString(length=length), nullable=nullable)


def upgrade() -> None:
    with op.batch_alter_table('resource', schema=None) as batch_op:
        batch_op.add_column(_string('owner_org', 128, nullable=True))
        batch_op.add_column(
            sa.Column('restricted', sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table('resource_history', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                'author_client',
                sqlmodel.sql.sqltypes.AutoString(length=128),
                nullable=False,
                server_default='operator',
            )
        )
        batch_op.add_column(_string('author_org', 128, nullable=True))
    with op.batch_alter_table('subscription_route', schema=None) as batch_op:
        batch_op.add_column(_string('owner_org', 128, nullable=True))
    with op.batch_alter_table('api_client', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                'role',
                sqlmodel.sql.sqltypes.AutoString(length=16),
                nullable=False,
                server_default='hospital',
            )
        )
        batch_op.add_column(
            sa.Column('break_glass', sa.Boolean(), nullable=False, server_default=sa.false())
        )

    op.create_table(
        'patient_compartment',
        sa.Column('seq', SERIAL, nullable=False),
        _string('resource_type', 64),
        _string('resource_id', 64),
        _string('patient_id', 64),
        _string('person', 64),
        sa.PrimaryKeyConstraint('seq'),
    )
    with op.batch_alter_table('patient_compartment', schema=None) as batch_op:
        batch_op.create_index(
            'ix_compartment_owner', ['resource_type', 'resource_id', 'person'], unique=False
        )
        batch_op.create_index('ix_compartment_patient', ['patient_id'], unique=False)
        batch_op.create_index('ix_compartment_person', ['person', 'resource_type'], unique=False)

    op.create_table(
        'access_grant',
        sa.Column('seq', SERIAL, nullable=False),
        _string('organization', 128),
        _string('person', 64),
        _string('kind', 16),
        sa.Column('strength', sa.Integer(), nullable=False),
        _string('purpose', 32, nullable=True),
        _string('patient_id', 64),
        _string('source_type', 64),
        _string('source_id', 64),
        sa.Column('starts', sa.DateTime(timezone=True), nullable=True),
        sa.Column('ends', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('seq'),
    )
    with op.batch_alter_table('access_grant', schema=None) as batch_op:
        batch_op.create_index('ix_grant_lookup', ['person', 'organization', 'kind'], unique=False)
        batch_op.create_index('ix_grant_source', ['source_type', 'source_id'], unique=False)
        batch_op.create_index('ix_grant_patient', ['patient_id'], unique=False)

    op.create_table(
        'audit_event',
        sa.Column('seq', SERIAL, nullable=False),
        _string('event_id', 36),
        sa.Column('recorded', sa.DateTime(timezone=True), nullable=False),
        _string('request_id', 200, nullable=True),
        _string('client_id', 128, nullable=True),
        _string('organization', 128, nullable=True),
        _string('person', 64, nullable=True),
        _string('action', 1),
        _string('subtype', 64),
        _string('outcome', 2),
        sa.Column('break_glass', sa.Boolean(), nullable=False),
        sa.Column(
            'content',
            sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), 'postgresql'),
            nullable=False,
        ),
        _string('prev_hash', 64),
        _string('hash', 64),
        sa.PrimaryKeyConstraint('seq'),
        sa.UniqueConstraint('event_id'),
    )
    with op.batch_alter_table('audit_event', schema=None) as batch_op:
        batch_op.create_index('ix_audit_event_recorded', ['recorded'], unique=False)
        batch_op.create_index('ix_audit_organization', ['organization', 'seq'], unique=False)

    op.create_table(
        'audit_patient',
        sa.Column('seq', SERIAL, nullable=False),
        sa.Column('audit_seq', sa.BigInteger(), nullable=False),
        _string('patient_id', 64),
        _string('person', 64),
        sa.Column('types', sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint('seq'),
    )
    with op.batch_alter_table('audit_patient', schema=None) as batch_op:
        batch_op.create_index('ix_audit_patient_person', ['person', 'audit_seq'], unique=False)
        batch_op.create_index('ix_audit_patient_patient', ['patient_id', 'audit_seq'], unique=False)

    op.create_table(
        'audit_entity',
        sa.Column('seq', SERIAL, nullable=False),
        sa.Column('audit_seq', sa.BigInteger(), nullable=False),
        _string('resource_type', 64),
        _string('resource_id', 64),
        sa.PrimaryKeyConstraint('seq'),
    )
    with op.batch_alter_table('audit_entity', schema=None) as batch_op:
        batch_op.create_index(
            'ix_audit_entity_resource', ['resource_type', 'resource_id'], unique=False
        )

    op.create_table(
        'audit_chain_head',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('last_seq', sa.BigInteger(), nullable=False),
        _string('last_hash', 64),
        sa.PrimaryKeyConstraint('id'),
    )
    op.execute(
        sa.text(
            "INSERT INTO audit_chain_head (id, last_seq, last_hash) VALUES (1, 0, :genesis)"
        ).bindparams(genesis=GENESIS)
    )
    _append_only_triggers()


def _append_only_triggers() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(
            "CREATE FUNCTION emr_hub_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'audit records are append-only (%)', TG_TABLE_NAME; END $$"
        )
        for table in AUDIT_TABLES:
            op.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION emr_hub_audit_append_only()"
            )
            op.execute(
                f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION emr_hub_audit_append_only()"
            )
        return
    for table in AUDIT_TABLES:
        for event in ('UPDATE', 'DELETE'):
            op.execute(
                f"CREATE TRIGGER {table}_no_{event.lower()} BEFORE {event} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, 'audit records are append-only ({table})'); END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        for table in AUDIT_TABLES:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
        op.execute("DROP FUNCTION IF EXISTS emr_hub_audit_append_only()")
    op.drop_table('audit_chain_head')
    op.drop_table('audit_entity')
    op.drop_table('audit_patient')
    op.drop_table('audit_event')
    op.drop_table('access_grant')
    op.drop_table('patient_compartment')
    with op.batch_alter_table('api_client', schema=None) as batch_op:
        batch_op.drop_column('break_glass')
        batch_op.drop_column('role')
    with op.batch_alter_table('subscription_route', schema=None) as batch_op:
        batch_op.drop_column('owner_org')
    with op.batch_alter_table('resource_history', schema=None) as batch_op:
        batch_op.drop_column('author_org')
        batch_op.drop_column('author_client')
    with op.batch_alter_table('resource', schema=None) as batch_op:
        batch_op.drop_column('restricted')
        batch_op.drop_column('owner_org')
