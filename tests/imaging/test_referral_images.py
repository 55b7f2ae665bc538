"""A Bạch Mai doctor opening the demo patient's referral history sees the CT that Bắc Ninh
general took during her stay, with the DICOMweb address to fetch it from, and can fetch it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from emr_hub.demo import DEMO_PATIENT_ID, PATIENTS, load_demo
from emr_hub.demo_chain import BAC_NINH_CT, BAC_NINH_STAY, SECOND_REFERRAL
from emr_hub.hub import Hub
from emr_hub.main import create_app
from emr_hub.referrals.enforcement import install as install_referral_rules
from emr_hub.security import install as install_security
from tests.fhir.conftest import token_for
from tests.imaging.conftest import CT, instance, part10, related_body, stow_headers

FHIR = {"Content-Type": "application/fhir+json"}


@pytest.fixture
def client(hub: Hub) -> Iterator[TestClient]:
    install_security(hub.settings)
    install_referral_rules()
    load_demo(hub)
    with TestClient(create_app(hub)) as test_client:
        yield test_client


def bearer(hub: Hub, client_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for(hub, 'system/*.cruds', client_id)}"}


def test_the_referral_history_shows_the_stays_images(hub: Hub, client: TestClient) -> None:
    bac_ninh, bach_mai = bearer(hub, "bac-ninh-general"), bearer(hub, "bach-mai")
    study = generate_uid()
    ct = instance(CT, study=study, patient_id=PATIENTS[0].cccd)
    stored = client.post(
        "/dicomweb/studies",
        content=related_body([part10(ct)]),
        headers={**stow_headers(), **bac_ninh},
    )
    assert stored.status_code == 200, stored.text
    search = {"identifier": f"urn:dicom:uid|urn:oid:{study}"}
    [entry] = client.get("/fhir/ImagingStudy", params=search, headers=bac_ninh).json()["entry"]
    imaging: dict[str, Any] = entry["resource"]
    assert imaging["subject"] == {"reference": f"Patient/{DEMO_PATIENT_ID}"}
    imaging["encounter"] = {"reference": f"Encounter/{BAC_NINH_STAY}"}  # taken during the stay
    updated = client.put(
        f"/fhir/ImagingStudy/{imaging['id']}", json=imaging, headers={**FHIR, **bac_ninh}
    )
    assert updated.status_code == 200, updated.text

    history = client.get(f"/fhir/Patient/{DEMO_PATIENT_ID}/$referral-history", headers=bach_mai)

    assert history.status_code == 200, history.text
    entries = [e["resource"] for e in history.json()["entry"]]
    split = next(i for i, r in enumerate(entries) if r["id"] == SECOND_REFERRAL)
    after = [(r["resourceType"], r["id"]) for r in entries[split:]]
    # the letter's own CT (the demo's, in its supportingInfo), then the stay's: the Endpoint
    # both name follows the first, and is listed once
    demo_ct = after.index(("ImagingStudy", BAC_NINH_CT))
    assert after[demo_ct + 1] == ("Endpoint", "dicomweb")
    assert after.index(("ImagingStudy", imaging["id"])) > demo_ct + 1
    assert after.count(("Endpoint", "dicomweb")) == 1
    endpoint = entries[split + demo_ct + 1]
    assert endpoint["connectionType"]["code"] == "dicom-wado-rs"
    address = f"{endpoint['address']}/studies/{study}".removeprefix(str(hub.settings.base_url))
    fetched = client.get(f"{address}/metadata", headers=bach_mai)  # the referral opened it
    assert fetched.status_code == 200
    assert fetched.json()[0]["00080018"]["Value"] == [ct.SOPInstanceUID]
    again = instance(CT, study=study, series=ct.SeriesInstanceUID, patient_id=PATIENTS[0].cccd)
    more = client.post(
        "/dicomweb/studies",
        content=related_body([part10(again)]),
        headers={**stow_headers(), **bac_ninh},
    )
    assert more.status_code == 200
    [entry] = client.get("/fhir/ImagingStudy", params=search, headers=bac_ninh).json()["entry"]
    assert entry["resource"]["encounter"] == imaging["encounter"]  # a new upload keeps it
    assert entry["resource"]["numberOfInstances"] == 2
