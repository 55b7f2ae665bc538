"""The C-STORE receiver as its own process (``emr-hub dicom-scp``), pynetdicom as the sending
modality: registered AE titles only, C-ECHO, refusals in the C-STORE status, and one
ImagingStudy version for the whole association, queried back over DICOMweb."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification  # type: ignore[attr-defined]
from sqlalchemy import select

from emr_hub.hub import Hub
from emr_hub.main import create_app
from emr_hub.security.audit.log import EVENT
from tests.conftest import free_port, make_settings
from tests.fhir.conftest import token_for
from tests.imaging.conftest import CT, HOSPITAL_SYSTEM, MR, instance
from tests.processes import EMR_HUB, ManagedProcess, cli_env, wait_for

ORGANIZATION = "Organization/bv-bac-ninh"


class Scp(ManagedProcess):
    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.port = port
        super().__init__([EMR_HUB, "dicom-scp", "--port", str(port)], env, log)


@pytest.fixture
def scp(tmp_path: Path, database_url: str) -> Iterator[tuple[Scp, Hub]]:
    env = cli_env(tmp_path, database_url)
    added = subprocess.run(
        [EMR_HUB, "dicom-ae", "add", "CT_SCANNER_1", "--organization", ORGANIZATION],
        env=env,
        capture_output=True,
        text=True,
    )
    assert added.returncode == 0, added.stderr
    assert "CT_SCANNER_1" in added.stdout
    hub = Hub.from_settings(
        make_settings(tmp_path, database_url, object_store=env["EMR_HUB_OBJECT_STORE"])
    )
    port = free_port()
    process = Scp(env, port, tmp_path / "scp.log")
    try:
        wait_for(
            lambda: _echo(port, "CT_SCANNER_1") == 0x0000, 30, "the receiver", tmp_path / "scp.log"
        )
        yield process, hub
    finally:
        process.stop()
        hub.close()


def _modality(title: str) -> AE:
    modality = AE(ae_title=title)
    modality.add_requested_context(Verification)
    modality.add_requested_context(CTImageStorage)
    modality.add_requested_context(MRImageStorage)
    return modality


def _echo(port: int, title: str) -> int | None:
    assoc = _modality(title).associate("127.0.0.1", port, ae_title="EMRHUB")
    if not assoc.is_established:
        return None
    status = assoc.send_c_echo()
    assoc.release()
    return int(status.Status) if status else None


def _send(port: int, title: str, datasets: list[Any]) -> list[int]:
    assoc = _modality(title).associate("127.0.0.1", port, ae_title="EMRHUB")
    assert assoc.is_established
    statuses = [int(assoc.send_c_store(dataset).Status) for dataset in datasets]
    assoc.release()
    return statuses


def test_c_store_from_a_registered_modality(scp: tuple[Scp, Hub]) -> None:
    process, hub = scp
    token = token_for(hub, "system/*.cruds", "bv-bac-ninh")
    client = TestClient(create_app(hub), headers={"Authorization": f"Bearer {token}"})
    patient = client.post(
        "/fhir/Patient",
        json={
            "resourceType": "Patient",
            "identifier": [{"system": HOSPITAL_SYSTEM, "value": "BN-0001"}],
        },
        headers={"Content-Type": "application/fhir+json"},
    )
    assert patient.status_code == 201
    study = generate_uid()
    datasets = [instance(CT, study=study, number=n) for n in (1, 2)]
    datasets.append(instance(MR, study=study, number=3))
    stranger = instance(CT, study=generate_uid(), patient_id="NOBODY")

    statuses = _send(process.port, "CT_SCANNER_1", [*datasets, stranger])

    assert statuses == [0x0000, 0x0000, 0x0000, 0x0110]

    def indexed() -> bool:
        found = client.get("/dicomweb/studies", params={"StudyInstanceUID": study})
        return found.status_code == 200 and len(found.json()) == 1

    wait_for(indexed, 30, "the association's instances to be indexed", process.log)
    [found] = client.get("/dicomweb/studies", params={"StudyInstanceUID": study}).json()
    assert found["00201208"]["Value"] == [3]
    bundle = client.get(
        "/fhir/ImagingStudy", params={"identifier": f"urn:dicom:uid|urn:oid:{study}"}
    ).json()
    [entry] = bundle["entry"]
    assert entry["resource"]["meta"]["versionId"] == "1"  # one version for the association
    assert entry["resource"]["subject"]["reference"] == f"Patient/{patient.json()['id']}"
    assert entry["resource"]["numberOfInstances"] == 3
    with hub.db.snapshot() as session:
        recorded = session.execute(
            select(EVENT.c.organization, EVENT.c.outcome).where(
                EVENT.c.client_id == "dicom-ae:CT_SCANNER_1"
            )
        ).all()
    assert recorded == [(ORGANIZATION, "0")]  # the association's write, audited once
    retrieved = client.get(f"/dicomweb/studies/{study}/metadata").json()
    assert sorted(m["00080018"]["Value"][0] for m in retrieved) == sorted(
        d.SOPInstanceUID for d in datasets
    )


def test_unregistered_callers_are_rejected(scp: tuple[Scp, Hub]) -> None:
    process, _ = scp
    assert _echo(process.port, "CT_SCANNER_1") == 0x0000
    assert _echo(process.port, "INTRUDER") is None
