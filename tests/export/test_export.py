"""``$export`` through the app, on both databases, driven by the spec-written client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from emr_hub.export import jobs
from emr_hub.export.request import ExportRequest
from emr_hub.fhir.stored import now_instant
from emr_hub.hub import Hub
from emr_hub.main import create_app
from emr_hub.security.audit.log import PATIENT
from emr_hub.security.principal import Principal
from emr_hub.security.scopes import ScopeSet
from storage.tables import ResourceRow
from tests.conftest import make_settings
from tests.export.bulk_client import BulkClient
from tests.fhir.conftest import Api, token_for

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
PATIENT_BUNDLE = "02-1484a42d-0eaf-4654-9cbf-6b050a5cd73b.json"


@pytest.fixture
def export_hub(tmp_path: Path, database_url: str) -> Iterator[Hub]:
    settings = make_settings(tmp_path, database_url, export_poll_seconds=1)
    instance = Hub.from_settings(settings, migrate=True)
    yield instance
    instance.close()


@pytest.fixture
def client(export_hub: Hub) -> Iterator[TestClient]:
    with TestClient(create_app(export_hub)) as test_client:
        yield test_client


def operator(hub: Hub, client: TestClient) -> BulkClient:
    return BulkClient(client, token_for(hub, "system/*.cruds", "export-operator", role="operator"))


def load_visit(hub: Hub, client: TestClient, hospital: str = "hospital-a") -> set[str]:
    """Post the Synthea patient's transaction Bundle as ``hospital``; the Type/ids stored."""
    api = Api(client, token_for(hub, client_id=hospital))
    body = orjson.loads((FIXTURES / PATIENT_BUNDLE).read_bytes())
    response = api.post("", body)
    assert response.status_code == 200, response.text
    return {"/".join(e["response"]["location"].split("/")[:2]) for e in response.json()["entry"]}


def keys(resources: list[dict[str, Any]]) -> list[str]:
    return [f"{r['resourceType']}/{r['id']}" for r in resources]


def test_system_export_holds_every_resource_once_as_read(
    export_hub: Hub, client: TestClient
) -> None:
    stored = load_visit(export_hub, client)
    bulk = operator(export_hub, client)
    export = bulk.run("/fhir/$export", {"_outputFormat": "application/fhir+ndjson"})
    manifest = export.manifest
    assert manifest["request"].endswith("/fhir/$export?_outputFormat=application%2Ffhir%2Bndjson")
    assert manifest["requiresAccessToken"] is True  # the embedded folder cannot presign
    assert manifest["error"] == [] and "deleted" not in manifest
    resources = bulk.resources(export)
    found = keys(resources)
    assert len(found) == len(set(found))  # exactly once
    with export_hub.db.snapshot() as session:
        table = ResourceRow.__table__
        live = session.execute(
            select(func.count()).select_from(table).where(table.c.deleted.is_(False))
        ).scalar_one()
    assert len(found) == live and stored <= set(found)
    reader = Api(client, bulk.token)
    for resource in resources[:: max(1, len(resources) // 25)]:
        response = reader.get(f"/{keys([resource])[0]}")
        assert response.status_code == 200, response.text
        assert resource == response.json()


@pytest.mark.parametrize("spelling", ["application/fhir+ndjson", "application/ndjson", "ndjson"])
def test_the_three_output_format_spellings(
    export_hub: Hub, client: TestClient, spelling: str
) -> None:
    load_visit(export_hub, client)
    bulk = operator(export_hub, client)
    export = bulk.run("/fhir/$export", {"_outputFormat": spelling, "_type": "Patient"})
    assert keys(bulk.resources(export))[0].startswith("Patient/")
    refused = bulk.kick_off("/fhir/$export", {"_outputFormat": "text/csv"})
    assert refused.status_code == 400 and "_outputFormat" in refused.text


def test_type_and_type_filter(export_hub: Hub, client: TestClient) -> None:
    load_visit(export_hub, client)
    bulk = operator(export_hub, client)
    export = bulk.run("/fhir/$export", {"_type": "Encounter,Condition"})
    assert {item["type"] for item in export.manifest["output"]} == {"Encounter", "Condition"}
    everything = bulk.resources(export)
    conditions = [r for r in everything if r["resourceType"] == "Condition"]
    code = conditions[0]["code"]["coding"][0]
    wanted = {c["id"] for c in conditions if c["code"]["coding"][0]["code"] == code["code"]}
    filtered = bulk.run(
        "/fhir/$export",
        {
            "_type": "Encounter,Condition",
            "_typeFilter": f"Condition?code={code['system']}|{code['code']}",
        },
    )
    got = bulk.resources(filtered)
    assert {r["id"] for r in got if r["resourceType"] == "Condition"} == wanted
    assert len([r for r in got if r["resourceType"] == "Encounter"]) == len(
        [r for r in everything if r["resourceType"] == "Encounter"]
    )
    bad = bulk.kick_off("/fhir/$export", {"_typeFilter": "Condition?nonsense=1"})
    assert bad.status_code == 400


def test_since_gives_what_changed_and_deleted_what_was_deleted(
    export_hub: Hub, client: TestClient
) -> None:
    stored = load_visit(export_hub, client)
    bulk = operator(export_hub, client)
    first = bulk.run("/fhir/$export", {"_type": "Observation,Condition"})
    since = first.manifest["transactionTime"]
    api = Api(client, token_for(export_hub, client_id="hospital-a"))
    observations = sorted(k for k in stored if k.startswith("Observation/"))
    changed, removed = observations[0], observations[1]
    body = api.get(f"/{changed}").json()
    body["status"] = "amended"
    assert api.put(f"/{changed}", body).status_code == 200
    assert api.delete(f"/{removed}").status_code in (200, 204)
    later = bulk.run("/fhir/$export", {"_type": "Observation,Condition", "_since": since})
    assert keys(bulk.resources(later)) == [changed]
    deletions = bulk.resources(later, "deleted")
    assert [e["request"] for b in deletions for e in b["entry"]] == [
        {"method": "DELETE", "url": removed}
    ]
    assert all(b["type"] == "transaction" for b in deletions)


def test_patient_and_group_exports_hold_the_compartments(
    export_hub: Hub, client: TestClient
) -> None:
    stored = load_visit(export_hub, client)
    patient = next(k for k in stored if k.startswith("Patient/"))
    api = Api(client, token_for(export_hub, client_id="hospital-a"))
    other = api.post("/Patient", {"resourceType": "Patient", "gender": "female"}).json()["id"]
    bulk = operator(export_hub, client)
    whole = keys(bulk.resources(bulk.run("/fhir/Patient/$export")))
    assert f"Patient/{other}" in whole and patient in whole
    assert not any(k.startswith(("Organization/", "Practitioner/")) for k in whole)
    group = api.post(
        "/Group",
        {
            "resourceType": "Group",
            "type": "person",
            "actual": True,
            "member": [{"entity": {"reference": patient}}],
        },
    ).json()["id"]
    assert api.get("/Group", params={"member": patient}).json()["total"] == 1
    grouped = keys(bulk.resources(bulk.run(f"/fhir/Group/{group}/$export")))
    assert patient in grouped and f"Patient/{other}" not in grouped
    posted = bulk.run(
        "/fhir/Patient/$export",
        body={
            "resourceType": "Parameters",
            "parameter": [{"name": "patient", "valueReference": {"reference": f"Patient/{other}"}}],
        },
    )
    assert keys(bulk.resources(posted)) == [f"Patient/{other}"]


def test_a_hospital_exports_only_what_the_policy_lets_it_see(
    export_hub: Hub, client: TestClient
) -> None:
    seen_by_a = load_visit(export_hub, client, "hospital-a")
    api_b = Api(client, token_for(export_hub, client_id="hospital-b"))
    theirs = api_b.post("/Patient", {"resourceType": "Patient", "gender": "male"}).json()["id"]
    export_a = BulkClient(client, token_for(export_hub, client_id="hospital-a"))
    found_a = set(keys(export_a.resources(export_a.run("/fhir/$export"))))
    assert seen_by_a <= found_a and f"Patient/{theirs}" not in found_a
    export_b = BulkClient(client, token_for(export_hub, client_id="hospital-b"))
    found_b = set(keys(export_b.resources(export_b.run("/fhir/Patient/$export"))))
    assert found_b == {f"Patient/{theirs}"}
    with export_hub.db.snapshot() as session:  # the export is in the patients' access log
        patient_a = next(k for k in seen_by_a if k.startswith("Patient/")).split("/")[1]
        audited = session.execute(
            select(func.count()).select_from(PATIENT).where(PATIENT.c.patient_id == patient_a)
        ).scalar_one()
    assert audited >= 1


def test_status_belongs_to_its_client_and_delete_ends_it(
    export_hub: Hub, client: TestClient
) -> None:
    load_visit(export_hub, client)
    bulk = BulkClient(client, token_for(export_hub, client_id="hospital-a"))
    export = bulk.run("/fhir/$export")
    stranger = BulkClient(client, token_for(export_hub, client_id="hospital-b"))
    assert stranger.poll(export.status_url).status_code == 404
    assert (
        client.delete(
            export.status_url, headers={"Authorization": f"Bearer {stranger.token}"}
        ).status_code
        == 404
    )
    file_url = export.manifest["output"][0]["url"]
    assert (
        client.get(file_url, headers={"Authorization": f"Bearer {stranger.token}"}).status_code
        == 404
    )
    assert client.get(file_url).status_code == 401
    deleted = client.delete(export.status_url, headers={"Authorization": f"Bearer {bulk.token}"})
    assert deleted.status_code == 202
    gone = bulk.poll(export.status_url)
    assert gone.status_code == 404 and gone.json()["resourceType"] == "OperationOutcome"
    assert (
        client.get(file_url, headers={"Authorization": f"Bearer {bulk.token}"}).status_code == 404
    )


def test_one_export_at_a_time_and_polls_not_too_often(export_hub: Hub, client: TestClient) -> None:
    bulk = operator(export_hub, client)
    # An export no worker has taken yet (started as the API would, but not dispatched).
    held = jobs.start(
        export_hub.db,
        Principal("export-operator", None, ScopeSet.parse("system/*.read"), "t", kind="operator"),
        ExportRequest(level="system", types=["Patient"]),
        request_url="test",
        request_id=None,
        transaction_time=now_instant(),
        retry_after=1,
    )
    second = bulk.kick_off("/fhir/$export")
    assert second.status_code == 429 and second.headers["retry-after"] == "1"
    status_url = f"{export_hub.settings.fhir_base_url}/_export/{held}"
    first = bulk.poll(status_url)
    assert first.status_code == 202 and first.headers["retry-after"] == "1"
    assert first.headers["x-progress"] == "accepted: waiting for a worker"
    again = bulk.poll(status_url)
    assert again.status_code == 429 and again.headers["retry-after"] == "1"
    cancelled = client.delete(status_url, headers={"Authorization": f"Bearer {bulk.token}"})
    assert cancelled.status_code == 202
    assert bulk.poll(status_url).status_code == 404
    bulk.run("/fhir/$export", {"_type": "Patient"})  # the client may start another now


def test_kick_off_refusals(export_hub: Hub, client: TestClient) -> None:
    bulk = operator(export_hub, client)
    headers = {"Authorization": f"Bearer {bulk.token}"}
    assert client.get("/fhir/$export", headers=headers).status_code == 400  # no respond-async
    assert bulk.kick_off("/fhir/$export", {"_type": "Nonsense"}).status_code == 400
    assert bulk.kick_off("/fhir/$export", {"_since": "yesterday"}).status_code == 400
    assert bulk.kick_off("/fhir/$export", {"_elements": "id"}).status_code == 400
    assert bulk.kick_off("/fhir/$export", {"patient": "Patient/x"}).status_code == 400
    assert bulk.kick_off("/fhir/Group/nobody/$export").status_code == 404
    narrow = BulkClient(client, token_for(export_hub, "system/Patient.rs", "narrow"))
    assert narrow.kick_off("/fhir/$export", {"_type": "Observation"}).status_code == 403
    lenient = narrow.run(
        "/fhir/$export", {"_type": "Observation,Patient", "_elements": "id"}, lenient=True
    )
    notes = narrow.resources(lenient, "error")
    assert {n["resourceType"] for n in notes} == {"OperationOutcome"} and len(notes) == 2
    assert {item["type"] for item in lenient.manifest["output"]} <= {"Patient"}
    citizen = client.get(
        "/fhir/$export", headers={"Authorization": "Bearer x", "Prefer": "respond-async"}
    )
    assert citizen.status_code == 401


def test_capability_statement_declares_the_three_exports(client: TestClient) -> None:
    statement = client.get("/fhir/metadata").json()
    rest = statement["rest"][0]
    assert "export" in {o["name"] for o in rest.get("operation", [])}
    by_type = {r["type"]: {o["name"] for o in r.get("operation", [])} for r in rest["resource"]}
    assert "export" in by_type["Patient"] and "export" in by_type["Group"]
