"""QIDO-RS at the three levels: the matching keys, wildcards and fuzzy names, date ranges,
includefield, limit/offset, the counts, and only the studies the caller may see."""

from __future__ import annotations

from typing import Any

import pytest
from pydicom.uid import generate_uid

from tests.imaging.conftest import CT, MR, Hospital, ServedHub, instance, part10, related_body
from tests.imaging.conftest import stow_headers as headers

CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"


def values(matches: list[dict[str, Any]], tag: str) -> list[Any]:
    out = []
    for match in matches:
        value = match.get(tag, {}).get("Value", [None])
        out.append(value[0] if len(value) == 1 else value)
    return out


@pytest.fixture
def network(served: ServedHub, hospital_a: Hospital) -> dict[str, Any]:
    """Three studies of two patients: a CT with two series, an MR, a CT and MR study."""
    served.patient(hospital_a, "BN-0001")
    served.patient(hospital_a, "BN-0002")
    studies = {name: generate_uid() for name in ("chest", "head", "mixed")}
    series = [generate_uid(), generate_uid()]
    datasets = [
        *(
            instance(
                CT,
                study=studies["chest"],
                series=series[0],
                number=n,
                accession="ACC-1",
                StudyDate="20261101",
                PatientName="Nguyễn^Thị Lan",
            )
            for n in (1, 2)
        ),
        instance(
            CT,
            study=studies["chest"],
            series=series[1],
            number=1,
            accession="ACC-1",
            StudyDate="20261101",
            PatientName="Nguyễn^Thị Lan",
            SeriesNumber=2,
        ),
        instance(
            MR,
            study=studies["head"],
            patient_id="BN-0002",
            accession="ACC-2",
            StudyDate="20261203",
            PatientName="Trần^Văn Minh",
        ),
        instance(
            CT,
            study=studies["mixed"],
            accession="ACC-3",
            StudyDate="20250615",
            PatientName="Nguyễn^Thị Lan",
        ),
        instance(
            MR,
            study=studies["mixed"],
            accession="ACC-3",
            StudyDate="20250615",
            PatientName="Nguyễn^Thị Lan",
            patient_id="BN-0001",
        ),
    ]
    with served.http(hospital_a) as client:
        answer = client.post(
            "/dicomweb/studies",
            content=related_body([part10(d) for d in datasets]),
            headers=headers(),
        )
    assert answer.status_code == 200, answer.text
    return {"studies": studies, "series": series, "datasets": datasets}


def qido(served: ServedHub, hospital: Hospital, path: str, **params: str) -> Any:
    with served.http(hospital) as client:
        answer = client.get(f"/dicomweb{path}", params=params)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/dicom+json")
    return answer


def test_study_level_matching_keys(
    served: ServedHub, hospital_a: Hospital, network: dict[str, Any]
) -> None:
    studies = network["studies"]

    def found(**params: str) -> set[str]:
        return set(values(qido(served, hospital_a, "/studies", **params).json(), "0020000D"))

    assert found() == set(studies.values())
    assert found(PatientID="BN-0002") == {studies["head"]}
    assert found(AccessionNumber="ACC-1") == {studies["chest"]}
    assert found(**{"00080050": "ACC-*"}) == set(studies.values())  # by tag, wildcard
    assert found(StudyDate="20261101-20261231") == {studies["chest"], studies["head"]}
    assert found(StudyDate="-20251231") == {studies["mixed"]}
    assert found(StudyDate="20261203") == {studies["head"]}
    assert found(ModalitiesInStudy="MR") == {studies["head"], studies["mixed"]}
    assert found(StudyInstanceUID=f"{studies['head']},{studies['chest']}") == {
        studies["head"],
        studies["chest"],
    }
    assert found(PatientName="Nguyễn^Thị Lan") == {studies["chest"], studies["mixed"]}
    assert found(PatientName="nguyễn*") == {studies["chest"], studies["mixed"]}
    assert found(PatientName="Nguyen*") == set()
    assert found(PatientName="lan", fuzzymatching="true") == {studies["chest"], studies["mixed"]}
    assert found(PatientName="tran minh", fuzzymatching="true") == {studies["head"]}
    assert found(PatientID="BN-0001", ModalitiesInStudy="CT", StudyDate="2026-") == {
        studies["chest"]
    }


def test_study_attributes_and_counts(
    served: ServedHub, hospital_a: Hospital, network: dict[str, Any]
) -> None:
    studies = network["studies"]
    [chest] = qido(served, hospital_a, "/studies", StudyInstanceUID=studies["chest"]).json()
    assert chest["00201206"]["Value"] == [2]  # NumberOfStudyRelatedSeries
    assert chest["00201208"]["Value"] == [3]  # NumberOfStudyRelatedInstances
    assert chest["00080061"]["Value"] == ["CT"]
    assert chest["00100010"]["Value"] == [{"Alphabetic": "Nguyễn^Thị Lan"}]
    assert chest["00080020"]["Value"] == ["20261101"]
    assert chest["00081190"]["Value"] == [f"{served.base}/dicomweb/studies/{studies['chest']}"]
    [mixed] = qido(served, hospital_a, "/studies", AccessionNumber="ACC-3").json()
    assert mixed["00080061"]["Value"] == ["CT", "MR"]
    assert mixed["00201206"]["Value"] == [2]


def test_series_and_instance_levels(
    served: ServedHub, hospital_a: Hospital, network: dict[str, Any]
) -> None:
    studies, series = network["studies"], network["series"]
    chest_series = qido(served, hospital_a, f"/studies/{studies['chest']}/series").json()
    assert values(chest_series, "0020000E") == series
    assert values(chest_series, "00201209") == [2, 1]  # NumberOfSeriesRelatedInstances
    assert values(chest_series, "00080060") == ["CT", "CT"]
    every_mr = qido(served, hospital_a, "/series", Modality="MR").json()
    assert set(values(every_mr, "0020000D")) == {studies["head"], studies["mixed"]}
    assert values(every_mr, "00100020")  # study attributes are included at /series
    instances = qido(
        served, hospital_a, f"/studies/{studies['chest']}/series/{series[0]}/instances"
    ).json()
    assert values(instances, "00200013") == [1, 2]
    assert values(instances, "00080016") == [CT_CLASS, CT_CLASS]
    chest = [d for d in network["datasets"] if d.StudyInstanceUID == studies["chest"]]
    assert set(values(instances, "00080018")) == {d.SOPInstanceUID for d in chest[:2]}
    one = chest[2].SOPInstanceUID
    assert values(
        qido(served, hospital_a, "/instances", SOPInstanceUID=one).json(), "00080018"
    ) == [one]
    cts = qido(served, hospital_a, "/instances", SOPClassUID=CT_CLASS).json()
    assert len(cts) == 4
    mixed = qido(served, hospital_a, f"/studies/{studies['mixed']}/instances").json()
    assert sorted(values(mixed, "00080060")) == ["CT", "MR"]


def test_includefield_limit_offset_and_unknown_keys(
    served: ServedHub, hospital_a: Hospital, network: dict[str, Any]
) -> None:
    plain = qido(served, hospital_a, "/studies", AccessionNumber="ACC-1").json()[0]
    assert "00180050" not in plain  # SliceThickness: not a default attribute
    wider = qido(
        served,
        hospital_a,
        "/studies",
        AccessionNumber="ACC-1",
        includefield="00180050,Manufacturer",
    ).json()[0]
    assert wider["00180050"]["Value"]
    assert "00080070" in wider
    everything = qido(
        served, hospital_a, "/studies", AccessionNumber="ACC-1", includefield="all"
    ).json()[0]
    assert "00280010" in everything and "7FE00010" not in everything
    pages = [
        values(qido(served, hospital_a, "/studies", limit="1", offset=str(n)).json(), "0020000D")
        for n in range(4)
    ]
    assert [len(page) for page in pages] == [1, 1, 1, 0]
    assert {page[0] for page in pages[:3]} == set(network["studies"].values())
    ignored = qido(served, hospital_a, "/studies", PatientWeight="60")
    assert "PatientWeight" in ignored.headers["warning"]
    with served.http(hospital_a) as client:
        assert client.get("/dicomweb/studies", params={"limit": "many"}).status_code == 400
        assert client.get("/dicomweb/studies", params={"NoSuchAttribute": "1"}).status_code == 400
        assert (
            client.get("/dicomweb/studies", params={"StudyInstanceUID": "1.2/3"}).status_code == 400
        )
        assert client.get("/dicomweb/studies/1.2.abc/series").status_code == 400


def test_other_hospitals_see_nothing_and_scopes_apply(
    served: ServedHub, hospital_a: Hospital, hospital_b: Hospital, network: dict[str, Any]
) -> None:
    from tests.fhir.conftest import token_for

    assert qido(served, hospital_b, "/studies").json() == []
    assert qido(served, hospital_b, "/instances").json() == []
    with served.http(hospital_b) as client:
        study = network["studies"]["chest"]
        assert client.get(f"/dicomweb/studies/{study}/series").status_code == 404
    no_search = Hospital(
        "bv-bac-ninh", token_for(served.hub, "system/ImagingStudy.r", "bv-bac-ninh")
    )
    with served.http(no_search) as client:
        assert client.get("/dicomweb/studies").status_code == 403
