"""The FHIR side of a DICOM study: its ImagingStudy, made from the index rows of its headers
and written through the FHIR store as the sending hospital (policy, audit, Subscriptions).

* ``identifier``: ``urn:dicom:uid`` = ``urn:oid:<Study Instance UID>``, and the accession
  number (type ``ACSN``) when there is one;
* ``subject``: the Patient matched by the header's PatientID (:func:`match_patient`);
* ``basedOn``: the ServiceRequest whose identifier equals the AccessionNumber, when exactly
  one is visible to the sender;
* ``endpoint``: the hub's ``dicom-wado-rs`` Endpoint (``Endpoint/dicomweb``, made by the hub);
* series and instances with their UIDs, numbers, SOP classes and counts.
"""

from __future__ import annotations

from typing import Any

from emr_hub.config import Settings
from emr_hub.errors import FhirError
from emr_hub.fhir import interactions
from emr_hub.fhir.identifiers import CCCD, identifier_problem
from emr_hub.fhir.store import FhirStore, Stored
from emr_hub.imaging.index import instances_of, series_of
from emr_hub.security.access import store_for
from emr_hub.security.principal import Principal
from storage.tables import DicomStudy

DICOM_UID = "urn:dicom:uid"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
ENDPOINT_ID = "dicomweb"
CONNECTION_TYPES = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"


class NoPatient(Exception):
    """No Patient of the sender matches the instance's PatientID."""


def match_patient(store: FhirStore, principal: Principal, patient_id: str | None) -> str:
    """The id of the Patient a PatientID names, for the sending hospital.

    A PatientID shaped like a CCCD is looked up under ``sid/cccd`` among the Patients the
    sender may see (its own first); any other PatientID is the sender's own patient number,
    matched against the identifiers of the Patients the sender wrote. Without a single match
    the instances are refused (:class:`NoPatient`): images are never filed under a patient
    made up from modality headers."""
    if not patient_id:
        raise NoPatient
    if identifier_problem(CCCD, patient_id) is None:
        ids = interactions.find_matches(
            store, principal, "Patient", f"identifier={CCCD}|{patient_id}", "PatientID", limit=20
        )
        if ids:
            return _prefer_own(store, principal, ids)
    ids = interactions.find_matches(
        store, principal, "Patient", f"identifier={patient_id}", "PatientID", limit=20
    )
    own = [i for i in ids if store.read("Patient", i).owner == principal.organization]
    if len(own) != 1:
        raise NoPatient
    return own[0]


def _prefer_own(store: FhirStore, principal: Principal, ids: list[str]) -> str:
    own = [i for i in ids if store.read("Patient", i).owner == principal.organization]
    return (own or sorted(ids))[0]


def based_on(store: FhirStore, principal: Principal, accession: str | None) -> list[dict[str, str]]:
    if not accession or not principal.allows("ServiceRequest", "s"):
        return []
    ids = interactions.find_matches(
        store, principal, "ServiceRequest", f"identifier={accession}", "AccessionNumber"
    )
    return [{"reference": f"ServiceRequest/{ids[0]}"}] if len(ids) == 1 else []


def ensure_endpoint(store: FhirStore, settings: Settings, address: str) -> None:
    """The hub's DICOMweb Endpoint, written by the hub itself (a directory entry all read)."""
    if store.exists("Endpoint", ENDPOINT_ID):
        return
    hub_store = store_for(store.session, settings, None)
    resource = {
        "resourceType": "Endpoint",
        "id": ENDPOINT_ID,
        "status": "active",
        "name": "emr_hub DICOMweb (QIDO-RS, WADO-RS, STOW-RS)",
        "connectionType": {"system": CONNECTION_TYPES, "code": "dicom-wado-rs"},
        "payloadType": [{"coding": [{"system": DCM, "code": "110150", "display": "Application"}]}],
        "payloadMimeType": ["application/dicom", "application/dicom+json"],
        "address": address,
    }
    hub_store.update("Endpoint", ENDPOINT_ID, resource)
    hub_store.flush()


def imaging_study(
    store: FhirStore,
    study: DicomStudy,
    *,
    resource_id: str | None,
    patient_id: str,
    based: list[dict[str, str]],
) -> dict[str, Any]:
    """The ImagingStudy of ``study`` from its index rows (after :func:`index.recount`)."""
    session = store.session
    instances = instances_of(session, study.study_uid)
    by_series: dict[str, list[dict[str, Any]]] = {}
    for row in instances:
        entry: dict[str, Any] = {
            "uid": row.sop_uid,
            "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{row.sop_class_uid}"},
        }
        if row.instance_number is not None and row.instance_number >= 0:
            entry["number"] = row.instance_number
        by_series.setdefault(row.series_uid, []).append(entry)
    series = []
    for row in series_of(session, study.study_uid):
        item: dict[str, Any] = {"uid": row.series_uid}
        if row.series_number is not None and row.series_number >= 0:
            item["number"] = row.series_number
        item["modality"] = {"system": DCM, "code": row.modality or "OT"}
        if row.series_description:
            item["description"] = row.series_description
        item["numberOfInstances"] = row.instance_count
        if row.body_part:
            item["bodySite"] = {"display": row.body_part}
        item["instance"] = by_series.get(row.series_uid, [])
        series.append(item)
    identifiers: list[dict[str, Any]] = [
        {"system": DICOM_UID, "value": f"urn:oid:{study.study_uid}"}
    ]
    if study.accession_number:
        identifiers.append(
            {
                "type": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}
                    ]
                },
                "value": study.accession_number,
            }
        )
    resource: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "identifier": identifiers,
        "status": "available",
        "modality": [{"system": DCM, "code": m} for m in study.modalities.split("\\") if m],
        "subject": {"reference": f"Patient/{patient_id}"},
    }
    if resource_id is not None:
        resource["id"] = resource_id
    started = dicom_datetime(study.study_date, study.study_time)
    if started:
        resource["started"] = started
    if based:
        resource["basedOn"] = based
    resource["endpoint"] = [{"reference": f"Endpoint/{ENDPOINT_ID}"}]
    resource["numberOfSeries"] = study.series_count
    resource["numberOfInstances"] = study.instance_count
    if study.study_description:
        resource["description"] = study.study_description
    resource["series"] = series
    return resource


def write_study(
    store: FhirStore, principal: Principal, resource: dict[str, Any], resource_id: str | None
) -> Stored:
    """Create or update the ImagingStudy as the sender (scopes, policy and hooks apply)."""
    if resource_id is None:
        result = interactions.create(store, principal, "ImagingStudy", resource)
    else:
        result = interactions.update(store, principal, "ImagingStudy", resource_id, resource)
    if result.stored is None:  # pragma: no cover - create and update always return a version
        raise FhirError(500, [])
    return result.stored


def dicom_datetime(date: str | None, time: str | None) -> str | None:
    """A FHIR dateTime from DICOM DA and TM (the hub's local time, Asia/Ho_Chi_Minh)."""
    if not date or len(date) != 8 or not date.isdigit():
        return None
    day = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    digits = (time or "").split(".")[0]
    if len(digits) < 4 or not digits.isdigit():
        return day
    seconds = digits[4:6] if len(digits) >= 6 else "00"
    return f"{day}T{digits[:2]}:{digits[2:4]}:{seconds}+07:00"
