"""What a status poll answers: the progress of a running export, and the manifest of a
finished one, with a link for each file.

Links are presigned object-store URLs (``requiresAccessToken: false``, valid for
``EMR_HUB_EXPORT_LINK_SECONDS``, at most an hour, and made anew at every poll), or, when the
store cannot sign (the embedded folder) or ``EMR_HUB_EXPORT_LINKS=hub``, addresses on the hub
that need the export's own access token.
"""

from __future__ import annotations

from typing import Any

from emr_hub.export.files import DELETED, ERROR, OUTPUT
from emr_hub.export.request import ExportRequest
from emr_hub.fhir.stored import format_instant
from emr_hub.hub import Hub
from storage.db import as_utc
from storage.tables import ExportJob

MANIFEST_KEYS = {OUTPUT: "output", DELETED: "deleted", ERROR: "error"}


def status_url(hub: Hub, job_id: str) -> str:
    return f"{hub.settings.fhir_base_url}/_export/{job_id}"


def file_url(hub: Hub, job_id: str, index: int) -> str:
    return f"{status_url(hub, job_id)}/file/{index}"


def progress(job: ExportJob) -> str:
    """The ``X-Progress`` text (under 100 characters, as the IG asks)."""
    request = ExportRequest.from_json(job.parameters)
    position = job.checkpoint or {}
    done = min(int(position.get("type", 0)), len(request.types))
    if job.status == "accepted":
        return "accepted: waiting for a worker"
    return f"in progress: {done} of {len(request.types)} types, {job.exported} resources"


def manifest(hub: Hub, job: ExportJob) -> dict[str, Any]:
    presign = hub.settings.export_links != "hub"
    links: list[str | None] = []
    for record in job.files:
        url = (
            hub.objects.presigned_get_url(record["key"], hub.settings.export_link_seconds)
            if presign
            else None
        )
        if url is None:
            presign = False
        links.append(url)
    if not presign:  # one kind of link for the whole manifest
        links = [file_url(hub, job.id, index) for index in range(len(job.files))]
    body: dict[str, Any] = {
        "transactionTime": format_instant(as_utc(job.transaction_time)),
        "request": job.request_url,
        "requiresAccessToken": not presign,
        "output": [],
        "error": [],
    }
    if ExportRequest.from_json(job.parameters).since is not None:
        body["deleted"] = []
    for record, url in zip(job.files, links, strict=True):
        body.setdefault(MANIFEST_KEYS[record["kind"]], []).append(
            {"type": _manifest_type(record), "url": url, "count": record["count"]}
        )
    return body


def _manifest_type(record: dict[str, Any]) -> str:
    """Deletions are listed as the transaction Bundles each line of their file is."""
    return "Bundle" if record["kind"] == DELETED else str(record["type"])
