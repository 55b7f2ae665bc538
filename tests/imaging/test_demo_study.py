"""The demo's DICOM study (:mod:`emr_hub.demo_imaging`): after ``emr-hub demo`` the hub serves
Bắc Ninh general's CT of the demo patient at ``/dicomweb`` to the hospitals that cared for her,
from the configured object store (a folder or S3), on both databases; the letter to Bạch Mai
brings it along; loading the demo again stores nothing, and ``--reset`` repairs it."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from sqlalchemy import func, select

from emr_hub.demo import BY_ID, DEMO_PATIENT_ID, DEMO_TAG, PATIENTS, load_demo
from emr_hub.demo_chain import BAC_NINH_CT, SECOND_REFERRAL
from emr_hub.demo_imaging import INSTANCE_UID, SERIES_UID, STUDY_UID, demo_instance
from emr_hub.fhir.store import HISTORY, FhirStore
from emr_hub.imaging.uids import is_uid
from tests.fhir.conftest import token_for
from tests.imaging.conftest import Hospital, ServedHub
from tests.imaging.test_wado import multipart_parts

LAN = PATIENTS[0]
STUDY = f"/dicomweb/studies/{STUDY_UID}"
INSTANCE = f"{STUDY}/series/{SERIES_UID}/instances/{INSTANCE_UID}"
FHIR = {"Content-Type": "application/fhir+json"}


@pytest.fixture
def demo(served: ServedHub) -> Iterator[ServedHub]:
    """The served hub with the demo loaded (by the code ``emr-hub demo`` runs)."""
    load_demo(served.hub)
    yield served


def hospital(served: ServedHub, client_id: str) -> Hospital:
    return Hospital(client_id, token_for(served.hub, "system/*.cruds", client_id))


def the_instance() -> bytes:
    return demo_instance(BY_ID["bac-ninh-general"], LAN)


def studies_of_lan(served: ServedHub, who: Hospital) -> list[str]:
    with served.http(who) as http:
        answer = http.get("/dicomweb/studies", params={"PatientID": LAN.cccd})
    assert answer.status_code in (200, 204), answer.text
    found = answer.json() if answer.status_code == 200 else []
    return [study["0020000D"]["Value"][0] for study in found]


def imaging_versions(served: ServedHub) -> int:
    with served.hub.db.snapshot() as session:
        query = select(func.count()).where(
            HISTORY.c.resource_type == "ImagingStudy", HISTORY.c.id == BAC_NINH_CT
        )
        return session.scalar(query) or 0


def current(served: ServedHub, resource_type: str, resource_id: str) -> dict[str, Any]:
    with served.hub.db.snapshot() as session:
        stored = FhirStore(session).current(resource_type, resource_id)
    assert stored is not None and stored.content is not None
    return stored.content


def test_the_demo_instance_is_the_patients_and_keeps_nothing_of_the_test_file() -> None:
    data = the_instance()
    assert data == the_instance()  # the same bytes on every run
    ds = pydicom.dcmread(io.BytesIO(data))
    assert (ds.PatientID, str(ds.PatientName)) == (LAN.cccd, "Nguyễn^Thị Lan")
    assert (ds.PatientBirthDate, ds.PatientSex, ds.StudyDate) == ("19850412", "F", "20261022")
    uids = [ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.FrameOfReferenceUID]
    assert [uid.startswith("2.25.") and is_uid(uid) for uid in uids] == [True] * 4
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert not any(element.tag.is_private for element in ds)
    original = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    leftovers = [
        str(original[keyword].value)
        for keyword in ("PatientName", "PatientID", "InstitutionName", "StationName")
    ] + [original.StudyInstanceUID, original.SOPInstanceUID, original.FrameOfReferenceUID]
    text = data.decode("latin-1")
    assert [value for value in leftovers if value in text] == []
    assert "OtherPatientIDsSequence" not in ds and "InstanceCreatorUID" not in ds


def test_the_hospitals_that_cared_for_her_find_and_fetch_the_study(demo: ServedHub) -> None:
    bach_mai, bac_ninh = hospital(demo, "bach-mai"), hospital(demo, "bac-ninh-general")
    commune = hospital(demo, "bac-ninh-commune")  # never saw her

    assert studies_of_lan(demo, bach_mai) == [STUDY_UID]  # the letter it received, its stay
    assert studies_of_lan(demo, bac_ninh) == [STUDY_UID]
    assert studies_of_lan(demo, hospital(demo, "bac-ninh-district")) == [STUDY_UID]  # her visit
    assert studies_of_lan(demo, commune) == []
    with demo.http(bach_mai) as http:
        fetched = http.get(
            INSTANCE, headers={"Accept": 'multipart/related; type="application/dicom"'}
        )
        metadata = http.get(f"{STUDY}/metadata")
    assert fetched.status_code == 200, fetched.text
    assert [body for _, body in multipart_parts(fetched)] == [the_instance()]
    assert metadata.status_code == 200, metadata.text
    [attributes] = metadata.json()
    assert attributes["00100020"]["Value"] == [LAN.cccd]
    assert attributes["00080080"]["Value"] == ["Bệnh viện Đa khoa tỉnh Bắc Ninh"]
    with demo.http(commune) as http:
        assert http.get(f"{STUDY}/metadata").status_code == 404
    assert [key.split("/")[1] for key in demo.object_keys()] == ["instances", "metadata"]


def test_the_letter_to_bach_mai_brings_the_tagged_study(demo: ServedHub) -> None:
    imaging = current(demo, "ImagingStudy", BAC_NINH_CT)
    assert DEMO_TAG in imaging["meta"]["tag"]
    assert imaging["subject"] == {"reference": f"Patient/{DEMO_PATIENT_ID}"}
    assert imaging["identifier"][0]["value"] == f"urn:oid:{STUDY_UID}"
    assert imaging["numberOfInstances"] == 1
    letter = current(demo, "ServiceRequest", SECOND_REFERRAL)
    assert {"reference": f"ImagingStudy/{BAC_NINH_CT}"} in letter["supportingInfo"]

    with demo.http(hospital(demo, "bach-mai")) as http:
        history = http.get(f"/fhir/Patient/{DEMO_PATIENT_ID}/$referral-history")
    assert history.status_code == 200, history.text
    entries = [
        (e["resource"]["resourceType"], e["resource"]["id"]) for e in history.json()["entry"]
    ]
    after_letter = entries[entries.index(("ServiceRequest", SECOND_REFERRAL)) :]
    position = after_letter.index(("ImagingStudy", BAC_NINH_CT))
    assert after_letter[position + 1] == ("Endpoint", "dicomweb")


def test_a_second_demo_stores_nothing(demo: ServedHub) -> None:
    keys, versions = demo.object_keys(), imaging_versions(demo)
    assert versions == 1

    again = load_demo(demo.hub)

    assert again.written == [] and again.kept == []
    assert (demo.object_keys(), imaging_versions(demo)) == (keys, versions)


def test_a_changed_or_deleted_study_is_kept_until_reset(demo: ServedHub) -> None:
    bac_ninh = hospital(demo, "bac-ninh-general")
    edited = {**current(demo, "ImagingStudy", BAC_NINH_CT), "note": [{"text": "Đã đọc"}]}
    with demo.http(bac_ninh) as http:
        answer = http.put(f"/fhir/ImagingStudy/{BAC_NINH_CT}", json=edited, headers=FHIR)
    assert answer.status_code == 200, answer.text

    assert load_demo(demo.hub).kept == [f"ImagingStudy/{BAC_NINH_CT}"]
    assert current(demo, "ImagingStudy", BAC_NINH_CT)["note"] == edited["note"]
    assert f"ImagingStudy/{BAC_NINH_CT}" in load_demo(demo.hub, reset=True).written
    repaired = current(demo, "ImagingStudy", BAC_NINH_CT)
    assert "note" not in repaired and DEMO_TAG in repaired["meta"]["tag"]

    with demo.http(bac_ninh) as http:
        assert http.delete(f"/fhir/ImagingStudy/{BAC_NINH_CT}").status_code in (200, 204)
    assert studies_of_lan(demo, bac_ninh) == []
    assert load_demo(demo.hub).kept == [f"ImagingStudy/{BAC_NINH_CT}"]
    assert studies_of_lan(demo, bac_ninh) == []

    assert f"ImagingStudy/{BAC_NINH_CT}" in load_demo(demo.hub, reset=True).written
    assert studies_of_lan(demo, hospital(demo, "bach-mai")) == [STUDY_UID]
    with demo.http(bac_ninh) as http:
        fetched = http.get(
            INSTANCE, headers={"Accept": 'multipart/related; type="application/dicom"'}
        )
    assert [body for _, body in multipart_parts(fetched)] == [the_instance()]
    assert DEMO_TAG in current(demo, "ImagingStudy", BAC_NINH_CT)["meta"]["tag"]
