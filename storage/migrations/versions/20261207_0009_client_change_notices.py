"""client change notices: on PostgreSQL every change to an API client's row is announced on
the ``emr_hub_api_client`` channel, so each API process drops the access tokens it has
verified and keeps (emr_hub.security.token_cache) the moment a client is disabled,
re-registered or changed, by whatever path the change was made

SQLite has no notifications; there the hub keeps no verified tokens.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""
from alembic import op


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

CHANNEL = 'emr_hub_api_client'


def upgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.execute(
        f"""
        CREATE FUNCTION emr_hub_api_client_changed() RETURNS trigger AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', '');
            RETURN NULL;
        END;
        $$ LANGUAGE plpgsql
        """
    )
    op.execute(
        """
        CREATE TRIGGER api_client_changed
        AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON api_client
        FOR EACH STATEMENT EXECUTE FUNCTION emr_hub_api_client_changed()
        """
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.execute('DROP TRIGGER api_client_changed ON api_client')
    op.execute('DROP FUNCTION emr_hub_api_client_changed()')
