"""Throttling of failed token requests, per client id and per remote address.

Each failure is a row of ``token_failure`` (one for the client id the request claimed, one
for its address), so the count is shared by every API process, on SQLite and PostgreSQL
alike. When ``EMR_HUB_TOKEN_FAILURES_PER_CLIENT`` (or ``..._PER_ADDRESS``) failures fall within
the last ``EMR_HUB_TOKEN_FAILURE_WINDOW_SECONDS``, further requests are refused (429) until
the oldest of them leaves the window. Refused requests are not counted themselves, so a
lock-out ends one window after the failures stop; successful requests count for nothing.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import delete, select
from sqlmodel import col

from storage.db import as_utc
from storage.tables import TokenFailureRow

if TYPE_CHECKING:
    from emr_hub.hub import Hub

CLIENT = "client"
ADDRESS = "address"
MAX_SUBJECT = 128


def retry_after(hub: Hub, client_id: str | None, address: str | None) -> int | None:
    """Seconds until a request of ``client_id`` from ``address`` may be tried again, or None
    when it is not throttled."""
    moment = datetime.now(UTC)
    settings = hub.settings
    window = timedelta(seconds=settings.token_failure_window_seconds)
    limits = [
        (kind, subject[:MAX_SUBJECT], limit)
        for kind, subject, limit in (
            (CLIENT, client_id, settings.token_failures_per_client),
            (ADDRESS, address, settings.token_failures_per_address),
        )
        if subject
    ]
    wait = 0.0
    with hub.db.snapshot() as session:
        for kind, subject, limit in limits:
            # The limit-th newest failure in the window: once it leaves, fewer than limit remain.
            statement = (
                select(TokenFailureRow.failed_at)
                .where(
                    col(TokenFailureRow.kind) == kind,
                    col(TokenFailureRow.subject) == subject,
                    col(TokenFailureRow.failed_at) > moment - window,
                )
                .order_by(col(TokenFailureRow.failed_at).desc())
                .offset(limit - 1)
                .limit(1)
            )
            failed_at = session.scalars(statement).first()
            if failed_at is not None:
                wait = max(wait, (as_utc(failed_at) + window - moment).total_seconds())
    return max(1, math.ceil(wait)) if wait > 0 else None


def record_failure(
    hub: Hub, client_id: str | None, address: str | None, *, now: datetime | None = None
) -> None:
    """Count one failed request against ``client_id`` and ``address`` (either may be None).
    ``now`` is for tests."""
    moment = now or datetime.now(UTC)
    cutoff = moment - timedelta(seconds=hub.settings.token_failure_window_seconds)
    with hub.db.transaction() as session:
        session.execute(delete(TokenFailureRow).where(col(TokenFailureRow.failed_at) <= cutoff))
        for kind, subject in ((CLIENT, client_id), (ADDRESS, address)):
            if subject:
                session.add(
                    TokenFailureRow(kind=kind, subject=subject[:MAX_SUBJECT], failed_at=moment)
                )
