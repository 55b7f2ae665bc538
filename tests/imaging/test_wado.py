"""WADO-RS: instances byte for byte from the object store, metadata (one object per series),
native frames, rendered images, presigned links, and 404 for a study one may not see."""

from __future__ import annotations

import hashlib
import io
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from tests.imaging.conftest import (
    CT,
    TEST_FILES,
    Hospital,
    ServedHub,
    instance,
    part10,
    related_body,
    stow_headers,
)
from tests.processes import wait_for


def multipart_parts(answer: httpx.Response) -> list[tuple[str, bytes]]:
    """(Content-Type, body) of each part of a multipart answer, parsed by the standard library."""
    head = f"Content-Type: {answer.headers['content-type']}\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + answer.content)
    return [
        (part.get_content_type(), part.get_payload(decode=True)) for part in message.iter_parts()
    ]


def instance_path(study: dict[str, Any], index: int) -> str:
    dataset = study["datasets"][index]
    series = dataset.SeriesInstanceUID
    return f"/dicomweb/studies/{study['study']}/series/{series}/instances/{dataset.SOPInstanceUID}"


@pytest.fixture
def study(served: ServedHub, hospital_a: Hospital) -> dict[str, Any]:
    served.patient(hospital_a, "BN-0001")
    study_uid, series = generate_uid(), [generate_uid(), generate_uid()]
    multi = instance(TEST_FILES / "rtdose.dcm", study=study_uid, series=series[1])  # 15 frames
    datasets = [
        instance(CT, study=study_uid, series=series[0], number=1),
        instance(CT, study=study_uid, series=series[0], number=2),
        multi,
    ]
    data = {d.SOPInstanceUID: part10(d) for d in datasets}
    with served.http(hospital_a) as client:
        answer = client.post(
            "/dicomweb/studies", content=related_body(list(data.values())), headers=stow_headers()
        )
    assert answer.status_code == 200, answer.text
    return {"study": study_uid, "series": series, "datasets": datasets, "bytes": data}


def test_study_series_and_instance_come_back_byte_for_byte(
    served: ServedHub, hospital_a: Hospital, study: dict[str, Any]
) -> None:
    base = f"/dicomweb/studies/{study['study']}"
    first = study["datasets"][0]
    with served.http(hospital_a) as client:
        whole = client.get(base, headers={"Accept": 'multipart/related; type="application/dicom"'})
        one_series = client.get(f"{base}/series/{study['series'][0]}")
        one = client.get(f"{base}/series/{study['series'][0]}/instances/{first.SOPInstanceUID}")
    assert whole.status_code == 200
    assert whole.headers["content-type"].startswith("multipart/related")
    got = sorted(hashlib.sha256(body).hexdigest() for _, body in multipart_parts(whole))
    assert got == sorted(hashlib.sha256(b).hexdigest() for b in study["bytes"].values())
    assert {t for t, _ in multipart_parts(whole)} == {"application/dicom"}
    assert len(multipart_parts(one_series)) == 2
    assert multipart_parts(one)[0][1] == study["bytes"][first.SOPInstanceUID]


def test_metadata_at_each_level(
    served: ServedHub, hospital_a: Hospital, study: dict[str, Any]
) -> None:
    base = f"/dicomweb/studies/{study['study']}"
    first = study["datasets"][0]
    with served.http(hospital_a) as client:
        whole = client.get(f"{base}/metadata").json()
        series = client.get(f"{base}/series/{study['series'][0]}/metadata").json()
        single = client.get(
            f"{base}/series/{study['series'][0]}/instances/{first.SOPInstanceUID}/metadata"
        ).json()
    assert sorted(m["00080018"]["Value"][0] for m in whole) == sorted(study["bytes"])
    assert [m["00200013"]["Value"][0] for m in series] == [1, 2]
    [meta] = single
    assert (
        pydicom.Dataset.from_json({k: v for k, v in meta.items() if k != "7FE00010"}).PatientID
        == "BN-0001"
    )
    uri = meta["7FE00010"]["BulkDataURI"]
    assert uri.startswith(served.base)
    with served.http(hospital_a) as client:
        pixels = client.get(uri)
    assert multipart_parts(pixels)[0][1] == first.PixelData


def test_frames_of_native_pixel_data(
    served: ServedHub, hospital_a: Hospital, study: dict[str, Any]
) -> None:
    multi = study["datasets"][2]
    frames = int(multi.get("NumberOfFrames", 1))
    size = multi.Rows * multi.Columns * multi.SamplesPerPixel * multi.BitsAllocated // 8
    url = instance_path(study, 2) + "/frames"
    wanted = list(range(frames, 0, -1))
    with served.http(hospital_a) as client:
        answer = client.get(f"{url}/{','.join(map(str, wanted))}")
        assert client.get(f"{url}/{frames + 1}").status_code == 400
        assert client.get(f"{url}/0").status_code == 400
        assert client.get(f"{url}/x").status_code == 400
    assert answer.status_code == 200
    parts = multipart_parts(answer)
    assert [body for _, body in parts] == [
        multi.PixelData[(n - 1) * size : n * size] for n in wanted
    ]


def test_rendered_jpeg_and_png(
    served: ServedHub, hospital_a: Hospital, study: dict[str, Any]
) -> None:
    first = study["datasets"][0]
    url = instance_path(study, 0) + "/rendered"
    with served.http(hospital_a) as client:
        jpeg = client.get(url, headers={"Accept": "image/jpeg"})
        png = client.get(url, headers={"Accept": "image/png"})
        assert client.get(url, headers={"Accept": "text/html"}).status_code == 406
    assert jpeg.headers["content-type"] == "image/jpeg"
    assert png.headers["content-type"] == "image/png"
    image = np.asarray(Image.open(io.BytesIO(png.content)))
    assert image.shape == (first.Rows, first.Columns)
    expected = first.pixel_array.astype("float64")
    # the brightest and darkest pixels of the CT are where the PNG has 255 and 0
    assert image.flat[int(expected.argmax())] == 255
    assert image.flat[int(expected.argmin())] == 0
    assert Image.open(io.BytesIO(jpeg.content)).size == (first.Columns, first.Rows)


def test_presigned_links(served: ServedHub, hospital_a: Hospital, study: dict[str, Any]) -> None:
    first = study["datasets"][0]
    url = instance_path(study, 0)
    with served.http(hospital_a) as client:
        answer = client.get(url, params={"presigned": "true"}, follow_redirects=False)
    if served.s3 is None:  # the folder store cannot sign: the hub streams it itself
        assert answer.status_code == 200
        assert multipart_parts(answer)[0][1] == study["bytes"][first.SOPInstanceUID]
        return
    assert answer.status_code == 307
    link = answer.headers["location"]
    assert "X-Amz-Expires=900" in link
    downloaded = httpx.get(link, timeout=30)  # no token
    assert downloaded.content == study["bytes"][first.SOPInstanceUID]


def test_a_study_one_may_not_see_is_404_everywhere(
    served: ServedHub, hospital_a: Hospital, hospital_b: Hospital, study: dict[str, Any]
) -> None:
    first = study["datasets"][0]
    base = f"/dicomweb/studies/{study['study']}"
    instance_url = f"{base}/series/{study['series'][0]}/instances/{first.SOPInstanceUID}"
    urls = [
        base,
        f"{base}/metadata",
        f"{base}/series/{study['series'][0]}",
        f"{base}/series/{study['series'][0]}/metadata",
        instance_url,
        f"{instance_url}/metadata",
        f"{instance_url}/frames/1",
        f"{instance_url}/rendered",
        f"{instance_url}/pixeldata",
        f"{instance_url}?presigned=true",
    ]
    with served.http(hospital_b) as client:
        for url in urls:
            assert client.get(url).status_code == 404, url
        assert client.get(f"/dicomweb/studies/{generate_uid()}").status_code == 404
        assert client.delete(base).status_code == 404
    with served.http(hospital_a) as client:
        assert client.get(f"{base}/series/{generate_uid()}").status_code == 404
        assert client.get("/dicomweb/studies/1.2.3.04").status_code == 400


@pytest.mark.parametrize("way", ["dicomweb", "fhir"])
def test_deleting_the_study_or_its_imaging_study_removes_both_and_the_objects(
    served: ServedHub, hospital_a: Hospital, study: dict[str, Any], way: str
) -> None:
    search = {"identifier": f"urn:dicom:uid|urn:oid:{study['study']}"}
    with served.http(hospital_a) as client:
        [entry] = client.get("/fhir/ImagingStudy", params=search).json()["entry"]
        resource = f"/fhir/ImagingStudy/{entry['resource']['id']}"
        path = f"/dicomweb/studies/{study['study']}" if way == "dicomweb" else resource
        assert client.delete(path).status_code == 204
        assert client.get(f"/dicomweb/studies/{study['study']}").status_code == 404
        assert client.get(resource).status_code == 410
    assert served.index_rows() == 0
    wait_for(lambda: served.object_keys() == [], 30, "the study's objects to be removed")


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "SC_rgb_rle_2frame.dcm", "MR_small_RLE.dcm"])
def test_compressed_frames_come_as_encoded(
    served: ServedHub, hospital_a: Hospital, name: str
) -> None:
    from pydicom.encaps import generate_frames

    served.patient(hospital_a, "BN-0001")
    dataset = instance(TEST_FILES / name, study=generate_uid())
    with served.http(hospital_a) as client:
        stored = client.post(
            "/dicomweb/studies", content=related_body([part10(dataset)]), headers=stow_headers()
        )
        assert stored.status_code == 200, stored.text
        url = stored.json()["00081199"]["Value"][0]["00081190"]["Value"][0]
        frames = int(dataset.get("NumberOfFrames", 1))
        wanted = list(range(frames, 0, -1))
        answer = client.get(f"{url}/frames/{','.join(map(str, wanted))}")
        assert client.get(f"{url}/pixeldata").status_code == 406
    assert answer.status_code == 200, answer.text
    expected = list(generate_frames(dataset.PixelData, number_of_frames=frames))
    assert [body for _, body in multipart_parts(answer)] == [expected[n - 1] for n in wanted]
