"""QIDO-RS (PS3.18 §10.6): studies, series and instances found in the database index alone,
never by opening an object, and only among the studies the caller may see.

Matching keys (by keyword or tag): StudyInstanceUID, PatientID, PatientName, StudyDate,
StudyTime, AccessionNumber, ModalitiesInStudy, ReferringPhysicianName, StudyID,
StudyDescription; Modality, SeriesInstanceUID, SeriesNumber, SeriesDescription; SOPClassUID,
SOPInstanceUID, InstanceNumber. ``*`` and ``?`` are wildcards; UIDs take a list; dates and
times take ``a-b``, ``a-`` and ``-b`` ranges. PatientName ignores case; with
``fuzzymatching=true`` it also ignores diacritics and matches the start of any name part.
Keys the hub does not index are ignored and named in a ``Warning: 299`` header.
``includefield`` (tags, keywords or ``all``) adds attributes from the level's newest header.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from sqlalchemy import ColumnElement, Select, and_, func, literal, or_, select

from emr_hub.errors import bad_request
from emr_hub.fhir.store import FhirStore
from emr_hub.imaging.access import visible_studies
from emr_hub.imaging.index import INSTANCE, SERIES, STUDY, name_key
from emr_hub.imaging.uids import is_uid
from emr_hub.imaging.urls import DicomUrls
from emr_hub.security.principal import Principal

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
STUDY_LEVEL, SERIES_LEVEL, INSTANCE_LEVEL = "study", "series", "instance"
CONTROL = {"limit", "offset", "includefield", "fuzzymatching"}

Column = Any
_MODALITY = re.compile(r"[A-Z0-9_]{1,16}")

_STUDY_KEYS: dict[str, tuple[Column, str]] = {
    "StudyInstanceUID": (STUDY.c.study_uid, "uid"),
    "PatientID": (STUDY.c.patient_id, "text"),
    "PatientName": (STUDY.c.patient_name, "name"),
    "StudyDate": (STUDY.c.study_date, "range"),
    "StudyTime": (STUDY.c.study_time, "range"),
    "AccessionNumber": (STUDY.c.accession_number, "text"),
    "ReferringPhysicianName": (STUDY.c.referring_physician, "text"),
    "StudyID": (STUDY.c.study_id, "text"),
    "StudyDescription": (STUDY.c.study_description, "text"),
    "ModalitiesInStudy": (SERIES.c.modality, "modalities"),
}
_SERIES_KEYS: dict[str, tuple[Column, str]] = {
    "SeriesInstanceUID": (SERIES.c.series_uid, "uid"),
    "Modality": (SERIES.c.modality, "text"),
    "SeriesNumber": (SERIES.c.series_number, "number"),
    "SeriesDescription": (SERIES.c.series_description, "text"),
}
_INSTANCE_KEYS: dict[str, tuple[Column, str]] = {
    "SOPInstanceUID": (INSTANCE.c.sop_uid, "uid"),
    "SOPClassUID": (INSTANCE.c.sop_class_uid, "uid"),
    "InstanceNumber": (INSTANCE.c.instance_number, "number"),
}
_KEYS_OF_LEVEL = {
    STUDY_LEVEL: _STUDY_KEYS,
    SERIES_LEVEL: {**_STUDY_KEYS, **_SERIES_KEYS},
    INSTANCE_LEVEL: {**_STUDY_KEYS, **_SERIES_KEYS, **_INSTANCE_KEYS},
}


STUDY_COLUMNS = (
    STUDY.c.study_uid,
    STUDY.c.imaging_study_id,
    STUDY.c.patient_id,
    STUDY.c.patient_name,
    STUDY.c.patient_birth_date,
    STUDY.c.patient_sex,
    STUDY.c.study_date,
    STUDY.c.study_time,
    STUDY.c.accession_number,
    STUDY.c.modalities,
    STUDY.c.referring_physician,
    STUDY.c.study_id,
    STUDY.c.study_description,
    STUDY.c.series_count,
    STUDY.c.instance_count.label("study_instances"),
    STUDY.c.attributes.label("study_attributes"),
)
SERIES_COLUMNS = (
    SERIES.c.series_uid,
    SERIES.c.modality,
    SERIES.c.series_number,
    SERIES.c.series_description,
    SERIES.c.instance_count,
)
INSTANCE_COLUMNS = (
    INSTANCE.c.sop_uid,
    INSTANCE.c.sop_class_uid,
    INSTANCE.c.instance_number,
    INSTANCE.c.rows,
    INSTANCE.c.columns,
    INSTANCE.c.frames,
    INSTANCE.c.metadata_json,
)


@dataclass
class Query:
    level: str
    filters: list[tuple[str, str]] = field(default_factory=list)
    include: set[str] = field(default_factory=set)
    include_all: bool = False
    fuzzy: bool = False
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    ignored: list[str] = field(default_factory=list)
    study_uid: str | None = None
    series_uid: str | None = None


def keyword_of(name: str) -> str | None:
    """The attribute keyword a query parameter names (``PatientID`` or ``00100020``)."""
    if len(name) == 8:
        try:
            keyword = keyword_for_tag(int(name, 16))
        except ValueError:
            keyword = ""
        if keyword:
            return keyword
    return name if tag_for_keyword(name) is not None else None


def parse_query(
    level: str, items: list[tuple[str, str]], study_uid: str | None, series_uid: str | None
) -> Query:
    query = Query(level, study_uid=study_uid, series_uid=series_uid)
    keys = _KEYS_OF_LEVEL[level]
    for name, value in items:
        if name in ("limit", "offset"):
            if not value.isdigit():
                raise bad_request(f"{name} must be a non-negative integer", name)
            setattr(query, name, int(value))
        elif name == "fuzzymatching":
            if value not in ("true", "false"):
                raise bad_request("fuzzymatching is true or false", name)
            query.fuzzy = value == "true"
        elif name == "includefield":
            for field_name in (v.strip() for v in value.split(",") if v.strip()):
                if field_name == "all":
                    query.include_all = True
                    continue
                keyword = keyword_of(field_name)
                if keyword is None:
                    raise bad_request(f"includefield {field_name!r} is no DICOM attribute", name)
                query.include.add(keyword)
        else:
            keyword = keyword_of(name)
            if keyword is None:
                raise bad_request(f"{name!r} is no DICOM attribute", name)
            if keyword in keys:
                query.filters.append((keyword, value))
            else:
                query.ignored.append(keyword)
    if query.limit == 0 or query.limit > MAX_LIMIT:
        query.limit = MAX_LIMIT if query.limit > MAX_LIMIT else DEFAULT_LIMIT
    return query


def _like(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _text(column: Column, value: str) -> ColumnElement[bool]:
    if "*" in value or "?" in value:
        return column.like(_like(value), escape="\\")
    return column == value


def _condition(query: Query, keyword: str, value: str) -> ColumnElement[bool] | None:
    column, kind = _KEYS_OF_LEVEL[query.level][keyword]
    if value == "":
        return None  # universal matching: a return key only
    if kind == "uid":
        uids = [u for u in value.replace("\\", ",").split(",") if u]
        if not all(is_uid(u) for u in uids):
            raise bad_request(f"{keyword} takes DICOM UIDs", keyword)
        return column.in_(uids)
    if kind == "range":
        start, dash, end = value.partition("-")
        if not dash:
            return _text(column, value)
        parts = [column >= start] if start else []
        if end:
            parts.append(column <= end + ("" if column is STUDY.c.study_date else "\uffff"))
        return and_(*parts) if parts else None
    if kind == "number":
        if not value.lstrip("-").isdigit():
            raise bad_request(f"{keyword} takes an integer", keyword)
        return column == int(value)
    if kind == "name":
        if query.fuzzy:
            words = (name_key(value.replace("*", " ").replace("?", " ")) or "").split()
            key = STUDY.c.patient_name_key
            return and_(
                *[
                    or_(
                        key.like(f"{_like(w)}%", escape="\\"),
                        key.like(f"% {_like(w)}%", escape="\\"),
                    )
                    for w in words
                ]
            )
        lowered = func.lower(column)
        if "*" in value or "?" in value:
            return lowered.like(_like(value.lower()), escape="\\")
        return lowered == value.lower()
    if kind == "modalities":
        modalities = [m for m in value.replace("\\", ",").split(",") if m]
        if not all(_MODALITY.fullmatch(m) for m in modalities):
            raise bad_request("ModalitiesInStudy takes modality codes (CT, MR ...)", keyword)
        # the study row's own list (CT\MR): one cheap test per row, no subquery per study
        listed = literal("\\") + STUDY.c.modalities + literal("\\")
        return or_(*[listed.like(f"%\\{m}\\%", escape="!") for m in modalities])
    return _text(column, value)


def _select(query: Query, store: FhirStore) -> tuple[Select[Any], dict[str, Any]]:
    visible, params = visible_studies(store)
    if query.level == STUDY_LEVEL:
        statement = select(*STUDY_COLUMNS)
    elif query.level == SERIES_LEVEL:
        statement = select(*STUDY_COLUMNS, *SERIES_COLUMNS, SERIES.c.attributes).join(
            STUDY, STUDY.c.study_uid == SERIES.c.study_uid
        )
    else:
        statement = (
            select(*STUDY_COLUMNS, *SERIES_COLUMNS[:3], *INSTANCE_COLUMNS)
            .select_from(INSTANCE)
            .join(SERIES, SERIES.c.series_uid == INSTANCE.c.series_uid)
            .join(STUDY, STUDY.c.study_uid == INSTANCE.c.study_uid)
        )
    conditions = [visible]
    if query.study_uid is not None:
        conditions.append(STUDY.c.study_uid == query.study_uid)
    if query.series_uid is not None:
        conditions.append(SERIES.c.series_uid == query.series_uid)
    for keyword, value in query.filters:
        condition = _condition(query, keyword, value)
        if condition is not None:
            conditions.append(condition)
    statement = statement.where(*conditions)
    if query.level == STUDY_LEVEL:
        order = [STUDY.c.study_date.desc(), STUDY.c.study_uid]
    elif query.level == SERIES_LEVEL:
        order = [SERIES.c.study_uid, SERIES.c.series_number, SERIES.c.series_uid]
    else:
        order = [
            SERIES.c.series_number,
            SERIES.c.series_uid,
            INSTANCE.c.instance_number,
            INSTANCE.c.sop_uid,
        ]
    return statement.order_by(*order).limit(query.limit).offset(query.offset), params


def search(
    store: FhirStore, principal: Principal, query: Query, urls: DicomUrls
) -> list[dict[str, Any]]:
    """The matches of ``query``, as DICOM JSON; the ImagingStudies they belong to are disclosed
    to the audit trail."""
    principal.require("ImagingStudy", "s")
    statement, params = _select(query, store)
    rows = [row._mapping for row in store.session.execute(statement, params)]
    ids = list(dict.fromkeys(row["imaging_study_id"] for row in rows))
    store.load_many(("ImagingStudy", i) for i in ids)
    render = _RENDERERS[query.level]
    return [render(row, query, urls) for row in rows]


def _value(vr: str, value: Any) -> dict[str, Any]:
    if value is None or value == "" or value == []:
        return {"vr": vr}
    values = value if isinstance(value, list) else [value]
    if vr == "PN":
        values = [{"Alphabetic": v} for v in values]
    return {"vr": vr, "Value": values}


def _element(keyword: str, value: Any) -> tuple[str, dict[str, Any]]:
    tag = tag_for_keyword(keyword)
    assert tag is not None
    return f"{tag:08X}", _value(dictionary_VR(tag), value)


def _study_attributes(row: Any, urls: DicomUrls) -> dict[str, Any]:
    values = {
        "SpecificCharacterSet": "ISO_IR 192",
        "StudyDate": row["study_date"],
        "StudyTime": row["study_time"],
        "AccessionNumber": row["accession_number"],
        "ModalitiesInStudy": [m for m in (row["modalities"] or "").split("\\") if m],
        "ReferringPhysicianName": row["referring_physician"],
        "PatientName": row["patient_name"],
        "PatientID": row["patient_id"],
        "PatientBirthDate": row["patient_birth_date"],
        "PatientSex": row["patient_sex"],
        "StudyInstanceUID": row["study_uid"],
        "StudyID": row["study_id"],
        "StudyDescription": row["study_description"],
        "NumberOfStudyRelatedSeries": row["series_count"],
        "NumberOfStudyRelatedInstances": row["study_instances"],
    }
    return dict(_element(k, v) for k, v in values.items())


def _included(body: dict[str, Any], attributes: str, query: Query) -> dict[str, Any]:
    if not (query.include or query.include_all):
        return body
    stored: dict[str, Any] = orjson.loads(attributes)
    stored.pop("7FE00010", None)
    if query.include_all:
        return {**stored, **body}
    for keyword in query.include:
        tag = f"{tag_for_keyword(keyword):08X}"
        if tag not in body and tag in stored:
            body[tag] = stored[tag]
    return body


def _study(row: Any, query: Query, urls: DicomUrls) -> dict[str, Any]:
    body = _study_attributes(row, urls)
    body["00081190"] = _value("UR", urls.study(row["study_uid"]))
    return dict(sorted(_included(body, row["study_attributes"], query).items()))


def _series_attributes(row: Any) -> dict[str, Any]:
    return dict(
        [
            _element("Modality", row["modality"]),
            _element("SeriesInstanceUID", row["series_uid"]),
            _element("SeriesNumber", row["series_number"]),
        ]
    )


def _series(row: Any, query: Query, urls: DicomUrls) -> dict[str, Any]:
    body = _study_attributes(row, urls) if query.study_uid is None else {}
    body.update(_series_attributes(row))
    body.update(
        [
            _element("StudyInstanceUID", row["study_uid"]),
            _element("SeriesDescription", row["series_description"]),
            _element("NumberOfSeriesRelatedInstances", row["instance_count"]),
        ]
    )
    body["00081190"] = _value("UR", urls.series(row["study_uid"], row["series_uid"]))
    return dict(sorted(_included(body, row["attributes"], query).items()))


def _instance(row: Any, query: Query, urls: DicomUrls) -> dict[str, Any]:
    body = _study_attributes(row, urls) if query.study_uid is None else {}
    if query.series_uid is None:
        body.update(_series_attributes(row))
    body.update(
        [
            _element("StudyInstanceUID", row["study_uid"]),
            _element("SeriesInstanceUID", row["series_uid"]),
            _element("SOPClassUID", row["sop_class_uid"]),
            _element("SOPInstanceUID", row["sop_uid"]),
            _element("InstanceAvailability", "ONLINE"),
            _element("InstanceNumber", row["instance_number"]),
            _element("Rows", row["rows"]),
            _element("Columns", row["columns"]),
            _element("NumberOfFrames", row["frames"]),
        ]
    )
    base = urls.series(row["study_uid"], row["series_uid"])
    body["00081190"] = _value("UR", f"{base}/instances/{row['sop_uid']}")
    return dict(sorted(_included(body, row["metadata_json"], query).items()))


_RENDERERS: dict[str, Callable[[Any, Query, DicomUrls], dict[str, Any]]] = {
    STUDY_LEVEL: _study,
    SERIES_LEVEL: _series,
    INSTANCE_LEVEL: _instance,
}
