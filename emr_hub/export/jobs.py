"""The ``export_job`` rows: starting an export, a worker's claim on it, its checkpoints, its
end, and the housekeeping (resuming stalled exports, removing expired files).

Each change is one conditional UPDATE, so two API processes or two workers never both act on a
job: a worker holds a lease (``lease_owner``, ``lease_until``) that it renews; a checkpoint
or a finish by a worker that lost its lease (the job was cancelled, or handed to another
worker after the lease ran out) changes nothing and tells it to stop.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from emr_hub.errors import FhirError, Issue
from emr_hub.export.request import ExportRequest
from emr_hub.security.principal import Principal
from storage.db import Database, as_utc
from storage.tables import ExportJob

JOB = ExportJob.__table__
ACCEPTED, RUNNING, COMPLETED, FAILED, CANCELLED, EXPIRED = (
    "accepted",
    "in-progress",
    "completed",
    "failed",
    "cancelled",
    "expired",
)
STATUSES = (ACCEPTED, RUNNING, COMPLETED, FAILED, CANCELLED, EXPIRED)
UNFINISHED = (ACCEPTED, RUNNING)
GONE = (CANCELLED, EXPIRED)
"""A poll of these is a 404: the export and its files no longer exist."""
DISPATCH_GRACE_SECONDS = 30.0
"""An accepted export nobody claimed this long after it was started lost its dispatch (the
broker was down): the sweep sends it again."""


class LeaseLost(Exception):
    """The worker no longer holds the job (cancelled, or resumed by another worker)."""


def now() -> datetime:
    return datetime.now(UTC)


def start(
    db: Database,
    principal: Principal,
    request: ExportRequest,
    *,
    request_url: str,
    request_id: str | None,
    transaction_time: datetime,
    retry_after: int,
) -> str:
    """Record a new export (status accepted); 429 when the client already runs one."""
    job_id = str(uuid.uuid4())
    moment = now()
    row = {
        "id": job_id,
        "client_id": principal.client_id,
        "organization": principal.organization,
        "principal_kind": principal.kind,
        "scopes": str(principal.scopes),
        "level": request.level,
        "parameters": request.as_json(),
        "request_url": request_url,
        "request_id": request_id,
        "transaction_time": transaction_time,
        "status": ACCEPTED,
        "active_client": principal.client_id,
        "created_at": moment,
        "updated_at": moment,
        "attempts": 0,
        "exported": 0,
        "checkpoint": None,
        "files": [],
    }
    try:
        with db.transaction() as session:
            session.execute(JOB.insert().values(**row))
    except IntegrityError:
        raise FhirError(
            429,
            [
                Issue(
                    "throttled",
                    "This client already has an export running: wait for it to finish, or "
                    "cancel it (DELETE on its status URL), before starting another",
                )
            ],
            {"Retry-After": str(retry_after)},
        ) from None
    return job_id


def load(session: Session, job_id: str) -> ExportJob | None:
    return session.get(ExportJob, job_id)


def claim(db: Database, job_id: str, owner: str, lease_seconds: float) -> ExportJob | None:
    """Take the job for this worker unless someone holds an unexpired lease or it ended."""
    moment = now()
    with db.transaction() as session:
        result = session.execute(
            update(JOB)
            .where(
                JOB.c.id == job_id,
                JOB.c.status.in_(UNFINISHED),
                or_(JOB.c.lease_until.is_(None), JOB.c.lease_until < moment),
            )
            .values(
                status=RUNNING,
                lease_owner=owner,
                lease_until=moment + timedelta(seconds=lease_seconds),
                attempts=JOB.c.attempts + 1,
                updated_at=moment,
            )
        )
        if result.rowcount != 1:
            return None
        job = session.get(ExportJob, job_id)
        assert job is not None
        session.expunge(job)
        return job


def _held(job_id: str, owner: str) -> Any:
    return (JOB.c.id == job_id, JOB.c.lease_owner == owner, JOB.c.status == RUNNING)


def _update_held(session: Session, job_id: str, owner: str, **values: Any) -> None:
    """Change the job this worker holds; :class:`LeaseLost` when it no longer does."""
    result = session.execute(update(JOB).where(*_held(job_id, owner)).values(**values))
    if result.rowcount != 1:
        raise LeaseLost(job_id)


def _ended(status: str, moment: datetime, expires: datetime) -> dict[str, Any]:
    """The values of a job that ended: no longer the client's running export, nobody's lease."""
    return {
        "status": status,
        "active_client": None,
        "lease_owner": None,
        "lease_until": None,
        "updated_at": moment,
        "expires_at": expires,
    }


def renew(db: Database, job_id: str, owner: str, lease_seconds: float) -> None:
    """Extend the lease; :class:`LeaseLost` if the job is no longer this worker's."""
    moment = now()
    with db.transaction() as session:
        _update_held(
            session,
            job_id,
            owner,
            lease_until=moment + timedelta(seconds=lease_seconds),
            updated_at=moment,
        )


def checkpoint(
    session: Session,
    job_id: str,
    owner: str,
    *,
    position: dict[str, Any],
    files: list[dict[str, Any]],
    exported: int,
    lease_seconds: float,
) -> None:
    """Record, in the caller's transaction, a file written and where the scan goes on."""
    moment = now()
    _update_held(
        session,
        job_id,
        owner,
        checkpoint=position,
        files=files,
        exported=exported,
        lease_until=moment + timedelta(seconds=lease_seconds),
        updated_at=moment,
    )


def finish(
    session: Session,
    job_id: str,
    owner: str,
    *,
    files: list[dict[str, Any]],
    exported: int,
    retention: timedelta,
) -> None:
    moment = now()
    _update_held(
        session,
        job_id,
        owner,
        files=files,
        exported=exported,
        **_ended(COMPLETED, moment, moment + retention),
    )


def fail(db: Database, job_id: str, owner: str, reason: str, retention: timedelta) -> None:
    moment = now()
    with db.transaction() as session:
        session.execute(
            update(JOB)
            .where(*_held(job_id, owner))
            .values(failure=reason, **_ended(FAILED, moment, moment + retention))
        )


def release(db: Database, job_id: str, owner: str) -> None:
    """Give the job up for another attempt (the sweep resumes it from its checkpoint)."""
    with db.transaction() as session:
        session.execute(
            update(JOB).where(*_held(job_id, owner)).values(lease_owner=None, lease_until=None)
        )


def cancel(session: Session, job_id: str) -> bool:
    """Mark an export cancelled (its files are removed by the caller and the sweep); False
    when it had already ended by cancellation or expiry."""
    moment = now()
    result = session.execute(
        update(JOB)
        .where(JOB.c.id == job_id, JOB.c.status.not_in(GONE))
        .values(**_ended(CANCELLED, moment, moment))
    )
    return result.rowcount == 1


def allow_poll(session: Session, job_id: str, min_interval: float) -> bool:
    """Record a status poll; False when the previous one was less than ``min_interval`` ago."""
    moment = now()
    result = session.execute(
        update(JOB)
        .where(
            JOB.c.id == job_id,
            or_(
                JOB.c.polled_at.is_(None),
                JOB.c.polled_at <= moment - timedelta(seconds=min_interval),
            ),
        )
        .values(polled_at=moment)
    )
    return result.rowcount == 1


def stalled(session: Session) -> list[str]:
    """Unfinished exports no worker holds: lease run out, or never claimed after a while."""
    moment = now()
    rows = session.execute(
        select(JOB.c.id).where(
            JOB.c.status.in_(UNFINISHED),
            or_(
                JOB.c.lease_until < moment,
                (JOB.c.lease_until.is_(None))
                & (JOB.c.updated_at < moment - timedelta(seconds=DISPATCH_GRACE_SECONDS)),
            ),
        )
    )
    return [row[0] for row in rows]


def expired(session: Session) -> list[ExportJob]:
    """Ended exports whose files are due for removal (cancelled ones right away)."""
    rows = session.scalars(
        select(ExportJob).where(
            JOB.c.status.in_((COMPLETED, FAILED, CANCELLED)), JOB.c.expires_at <= now()
        )
    )
    return list(rows)


def mark_expired(session: Session, job_id: str) -> None:
    session.execute(
        update(JOB)
        .where(JOB.c.id == job_id, JOB.c.status.in_((COMPLETED, FAILED, CANCELLED)))
        .values(status=EXPIRED, files=[], checkpoint=None, updated_at=now())
    )


def is_unfinished(job: ExportJob) -> bool:
    return job.status in UNFINISHED


def expires_at(job: ExportJob) -> datetime | None:
    return None if job.expires_at is None else as_utc(job.expires_at)
