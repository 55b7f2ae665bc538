"""The ImagingStudy made from the headers: field by field, its patient (by CCCD or by the
sender's own patient number), its ServiceRequest, its Endpoint, one version per upload, and
the audit records of DICOMweb requests."""

from __future__ import annotations

from typing import Any

import pydicom
from pydicom.uid import generate_uid
from sqlalchemy import select

from emr_hub.security.audit.log import EVENT
from storage.tables import AuditPatientRow
from tests.imaging.conftest import (
    CT,
    MR,
    Hospital,
    ServedHub,
    instance,
    part10,
    related_body,
    stow_headers,
)

CCCD = "001085012345"
FHIR = {"Content-Type": "application/fhir+json"}


def stow(served: ServedHub, hospital: Hospital, datasets: list[Any]) -> Any:
    with served.http(hospital) as client:
        answer = client.post(
            "/dicomweb/studies",
            content=related_body([part10(d) for d in datasets]),
            headers=stow_headers(),
        )
    assert answer.status_code == 200, answer.text
    return answer


def imaging_study(served: ServedHub, hospital: Hospital, study: str) -> dict[str, Any]:
    with served.http(hospital) as client:
        bundle = client.get(
            "/fhir/ImagingStudy", params={"identifier": f"urn:dicom:uid|urn:oid:{study}"}
        ).json()
    [entry] = bundle["entry"]
    return dict(entry["resource"])


def test_the_imaging_study_matches_the_headers(served: ServedHub, hospital_a: Hospital) -> None:
    patient = served.patient(hospital_a, "BN-0001")
    with served.http(hospital_a) as client:
        order = client.post(
            "/fhir/ServiceRequest",
            json={
                "resourceType": "ServiceRequest",
                "status": "active",
                "intent": "order",
                "identifier": [{"system": "urn:emr-hub:test:accession", "value": "ACC-77"}],
                "code": {"text": "CT ngực"},
                "subject": {"reference": f"Patient/{patient}"},
            },
            headers=FHIR,
        ).json()
    study, ct_series, mr_series = generate_uid(), generate_uid(), generate_uid()
    same = {"accession": "ACC-77", "StudyDate": "20261101", "StudyTime": "083015.25"}
    datasets = [instance(CT, study=study, series=ct_series, number=n, **same) for n in (1, 2)]
    datasets.append(instance(MR, study=study, series=mr_series, number=7, **same))
    stow(served, hospital_a, datasets)

    resource = imaging_study(served, hospital_a, study)

    header = pydicom.dcmread(CT, stop_before_pixels=True)
    assert resource["identifier"][0] == {"system": "urn:dicom:uid", "value": f"urn:oid:{study}"}
    assert resource["identifier"][1]["value"] == "ACC-77"
    assert resource["status"] == "available"
    assert resource["subject"] == {"reference": f"Patient/{patient}"}
    assert resource["basedOn"] == [{"reference": f"ServiceRequest/{order['id']}"}]
    assert resource["started"] == "2026-11-01T08:30:15+07:00"
    assert [m["code"] for m in resource["modality"]] == ["CT", "MR"]
    assert resource["numberOfSeries"] == 2
    assert resource["numberOfInstances"] == 3
    by_uid = {s["uid"]: s for s in resource["series"]}
    assert set(by_uid) == {ct_series, mr_series}
    assert by_uid[ct_series]["modality"]["code"] == "CT"
    assert by_uid[ct_series]["numberOfInstances"] == 2
    assert by_uid[ct_series]["number"] == int(header.SeriesNumber)
    ct_instances = by_uid[ct_series]["instance"]
    assert [i["uid"] for i in ct_instances] == [d.SOPInstanceUID for d in datasets[:2]]
    assert [i["number"] for i in ct_instances] == [1, 2]
    assert ct_instances[0]["sopClass"]["code"] == f"urn:oid:{header.SOPClassUID}"
    assert by_uid[mr_series]["instance"][0]["number"] == 7
    [endpoint_reference] = resource["endpoint"]
    with served.http(hospital_a) as client:
        endpoint = client.get(f"/fhir/{endpoint_reference['reference']}").json()
    assert endpoint["connectionType"]["code"] == "dicom-wado-rs"
    assert endpoint["address"] == f"{served.base}/dicomweb"
    assert resource["meta"]["versionId"] == "1"  # one version for the whole upload


def test_one_version_per_upload_and_the_cccd_matches(
    served: ServedHub, hospital_a: Hospital, hospital_b: Hospital
) -> None:
    served.patient(hospital_b, "B-77", cccd="001085099999")
    unseen = instance(CT, study=generate_uid(), patient_id="001085099999")
    with served.http(hospital_a) as client:
        refused = client.post(
            "/dicomweb/studies", content=related_body([part10(unseen)]), headers=stow_headers()
        )
    assert refused.status_code == 409  # a CCCD matches only among the Patients one may see
    patient = served.patient(hospital_a, "A-77", cccd=CCCD)
    study, series = generate_uid(), generate_uid()
    stow(served, hospital_a, [instance(CT, study=study, series=series, patient_id=CCCD)])
    first = imaging_study(served, hospital_a, study)
    assert first["subject"] == {"reference": f"Patient/{patient}"}
    stow(
        served,
        hospital_a,
        [instance(CT, study=study, series=series, number=n, patient_id=CCCD) for n in (2, 3)],
    )
    second = imaging_study(served, hospital_a, study)
    assert second["id"] == first["id"]
    assert second["meta"]["versionId"] == "2"
    assert second["numberOfInstances"] == 3
    assert "basedOn" not in second  # no ServiceRequest carries an accession number


def test_a_later_upload_keeps_the_tags_and_security_labels(
    served: ServedHub, hospital_a: Hospital
) -> None:
    served.patient(hospital_a, "A-78", cccd=CCCD)
    study, series = generate_uid(), generate_uid()
    stow(served, hospital_a, [instance(CT, study=study, series=series, patient_id=CCCD)])
    labelled = imaging_study(served, hospital_a, study)
    tag = {"system": "urn:emr-hub:test:tags", "code": "teaching"}
    restricted = {
        "system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
        "code": "R",
    }
    labelled["meta"] = {"tag": [tag], "security": [restricted]}
    with served.http(hospital_a) as client:
        put = client.put(f"/fhir/ImagingStudy/{labelled['id']}", json=labelled, headers=FHIR)
    assert put.status_code == 200, put.text

    stow(served, hospital_a, [instance(CT, study=study, series=series, number=2, patient_id=CCCD)])

    rewritten = imaging_study(served, hospital_a, study)
    assert rewritten["numberOfInstances"] == 2
    assert (rewritten["meta"]["tag"], rewritten["meta"]["security"]) == ([tag], [restricted])


def test_dicomweb_requests_are_audited_with_the_patient(
    served: ServedHub, hospital_a: Hospital, hospital_b: Hospital
) -> None:
    patient = served.patient(hospital_a, "BN-0001")
    study = generate_uid()
    stow(served, hospital_a, [instance(CT, study=study)])
    with served.http(hospital_a) as client:
        client.get(f"/dicomweb/studies/{study}/metadata", headers={"X-Request-Id": "wado-read-1"})
        client.get("/dicomweb/studies", headers={"X-Request-Id": "qido-search-1"})
    with served.http(hospital_b) as client:
        client.get(f"/dicomweb/studies/{study}", headers={"X-Request-Id": "wado-refused-1"})
    with served.hub.db.snapshot() as session:
        events = {
            row.request_id: row
            for row in session.execute(
                select(EVENT.c.seq, EVENT.c.request_id, EVENT.c.organization, EVENT.c.outcome)
            )
        }
        patients = {
            seq: patient_id
            for seq, patient_id in session.execute(
                select(AuditPatientRow.audit_seq, AuditPatientRow.patient_id)
            )
        }
    read, search, refused = (events[i] for i in ("wado-read-1", "qido-search-1", "wado-refused-1"))
    assert read.organization == "Organization/bv-bac-ninh"
    assert read.outcome == "0"
    assert patients[read.seq] == patient
    assert patients[search.seq] == patient
    assert refused.organization == "Organization/bv-bach-mai"
    assert refused.outcome != "0"
