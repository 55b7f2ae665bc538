"""Run the alembic migrations programmatically (``emr-hub migrate`` and ``serve`` call this)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, text

from storage.db import UNBOUNDED

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.set_main_option("file_template", "%%(year)d%%(month).2d%%(day).2d_%%(rev)s_%%(slug)s")
    return config


# Any fixed 64-bit number: processes that migrate take this PostgreSQL advisory lock in turn.
MIGRATION_LOCK = 0x656D725F687562


def upgrade(engine: Engine) -> None:
    """Bring the database to the newest revision; safe to call on every start.

    On PostgreSQL several processes (API replicas, workers) may start at once; the advisory
    lock, held for the migration's transaction, makes them migrate one after the other, and
    the later ones find nothing left to do. SQLite's write lock does the same job there.
    """
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    # A migration may rewrite large tables: the requests' statement timeout is not for it.
    with engine.execution_options(**{UNBOUNDED: True}).begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SET LOCAL statement_timeout = 0"))
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
