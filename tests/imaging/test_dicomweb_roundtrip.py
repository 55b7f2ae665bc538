"""dicomweb-client drives STOW, QIDO and WADO unchanged against the hub over HTTP."""

from __future__ import annotations

import pydicom
from pydicom.uid import generate_uid

from tests.imaging.conftest import CT, Hospital, ServedHub, instance


def test_store_search_and_retrieve_with_dicomweb_client(
    served: ServedHub, hospital_a: Hospital
) -> None:
    served.patient(hospital_a, "BN-0001")
    client = served.dicomweb(hospital_a)
    study, series = generate_uid(), generate_uid()
    datasets = [instance(CT, study=study, series=series, number=n) for n in (1, 2, 3)]

    answer = client.store_instances(datasets)

    stored = answer.ReferencedSOPSequence
    assert sorted(item.ReferencedSOPInstanceUID for item in stored) == sorted(
        d.SOPInstanceUID for d in datasets
    )
    assert "FailedSOPSequence" not in answer
    studies = client.search_for_studies(search_filters={"StudyInstanceUID": study})
    assert len(studies) == 1
    found = pydicom.Dataset.from_json(studies[0])
    assert found.NumberOfStudyRelatedSeries == 1
    assert found.NumberOfStudyRelatedInstances == 3
    assert found.PatientID == "BN-0001"
    retrieved = client.retrieve_study(study)
    original = {d.SOPInstanceUID: d for d in datasets}
    assert len(retrieved) == 3
    for dataset in retrieved:
        source = original[dataset.SOPInstanceUID]
        assert dataset.PixelData == source.PixelData
    metadata = client.retrieve_series_metadata(study, series)
    assert len(metadata) == 3
    assert "BulkDataURI" in metadata[0]["7FE00010"]
    frames = client.retrieve_instance_frames(study, series, datasets[0].SOPInstanceUID, [1])
    assert frames[0] == datasets[0].PixelData
    found_series = client.search_for_series(study)
    assert [s["0020000E"]["Value"][0] for s in found_series] == [series]
    found_instances = client.search_for_instances(
        study, series, search_filters={"InstanceNumber": "2"}
    )
    assert [i["00080018"]["Value"][0] for i in found_instances] == [datasets[1].SOPInstanceUID]
    one = client.retrieve_instance(study, series, datasets[2].SOPInstanceUID)
    assert one.SOPInstanceUID == datasets[2].SOPInstanceUID
    assert one.PixelData == datasets[2].PixelData
    assert len(client.retrieve_study_metadata(study)) == 3
    rendered = client.retrieve_instance_rendered(
        study, series, datasets[0].SOPInstanceUID, media_types=("image/png",)
    )
    assert rendered.startswith(b"\x89PNG")
