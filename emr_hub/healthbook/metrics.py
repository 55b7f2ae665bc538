"""The wallet pushes in ``/metrics``, read at scrape time:

* ``emr_hub_wallet_pushes{status}``: pushes ``owed`` (waiting for their window or for the
  wallet) and ``failed`` (refused by the wallet, or given up after the retry policy's week);
* ``emr_hub_wallet_push_lag_seconds``: how long the oldest owed push has waited since the
  change that owed it (0 when none is owed): the push lag of what has not reached the wallet
  yet, which grows while the wallet is down.

Each is one statement on the ``outcome`` index (owed and refused rows only), joined to the
outbox rows by primary key.
"""

from __future__ import annotations

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session
from sqlmodel import col

from emr_hub.healthbook.push_delivery import REFUSED
from emr_hub.metrics.database import Samples, register_database_gauge
from emr_hub.outbox import utcnow
from storage.db import as_utc
from storage.tables import OutboxMessage, WalletPush

OWED, FAILED = "owed", "failed"


def pushes_by_status(session: Session) -> Samples:
    given_up = col(OutboxMessage.failed_at).is_not(None)
    statement = (
        select(given_up, func.count())
        .select_from(WalletPush)
        .join(OutboxMessage, col(OutboxMessage.id) == col(WalletPush.id))
        .where(or_(col(WalletPush.outcome).is_(None), col(WalletPush.outcome) == REFUSED))
        .group_by(given_up)
    )
    counts = dict.fromkeys((OWED, FAILED), 0)
    for failed, count in session.execute(statement):
        counts[FAILED if failed else OWED] += int(count)
    return [((status,), float(count)) for status, count in counts.items()]


def oldest_owed_age(session: Session) -> Samples:
    statement = (
        select(func.min(col(OutboxMessage.created_at)))
        .select_from(WalletPush)
        .join(OutboxMessage, col(OutboxMessage.id) == col(WalletPush.id))
        .where(col(WalletPush.outcome).is_(None), col(OutboxMessage.failed_at).is_(None))
    )
    oldest = session.scalar(statement)
    age = (utcnow() - as_utc(oldest)).total_seconds() if oldest is not None else 0.0
    return [((), max(age, 0.0))]


def install() -> None:
    register_database_gauge(
        "emr_hub_wallet_pushes",
        "Pushes of health books to the identity wallet, owed or failed",
        pushes_by_status,
        labels=("status",),
    )
    register_database_gauge(
        "emr_hub_wallet_push_lag_seconds",
        "Age of the oldest push owed to the identity wallet (0 when none is owed)",
        oldest_owed_age,
    )
