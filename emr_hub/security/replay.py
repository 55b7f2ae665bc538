"""The replay store of client assertions: each ``jti`` is accepted once per client.

Entries live in the database (``client_assertion``), so every API process sees the
assertions the others accepted, and are kept until the assertion itself could no longer be
accepted (its ``exp`` plus the clock leeway). Expired entries are pruned by the inserts.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from storage.tables import ClientAssertionRow

if TYPE_CHECKING:
    from emr_hub.hub import Hub


def first_use(hub: Hub, client_id: str, jti: str, keep_until: datetime) -> bool:
    """Record the assertion ``jti`` of ``client_id``; False when it was recorded before."""
    now = datetime.now(UTC)
    try:
        with hub.db.transaction() as session:
            session.execute(
                delete(ClientAssertionRow).where(col(ClientAssertionRow.expires_at) < now)
            )
            session.add(ClientAssertionRow(client_id=client_id, jti=jti, expires_at=keep_until))
    except IntegrityError:
        return False
    return True
