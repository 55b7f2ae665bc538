"""The alembic revisions build exactly the schema the models describe, on both databases (what
``alembic check`` asks)."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

from emr_hub.hub import Hub
from storage import tables  # noqa: F401 - the models on the metadata


def test_migrations_match_the_models(hub: Hub) -> None:
    with hub.db.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
    assert differences == []
