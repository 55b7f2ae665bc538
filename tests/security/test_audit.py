"""The audit trail over the API: one record per interaction with what BALP asks, refusals and
failed logins included; durable before the answer (a killed server loses none it answered,
a record that cannot be written withholds the answer); append-only, hash-chained, verified."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text

from emr_hub.hub import Hub
from emr_hub.security.audit.log import EVENT, PATIENT, verify
from tests.conftest import free_port
from tests.fhir.conftest import Api, api, app_client, outcome_issue, token_for
from tests.processes import EMR_HUB, ApiServer, cli_env

__all__ = ["api", "app_client"]  # the API fixtures, shared with the FHIR tests
CCCD = "http://fhir.hl7.org.vn/core/sid/cccd"
HIV_LABEL = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "HIV"}


def patient(cccd: str = "001085000123", **extra: Any) -> dict[str, Any]:
    born = 1900 + 100 * (int(cccd[3]) // 2) + int(cccd[4:6])
    return {
        "resourceType": "Patient",
        "identifier": [{"system": CCCD, "value": cccd}],
        "birthDate": f"{born}-04-12",
        **extra,
    }


def observation(patient_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "pulse"},
        "subject": {"reference": f"Patient/{patient_id}"},
        **extra,
    }


def created(api: Api, resource: dict[str, Any], token: str | None = None) -> str:
    response = api.post(f"/{resource['resourceType']}", resource, token=token)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def events(hub: Hub, **where: Any) -> list[dict[str, Any]]:
    """The AuditEvents stored, oldest first (``where``: column = value)."""
    query = select(EVENT.c.content).order_by(EVENT.c.seq)
    for column, value in where.items():
        query = query.where(EVENT.c[column] == value)
    with hub.db.snapshot() as session:
        return list(session.scalars(query))


def by_request(hub: Hub, request_id: str) -> dict[str, Any]:
    [event] = events(hub, request_id=request_id)
    return event


def subtype(event: dict[str, Any]) -> str:
    return str(event["subtype"][0]["code"])


def patients_of(event: dict[str, Any]) -> dict[str, str]:
    """Patient id → the resource types the event says it touched of her data."""
    found: dict[str, str] = {}
    for entity in event["entity"]:
        if entity.get("role", {}).get("code") == "1":
            details = {d["type"]: d["valueString"] for d in entity["detail"]}
            found[entity["what"]["reference"].split("/")[1]] = details["types"]
    return found


def references(event: dict[str, Any]) -> set[str]:
    return {e["what"]["reference"] for e in event["entity"] if e.get("role", {}).get("code") == "4"}


def agent_who(event: dict[str, Any]) -> list[dict[str, Any]]:
    return [agent["who"] for agent in event["agent"]]


@contextmanager
def audit_inserts_refused(hub: Hub) -> Iterator[None]:
    """Meanwhile every insert into ``audit_event`` fails ('audit disk full'), as when the
    audit's storage is out of space."""
    with hub.db.transaction() as session:
        if hub.db.dialect == "postgresql":
            session.execute(
                text(
                    "CREATE FUNCTION no_audit() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN RAISE EXCEPTION 'audit disk full'; END $$"
                )
            )
            session.execute(
                text(
                    "CREATE TRIGGER no_audit BEFORE INSERT ON audit_event "
                    "FOR EACH ROW EXECUTE FUNCTION no_audit()"
                )
            )
        else:
            session.execute(
                text(
                    "CREATE TRIGGER no_audit BEFORE INSERT ON audit_event "
                    "BEGIN SELECT RAISE(ABORT, 'audit disk full'); END"
                )
            )
    try:
        yield
    finally:
        on_table = " ON audit_event" if hub.db.dialect == "postgresql" else ""
        with hub.db.transaction() as session:
            session.execute(text(f"DROP TRIGGER no_audit{on_table}"))


# --------------------------------------------------------------------- records
def test_each_interaction_leaves_its_record(hub: Hub, api: Api) -> None:
    patient_id = created(api, patient())
    created_event = events(hub)[-1]
    assert (subtype(created_event), created_event["action"], created_event["outcome"]) == (
        "create",
        "C",
        "0",
    )
    assert f"Patient/{patient_id}/_history/1" in references(created_event)
    assert patients_of(created_event) == {patient_id: "Patient"}
    assert {"reference": "Organization/test-hospital"} in agent_who(created_event)

    read = api.get(f"/Patient/{patient_id}", headers={"X-Request-Id": "req-read-1"})
    assert read.headers["x-request-id"] == "req-read-1"
    event = by_request(hub, "req-read-1")
    assert (subtype(event), event["action"], event["outcome"]) == ("read", "R", "0")
    assert event["purposeOfEvent"][0]["coding"][0]["code"] == "TREAT"
    assert event["source"]["site"] == hub.settings.fhir_base_url
    [client] = [a for a in event["agent"] if a["who"].get("identifier", {}).get("system")]
    assert client["who"]["identifier"] == {"system": "urn:emr-hub:client", "value": "test-hospital"}
    assert client["network"]["address"]  # the caller's address, as the connection gave it

    search = api.get("/Observation", params={"subject": f"Patient/{patient_id}"})
    event = by_request(hub, search.headers["x-request-id"])
    assert (subtype(event), event["action"]) == ("search-type", "E")
    [query] = [e for e in event["entity"] if e.get("role", {}).get("code") == "24"]
    assert base64.b64decode(query["query"]) == search.request.url.query

    api.put(f"/Patient/{patient_id}", {**patient(), "id": patient_id, "gender": "female"})
    api.patch(f"/Patient/{patient_id}", [{"op": "add", "path": "/active", "value": True}])
    history = api.get(f"/Patient/{patient_id}/_history")
    assert history.status_code == 200
    api.delete(f"/Patient/{patient_id}")
    kinds = [(subtype(e), e["action"]) for e in events(hub)[-4:]]
    assert kinds == [("update", "U"), ("patch", "U"), ("history-instance", "R"), ("delete", "D")]
    assert patients_of(events(hub)[-1]) == {patient_id: "Patient"}  # what the delete touched


def test_a_bundle_is_one_record_naming_every_resource_and_patient(hub: Hub, api: Api) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:2b7f6c1e-4d0a-4c39-9a51-0f1d2e3c4b01",
                "resource": patient(),
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "fullUrl": "urn:uuid:2b7f6c1e-4d0a-4c39-9a51-0f1d2e3c4b02",
                "resource": observation("x")
                | {"subject": {"reference": "urn:uuid:2b7f6c1e-4d0a-4c39-9a51-0f1d2e3c4b01"}},
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    response = api.post("", bundle)
    assert response.status_code == 200, response.text
    event = by_request(hub, response.headers["x-request-id"])
    assert (subtype(event), event["action"]) == ("transaction", "E")
    locations = {e["response"]["location"] for e in response.json()["entry"]}
    assert references(event) == locations
    [(patient_id, types)] = patients_of(event).items()
    assert types == "Observation,Patient"
    assert f"Patient/{patient_id}/_history/1" in locations


def test_a_search_names_every_patient_whose_data_it_returned(hub: Hub, api: Api) -> None:
    ids = [created(api, patient(cccd)) for cccd in ("001085000123", "001185000456", "079190000789")]
    for patient_id in ids:
        created(api, observation(patient_id))
    response = api.get("/Observation", params={"_count": "2"})
    assert response.status_code == 200
    first_page = by_request(hub, response.headers["x-request-id"])
    assert len(patients_of(first_page)) == 2  # the page holds two patients' data
    everything = api.get("/Observation")
    assert set(patients_of(by_request(hub, everything.headers["x-request-id"]))) == set(ids)


def test_refusals_and_failed_logins_are_recorded(hub: Hub, api: Api) -> None:
    patient_id = created(api, patient())
    observation_id = created(api, observation(patient_id, meta={"security": [HIV_LABEL]}))
    other = token_for(hub, client_id="other-hospital")
    refused = api.get(f"/Observation/{observation_id}", token=other)
    assert refused.status_code == 404
    event = by_request(hub, refused.headers["x-request-id"])
    assert (subtype(event), event["outcome"], event["outcomeDesc"]) == ("read", "4", "HTTP 404")
    assert {"reference": "Organization/other-hospital"} in agent_who(event)
    assert f"Observation/{observation_id}" in references(event)
    # the refusal shows in the patient's record of accesses
    assert patients_of(event) == {patient_id: "Observation"}

    no_token = api.get(f"/Patient/{patient_id}", token="")
    assert no_token.status_code == 401
    event = by_request(hub, no_token.headers["x-request-id"])
    assert event["outcome"] == "4" and {"display": "unauthenticated client"} in agent_who(event)

    narrow = token_for(hub, "system/Patient.r")
    forbidden = api.get("/Observation", token=narrow)
    assert forbidden.status_code == 403
    assert by_request(hub, forbidden.headers["x-request-id"])["outcome"] == "4"

    login = api.client.post(
        "/auth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "test-hospital",
            "client_secret": "x",
        },
        headers={"X-Request-Id": "login-1"},
    )
    assert login.status_code == 401
    event = by_request(hub, "login-1")
    assert event["type"]["code"] == "110114" and subtype(event) == "110122"
    assert event["outcome"] == "4"


def test_a_malformed_request_id_is_replaced(hub: Hub, api: Api) -> None:
    response = api.get("/Patient", headers={"X-Request-Id": "bad id with spaces"})
    generated = response.headers["x-request-id"]
    assert generated != "bad id with spaces"
    by_request(hub, generated)


# ------------------------------------------------------- reading the trail
def test_audit_event_search_is_the_operators_and_a_hospitals_own(hub: Hub, api: Api) -> None:
    patient_id = created(api, patient())
    other = token_for(hub, client_id="other-hospital")
    api.get(f"/Patient/{patient_id}", token=other)  # refused, recorded
    operator = token_for(hub, client_id="test-operator", role="operator")

    everything = api.get("/AuditEvent", token=operator, params={"patient": patient_id}).json()
    assert everything["total"] == 2  # the create and the refused read
    mine = api.get("/AuditEvent", token=other).json()
    assert {e["resource"]["agent"][2]["who"]["reference"] for e in mine["entry"]} == {
        "Organization/other-hospital"
    }
    failures = api.get("/AuditEvent", token=operator, params={"outcome": "4"}).json()
    assert [subtype(e["resource"]) for e in failures["entry"]] == ["read"]
    on_entity = api.get(
        "/AuditEvent", token=operator, params={"entity": f"Patient/{patient_id}"}
    ).json()
    assert on_entity["total"] == 2
    dated = api.get("/AuditEvent", token=operator, params={"date": "lt2000-01-01"}).json()
    assert dated.get("entry", []) == []
    page = api.get("/AuditEvent", token=operator, params={"_count": "1"}).json()
    [next_link] = [link["url"] for link in page["link"] if link["relation"] == "next"]
    second = api.get(next_link.split("/fhir", 1)[1], token=operator).json()
    assert second["entry"][0]["resource"]["id"] != page["entry"][0]["resource"]["id"]
    one = page["entry"][0]["resource"]
    assert api.get(f"/AuditEvent/{one['id']}", token=operator).json() == one
    assert api.get(f"/AuditEvent/{one['id']}", token=other).status_code == 404

    bad = api.get("/AuditEvent", token=operator, params={"user": "x"})
    assert bad.status_code == 400 and "Unknown AuditEvent search parameter" in str(
        outcome_issue(bad)["diagnostics"]
    )


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_nobody_writes_audit_events(hub: Hub, api: Api, method: str) -> None:
    operator = token_for(hub, client_id="test-operator", role="operator")
    forged = {"resourceType": "AuditEvent", "id": "forged", "recorded": "2026-01-01T00:00:00Z"}
    path = "/AuditEvent" if method == "POST" else "/AuditEvent/forged"
    response = api.request(method, path, forged, token=operator)
    assert response.status_code == 405
    assert outcome_issue(response)["code"] == "not-supported"
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"resource": forged, "request": {"method": "PUT", "url": "AuditEvent/forged"}}],
    }
    answer = api.post("", batch, token=operator).json()
    assert answer["entry"][0]["response"]["status"] == "405"


# ------------------------------------------------------------- integrity
def test_the_trail_is_append_only(hub: Hub, api: Api) -> None:
    created(api, patient())
    with pytest.raises(Exception, match="append-only"), hub.db.transaction() as session:
        session.execute(text("UPDATE audit_event SET outcome = '0'"))
    with pytest.raises(Exception, match="append-only"), hub.db.transaction() as session:
        session.execute(text("DELETE FROM audit_patient"))


def _drop_triggers(hub: Hub) -> None:
    """What only someone with the database's own rights can do."""
    with hub.db.transaction() as session:
        for table in ("audit_event", "audit_patient", "audit_entity"):
            if hub.db.dialect == "postgresql":
                session.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))
            else:
                session.execute(text(f"DROP TRIGGER {table}_no_update"))
                session.execute(text(f"DROP TRIGGER {table}_no_delete"))


@pytest.mark.audit_tampered
def test_verify_finds_the_first_changed_record(hub: Hub, api: Api, tmp_path: Path) -> None:
    patient_id = created(api, patient())
    for _ in range(3):
        api.get(f"/Patient/{patient_id}")
    result = verify(hub.db)
    assert result.intact and result.checked == 4
    _drop_triggers(hub)
    with hub.db.transaction() as session:
        second = session.execute(select(EVENT.c.seq).order_by(EVENT.c.seq).offset(1)).scalar()
        tampered = session.execute(select(EVENT.c.content).where(EVENT.c.seq == second)).scalar()
        tampered["outcome"] = "8"
        session.execute(EVENT.update().where(EVENT.c.seq == second).values(content=tampered))
    broken = verify(hub.db)
    assert (broken.broken_at, broken.checked) == (second, 1)
    assert "changed" in str(broken.problem)

    env = cli_env(tmp_path, hub.settings.effective_database_url)
    cli = subprocess.run(
        [EMR_HUB, "audit", "verify"], env=env, capture_output=True, text=True, timeout=60
    )
    assert cli.returncode == 1
    assert f"broken at record {second}" in cli.stderr


@pytest.mark.audit_tampered
def test_verify_finds_a_removed_record_and_a_changed_column(hub: Hub, api: Api) -> None:
    patient_id = created(api, patient())
    api.get(f"/Patient/{patient_id}")
    api.get(f"/Patient/{patient_id}")
    _drop_triggers(hub)
    with hub.db.transaction() as session:
        session.execute(EVENT.update().where(EVENT.c.seq == 1).values(organization="x"))
    assert "organization column" in str(verify(hub.db).problem)
    with hub.db.transaction() as session:
        restored = EVENT.update().where(EVENT.c.seq == 1)
        session.execute(restored.values(organization="Organization/test-hospital"))
        session.execute(EVENT.delete().where(EVENT.c.seq == 2))
    broken = verify(hub.db)
    assert (broken.broken_at, broken.problem) == (3, "records 2 to 2 are missing")
    with hub.db.transaction() as session:
        rows = session.execute(select(PATIENT.c.seq)).scalars().all()
        session.execute(PATIENT.delete().where(PATIENT.c.seq == rows[0]))
    assert verify(hub.db).broken_at == 1


def test_an_answer_waits_for_its_record(hub: Hub, api: Api) -> None:
    """When the record cannot be written, the answer is withheld (503), not sent unaudited."""
    patient_id = created(api, patient())
    with audit_inserts_refused(hub):
        read = api.get(f"/Patient/{patient_id}")
        assert read.status_code == 503
        assert patient_id not in read.text
        write = api.post("/Patient", patient("001185000456"))
        assert write.status_code == 503  # the write's own transaction could not commit its record
    assert api.get("/Patient", params={"identifier": f"{CCCD}|001185000456"}).json()["total"] == 0


# ----------------------------------------------------------------- a crash
@pytest.fixture
def served(tmp_path: Path, postgres_url: str) -> Iterator[tuple[ApiServer, dict[str, str]]]:
    port = free_port()
    env = cli_env(tmp_path, postgres_url, EMR_HUB_BASE_URL=f"http://127.0.0.1:{port}")
    server = ApiServer(env, port, tmp_path / "serve.log")
    try:
        server.wait_ready()
        yield server, env
    finally:
        server.stop()


def test_a_killed_server_loses_no_record_of_what_it_answered(
    served: tuple[ApiServer, dict[str, str]], tmp_path: Path, postgres_url: str
) -> None:
    server, env = served
    subprocess.run([EMR_HUB, "demo"], env=env, capture_output=True, check=True, timeout=120)
    token = subprocess.run(
        [EMR_HUB, "token", "bach-mai"], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    headers = {"Authorization": f"Bearer {token}"}
    answered = []
    with httpx.Client(base_url=server.base, headers=headers, timeout=30) as client:
        for index in range(20):
            request_id = {"X-Request-Id": f"c{index}"}
            response = client.get("/fhir/Organization/bach-mai", headers=request_id)
            assert response.status_code == 200
            answered.append(response.headers["x-request-id"])
        created_patient = client.post(
            "/fhir/Patient",
            json=patient("001085000999"),
            headers={"Content-Type": "application/fhir+json", "X-Request-Id": "c-write"},
        )
        assert created_patient.status_code == 201
        answered.append("c-write")
    server.kill()  # SIGKILL right after the last answer: no shutdown, no flush
    from sqlalchemy import create_engine

    engine = create_engine(postgres_url)
    with engine.connect() as connection:
        recorded = set(connection.execute(select(EVENT.c.request_id)).scalars())
    engine.dispose()
    assert set(answered) <= recorded
