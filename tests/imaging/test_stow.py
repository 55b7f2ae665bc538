"""STOW-RS over HTTP: the Store Instances Response and its statuses, idempotent re-sends,
refused re-uses of a UID, and bad input of every kind leaving nothing stored."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from emr_hub.hub import Hub
from emr_hub.imaging.index import INSTANCE
from emr_hub.main import create_app
from tests.conftest import free_port, make_settings
from tests.fhir.conftest import token_for
from tests.imaging.conftest import (
    CT,
    MR,
    TEST_FILES,
    Hospital,
    ServedHub,
    instance,
    part10,
    related_body,
    stow_headers,
)

FAILED, REFERENCED, REASON = "00081198", "00081199", "00081197"


def stow(served: ServedHub, hospital: Hospital, body: Any, **kwargs: Any) -> Any:
    headers = kwargs.pop("headers", stow_headers())
    with served.http(hospital) as client:
        return client.post(kwargs.pop("path", "/dicomweb/studies"), content=body, headers=headers)


def reasons(answer: Any) -> list[int]:
    return [item[REASON]["Value"][0] for item in answer.json().get(FAILED, {}).get("Value", [])]


def referenced(answer: Any) -> list[str]:
    items = answer.json().get(REFERENCED, {}).get("Value", [])
    return [item["00081155"]["Value"][0] for item in items]


@pytest.fixture
def patient(served: ServedHub, hospital_a: Hospital) -> str:
    return served.patient(hospital_a, "BN-0001")


def test_all_stored_is_200_with_retrieve_urls(
    served: ServedHub, hospital_a: Hospital, patient: str
) -> None:
    study = generate_uid()
    datasets = [instance(CT, study=study, number=1), instance(MR, study=study, number=1)]

    answer = stow(served, hospital_a, related_body([part10(d) for d in datasets]))

    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/dicom+json")
    body = answer.json()
    assert body["00081190"]["Value"] == [f"{served.base}/dicomweb/studies/{study}"]
    assert sorted(referenced(answer)) == sorted(d.SOPInstanceUID for d in datasets)
    for item in body[REFERENCED]["Value"]:
        with served.http(hospital_a) as client:
            got = client.get(item["00081190"]["Value"][0], headers={"Accept": "*/*"})
        assert got.status_code == 200
    assert FAILED not in body
    assert len([k for k in served.object_keys() if k.startswith("dicom/instances/")]) == 2


def test_same_bytes_again_is_idempotent_and_other_bytes_are_refused(
    served: ServedHub, hospital_a: Hospital, patient: str
) -> None:
    study = generate_uid()
    original = instance(CT, study=study)
    data = part10(original)
    assert stow(served, hospital_a, related_body([data])).status_code == 200
    keys = served.object_keys()

    again = stow(served, hospital_a, related_body([data]))

    assert again.status_code == 200
    assert referenced(again) == [original.SOPInstanceUID]
    assert served.object_keys() == keys
    changed = pydicom.dcmread(CT)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "PatientID"):
        setattr(changed, keyword, getattr(original, keyword))
    changed.file_meta.MediaStorageSOPInstanceUID = original.SOPInstanceUID
    changed.StudyDescription = "something else"
    fresh = instance(CT, study=study)

    refused = stow(served, hospital_a, related_body([part10(changed), part10(fresh)]))

    assert refused.status_code == 202
    assert reasons(refused) == [0x0111]
    assert referenced(refused) == [fresh.SOPInstanceUID]
    with served.http(hospital_a) as client:
        meta = client.get(
            f"/dicomweb/studies/{study}/series/{original.SeriesInstanceUID}"
            f"/instances/{original.SOPInstanceUID}/metadata"
        )
    assert "00081030" not in meta.json()[0] or meta.json()[0]["00081030"].get("Value") != [
        "something else"
    ]


def _nothing_stored(served: ServedHub) -> None:
    assert served.object_keys() == []
    assert served.index_rows() == 0


def test_parts_that_are_no_instance_are_refused_and_nothing_is_stored(
    served: ServedHub, hospital_a: Hospital, patient: str
) -> None:
    study = generate_uid()
    good = instance(CT, study=study)
    bad_uid = instance(CT, study=study)
    bad_uid.SOPInstanceUID = "1.2.3/../../etc"
    bad_uid.file_meta.MediaStorageSOPInstanceUID = "1.2.3/../../etc"
    leading_zero = instance(CT, study="1.02.3")
    whole = part10(good)
    parts = [
        b"this is not DICOM at all",
        part10(bad_uid),
        part10(leading_zero),
        whole[: len(whole) - 1000],  # truncated inside the pixel data
        (TEST_FILES / "MR_truncated.dcm").read_bytes(),
        (TEST_FILES / "no_meta.dcm").read_bytes(),  # no Part 10 file meta
    ]

    answer = stow(served, hospital_a, related_body(parts))

    assert answer.status_code == 409, answer.text
    assert reasons(answer) == [0xC000] * len(parts)
    assert REFERENCED not in answer.json()
    _nothing_stored(served)


def test_some_refused_is_202(served: ServedHub, hospital_a: Hospital, patient: str) -> None:
    study = generate_uid()
    good = instance(CT, study=study)
    answer = stow(served, hospital_a, related_body([b"not DICOM", part10(good)]))
    assert answer.status_code == 202
    assert referenced(answer) == [good.SOPInstanceUID]
    assert reasons(answer) == [0xC000]
    assert len(served.object_keys()) == 2  # the instance and its series' metadata


def test_an_instance_of_another_study_than_the_url_is_refused(
    served: ServedHub, hospital_a: Hospital, patient: str
) -> None:
    study = generate_uid()
    other = instance(CT, study=generate_uid())
    answer = stow(
        served, hospital_a, related_body([part10(other)]), path=f"/dicomweb/studies/{study}"
    )
    assert answer.status_code == 409
    assert reasons(answer) == [0xA900]
    _nothing_stored(served)


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("application/dicom", 415),
        ("application/json", 415),
        ('multipart/related; type="application/dicom+xml"; boundary=test-boundary', 415),
        ('multipart/related; type="application/dicom"', 400),  # no boundary
        ('multipart/related; type="application/dicom"; boundary=another', 400),
    ],
)
def test_wrong_media_types_and_boundaries(
    served: ServedHub, hospital_a: Hospital, patient: str, content_type: str, status: int
) -> None:
    body = related_body([part10(instance(CT, study=generate_uid()))])
    answer = stow(served, hospital_a, body, headers={"Content-Type": content_type})
    assert answer.status_code == status, answer.text
    assert answer.json()["resourceType"] == "OperationOutcome"
    _nothing_stored(served)


@pytest.mark.parametrize(
    "cut",
    [
        pytest.param(lambda body: body[: len(body) // 2], id="ends-mid-part"),
        pytest.param(lambda body: body[: body.rindex(b"--test-boundary--")], id="no-close"),
        pytest.param(lambda body: b"garbage before " + body, id="preamble-garbage"),
        pytest.param(lambda body: b"", id="empty"),
    ],
)
def test_malformed_multipart_is_400_and_stores_nothing(
    served: ServedHub, hospital_a: Hospital, patient: str, cut: Any
) -> None:
    study = generate_uid()
    body = related_body([part10(instance(CT, study=study)), part10(instance(CT, study=study))])
    answer = stow(served, hospital_a, cut(body))
    assert answer.status_code == 400, answer.text
    _nothing_stored(served)


def test_chunked_upload_is_counted_and_cut_at_the_limit(
    served: ServedHub, hospital_a: Hospital, patient: str
) -> None:
    study = generate_uid()
    body = related_body([part10(instance(CT, study=study)) for _ in range(4)])

    def chunks(data: bytes) -> Iterator[bytes]:
        for start in range(0, len(data), 7000):
            yield data[start : start + 7000]

    stored = stow(served, hospital_a, chunks(body))  # chunked transfer-encoding
    assert stored.status_code == 200
    assert len(referenced(stored)) == 4
    served.hub.settings.dicom_max_request_bytes = 50_000
    other = generate_uid()
    big = related_body([part10(instance(CT, study=other)) for _ in range(4)])
    refused = stow(served, hospital_a, chunks(big))
    assert refused.status_code == 413
    with served.http(hospital_a) as client:
        found = client.get("/dicomweb/studies", params={"StudyInstanceUID": other})
    assert found.json() == []
    assert len([k for k in served.object_keys() if k.startswith("dicom/instances/")]) == 4


def test_a_patient_nobody_knows_is_refused(served: ServedHub, hospital_a: Hospital) -> None:
    unknown = instance(CT, study=generate_uid(), patient_id="NO-SUCH-PATIENT")
    answer = stow(served, hospital_a, related_body([part10(unknown)]))
    assert answer.status_code == 409
    assert reasons(answer) == [0x0110]
    _nothing_stored(served)


def test_another_hospitals_patient_number_does_not_match(
    served: ServedHub, hospital_a: Hospital, hospital_b: Hospital
) -> None:
    served.patient(hospital_b, "BN-0001")
    answer = stow(served, hospital_a, related_body([part10(instance(CT, study=generate_uid()))]))
    assert answer.status_code == 409
    assert reasons(answer) == [0x0110]


def test_scopes_are_needed(served: ServedHub, hospital_a: Hospital, patient: str) -> None:
    from tests.fhir.conftest import token_for

    reader = Hospital(hospital_a.client_id, token_for(served.hub, "system/*.rs", "bv-bac-ninh"))
    body = related_body([part10(instance(CT, study=generate_uid()))])
    assert stow(served, reader, body).status_code == 403
    with served.http() as anonymous:
        assert (
            anonymous.post("/dicomweb/studies", content=body, headers=stow_headers()).status_code
            == 401
        )
    _nothing_stored(served)


def test_adding_to_a_study_one_may_not_see_is_404_and_stores_nothing(
    served: ServedHub, hospital_a: Hospital, hospital_b: Hospital, patient: str
) -> None:
    study = generate_uid()
    assert (
        stow(served, hospital_a, related_body([part10(instance(CT, study=study))])).status_code
        == 200
    )
    keys = served.object_keys()
    served.patient(hospital_b, "BN-0001")

    answer = stow(served, hospital_b, related_body([part10(instance(CT, study=study))]))

    assert answer.status_code == 404
    assert served.object_keys() == keys


def test_an_unreachable_object_store_is_a_503_and_indexes_nothing(tmp_path: Path) -> None:
    """The S3 server is down (nothing listens at its address): the upload cannot be kept now,
    but may be later, so the answer is a 503 with Retry-After, never a 500. (The database does
    not matter here, and each call to the dead server takes the client's retries, seconds.)"""
    settings = make_settings(
        tmp_path,
        f"sqlite:///{tmp_path / 'hub.db'}",
        object_store="s3://imaging",
        s3_endpoint=f"http://127.0.0.1:{free_port()}",
        s3_access_key="key",
        s3_secret_key="secret-key",
    )
    hub = Hub.from_settings(settings, migrate=True)
    try:
        token = token_for(hub, "system/*.cruds", "bv-bac-ninh")
        with TestClient(create_app(hub)) as client:
            answer = client.post(
                "/dicomweb/studies",
                content=related_body([part10(instance(CT, study=generate_uid()))]),
                headers={**stow_headers(), "Authorization": f"Bearer {token}"},
            )
        assert answer.status_code == 503, answer.text
        assert answer.headers["retry-after"]
        assert answer.json()["issue"][0]["code"] == "transient"
        with hub.db.snapshot() as session:
            assert session.execute(select(func.count()).select_from(INSTANCE)).scalar_one() == 0
    finally:
        hub.close()
