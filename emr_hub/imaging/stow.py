"""STOW-RS: instances streamed into the object store, indexed, and their studies' ImagingStudy
written, all in one database transaction per upload request.

Each part goes to the object store as it is read (under a fresh key ``dicom/instances/<uuid>``,
the store computing its SHA-256), keeping only the part's first ``EMR_HUB_DICOM_HEADER_BYTES``
to read the header from. When the body has been read, one transaction indexes what was
accepted, rewrites the touched series' metadata objects and writes one ImagingStudy version
per study. If anything fails on the way (a malformed body, the size limit, a refusal of the
write by the access policy) every object this request wrote is removed: nothing is stored.

The same SOP Instance UID again with the same bytes (SHA-256) is a success that stores
nothing new; with different bytes it is refused (FailureReason 0x0111): an instance is
immutable once stored, as DICOM expects of a UID; delete the study to replace it.

A caller storing from inside the hub (the demo) may give a :class:`Filing`: the id of the
ImagingStudy of a study new to the hub, and tags for its ``meta``. A rewrite keeps the tags
and security labels the ImagingStudy carries, as it keeps :data:`KEPT_ELEMENTS`.
"""

from __future__ import annotations

import itertools
import logging
import uuid
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from emr_hub.errors import FhirError, Issue
from emr_hub.fhir.store import FhirStore
from emr_hub.hub import Hub
from emr_hub.imaging import index
from emr_hub.imaging.headers import (
    DATA_SET_MISMATCH,
    DUPLICATE_INSTANCE,
    PROCESSING_FAILURE,
    SEQUENCE_END,
    SOP_CLASS_NOT_SUPPORTED,
    InstanceHeader,
    Refused,
    read_header,
)
from emr_hub.imaging.multipart import Part
from emr_hub.imaging.study import (
    NoPatient,
    based_on,
    ensure_endpoint,
    imaging_study,
    match_patient,
    write_study,
)
from emr_hub.imaging.urls import DicomUrls
from emr_hub.security.access import store_for
from emr_hub.security.audit.recording import absorb_write
from emr_hub.security.principal import Principal
from storage.db import after_commit
from storage.objects import StoredObject

log = logging.getLogger(__name__)
DICOM = "application/dicom"
SMALL_INSTANCE = 8 * 1024 * 1024
"""A part that ends within this many bytes is stored by a thread while the next is read."""
IN_FLIGHT = 4
"""Small instances stored at once (and so, at most, held in memory)."""
KEPT_ELEMENTS = (
    "encounter",
    "basedOn",
    "referrer",
    "interpreter",
    "procedureReference",
    "procedureCode",
    "location",
    "reasonCode",
    "reasonReference",
    "note",
)
"""What the headers do not say but a hospital may have added to the ImagingStudy over FHIR
(its visit, its order ...): kept when a later upload rewrites the study."""
KEPT_META = ("tag", "security")
"""Of the ImagingStudy's ``meta``, what a rewrite keeps: a restricted label stays on."""


@dataclass(frozen=True)
class Filing:
    """What the storing code says of the ImagingStudies beyond the headers."""

    ids: Mapping[str, str] = field(default_factory=dict)
    """Study Instance UID → the id to create its ImagingStudy under, for a study new to the
    hub (without one the store picks the id; a study already stored keeps its own)."""
    tags: tuple[Mapping[str, str], ...] = ()
    """Codings added to ``meta.tag`` of each ImagingStudy written."""


HEADERS_ONLY = Filing()


class Capture:
    """Passes an instance's chunks through, keeping its first ``keep`` bytes and noting where
    the last sequence delimitation item ends (the end of encapsulated pixel data)."""

    def __init__(self, chunks: Iterable[bytes], keep: int) -> None:
        self._chunks = chunks
        self._keep = keep
        self.prefix = bytearray()
        self.sequence_end: int | None = None

    def __iter__(self) -> Iterator[bytes]:
        overlap = len(SEQUENCE_END) - 1
        carried = b""  # the last bytes before this chunk, for a delimiter across two chunks
        offset = 0  # where this chunk starts in the instance
        for chunk in self._chunks:
            room = self._keep - len(self.prefix)
            if room > 0:
                self.prefix += chunk[:room]
            inside = chunk.rfind(SEQUENCE_END)
            if inside >= 0:
                self.sequence_end = offset + inside + len(SEQUENCE_END)
            else:
                across = (carried + chunk[:overlap]).rfind(SEQUENCE_END)
                if across >= 0:
                    self.sequence_end = offset - len(carried) + across + len(SEQUENCE_END)
            carried = chunk[-overlap:] if len(chunk) >= overlap else (carried + chunk)[-overlap:]
            offset += len(chunk)
            yield chunk


@dataclass
class Accepted:
    header: InstanceHeader
    stored: StoredObject


@dataclass
class Outcome:
    """What a STOW request did, instance by instance, for the Store Instances Response."""

    stored: list[tuple[str, str, str]] = field(default_factory=list)
    """(SOP Class UID, SOP Instance UID, RetrieveURL) of the instances now held."""
    failed: list[tuple[str | None, str | None, int]] = field(default_factory=list)
    studies: set[str] = field(default_factory=set)

    @property
    def status(self) -> int:
        if not self.failed:
            return 200
        return 202 if self.stored else 409

    def response(self, urls: DicomUrls) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if len(self.studies) == 1:
            body["00081190"] = {"vr": "UR", "Value": [urls.study(next(iter(self.studies)))]}
        if self.failed:
            body["00081198"] = {"vr": "SQ", "Value": [_failure(*item) for item in self.failed]}
        if self.stored:
            body["00081199"] = {
                "vr": "SQ",
                "Value": [
                    {
                        "00081150": {"vr": "UI", "Value": [sop_class]},
                        "00081155": {"vr": "UI", "Value": [sop]},
                        "00081190": {"vr": "UR", "Value": [url]},
                    }
                    for sop_class, sop, url in self.stored
                ],
            }
        return body


def _failure(sop_class: str | None, sop: str | None, reason: int) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if sop_class:
        item["00081150"] = {"vr": "UI", "Value": [sop_class]}
    if sop:
        item["00081155"] = {"vr": "UI", "Value": [sop]}
    item["00081197"] = {"vr": "US", "Value": [reason]}
    return item


def store_instances(
    hub: Hub,
    principal: Principal,
    parts: Iterable[Part],
    study_uid: str | None,
    filing: Filing = HEADERS_ONLY,
) -> Outcome:
    """Run one STOW request (blocking: call it off the event loop)."""
    outcome = Outcome()
    written: list[str] = []
    try:
        accepted = receive(hub, parts, study_uid, outcome, written)
        if not accepted and not outcome.failed:
            raise FhirError(400, [Issue("invalid", "The multipart body holds no instance")])
        commit(hub, principal, accepted, outcome, written, filing)
    except BaseException:
        remove_objects(hub, written)
        raise
    return outcome


def commit(
    hub: Hub,
    principal: Principal,
    accepted: list[Accepted],
    outcome: Outcome,
    written: list[str],
    filing: Filing = HEADERS_ONLY,
) -> None:
    """Index what was received, in one transaction with one ImagingStudy version per study
    (an upload request, or a DIMSE association); the objects are removed by the caller if it
    fails."""
    if not accepted:
        return
    with hub.db.transaction() as session:
        store = store_for(session, hub.settings, principal)
        _index(hub, store, principal, accepted, outcome, written, filing)
        store.flush()
        absorb_write(hub, principal, store, outcome.status)


def receive(
    hub: Hub,
    parts: Iterable[Part],
    study_uid: str | None,
    outcome: Outcome,
    written: list[str],
) -> list[Accepted]:
    """Store each part and read its header; what is refused is in ``outcome.failed`` (its
    object removed), the keys written are added to ``written``.

    A part that ends within :data:`SMALL_INSTANCE` bytes is read whole and stored by one of
    :data:`IN_FLIGHT` threads while the next parts are read (an object-store put waits on the
    network or the disk most of its time); a larger one streams to the store as it is read.
    Memory is bounded either way: at most ``IN_FLIGHT`` small instances are held at once."""
    accepted: list[Accepted] = []
    pending: deque[Future[Accepted | int]] = deque()

    def settle(future: Future[Accepted | int]) -> None:
        result = future.result()
        if isinstance(result, Accepted):
            accepted.append(result)
        else:
            outcome.failed.append((None, None, result))

    with ThreadPoolExecutor(IN_FLIGHT, thread_name_prefix="stow") as pool:
        for part in parts:
            media = (part.content_type or DICOM).split(";")[0].strip().lower()
            if media != DICOM:
                outcome.failed.append((None, None, SOP_CLASS_NOT_SUPPORTED))
                continue
            key = f"dicom/instances/{uuid.uuid4().hex}"
            written.append(key)
            head, whole = _read_up_to(part.chunks, SMALL_INSTANCE)
            if whole:
                while len(pending) >= IN_FLIGHT:
                    settle(pending.popleft())
                pending.append(pool.submit(_store, hub, key, head, study_uid))
                continue
            while pending:  # keep the answer in the order of the parts
                settle(pending.popleft())
            settle(_done(_store(hub, key, itertools.chain([head], part.chunks), study_uid)))
        while pending:
            settle(pending.popleft())
    return accepted


def _read_up_to(chunks: Iterator[bytes], limit: int) -> tuple[bytes, bool]:
    """The first bytes of a part, and whether they are all of it (it ends within ``limit``)."""
    held: list[bytes] = []
    size = 0
    for chunk in chunks:
        held.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(held), False
    return b"".join(held), True


def _done(result: Accepted | int) -> Future[Accepted | int]:
    future: Future[Accepted | int] = Future()
    future.set_result(result)
    return future


def _store(
    hub: Hub, key: str, data: bytes | Iterable[bytes], study_uid: str | None
) -> Accepted | int:
    """Put one instance (held whole, or streamed) and read its header: what was accepted, or
    the FailureReason."""
    if isinstance(data, bytes):
        capture = Capture([data], hub.settings.dicom_header_bytes)
        for _ in capture:  # what it notes of the instance
            pass
        stored = hub.objects.put(key, data, content_type=DICOM)
    else:
        capture = Capture(data, hub.settings.dicom_header_bytes)
        stored = hub.objects.put(key, iter(capture), content_type=DICOM)
    try:
        header = read_header(bytes(capture.prefix), stored.size, capture.sequence_end)
        header = header.kept(DicomUrls(hub.settings.base_url).pixel_data(header))
        if study_uid is not None and header.study_uid != study_uid:
            raise Refused(DATA_SET_MISMATCH, "the instance is not of the study in the URL")
    except Refused as refusal:
        log.info("STOW part refused: %s", refusal)
        remove_objects(hub, [key])
        return refusal.reason
    return Accepted(header, stored)


def _index(
    hub: Hub,
    store: FhirStore,
    principal: Principal,
    accepted: list[Accepted],
    outcome: Outcome,
    written: list[str],
    filing: Filing,
) -> None:
    session = store.session
    urls = DicomUrls(hub.settings.base_url)
    known = index.existing_instances(session, (a.header.sop_uid for a in accepted))
    fresh: dict[str, list[Accepted]] = {}
    seen: dict[str, str] = {}
    for item in accepted:
        header = item.header
        previous = known.get(header.sop_uid)
        earlier = seen.get(header.sop_uid)
        same = (previous.sha256 if previous else earlier) == item.stored.sha256_hex
        if previous is not None or earlier is not None:
            _drop_after_commit(hub, session, item.stored.key)
            if same and previous is not None:
                outcome.stored.append(_reference(urls, header))
                outcome.studies.add(header.study_uid)
            elif not same:
                outcome.failed.append((header.sop_class_uid, header.sop_uid, DUPLICATE_INSTANCE))
            continue
        seen[header.sop_uid] = item.stored.sha256_hex
        fresh.setdefault(header.study_uid, []).append(item)
    if not fresh:
        return
    ensure_endpoint(store, hub.settings, urls.root)
    for study_uid, items in fresh.items():
        if not _index_study(hub, store, principal, study_uid, items, outcome, written, filing):
            for item in items:
                _drop_after_commit(hub, session, item.stored.key)


def _index_study(
    hub: Hub,
    store: FhirStore,
    principal: Principal,
    study_uid: str,
    items: list[Accepted],
    outcome: Outcome,
    written: list[str],
    filing: Filing,
) -> bool:
    """Index the new instances of one study and write its ImagingStudy; False when they are
    refused (no Patient matches), leaving nothing of them."""
    session = store.session
    urls = DicomUrls(hub.settings.base_url)
    existing = session.get(index.DicomStudy, study_uid)
    resource_id = existing.imaging_study_id if existing is not None else None
    kept: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    if resource_id is not None:
        current = store.read("ImagingStudy", resource_id).content or {}  # 404 if unseen
        kept = {key: current[key] for key in KEPT_ELEMENTS if key in current}
        meta = {k: v for k, v in (current.get("meta") or {}).items() if k in KEPT_META}
    tags = meta.get("tag", [])
    added = [dict(tag) for tag in filing.tags if dict(tag) not in tags]
    if added:
        meta["tag"] = [*tags, *added]
    newest = items[-1].header
    try:
        patient = match_patient(store, principal, newest.text("PatientID"))
    except NoPatient:
        for item in items:
            header = item.header
            outcome.failed.append((header.sop_class_uid, header.sop_uid, PROCESSING_FAILURE))
        return False
    moment = store.moment
    index.add_instances(session, ((item.header, item.stored) for item in items), moment)
    for item in items:
        header = item.header
        index.update_series(session, header, header.metadata_json or "{}")
        outcome.stored.append(_reference(urls, header))
    outcome.studies.add(study_uid)
    attributes = newest.metadata_json or "{}"
    filed_id = resource_id or filing.ids.get(study_uid)
    planned_id = filed_id or uuid.uuid4().hex
    study = index.update_study(session, newest, attributes, planned_id, moment)
    index.recount(session, study_uid)
    for series_uid in {item.header.series_uid for item in items}:
        _rewrite_metadata(hub, store, series_uid, written)
    resource = imaging_study(
        store,
        study,
        resource_id=filed_id,
        patient_id=patient,
        based=based_on(store, principal, newest.text("AccessionNumber")),
    )
    for key, value in kept.items():
        resource.setdefault(key, value)
    if meta:
        resource["meta"] = meta
    stored = write_study(store, principal, resource, filed_id)
    study.imaging_study_id = stored.id
    return True


def _rewrite_metadata(hub: Hub, store: FhirStore, series_uid: str, written: list[str]) -> None:
    """A new metadata object for the series; the row points at it, the old one goes after
    the commit (a rollback removes the new one with the request's other objects)."""
    session = store.session
    session.flush()
    series = session.get(index.DicomSeries, series_uid)
    assert series is not None
    key = f"dicom/metadata/{series_uid}/{uuid.uuid4().hex}.json"
    written.append(key)
    hub.objects.put(
        key, index.series_metadata(session, series_uid), content_type="application/dicom+json"
    )
    if series.metadata_key:
        _drop_after_commit(hub, session, series.metadata_key)
    series.metadata_key = key


def _reference(urls: DicomUrls, header: InstanceHeader) -> tuple[str, str, str]:
    return (header.sop_class_uid, header.sop_uid, urls.instance(header))


def _drop_after_commit(hub: Hub, session: Any, key: str) -> None:
    after_commit(session, lambda: remove_objects(hub, [key]))


def remove_objects(hub: Hub, keys: list[str]) -> None:
    """Delete objects, best effort (what is left is unreferenced, harmless)."""
    for key in keys:
        try:
            hub.objects.delete(key)
        except Exception:  # noqa: BLE001 - best effort: an orphan object is harmless
            log.warning("could not remove object %s", key)
