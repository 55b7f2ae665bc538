"""``emr_hub_export_jobs{status}``: the export jobs by status, read at scrape time (one
statement on the status index; every status is reported, 0 when none is in it)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from emr_hub.export.jobs import JOB, STATUSES
from emr_hub.metrics.database import Samples, register_database_gauge


def jobs_by_status(session: Session) -> Samples:
    counts = dict.fromkeys(STATUSES, 0)
    for status, count in session.execute(select(JOB.c.status, func.count()).group_by(JOB.c.status)):
        counts[str(status)] = int(count)
    return [((status,), float(count)) for status, count in counts.items()]


def install() -> None:
    register_database_gauge(
        "emr_hub_export_jobs",
        "Bulk Data export jobs by status",
        jobs_by_status,
        labels=("status",),
    )
