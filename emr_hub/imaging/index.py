"""The DICOM index in the database: writing the rows of stored instances and keeping each
study's and series' summary (counts, modalities, matching keys) up to date.

QIDO-RS is answered from these rows alone (:mod:`.qido`); WADO-RS finds objects through them.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Iterator
from datetime import datetime

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from emr_hub.imaging.headers import InstanceHeader
from storage.objects import StoredObject
from storage.tables import DicomInstance, DicomSeries, DicomStudy

INSTANCE = DicomInstance.__table__
SERIES = DicomSeries.__table__
STUDY = DicomStudy.__table__


def name_key(name: str | None) -> str | None:
    """A person name for fuzzy matching: upper case, no diacritics, ``^`` and ``=`` as spaces
    (``Nguyễn^Thị Lan`` → ``NGUYEN THI LAN``)."""
    if not name:
        return None
    decomposed = unicodedata.normalize("NFKD", name.replace("Đ", "D").replace("đ", "d"))
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(plain.replace("^", " ").replace("=", " ").upper().split())[:324]


def existing_instances(session: Session, sop_uids: Iterable[str]) -> dict[str, DicomInstance]:
    uids = sorted(set(sop_uids))
    rows: dict[str, DicomInstance] = {}
    for start in range(0, len(uids), 500):
        chunk = uids[start : start + 500]
        for row in session.scalars(select(DicomInstance).where(DicomInstance.sop_uid.in_(chunk))):
            rows[row.sop_uid] = row
    return rows


def add_instances(
    session: Session, items: Iterable[tuple[InstanceHeader, StoredObject]], moment: datetime
) -> None:
    """The rows of newly stored instances, in one statement (no ORM objects: a study of a
    thousand instances would keep a thousand of them, with their metadata, until the commit)."""
    rows = [
        {
            "sop_uid": header.sop_uid,
            "series_uid": header.series_uid,
            "study_uid": header.study_uid,
            "sop_class_uid": header.sop_class_uid,
            "instance_number": header.number("InstanceNumber"),
            "transfer_syntax": header.transfer_syntax,
            "object_key": stored.key,
            "size": stored.size,
            "sha256": stored.sha256_hex,
            "frames": header.frames,
            "rows": header.number("Rows"),
            "columns": header.number("Columns"),
            "frame_bytes": header.frame_bytes,
            "pixel_offset": header.pixel_offset,
            "metadata_json": header.metadata_json or "{}",
            "stored_at": moment,
        }
        for header, stored in items
    ]
    if rows:
        session.execute(insert(INSTANCE), rows)


def _cut(value: str | None, length: int) -> str | None:
    return value[:length] if value else None


def update_series(session: Session, header: InstanceHeader, attributes: str) -> DicomSeries:
    """The series row of ``header``'s series, created or refreshed from its newest instance."""
    row = session.get(DicomSeries, header.series_uid)
    if row is None:
        row = DicomSeries(series_uid=header.series_uid, study_uid=header.study_uid, attributes="")
        session.add(row)
        session.flush()  # found by the next instance of the series
    row.modality = _cut(header.text("Modality"), 16)
    row.series_number = header.number("SeriesNumber")
    row.series_description = _cut(header.text("SeriesDescription"), 64)
    row.body_part = _cut(header.text("BodyPartExamined"), 16)
    row.attributes = attributes
    return row


def update_study(
    session: Session,
    header: InstanceHeader,
    attributes: str,
    imaging_study_id: str,
    moment: datetime,
) -> DicomStudy:
    row = session.get(DicomStudy, header.study_uid)
    if row is None:
        row = DicomStudy(
            study_uid=header.study_uid,
            imaging_study_id=imaging_study_id,
            attributes="",
            updated_at=moment,
        )
        session.add(row)
    name = header.text("PatientName")
    row.patient_id = _cut(header.text("PatientID"), 64)
    row.patient_name = _cut(name, 324)
    row.patient_name_key = name_key(name)
    row.patient_birth_date = _cut(header.text("PatientBirthDate"), 8)
    row.patient_sex = _cut(header.text("PatientSex"), 16)
    row.study_date = _cut(header.text("StudyDate"), 8)
    row.study_time = _cut(header.text("StudyTime"), 16)
    row.accession_number = _cut(header.text("AccessionNumber"), 16)
    row.study_id = _cut(header.text("StudyID"), 16)
    row.study_description = _cut(header.text("StudyDescription"), 64)
    row.referring_physician = _cut(header.text("ReferringPhysicianName"), 324)
    row.attributes = attributes
    row.updated_at = moment
    return row


def recount(session: Session, study_uid: str) -> None:
    """Counts and modalities of a study and its series, from its instance rows."""
    session.flush()
    per_series = dict(
        session.execute(
            select(INSTANCE.c.series_uid, func.count())
            .where(INSTANCE.c.study_uid == study_uid)
            .group_by(INSTANCE.c.series_uid)
        ).all()
    )
    modalities: set[str] = set()
    for series in session.scalars(select(DicomSeries).where(DicomSeries.study_uid == study_uid)):
        series.instance_count = int(per_series.get(series.series_uid, 0))
        if series.modality:
            modalities.add(series.modality)
    study = session.get(DicomStudy, study_uid)
    if study is not None:
        study.series_count = len(per_series)
        study.instance_count = sum(int(count) for count in per_series.values())
        study.modalities = "\\".join(sorted(modalities))[:128]


def series_of(session: Session, study_uid: str) -> list[DicomSeries]:
    query = select(DicomSeries).where(DicomSeries.study_uid == study_uid)
    return list(session.scalars(query.order_by(DicomSeries.series_number, DicomSeries.series_uid)))


def instances_of(
    session: Session, study_uid: str, series_uid: str | None = None
) -> list[DicomInstance]:
    query = select(DicomInstance).where(DicomInstance.study_uid == study_uid)
    if series_uid is not None:
        query = query.where(DicomInstance.series_uid == series_uid)
    order = (DicomInstance.series_uid, DicomInstance.instance_number, DicomInstance.sop_uid)
    return list(session.scalars(query.order_by(*order)))


def series_metadata(session: Session, series_uid: str) -> Iterator[bytes]:
    """The WADO-RS metadata of a series (a JSON array of its instances' DICOM JSON), as it is
    read from the rows."""
    query = (
        select(INSTANCE.c.metadata_json)
        .where(INSTANCE.c.series_uid == series_uid)
        .order_by(INSTANCE.c.instance_number, INSTANCE.c.sop_uid)
        .execution_options(yield_per=200)
    )
    separator = b"["
    for (text,) in session.execute(query):
        yield separator + text.encode()
        separator = b","
    yield b"[]" if separator == b"[" else b"]"


def remove_study(session: Session, study_uid: str) -> list[str]:
    """Delete a study's rows; the keys of its objects (instances and metadata) to remove."""
    keys = list(
        session.scalars(select(INSTANCE.c.object_key).where(INSTANCE.c.study_uid == study_uid))
    )
    keys += [
        key
        for key in session.scalars(
            select(SERIES.c.metadata_key).where(SERIES.c.study_uid == study_uid)
        )
        if key
    ]
    session.execute(delete(INSTANCE).where(INSTANCE.c.study_uid == study_uid))
    session.execute(delete(SERIES).where(SERIES.c.study_uid == study_uid))
    session.execute(delete(STUDY).where(STUDY.c.study_uid == study_uid))
    return keys
