"""Where exports run: a Celery task on a worker (with a broker), or a thread of the API process
(the embedded default, where no worker exists); and the sweep that resumes exports nobody holds
and removes the files of expired ones (beat, or the API's relay thread, runs it).
"""

from __future__ import annotations

import logging
import threading

from emr_hub.export import jobs
from emr_hub.export.runner import run_export
from emr_hub.hub import Hub
from emr_hub.tasks import celery_app, in_process, worker_hub

log = logging.getLogger(__name__)

RUN_TASK = "emr_hub.export.run"
SWEEP_TASK = "emr_hub.export.sweep"


@celery_app.task(name=RUN_TASK)
def run_export_task(job_id: str) -> None:
    run_export(worker_hub(), job_id)


@celery_app.task(name=SWEEP_TASK)
def sweep_task() -> None:
    sweep(worker_hub())


def dispatch(hub: Hub, job_id: str) -> None:
    """Start the export now: on a worker, or in a thread here. A failure to publish is only
    logged: the job is in the database and the sweep sends it again."""
    if in_process():
        thread = threading.Thread(
            target=run_export, args=(hub, job_id), name=f"emr-hub-export-{job_id[:8]}", daemon=True
        )
        thread.start()
        return
    try:
        run_export_task.apply_async(args=(job_id,))
    except Exception:
        log.exception("could not publish export %s; the sweep will", job_id)


def sweep(hub: Hub) -> None:
    """Resume the exports no worker holds, and remove the files of those that expired."""
    with hub.db.snapshot() as session:
        stalled = jobs.stalled(session)
        ended = jobs.expired(session)
    for job_id in stalled:
        log.info("resuming export %s", job_id)
        dispatch(hub, job_id)
    for job in ended:
        if remove_files(hub, job.files):
            with hub.db.transaction() as session:
                jobs.mark_expired(session, job.id)


def remove_files(hub: Hub, files: list[dict[str, str]]) -> bool:
    """Delete an export's files; False when one could not be (the next sweep tries again)."""
    removed = True
    for record in files:
        try:
            hub.objects.delete(record["key"])
        except Exception:  # noqa: BLE001 - the object store is down: the job stays due
            log.warning("could not remove export file %s", record["key"])
            removed = False
    return removed
