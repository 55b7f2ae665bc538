"""The hub's own gauges read from the database: the outbox and break-the-glass.

Every outbox statement is bounded by ``delivered_at IS NULL`` (its index): delivered messages,
the bulk of the table, are never read. Break-the-glass openings are the ``access_grant`` rows
made from a Security Alert audit event (``source_type`` AuditEvent, its index); one opening
of a person with several Patient records makes one row per record, so openings are counted by
their audit event.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlmodel import col

from emr_hub.metrics.database import Samples, register_database_gauge
from emr_hub.security.policy import BREAK_GLASS
from storage.db import as_utc
from storage.tables import AccessGrant, OutboxMessage

BREAK_GLASS_SOURCE = "AuditEvent"
"""The source of a break-the-glass grant: the Security Alert recording the opening."""


def outbox_backlog(session: Session) -> Samples:
    """Messages owed: neither delivered nor failed for good (due now or waiting to retry)."""
    statement = select(func.count()).where(
        col(OutboxMessage.delivered_at).is_(None), col(OutboxMessage.failed_at).is_(None)
    )
    return [((), float(session.scalar(statement) or 0))]


def outbox_oldest_age(session: Session) -> Samples:
    """Seconds since the oldest owed message was stored (0 when none is owed)."""
    statement = select(func.min(col(OutboxMessage.created_at))).where(
        col(OutboxMessage.delivered_at).is_(None), col(OutboxMessage.failed_at).is_(None)
    )
    oldest = session.scalar(statement)
    if oldest is None:
        return [((), 0.0)]
    return [((), max(0.0, (datetime.now(UTC) - as_utc(oldest)).total_seconds()))]


def outbox_retrying(session: Session) -> Samples:
    """Owed messages whose delivery failed at least once and will be tried again."""
    statement = select(func.count()).where(
        col(OutboxMessage.delivered_at).is_(None),
        col(OutboxMessage.failed_at).is_(None),
        col(OutboxMessage.attempts) > 0,
    )
    return [((), float(session.scalar(statement) or 0))]


def outbox_failed(session: Session) -> Samples:
    """Messages given up on: their attempts ran out, or they could never be sent."""
    statement = select(func.count()).where(
        col(OutboxMessage.delivered_at).is_(None), col(OutboxMessage.failed_at).is_not(None)
    )
    return [((), float(session.scalar(statement) or 0))]


def break_glass_openings(session: Session) -> Samples:
    """Openings since the hub began, by the hospital that broke the glass."""
    return _openings_by_hospital(session)


def break_glass_open(session: Session) -> Samples:
    """Openings whose hours have not passed yet, by hospital."""
    return _openings_by_hospital(session, col(AccessGrant.ends) > datetime.now(UTC))


def _openings_by_hospital(session: Session, *conditions: Any) -> Samples:
    organization = col(AccessGrant.organization)
    statement = (
        select(organization, func.count(func.distinct(col(AccessGrant.source_id))))
        .where(
            col(AccessGrant.source_type) == BREAK_GLASS_SOURCE,
            col(AccessGrant.kind) == BREAK_GLASS,
            *conditions,
        )
        .group_by(organization)
    )
    return [((str(name),), float(count)) for name, count in session.execute(statement)]


def install() -> None:
    register_database_gauge(
        "emr_hub_outbox_backlog",
        "Outbox messages not delivered yet (due now or waiting to be retried)",
        outbox_backlog,
    )
    register_database_gauge(
        "emr_hub_outbox_oldest_age_seconds",
        "Age of the oldest outbox message not delivered yet (0 when none is)",
        outbox_oldest_age,
    )
    register_database_gauge(
        "emr_hub_outbox_retrying",
        "Outbox messages not delivered yet whose delivery has failed at least once",
        outbox_retrying,
    )
    register_database_gauge(
        "emr_hub_outbox_failed",
        "Outbox messages given up on (attempts exhausted, or unsendable)",
        outbox_failed,
    )
    register_database_gauge(
        "emr_hub_break_glass_openings",
        "Records opened by break-the-glass since the hub began, by the opening Organization",
        break_glass_openings,
        labels=("organization",),
    )
    register_database_gauge(
        "emr_hub_break_glass_open",
        "Break-the-glass openings still in force, by the opening Organization",
        break_glass_open,
        labels=("organization",),
    )
