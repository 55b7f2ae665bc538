"""A citizen's wallet pushes, newest first: the ``wallet_push`` rows of her person key with
their outbox messages (when each was owed, its attempts, next attempt and last error).

A push's status: ``owed`` (waiting for its debounce window or for the wallet to come back),
``delivered``, ``unchanged`` (the summary was the one last delivered: nothing sent),
``skipped`` (no CCCD any more, or no wallet configured, at send time), ``refused`` (the wallet
answered that it will never take it) or ``failed`` (given up after the retry policy's week).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from storage.db import as_utc
from storage.tables import OutboxMessage, WalletPush

OWED, FAILED, DELIVERED = "owed", "failed", "delivered"


@dataclass(frozen=True)
class PushEntry:
    id: str
    status: str
    owed_at: datetime
    changes: int
    attempts: int
    """Sending attempts made: the outbox counts the failed ones, a delivery adds its own."""
    sent_at: datetime | None
    answered_at: datetime | None
    answer: int | None
    digest: str | None
    idempotency_key: str | None
    next_attempt_at: datetime | None
    """For an owed push: when it is (next) due."""
    last_error: str | None


def person_pushes(session: Session, person: str, *, limit: int) -> list[PushEntry]:
    statement = (
        select(WalletPush, OutboxMessage)
        .join(OutboxMessage, col(OutboxMessage.id) == col(WalletPush.id))
        .where(col(WalletPush.person) == person)
        .order_by(col(OutboxMessage.created_at).desc(), col(WalletPush.id).desc())
        .limit(limit)
    )
    return [_entry(push, message) for push, message in session.execute(statement)]


def _entry(push: WalletPush, message: OutboxMessage) -> PushEntry:
    if push.outcome is not None:
        status = push.outcome
    else:
        status = FAILED if message.failed_at is not None else OWED
    pending = message.delivered_at is None and message.failed_at is None
    return PushEntry(
        id=push.id,
        status=status,
        owed_at=as_utc(message.created_at),
        changes=push.changes,
        attempts=message.attempts + (1 if push.outcome == DELIVERED else 0),
        sent_at=_utc(push.sent_at),
        answered_at=_utc(push.answered_at),
        answer=push.answer,
        digest=push.digest,
        idempotency_key=push.idempotency_key,
        next_attempt_at=as_utc(message.available_at) if pending else None,
        last_error=message.last_error,
    )


def _utc(moment: datetime | None) -> datetime | None:
    return as_utc(moment) if moment is not None else None
