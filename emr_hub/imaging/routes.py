"""HTTP side of DICOMweb at ``/dicomweb``: STOW-RS, QIDO-RS, WADO-RS (PS3.18).

Every route needs a token; the scopes are those of ImagingStudy (STOW ``c``/``u``, QIDO
``s``, WADO ``r``), and what a caller may see is what the access policy lets it read of the
studies' ImagingStudy resources.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from emr_hub.deps import HubDep
from emr_hub.errors import FhirError, Issue, bad_request, not_found
from emr_hub.fhir import interactions
from emr_hub.fhir.routes import in_snapshot, in_transaction
from emr_hub.fhir.store import FhirStore
from emr_hub.hub import Hub
from emr_hub.imaging.access import readable_study
from emr_hub.imaging.body import ThreadBody, too_large
from emr_hub.imaging.index import instances_of, series_of
from emr_hub.imaging.multipart import (
    MalformedBody,
    RelatedParts,
    new_boundary,
    related_stream,
    related_type,
)
from emr_hub.imaging.qido import INSTANCE_LEVEL, SERIES_LEVEL, STUDY_LEVEL, parse_query, search
from emr_hub.imaging.stow import DICOM, Outcome, store_instances
from emr_hub.imaging.uids import require_uid
from emr_hub.imaging.urls import DicomUrls
from emr_hub.imaging.wado import (
    OCTETS,
    frame_numbers,
    frame_parts,
    instance_parts,
    joined_arrays,
    not_acceptable,
    pixel_data_part,
    render,
)
from emr_hub.security.principal import Principal, PrincipalDep
from storage.tables import DicomInstance, DicomSeries

DICOM_JSON = "application/dicom+json"
router = APIRouter(prefix="/dicomweb")


def dicom_json(body: bytes, status: int = 200) -> Response:
    return Response(body, status_code=status, media_type=DICOM_JSON)


# ---------------------------------------------------------------------- STOW-RS
@router.post("/studies")
async def stow(request: Request, hub: HubDep, principal: PrincipalDep) -> Response:
    return await _stow(request, hub, principal, None)


@router.post("/studies/{study}")
async def stow_to_study(
    study: str, request: Request, hub: HubDep, principal: PrincipalDep
) -> Response:
    return await _stow(request, hub, principal, require_uid(study, "study"))


async def _stow(request: Request, hub: HubDep, principal: Principal, study: str | None) -> Response:
    principal.require("ImagingStudy", "c")
    principal.require("ImagingStudy", "u")
    kind = related_type(request.headers.get("content-type"))
    if kind is None or kind.root_type not in ("", DICOM):
        raise FhirError(
            415,
            [Issue("not-supported", 'STOW-RS takes multipart/related; type="application/dicom"')],
        )
    limit = hub.settings.dicom_max_request_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)

    def work() -> Outcome:
        try:
            parts = RelatedParts(ThreadBody(request, limit), kind.boundary)
            return store_instances(hub, principal, parts, study)
        except MalformedBody as error:
            raise bad_request(str(error)) from None

    outcome = await run_in_threadpool(work)
    body = outcome.response(DicomUrls(hub.settings.base_url))
    return dicom_json(orjson.dumps(body), outcome.status)


# ---------------------------------------------------------------------- QIDO-RS
def _qido(
    request: Request,
    hub: Hub,
    principal: Principal,
    level: str,
    study: str | None = None,
    series: str | None = None,
) -> Response:
    query = parse_query(level, list(request.query_params.multi_items()), study, series)
    urls = DicomUrls(hub.settings.base_url)

    def work(store: FhirStore) -> list[dict[str, Any]]:
        if study is not None:
            readable_study(store, principal, study)
        return search(store, principal, query, urls)

    matches = in_snapshot(hub, principal, work)
    response = dicom_json(orjson.dumps(matches))
    if query.ignored:
        names = ", ".join(sorted(set(query.ignored)))
        response.headers["Warning"] = (
            f'299 emr_hub "The following attributes are not supported as matching keys: {names}"'
        )
    return response


@router.get("/studies")
def search_studies(request: Request, hub: HubDep, principal: PrincipalDep) -> Response:
    return _qido(request, hub, principal, STUDY_LEVEL)


@router.get("/series")
def search_all_series(request: Request, hub: HubDep, principal: PrincipalDep) -> Response:
    return _qido(request, hub, principal, SERIES_LEVEL)


@router.get("/instances")
def search_all_instances(request: Request, hub: HubDep, principal: PrincipalDep) -> Response:
    return _qido(request, hub, principal, INSTANCE_LEVEL)


@router.get("/studies/{study}/series")
def search_series(study: str, request: Request, hub: HubDep, principal: PrincipalDep) -> Response:
    return _qido(request, hub, principal, SERIES_LEVEL, require_uid(study, "study"))


@router.get("/studies/{study}/instances")
def search_study_instances(
    study: str, request: Request, hub: HubDep, principal: PrincipalDep
) -> Response:
    return _qido(request, hub, principal, INSTANCE_LEVEL, require_uid(study, "study"))


@router.get("/studies/{study}/series/{series}/instances")
def search_instances(
    study: str, series: str, request: Request, hub: HubDep, principal: PrincipalDep
) -> Response:
    uids = require_uid(study, "study"), require_uid(series, "series")
    return _qido(request, hub, principal, INSTANCE_LEVEL, *uids)


# ---------------------------------------------------------------------- WADO-RS
def _rows(
    hub: Hub, principal: Principal, study: str, series: str | None = None, sop: str | None = None
) -> list[DicomInstance]:
    """The instance rows a retrieval names, once the study is known readable (else 404)."""
    require_uid(study, "study")
    if series is not None:
        require_uid(series, "series")
    if sop is not None:
        require_uid(sop, "instance")

    def work(store: FhirStore) -> list[DicomInstance]:
        readable_study(store, principal, study)
        rows = instances_of(store.session, study, series)
        if sop is not None:
            rows = [row for row in rows if row.sop_uid == sop]
        if not rows:
            raise not_found("No such series or instance in the study")
        store.session.expunge_all()
        return rows

    return in_snapshot(hub, principal, work)


def _multipart(parts: Iterable[tuple[dict[str, str], Iterable[bytes]]], root: str) -> Response:
    boundary = new_boundary()
    media = f'multipart/related; type="{root}"; boundary={boundary}'
    return StreamingResponse(related_stream(parts, boundary), media_type=media)


def _accepts(request: Request, *wanted: str) -> bool:
    accept = request.headers.get("accept", "*/*").lower()
    return "*/*" in accept or any(w in accept for w in wanted)


def _instances_response(request: Request, hub: Hub, rows: list[DicomInstance]) -> Response:
    if not _accepts(request, "application/dicom", "multipart/related"):
        raise not_acceptable('Instances are served as multipart/related; type="application/dicom"')
    return _multipart(instance_parts(hub.objects, rows), DICOM)


@router.get("/studies/{study}")
def retrieve_study(study: str, request: Request, hub: HubDep, principal: PrincipalDep) -> Response:
    return _instances_response(request, hub, _rows(hub, principal, study))


@router.get("/studies/{study}/series/{series}")
def retrieve_series(
    study: str, series: str, request: Request, hub: HubDep, principal: PrincipalDep
) -> Response:
    return _instances_response(request, hub, _rows(hub, principal, study, series))


@router.get("/studies/{study}/series/{series}/instances/{sop}")
def retrieve_instance(
    study: str, series: str, sop: str, request: Request, hub: HubDep, principal: PrincipalDep
) -> Response:
    """The instance; with ``?presigned=true`` a 307 to a short-lived object-store link that
    downloads the bare instance (application/dicom) without a token, where the store signs."""
    rows = _rows(hub, principal, study, series, sop)
    if request.query_params.get("presigned") == "true":
        seconds = hub.settings.dicom_presign_seconds
        link = hub.objects.presigned_get_url(rows[0].object_key, seconds)
        if link is not None:
            return Response(
                status_code=307, headers={"Location": link, "Cache-Control": "no-store"}
            )
    return _instances_response(request, hub, rows)


@router.get("/studies/{study}/metadata")
def study_metadata(study: str, hub: HubDep, principal: PrincipalDep) -> Response:
    require_uid(study, "study")

    def work(store: FhirStore) -> list[str]:
        readable_study(store, principal, study)
        return [row.metadata_key for row in series_of(store.session, study) if row.metadata_key]

    keys = in_snapshot(hub, principal, work)
    arrays = (_LazyObject(hub, key) for key in keys)
    return StreamingResponse(joined_arrays(arrays), media_type=DICOM_JSON)


@router.get("/studies/{study}/series/{series}/metadata")
def series_metadata(study: str, series: str, hub: HubDep, principal: PrincipalDep) -> Response:
    require_uid(study, "study")
    require_uid(series, "series")

    def work(store: FhirStore) -> str:
        readable_study(store, principal, study)
        row = store.session.get(DicomSeries, series)
        if row is None or row.study_uid != study or not row.metadata_key:
            raise not_found("No such series in the study")
        return row.metadata_key

    key = in_snapshot(hub, principal, work)
    return StreamingResponse(iter(_LazyObject(hub, key)), media_type=DICOM_JSON)


@router.get("/studies/{study}/series/{series}/instances/{sop}/metadata")
def instance_metadata(
    study: str, series: str, sop: str, hub: HubDep, principal: PrincipalDep
) -> Response:
    row = _rows(hub, principal, study, series, sop)[0]
    return dicom_json(b"[" + row.metadata_json.encode() + b"]")


@router.get("/studies/{study}/series/{series}/instances/{sop}/frames/{frames}")
def retrieve_frames(
    study: str,
    series: str,
    sop: str,
    frames: str,
    request: Request,
    hub: HubDep,
    principal: PrincipalDep,
) -> Response:
    row = _rows(hub, principal, study, series, sop)[0]
    numbers = frame_numbers(frames, row.frames)
    if not _accepts(request, OCTETS, "multipart/related"):
        raise not_acceptable(
            'Frames are served as multipart/related; type="application/octet-stream"'
        )
    parts = list(frame_parts(hub.objects, row, numbers))
    return _multipart(parts, OCTETS)


@router.get("/studies/{study}/series/{series}/instances/{sop}/pixeldata")
def retrieve_pixel_data(
    study: str, series: str, sop: str, hub: HubDep, principal: PrincipalDep
) -> Response:
    """The BulkDataURI of an instance's native pixel data in its metadata."""
    row = _rows(hub, principal, study, series, sop)[0]
    return _multipart(list(pixel_data_part(hub.objects, row)), OCTETS)


@router.get("/studies/{study}/series/{series}/instances/{sop}/rendered")
async def retrieve_rendered(
    study: str, series: str, sop: str, request: Request, hub: HubDep, principal: PrincipalDep
) -> Response:
    accept = request.headers.get("accept", "image/jpeg").lower()
    media = "image/png" if "image/png" in accept and "image/jpeg" not in accept else "image/jpeg"
    if not any(m in accept for m in ("image/jpeg", "image/png", "image/*", "*/*")):
        raise not_acceptable("Rendered images are served as image/jpeg or image/png")
    rows = await run_in_threadpool(_rows, hub, principal, study, series, sop)
    image = await run_in_threadpool(render, hub.objects, rows[0], media)
    return Response(image, media_type=media)


class _LazyObject:
    """An object's chunks, opened when iterated (so a response opens one object at a time)."""

    def __init__(self, hub: Hub, key: str) -> None:
        self._hub = hub
        self._key = key

    def __iter__(self) -> Iterator[bytes]:
        with self._hub.objects.get(self._key) as reader:  # type: ignore[attr-defined]
            yield from reader


# ----------------------------------------------------------------------- DELETE
@router.delete("/studies/{study}")
def delete_study(study: str, hub: HubDep, principal: PrincipalDep) -> Response:
    """Remove a study: its ImagingStudy (as its writer may), and with it (:mod:`.removal`)
    its index rows and objects."""
    require_uid(study, "study")
    principal.require("ImagingStudy", "d")

    def work(store: FhirStore) -> interactions.Result:
        row = readable_study(store, principal, study)
        return interactions.delete(store, principal, "ImagingStudy", row.imaging_study_id)

    in_transaction(hub, principal, work)
    return Response(status_code=204)
