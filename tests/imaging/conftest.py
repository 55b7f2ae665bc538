"""Imaging fixtures: a hub served over real HTTP (uvicorn in a thread of the test process, so
its memory can be measured) on both databases, with its objects in a folder or on the
session's S3 server (SeaweedFS); hospitals with tokens and patients; DICOM instances made
from pydicom's shipped test files with fresh UIDs."""

from __future__ import annotations

import io
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import uvicorn
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from emr_hub.hub import Hub
from emr_hub.main import create_app
from tests.conftest import free_port, make_settings
from tests.fhir.conftest import token_for
from tests.processes import wait_for
from tests.storage.conftest import S3Server, s3_server

__all__ = ["S3Server", "s3_server"]

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
"""The DICOM files shipped inside the pydicom wheel (nothing is downloaded)."""
CT = TEST_FILES / "CT_small.dcm"
MR = TEST_FILES / "MR_small.dcm"
HOSPITAL_SYSTEM = "urn:emr-hub:test:patient-id"


@dataclass
class Hospital:
    client_id: str
    token: str

    @property
    def organization(self) -> str:
        return f"Organization/{self.client_id}"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


class ServedHub:
    """The app of ``hub`` served by uvicorn on ``port`` in a thread (lifespan included)."""

    def __init__(self, hub: Hub, port: int, s3: S3Server | None = None) -> None:
        self.s3 = s3
        config = uvicorn.Config(create_app(hub), host="127.0.0.1", port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.base = f"http://127.0.0.1:{port}"
        self.hub = hub

    def __enter__(self) -> ServedHub:
        self.thread.start()
        wait_for(lambda: self.server.started, 30, "the hub to serve")
        return self

    def __exit__(self, *_: Any) -> None:
        self.server.should_exit = True
        self.thread.join(15)

    def http(self, hospital: Hospital | None = None) -> httpx.Client:
        headers = hospital.headers() if hospital else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=120)

    def object_keys(self) -> list[str]:
        """Every key under ``dicom/`` in the object store, listed by the store's own means."""
        url = self.hub.settings.effective_object_store
        if url.startswith("file://"):
            root = Path(url.removeprefix("file://"))
            folder = root / "dicom"
            return sorted(
                str(p.relative_to(root))
                for p in folder.rglob("*")
                if p.is_file() and not p.name.startswith(".")
            )
        assert self.s3 is not None
        bucket = url.removeprefix("s3://")
        listed = self.s3.client().list_objects(bucket, prefix="dicom/", recursive=True)
        return sorted(str(item.object_name) for item in listed)

    def index_rows(self) -> int:
        from sqlalchemy import func, select

        from storage.tables import DicomInstance, DicomSeries, DicomStudy

        with self.hub.db.snapshot() as session:
            return sum(
                session.scalar(select(func.count()).select_from(table)) or 0
                for table in (DicomInstance, DicomSeries, DicomStudy)
            )

    def dicomweb(self, hospital: Hospital) -> DICOMwebClient:
        return DICOMwebClient(url=f"{self.base}/dicomweb", headers=hospital.headers())

    def patient(self, hospital: Hospital, patient_id: str, cccd: str | None = None) -> str:
        """A Patient the hospital writes, known by its own patient number (and a CCCD)."""
        identifiers = [{"system": HOSPITAL_SYSTEM + ":" + hospital.client_id, "value": patient_id}]
        if cccd:
            identifiers.append({"system": "http://fhir.hl7.org.vn/core/sid/cccd", "value": cccd})
        body = {
            "resourceType": "Patient",
            "identifier": identifiers,
            "name": [{"family": "Nguyễn", "given": ["Thị", "Lan"]}],
            "gender": "female",
            "birthDate": "1985-03-02",
        }
        with self.http(hospital) as client:
            answer = client.post(
                "/fhir/Patient", json=body, headers={"Content-Type": "application/fhir+json"}
            )
        assert answer.status_code == 201, answer.text
        return str(answer.json()["id"])


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.s3)])
def object_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The settings of the hub's object store: a folder, or a fresh bucket on the S3 server."""
    if request.param == "file":
        yield {"object_store": f"file://{tmp_path / 'objects'}"}
        return
    server: S3Server = request.getfixturevalue("s3_server")
    bucket = f"imaging-{uuid.uuid4().hex[:20]}"
    yield {
        "s3": server,
        "object_store": f"s3://{bucket}",
        "s3_endpoint": server.endpoint,
        "s3_access_key": server.access_key,
        "s3_secret_key": server.secret_key,
    }
    client = server.client()
    try:
        for item in client.list_objects(bucket, recursive=True):
            client.remove_object(bucket, str(item.object_name))
        client.remove_bucket(bucket)
    except Exception as exc:  # noqa: BLE001 - cleanup only
        print(f"could not remove test bucket {bucket}: {exc}")


@pytest.fixture
def served(tmp_path: Path, database_url: str, object_store: dict[str, Any]) -> Iterator[ServedHub]:
    port = free_port()
    store = dict(object_store)
    s3 = store.pop("s3", None)
    settings = make_settings(tmp_path, database_url, base_url=f"http://127.0.0.1:{port}", **store)
    hub = Hub.from_settings(settings, migrate=True)
    hub.objects.ensure_ready()
    try:
        with ServedHub(hub, port, s3) as server:
            yield server
    finally:
        hub.close()


@pytest.fixture
def hospital_a(served: ServedHub) -> Hospital:
    return Hospital("bv-bac-ninh", token_for(served.hub, "system/*.cruds", "bv-bac-ninh"))


@pytest.fixture
def hospital_b(served: ServedHub) -> Hospital:
    return Hospital("bv-bach-mai", token_for(served.hub, "system/*.cruds", "bv-bach-mai"))


def instance(
    source: Path = CT,
    *,
    study: str,
    series: str | None = None,
    patient_id: str = "BN-0001",
    number: int = 1,
    accession: str | None = None,
    **attributes: Any,
) -> Dataset:
    """A copy of a shipped test file with new UIDs (and the given attributes)."""
    dataset = pydicom.dcmread(source)
    dataset.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: Vietnamese names
    sop = generate_uid()
    dataset.StudyInstanceUID = study
    dataset.SeriesInstanceUID = series or generate_uid()
    dataset.SOPInstanceUID = sop
    dataset.file_meta.MediaStorageSOPInstanceUID = sop
    dataset.PatientID = patient_id
    dataset.InstanceNumber = number
    if accession is not None:
        dataset.AccessionNumber = accession
    for keyword, value in attributes.items():
        setattr(dataset, keyword, value)
    return dataset


def part10(dataset: Dataset) -> bytes:
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()


def related_body(parts: list[bytes], boundary: str = "test-boundary") -> bytes:
    body = b""
    for data in parts:
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


def stow_headers(boundary: str = "test-boundary") -> dict[str, str]:
    return {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json",
    }
