"""exact resource JSON: resource and resource_history content as json, not jsonb

jsonb stores numbers as numeric, which keeps a decimal's scale (``1.50``) but not its
exponent (``1E+2`` becomes ``100``) nor the sign of a negative zero (``-0.000`` becomes
``0.000``); FHIR decimals keep their literal (docs/adr/0010-exact-decimals.md). ``json`` keeps
the text the hub wrote. Nothing queries inside the column (search has its own tables). The
change rewrites both tables (PostgreSQL only; SQLite keeps JSON as text already). Versions
stored before keep what jsonb had made of them.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07
"""

from alembic import op


revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

_TABLES = ("resource", "resource_history")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in _TABLES:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN content TYPE json USING content::json")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in _TABLES:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN content TYPE jsonb USING content::jsonb")
