"""The HTTP side of ``$export``: kick-off, status, cancel, and the hub's own file downloads.

* ``GET|POST /fhir/$export``, ``/fhir/Patient/$export``, ``/fhir/Group/{id}/$export`` with
  ``Prefer: respond-async``: 202 and ``Content-Location`` (the status URL, absolute, on
  ``EMR_HUB_BASE_URL``); 429 while the client has another export running.
* ``GET /fhir/_export/{job}``: 202 with ``X-Progress`` and ``Retry-After`` while it runs (429
  when polled again in under half the Retry-After), 200 with the manifest when done, 500 with
  an OperationOutcome when it failed, 404 once cancelled or expired.
* ``DELETE /fhir/_export/{job}``: 202, the files removed; then 404.
* ``GET /fhir/_export/{job}/file/{n}``: a file, for hub links (gzip'ed when the client accepts
  it, else decoded on the fly).

Only the client that started an export (or an operator) sees it: to anyone else it is a 404.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from email.utils import format_datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse

from emr_hub.deps import HubDep
from emr_hub.errors import FhirError, Issue, bad_request, forbidden, not_found, operation_outcome
from emr_hub.export import jobs
from emr_hub.export.files import NDJSON
from emr_hub.export.manifest import manifest, progress, status_url
from emr_hub.export.request import (
    GROUP,
    NOT_EXPORTED,
    PATIENT,
    SYSTEM,
    build_request,
    parse_parameters_body,
    parse_query_items,
    refuse_principal,
)
from emr_hub.export.tasks import dispatch, remove_files
from emr_hub.fhir.http import dump, public_url, wants_pretty
from emr_hub.fhir.routes import read_body
from emr_hub.fhir.stored import now_instant
from emr_hub.fhir.validation import R4_RESOURCE_TYPES
from emr_hub.hub import Hub
from emr_hub.security.access import policy_of, store_for
from emr_hub.security.policy import HUB_ONLY
from emr_hub.security.principal import Principal, PrincipalDep
from storage.objects import ObjectNotFound
from storage.tables import ExportJob

router = APIRouter(prefix="/fhir")
MAX_GROUP_MEMBERS = 100_000


# ------------------------------------------------------------------ kick-off
@router.get("/$export")
async def system_export(request: Request, hub: HubDep, principal: PrincipalDep) -> Response:
    return await _kick_off(request, hub, principal, SYSTEM)


@router.post("/$export")
async def system_export_posted(request: Request, hub: HubDep, principal: PrincipalDep) -> Response:
    return await _kick_off(request, hub, principal, SYSTEM)


@router.api_route("/Patient/$export", methods=["GET", "POST"])
async def patient_export(request: Request, hub: HubDep, principal: PrincipalDep) -> Response:
    return await _kick_off(request, hub, principal, PATIENT)


@router.api_route("/Group/{group_id}/$export", methods=["GET", "POST"])
async def group_export(
    group_id: str, request: Request, hub: HubDep, principal: PrincipalDep
) -> Response:
    return await _kick_off(request, hub, principal, GROUP, group_id)


async def _kick_off(
    request: Request, hub: Hub, principal: Principal, level: str, group_id: str | None = None
) -> Response:
    refuse_principal(principal)
    wants_pretty(request)  # 406 for a client that asks for XML
    prefer = _prefer(request)
    if prefer.get("respond-async") is None:
        raise bad_request(
            "$export runs asynchronously: send 'Prefer: respond-async'", "Prefer", code="required"
        )
    lenient = prefer.get("handling") == "lenient"
    posted = request.method == "POST"
    if posted:
        values = parse_parameters_body(await read_body(request, hub))
        for name in request.query_params:
            if name not in ("_format", "_pretty"):
                raise bad_request(f"A POST $export takes its parameters in the body: {name}", name)
    else:
        values = parse_query_items(list(request.query_params.multi_items()))
    url = public_url(request, hub.settings.base_url)
    job_id = await run_in_threadpool(
        _start, hub, principal, level, values, lenient, posted, group_id, url
    )
    dispatch(hub, job_id)
    outcome = operation_outcome(
        [
            Issue(
                "informational",
                f"Export accepted; poll {status_url(hub, job_id)}",
                (),
                "information",
            )
        ]
    )
    return Response(
        dump(outcome),
        status_code=202,
        media_type="application/fhir+json",
        headers={"Content-Location": status_url(hub, job_id)},
    )


def _start(
    hub: Hub,
    principal: Principal,
    level: str,
    values: dict[str, list[str]],
    lenient: bool,
    posted: bool,
    group_id: str | None,
    url: str,
) -> str:
    policy = policy_of(hub.settings)
    exportable = frozenset(
        t for t in R4_RESOURCE_TYPES if policy.category(t) != HUB_ONLY and t not in NOT_EXPORTED
    )
    export = build_request(
        principal,
        level,
        values,
        lenient=lenient,
        exportable=exportable,
        posted=posted,
        group_id=group_id,
    )
    if group_id is not None:
        members = _group_members(hub, principal, group_id)
        export.patients = (
            members if export.patients is None else sorted(set(export.patients) & set(members))
        )
    if not export.types:
        raise forbidden("The token's scopes cover none of the types this export would hold")
    trail = principal.trail
    return jobs.start(
        hub.db,
        principal,
        export,
        request_url=url,
        request_id=trail.request_id if trail is not None else None,
        transaction_time=now_instant(),
        retry_after=hub.settings.export_poll_seconds,
    )


def _group_members(hub: Hub, principal: Principal, group_id: str) -> list[str]:
    """The Patients of the Group's active members, read through the policy (404 when the
    principal may not see the Group)."""
    principal.require("Group", "r")
    with hub.db.single_read() as session:
        group = store_for(session, hub.settings, principal).read("Group", group_id)
    base = hub.settings.fhir_base_url + "/"
    members = []
    for member in group.content.get("member") or []:
        if member.get("inactive") is True:
            continue
        reference = (member.get("entity") or {}).get("reference") or ""
        reference = reference.removeprefix(base)
        kind, _, patient_id = reference.partition("/")
        if kind == "Patient" and patient_id and "/" not in patient_id:
            members.append(patient_id)
    if len(members) > MAX_GROUP_MEMBERS:
        raise bad_request(
            f"Group/{group_id} has more than {MAX_GROUP_MEMBERS} members", code="too-costly"
        )
    return sorted(set(members))


def _prefer(request: Request) -> dict[str, str]:
    """The ``Prefer`` preferences (``respond-async`` maps to an empty string)."""
    found: dict[str, str] = {}
    for header in request.headers.getlist("prefer"):
        for part in header.split(","):
            for token in part.split(";"):
                key, _, value = token.strip().partition("=")
                if key:
                    found[key.strip().lower()] = value.strip().strip('"').lower()
    return found


# ------------------------------------------------------------------ status
@router.get("/_export/{job_id}")
def export_status(job_id: str, hub: HubDep, principal: PrincipalDep) -> Response:
    poll = hub.settings.export_poll_seconds
    with hub.db.transaction() as session:
        job = _own_job(session, job_id, principal)
        allowed = jobs.allow_poll(session, job_id, poll / 2) if jobs.is_unfinished(job) else True
    if not allowed:
        raise FhirError(
            429,
            [Issue("throttled", f"Polled too often: wait {poll} s between polls (Retry-After)")],
            {"Retry-After": str(poll)},
        )
    if jobs.is_unfinished(job):
        return Response(
            status_code=202, headers={"X-Progress": progress(job), "Retry-After": str(poll)}
        )
    if job.status == jobs.FAILED:
        raise FhirError(500, [Issue("exception", job.failure or "The export failed")])
    headers = {}
    expires = jobs.expires_at(job)
    if expires is not None:
        headers["Expires"] = format_datetime(expires, usegmt=True)
    return JSONResponse(manifest(hub, job), headers=headers)


@router.delete("/_export/{job_id}")
def cancel_export(job_id: str, hub: HubDep, principal: PrincipalDep) -> Response:
    with hub.db.transaction() as session:
        job = _own_job(session, job_id, principal)
        files = list(job.files)
        if not jobs.cancel(session, job_id):
            raise not_found(f"Export {job_id} is not known")
    if remove_files(hub, files):
        with hub.db.transaction() as session:
            jobs.mark_expired(session, job_id)
    outcome = operation_outcome(
        [
            Issue(
                "informational",
                f"Export {job_id} cancelled; its files are removed",
                (),
                "information",
            )
        ]
    )
    return Response(dump(outcome), status_code=202, media_type="application/fhir+json")


@router.get("/_export/{job_id}/file/{index}")
def export_file(
    job_id: str, index: int, request: Request, hub: HubDep, principal: PrincipalDep
) -> Response:
    with hub.db.single_read() as session:
        job = _own_job(session, job_id, principal)
    if job.status != jobs.COMPLETED or not 0 <= index < len(job.files):
        raise not_found(f"Export {job_id} has no file {index}")
    record = job.files[index]
    try:
        chunks = hub.objects.get(record["key"])
    except ObjectNotFound:
        raise not_found(f"Export {job_id} file {index} has been removed") from None
    if "gzip" in request.headers.get("accept-encoding", "").lower():
        return StreamingResponse(chunks, media_type=NDJSON, headers={"Content-Encoding": "gzip"})
    return StreamingResponse(_gunzip(chunks), media_type=NDJSON)


def _gunzip(chunks: Iterator[bytes]) -> Iterator[bytes]:
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        for chunk in chunks:
            if data := decoder.decompress(chunk):
                yield data
        if rest := decoder.flush():
            yield rest
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def _own_job(session: Any, job_id: str, principal: Principal) -> ExportJob:
    """The job, when ``principal`` started it (or is the operator); else a 404."""
    job = jobs.load(session, job_id) if len(job_id) <= 36 else None
    if job is None or (job.client_id != principal.client_id and not principal.is_operator):
        raise not_found(f"Export {job_id} is not known")
    if job.status in jobs.GONE:
        raise not_found(f"Export {job_id} was {job.status}; its files are gone")
    return job
