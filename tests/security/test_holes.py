"""Every hole the access-policy issue found, tried again as the attacker would: another
hospital's valid client (the Từ Sơn commune station against Bạch Mai), over the API."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from emr_hub.hub import Hub
from tests.fhir.conftest import Api, api, app_client, outcome_issue, token_for
from tests.security.builders import actors, privacy_consent, referral_letter

__all__ = ["api", "app_client"]

CCCD = "http://fhir.hl7.org.vn/core/sid/cccd"
FACILITY = "http://fhir.hl7.org.vn/core/sid/ma-cskcb"
LEVEL = "http://fhir.hl7.org.vn/core/CodeSystem/vn-facility-care-level-cs"
HIV = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "HIV"}


@pytest.fixture
def network(hub: Hub, api: Api) -> dict[str, str]:
    """Bạch Mai and the commune station (each its own client), and Bạch Mai's patient with an
    HIV result, entered by Bạch Mai."""
    operator = token_for(hub, client_id="test-operator", role="operator")
    for org, level, code in (("bach-mai", "CHUYEN_SAU", "DM001"), ("commune", "BAN_DAU", "DM273")):
        organization = {
            "resourceType": "Organization",
            "id": org,
            "name": org,
            "identifier": [{"system": FACILITY, "value": code}],
            "type": [{"coding": [{"system": LEVEL, "code": level}]}],
        }
        assert api.put(f"/Organization/{org}", organization, token=operator).status_code == 201
    tokens = {org: token_for(hub, client_id=org) for org in ("bach-mai", "commune")}
    patient = {
        "resourceType": "Patient",
        "id": "bm-patient",
        "identifier": [{"system": CCCD, "value": "001185000123"}],
        "birthDate": "1985-01-01",
    }
    assert api.put("/Patient/bm-patient", patient, token=tokens["bach-mai"]).status_code == 201
    hiv = {
        "resourceType": "Observation",
        "id": "bm-hiv",
        "meta": {"security": [HIV]},
        "status": "final",
        "code": {"text": "HIV-1 antibody"},
        "valueString": "positive",
        "subject": {"reference": "Patient/bm-patient"},
    }
    assert api.put("/Observation/bm-hiv", hiv, token=tokens["bach-mai"]).status_code == 201
    return tokens | {"operator": operator}


def test_another_hospital_cannot_read_change_or_delete_a_patient(
    api: Api, network: dict[str, str]
) -> None:
    commune = network["commune"]
    for path in ("/Patient/bm-patient", "/Observation/bm-hiv", "/Observation/bm-hiv/_history/1"):
        assert api.get(path, token=commune).status_code == 404
    assert api.get("/Observation/bm-hiv/_history", token=commune).status_code == 404
    stolen = {"resourceType": "Patient", "id": "bm-patient", "gender": "male"}
    changed = api.put("/Patient/bm-patient", stolen, token=commune)
    assert changed.status_code == 403
    assert api.delete("/Observation/bm-hiv", token=commune).status_code == 403
    patch = api.patch("/Patient/bm-patient", [], token=commune)
    assert patch.status_code == 404
    bach_mai = api.get("/Patient/bm-patient", token=network["bach-mai"]).json()
    assert "gender" not in bach_mai and bach_mai["meta"]["versionId"] == "1"


def test_the_network_cannot_be_listed(api: Api, network: dict[str, str]) -> None:
    commune = network["commune"]
    for path in ("/Patient", "/Observation"):
        answer = api.get(path, token=commune, params={"_total": "accurate"}).json()
        assert answer["total"] == 0
    for path in ("/_history", "/Patient/_history", "/Observation/_history"):
        answer = api.get(path, token=commune).json()
        # the directory is public; nothing of the patient's is in any history
        kinds = {e["resource"]["resourceType"] for e in answer.get("entry", [])}
        assert kinds <= {"Organization"}
    by_cccd = api.get("/Patient", token=commune, params={"identifier": f"{CCCD}|001185000123"})
    assert by_cccd.json()["total"] == 0
    everything = api.get("/Patient/bm-patient/$everything", token=commune)
    assert everything.status_code == 404
    system = api.get("", token=commune, params={"_type": "Patient,Observation"}).json()
    assert "entry" not in system


def test_chains_has_and_includes_reveal_nothing(
    hub: Hub, api: Api, network: dict[str, str]
) -> None:
    commune = network["commune"]
    # the commune's own Observation about Bạch Mai's patient (it may create for anyone)
    own = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "pulse"},
        "subject": {"reference": "Patient/bm-patient"},
    }
    assert api.post("/Observation", own, token=commune).status_code == 201
    chain = api.get(
        "/Observation", token=commune, params={"subject:Patient.identifier": "001185000123"}
    ).json()
    assert chain.get("total") == 0  # its Observation matches only through the patient it can't see
    has = api.get(
        "/Patient", token=commune, params={"_has:Observation:subject:code:text": "HIV"}
    ).json()
    assert has.get("total") == 0
    included = api.get(
        "/Observation", token=commune, params={"_include": "Observation:subject"}
    ).json()
    assert [e["resource"]["resourceType"] for e in included["entry"]] == ["Observation"]


def test_update_only_scope_reads_nothing_through_patch(
    hub: Hub, api: Api, network: dict[str, str]
) -> None:
    writer = token_for(hub, "system/Patient.u", client_id="bach-mai")
    empty = api.patch("/Patient/bm-patient", [], token=writer)
    assert empty.status_code == 403
    assert "bm-patient" not in empty.text and "001185000123" not in empty.text
    test_op = [{"op": "test", "path": "/identifier/0/value", "value": "000000000000"}]
    failed = api.patch("/Patient/bm-patient", test_op, token=network["bach-mai"])
    assert failed.status_code == 422
    assert "001185000123" not in failed.text
    assert "operation 0 (test /identifier/0/value)" in outcome_issue(failed)["diagnostics"]
    missing = [{"op": "remove", "path": "/nothing/here"}]
    assert (
        "nothing"
        in outcome_issue(api.patch("/Patient/bm-patient", missing, token=network["bach-mai"]))[
            "diagnostics"
        ]
    )


def test_patches_are_bounded(api: Api, network: dict[str, str]) -> None:
    bach_mai = network["bach-mai"]
    grow = [{"op": "add", "path": "/extension", "value": [{"url": "x", "valueString": "a" * 500}]}]
    grow += [{"op": "copy", "from": "/extension", "path": "/extension/-"}] * 40
    started = time.monotonic()
    answer = api.patch("/Patient/bm-patient", grow, token=bach_mai)
    assert answer.status_code == 422 and outcome_issue(answer)["code"] == "too-costly"
    assert time.monotonic() - started < 5
    many = [{"op": "test", "path": "/id", "value": "bm-patient"}] * 1001
    assert api.patch("/Patient/bm-patient", many, token=bach_mai).status_code == 422
    assert api.get("/Patient/bm-patient", token=bach_mai).json()["meta"]["versionId"] == "1"


def test_has_and_chains_need_the_scope_of_the_types_they_search(
    hub: Hub, api: Api, network: dict[str, str]
) -> None:
    patients_only = token_for(hub, "system/Patient.rs", client_id="bach-mai")
    has = api.get(
        "/Patient", token=patients_only, params={"_has:Observation:subject:code:text": "HIV"}
    )
    assert has.status_code == 403
    assert "system/Observation.s" in has.headers["www-authenticate"]
    chain = api.get(
        "/Patient", token=patients_only, params={"general-practitioner:Practitioner.name": "x"}
    )
    assert chain.status_code == 403


def subscription(endpoint: str, criteria: str = "Patient?") -> dict[str, Any]:
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "feed",
        "criteria": criteria,
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "header": ["Authorization: Bearer bach-mai-secret"],
        },
    }


def test_subscriptions_are_their_hospitals_and_their_secrets_stay(
    hub: Hub, api: Api, network: dict[str, str]
) -> None:
    bach_mai, commune = network["bach-mai"], network["commune"]
    created = api.post("/Subscription", subscription("http://127.0.0.1:9/bm"), token=bach_mai)
    assert created.status_code == 201, created.text
    shown = created.json()
    assert shown["channel"]["header"] == ["Authorization: [hidden]"]
    path = f"/Subscription/{shown['id']}"
    for token in (bach_mai, network["operator"]):
        read = api.get(path, token=token)
        assert "bach-mai-secret" not in read.text
        assert "bach-mai-secret" not in api.get(f"{path}/_history", token=token).text
        assert "bach-mai-secret" not in api.get("/Subscription", token=token).text
    assert api.get(path, token=commune).status_code == 404
    assert api.get(f"{path}/$delivery-log", token=commune).status_code == 404
    repointed = {**shown, "channel": {**shown["channel"], "endpoint": "http://127.0.0.1:9/x"}}
    assert api.put(path, repointed, token=commune).status_code == 403
    assert api.delete(path, token=commune).status_code == 403
    # written back as read, the hidden header keeps its stored value
    assert api.put(path, repointed, token=bach_mai).status_code == 200
    with hub.db.snapshot() as session:
        from emr_hub.fhir.store import FhirStore

        stored = FhirStore(session).current("Subscription", shown["id"])
    assert stored is not None and stored.content is not None
    assert stored.content["channel"]["header"] == ["Authorization: Bearer bach-mai-secret"]
    unknown = {**repointed, "channel": {**repointed["channel"], "header": ["X-Other: [hidden]"]}}
    assert api.put(path, unknown, token=bach_mai).status_code == 422


def test_a_network_wide_feed_carries_only_what_the_subscriber_may_see(
    hub: Hub, api: Api, network: dict[str, str]
) -> None:
    from sqlalchemy import select

    from storage.tables import OutboxMessage

    feed = api.post("/Subscription", subscription("http://127.0.0.1:9/c"), token=network["commune"])
    assert feed.status_code == 201
    other = {
        "resourceType": "Patient",
        "identifier": [{"system": CCCD, "value": "079190000456"}],
        "birthDate": "1990-01-01",
    }
    assert api.post("/Patient", other, token=network["bach-mai"]).status_code == 201
    with hub.db.snapshot() as session:
        owed = session.scalars(select(OutboxMessage)).all()
    assert owed == []


def referral_network(api: Api, hub: Hub, operator: str) -> dict[str, str]:
    for org, level in (("district", "BAN_DAU"), ("general", "CO_BAN")):
        organization = {
            "resourceType": "Organization",
            "id": org,
            "name": org,
            "type": [{"coding": [{"system": LEVEL, "code": level}]}],
        }
        assert api.put(f"/Organization/{org}", organization, token=operator).status_code == 201
    return {org: token_for(hub, client_id=org) for org in ("district", "general")}


def test_referrals_cannot_leave_the_workflow(hub: Hub, api: Api, network: dict[str, str]) -> None:
    tokens = referral_network(api, hub, network["operator"])
    district, general = tokens["district"], tokens["general"]
    letter = referral_letter("p1", "district", "general")
    forged = api.post("/ServiceRequest", letter, token=general)  # in the district's name
    assert forged.status_code == 403
    sr = api.post("/ServiceRequest", letter, token=district).json()["id"]
    task = {
        "resourceType": "Task",
        "status": "requested",
        "intent": "order",
        "focus": {"reference": f"ServiceRequest/{sr}"},
        "for": {"reference": "Patient/p1"},
        "requester": {"reference": "Organization/district"},
        "owner": {"reference": "Organization/general"},
    }
    task_id = api.post("/Task", task, token=district).json()["id"]
    unfocused = {k: v for k, v in task.items() if k != "focus"} | {
        "id": task_id,
        "status": "completed",
    }
    dropped = api.put(f"/Task/{task_id}", unfocused, token=general)
    assert dropped.status_code in (409, 422)
    commune = network["commune"]
    assert (
        api.put(
            f"/Task/{task_id}", {**task, "id": task_id, "status": "cancelled"}, token=commune
        ).status_code
        == 403
    )
    for token in (general, district, commune):
        assert api.delete(f"/Task/{task_id}", token=token).status_code in (403, 409)
        assert api.delete(f"/ServiceRequest/{sr}", token=token).status_code in (403, 409)
    rewritten = {**letter, "id": sr, "performer": [{"reference": "Organization/bach-mai"}]}
    assert api.put(f"/ServiceRequest/{sr}", rewritten, token=general).status_code == 403
    assert api.get(f"/Task/{task_id}", token=district).json()["status"] == "requested"


def test_the_directory_is_its_hospitals(hub: Hub, api: Api, network: dict[str, str]) -> None:
    commune = network["commune"]
    bach_mai = api.get("/Organization/bach-mai", token=commune).json()  # public
    taken = {**bach_mai, "identifier": [{"system": FACILITY, "value": "DM273"}]}
    assert api.put("/Organization/bach-mai", taken, token=commune).status_code == 403
    own = api.get("/Organization/commune", token=commune).json()
    squat = {**own, "identifier": [{"system": FACILITY, "value": "DM001"}]}
    refused = api.put("/Organization/commune", squat, token=commune)
    assert refused.status_code == 422
    assert "belongs to Organization/bach-mai" in outcome_issue(refused)["diagnostics"]
    renamed = {**own, "name": "Trạm Y tế phường Đồng Nguyên"}
    assert api.put("/Organization/commune", renamed, token=commune).status_code == 200
    twin = {
        "resourceType": "Organization",
        "name": "x",
        "identifier": [{"system": FACILITY, "value": "DM001"}],
    }
    assert api.post("/Organization", twin, token=commune).status_code == 422


def test_audit_events_and_consents_resist_forgery(
    hub: Hub, api: Api, network: dict[str, str]
) -> None:
    commune = network["commune"]
    forged = {"resourceType": "AuditEvent", "recorded": "2026-01-01T00:00:00Z"}
    assert api.post("/AuditEvent", forged, token=commune).status_code == 405
    consent = privacy_consent(
        "bm-patient",
        {"type": "deny", "actor": actors("commune")},
        sourceAttachment={"contentType": "application/pdf", "data": "JVBERi0="},
    )
    created = api.post("/Consent", consent, token=network["bach-mai"])
    assert created.status_code == 201, created.text
    consent_id = created.json()["id"]
    assert api.delete(f"/Consent/{consent_id}", token=commune).status_code in (403, 404)
    kept = api.delete(f"/Consent/{consent_id}", token=network["bach-mai"])
    assert kept.status_code == 403 and "withdrawn" in outcome_issue(kept)["diagnostics"]
    assert (
        orjson.loads(api.get(f"/Consent/{consent_id}", token=network["bach-mai"]).content)["status"]
        == "active"
    )
