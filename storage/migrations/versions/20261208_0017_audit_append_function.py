"""audit append function: a run of audit records appended to the chain in one statement

``emr_hub_audit_append(batch json)`` takes the records of one group commit (their columns,
their canonical JSON text, their patient and resource rows), locks the chain's head, numbers
and hashes each record after it (SHA-256 over ``position|previous hash|canonical JSON``, the
same as ``emr_hub.security.audit.log.link_hash``), stores the rows, moves the head and returns
the first record's position. One statement is one round trip in autocommit, where the
statements of a transaction sent by the driver took two, and most of the event-loop writer's
time was the driver's work per statement (docs/scaling.md). PostgreSQL only: SQLite appends
through the ORM as before.

The function names the columns of ``audit_event``, ``audit_patient`` and ``audit_entity``: a
migration that changes those tables replaces it.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-08
"""

from alembic import op


revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

_FUNCTION = """
CREATE FUNCTION emr_hub_audit_append(batch json) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    last_position bigint;
    previous text;
    digest text;
    first_position bigint;
    entry json;
BEGIN
    SELECT last_seq, last_hash INTO last_position, previous
        FROM audit_chain_head WHERE id = 1 FOR UPDATE;
    first_position := last_position + 1;
    FOR entry IN SELECT value FROM json_array_elements(batch -> 'events') LOOP
        last_position := last_position + 1;
        digest := encode(sha256(convert_to(
            last_position::text || '|' || previous || '|' || (entry ->> 'content'), 'UTF8'
        )), 'hex');
        INSERT INTO audit_event (
            seq, event_id, recorded, request_id, client_id, organization, person, action,
            subtype, outcome, break_glass, content, prev_hash, hash
        ) VALUES (
            last_position, entry ->> 'event_id', (entry ->> 'recorded')::timestamptz,
            entry ->> 'request_id', entry ->> 'client_id', entry ->> 'organization',
            entry ->> 'person', entry ->> 'action', entry ->> 'subtype',
            entry ->> 'outcome', (entry ->> 'break_glass')::boolean,
            (entry ->> 'content')::jsonb, previous, digest
        );
        previous := digest;
    END LOOP;
    INSERT INTO audit_patient (audit_seq, patient_id, person, types)
        SELECT first_position + (item ->> 'at')::bigint, item ->> 'patient_id',
               item ->> 'person', item ->> 'types'
        FROM json_array_elements(batch -> 'patients') AS items(item);
    INSERT INTO audit_entity (audit_seq, resource_type, resource_id)
        SELECT first_position + (item ->> 'at')::bigint, item ->> 'resource_type',
               item ->> 'resource_id'
        FROM json_array_elements(batch -> 'entities') AS items(item);
    UPDATE audit_chain_head SET last_seq = last_position, last_hash = previous WHERE id = 1;
    RETURN first_position;
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(_FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP FUNCTION emr_hub_audit_append(json)")
