"""The referral rules enforced on writes over the API: direction, validity, Task roles.

Three hospitals, each with its own client (so its own Organization): a BAN_DAU district
facility, a CO_BAN provincial hospital and a CHUYEN_SAU central one.
"""

from __future__ import annotations

from typing import Any

import pytest

from emr_hub.hub import Hub
from tests.fhir.conftest import Api, outcome_issue, token_for

LEVEL = "http://fhir.hl7.org.vn/core/CodeSystem/vn-facility-care-level-cs"
REFERRAL = {"coding": [{"system": "http://snomed.info/sct", "code": "3457005"}]}


@pytest.fixture
def network(hub: Hub, api: Api) -> dict[str, str]:
    tokens = {}
    for org, level in (("district", "BAN_DAU"), ("general", "CO_BAN"), ("central", "CHUYEN_SAU")):
        organization = {
            "resourceType": "Organization",
            "id": org,
            "name": org,
            "type": [{"coding": [{"system": LEVEL, "code": level}]}],
        }
        assert api.put(f"/Organization/{org}", organization).status_code == 201
        tokens[org] = token_for(hub, "system/*.cruds", client_id=org)
    return tokens


def referral(sender: str, receiver: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "category": [REFERRAL],
        "subject": {"reference": "Patient/p1"},
        "requester": {"reference": f"Organization/{sender}"},
        "performer": [{"reference": f"Organization/{receiver}"}],
        "authoredOn": "2025-04-25T09:00:00+07:00",
        "reasonCode": [{"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "J18.9"}]}],
        **extra,
    }


def task(
    sr_id: str, sender: str, receiver: str, status: str = "requested", **extra: Any
) -> dict[str, Any]:
    return {
        "resourceType": "Task",
        "status": status,
        "intent": "order",
        "focus": {"reference": f"ServiceRequest/{sr_id}"},
        "for": {"reference": "Patient/p1"},
        "requester": {"reference": f"Organization/{sender}"},
        "owner": {"reference": f"Organization/{receiver}"},
        **extra,
    }


def test_direction_and_validity(api: Api, network: dict[str, str]) -> None:
    ok = api.post("/ServiceRequest", referral("district", "general"), token=network["district"])
    assert ok.status_code == 201, ok.text
    period = ok.json()["occurrencePeriod"]
    # signed Friday 25 April 2025; the signing day does not count: 28, 29 April (30/4, 1/5 and
    # 2/5 are off), 5-9 May, 12-14 May make ten working days, ending on 14 May
    assert period["start"].startswith("2025-04-25") and period["end"].startswith("2025-05-14")
    skip = api.post("/ServiceRequest", referral("district", "central"), token=network["district"])
    assert skip.status_code == 422
    assert outcome_issue(skip)["expression"][0].startswith("ServiceRequest.performer")
    emergency = referral("district", "central", priority="stat")
    assert api.post("/ServiceRequest", emergency, token=network["district"]).status_code == 201
    unknown = api.post(
        "/ServiceRequest", referral("district", "nowhere"), token=network["district"]
    )
    assert unknown.status_code == 422
    too_long = referral("district", "general", occurrencePeriod={"end": "2026-01-01"})
    assert api.post("/ServiceRequest", too_long, token=network["district"]).status_code == 422


def test_task_state_machine_and_roles(api: Api, network: dict[str, str]) -> None:
    district, general = network["district"], network["general"]
    sr = api.post("/ServiceRequest", referral("district", "general"), token=district).json()["id"]
    created = api.post("/Task", task(sr, "district", "general"), token=district)
    assert created.status_code == 201, created.text
    task_id = created.json()["id"]
    path = f"/Task/{task_id}"
    assert api.post("/Task", task(sr, "district", "general"), token=general).status_code == 403

    def move(status: str, token: str, **extra: Any) -> Any:
        return api.put(
            path, {**task(sr, "district", "general", status, **extra), "id": task_id}, token=token
        )

    assert move("completed", general).status_code == 409  # requested → completed is not a step
    assert move("accepted", district).status_code == 403  # only the owner accepts
    assert move("accepted", general).status_code == 200
    assert move("in-progress", general).status_code == 200
    no_output = move("completed", general)
    assert no_output.status_code == 422
    output = [
        {
            "type": {"text": "discharge summary"},
            "valueReference": {"reference": "DocumentReference/d1"},
        }
    ]
    assert move("completed", general, output=output).status_code == 200
    assert move("accepted", general).status_code == 409  # completed is final
    assert api.get(path, token=district).json()["status"] == "completed"


def test_re_exam_appointment_is_single_use(api: Api) -> None:
    appointment = {
        "resourceType": "Appointment",
        "status": "booked",
        "identifier": [{"system": "urn:emr-hub:reexam-slip:DM001", "value": "GH-0001"}],
        "start": "2025-06-02T08:00:00+07:00",
        "end": "2025-06-02T09:00:00+07:00",
        "participant": [{"actor": {"reference": "Patient/p1"}, "status": "accepted"}],
    }
    appointment_id = api.post("/Appointment", appointment).json()["id"]
    visit = {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": "Patient/p1"},
        "appointment": [{"reference": f"Appointment/{appointment_id}"}],
    }
    first = api.post("/Encounter", visit)
    assert first.status_code == 201, first.text
    assert api.get(f"/Appointment/{appointment_id}").json()["status"] == "fulfilled"
    again = api.put(f"/Encounter/{first.json()['id']}", {**first.json(), "status": "finished"})
    assert again.status_code == 200  # the same visit, re-posted: still its one use
    second = api.post("/Encounter", visit)
    assert second.status_code == 409
    assert outcome_issue(second)["expression"] == ["Encounter.appointment[0]"]
    encounters = api.get(
        "/Encounter", params={"appointment": f"Appointment/{appointment_id}"}
    ).json()
    assert encounters["total"] == 1  # the refused visit wrote nothing
    cancelled = api.post("/Appointment", {**appointment, "status": "cancelled"}).json()["id"]
    refused = api.post(
        "/Encounter", {**visit, "appointment": [{"reference": f"Appointment/{cancelled}"}]}
    )
    assert refused.status_code == 409


def test_referral_history_in_order_with_tasks_outputs_and_appointments(
    hub: Hub, api: Api, network: dict[str, str]
) -> None:
    district, general = network["district"], network["general"]
    cccd = {"system": "http://fhir.hl7.org.vn/core/sid/cccd", "value": "027185000123"}
    patient = {
        "resourceType": "Patient",
        "id": "p1",
        "identifier": [cccd],
        "birthDate": "1985-04-12",
    }
    assert api.put("/Patient/p1", patient).status_code == 201
    first = api.post("/ServiceRequest", referral("district", "general"), token=district).json()[
        "id"
    ]
    later = referral("general", "district", authoredOn="2025-05-20T09:00:00+07:00")
    second = api.post("/ServiceRequest", later, token=general).json()["id"]
    task_id = api.post("/Task", task(first, "district", "general"), token=district).json()["id"]
    summary = {
        "resourceType": "DocumentReference",
        "status": "current",
        "subject": {"reference": "Patient/p1"},
        "content": [{"attachment": {"contentType": "text/plain", "data": "S+G7lXQgcXXhuqM="}}],
    }
    summary_id = api.post("/DocumentReference", summary).json()["id"]
    output = [
        {
            "type": {"text": "summary"},
            "valueReference": {"reference": f"DocumentReference/{summary_id}"},
        }
    ]
    for status, extra in (("accepted", {}), ("in-progress", {}), ("completed", {"output": output})):
        moved = api.put(
            f"/Task/{task_id}",
            {**task(first, "district", "general", status, **extra), "id": task_id},
            token=general,
        )
        assert moved.status_code == 200, moved.text
    slip = {
        "resourceType": "Appointment",
        "status": "booked",
        "basedOn": [{"reference": f"ServiceRequest/{first}"}],
        "start": "2025-06-02T08:00:00+07:00",
        "end": "2025-06-02T09:00:00+07:00",
        "participant": [{"actor": {"reference": "Patient/p1"}, "status": "accepted"}],
    }
    slip_id = api.post("/Appointment", slip).json()["id"]

    # read by Bắc Ninh general, the receiver of the first letter and the sender of the second
    history = api.get("/Patient/p1/$referral-history", token=general).json()
    entries = [
        (e["resource"]["resourceType"], e["resource"]["id"], e["search"]["mode"])
        for e in history["entry"]
    ]
    referrals = [i for t, i, mode in entries if mode == "match"]
    assert referrals == [first, second]  # oldest first
    assert history["total"] == 2
    block = entries[: entries.index(("ServiceRequest", second, "match"))]
    assert ("Task", task_id, "include") in block
    assert ("Appointment", slip_id, "include") in block
    assert ("DocumentReference", summary_id, "include") in block
    assert {("Organization", "district", "include"), ("Organization", "general", "include")} <= set(
        block
    )
    by_cccd = api.get(
        "/Patient/$referral-history",
        params={"identifier": "http://fhir.hl7.org.vn/core/sid/cccd|027185000123"},
        token=general,
    )
    assert by_cccd.json()["entry"] == history["entry"]
    assert (
        api.get("/Patient/$referral-history", params={"identifier": "x|000000000000"}).status_code
        == 400
    )
    assert api.get("/Patient/nobody/$referral-history").status_code == 404
    patients_only = token_for(hub, "system/Patient.rs")
    narrow = api.get("/Patient/p1/$referral-history", token=patients_only).json()
    assert "entry" not in narrow or all(
        e["resource"]["resourceType"] == "Patient" for e in narrow["entry"]
    )


def test_referral_history_groups_the_tasks_and_appointments_of_several_referrals(
    hub: Hub, api: Api, network: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three letters written out of date order, two Tasks on one letter (the first written
    moved last), an Appointment based on two letters: each letter's block holds exactly its
    own resources, Tasks by _lastUpdated, and an Organization only under the first letter."""
    from emr_hub.referrals import history

    district, general = network["district"], network["general"]
    patient = {"resourceType": "Patient", "id": "p1", "birthDate": "1985-04-12"}
    assert api.put("/Patient/p1", patient).status_code == 201

    def letter(sender: str, receiver: str, authored: str, token: str) -> str:
        body = referral(sender, receiver, authoredOn=authored)
        created = api.post("/ServiceRequest", body, token=token)
        assert created.status_code == 201, created.text
        return str(created.json()["id"])

    def new_task(sr: str, sender: str, receiver: str, token: str) -> str:
        created = api.post("/Task", task(sr, sender, receiver), token=token)
        assert created.status_code == 201, created.text
        return str(created.json()["id"])

    def move(task_id: str, sr: str, sender: str, receiver: str, status: str, **extra: Any) -> None:
        body = {**task(sr, sender, receiver, status, **extra), "id": task_id}
        moved = api.put(f"/Task/{task_id}", body, token=network[receiver])
        assert moved.status_code == 200, moved.text

    def slip(*based_on: str) -> str:
        body = {
            "resourceType": "Appointment",
            "status": "booked",
            "basedOn": [{"reference": f"ServiceRequest/{sr}"} for sr in based_on],
            "start": "2025-07-01T08:00:00+07:00",
            "end": "2025-07-01T09:00:00+07:00",
            "participant": [{"actor": {"reference": "Patient/p1"}, "status": "accepted"}],
        }
        return str(api.post("/Appointment", body).json()["id"])

    late = letter("general", "central", "2025-06-02T09:00:00+07:00", general)
    early = letter("district", "general", "2025-04-25T09:00:00+07:00", district)
    middle = letter("general", "district", "2025-05-12T09:00:00+07:00", general)
    late_task = new_task(late, "general", "central", general)
    first_task = new_task(early, "district", "general", district)
    middle_task = new_task(middle, "general", "district", general)
    second_task = new_task(early, "district", "general", district)
    move(first_task, early, "district", "general", "accepted")  # now updated after second_task
    summary = {
        "resourceType": "DocumentReference",
        "status": "current",
        "subject": {"reference": "Patient/p1"},
        "content": [{"attachment": {"contentType": "text/plain", "data": "b2s="}}],
    }
    summary_id = api.post("/DocumentReference", summary).json()["id"]
    output = [
        {
            "type": {"text": "summary"},
            "valueReference": {"reference": f"DocumentReference/{summary_id}"},
        }
    ]
    move(late_task, late, "general", "central", "accepted")
    move(late_task, late, "general", "central", "in-progress")
    move(late_task, late, "general", "central", "completed", output=output)
    middle_slip = slip(middle)
    shared_slip = slip(early, late)

    expected = [
        ("ServiceRequest", early, "match"),
        ("Task", second_task, "include"),
        ("Task", first_task, "include"),
        ("Appointment", shared_slip, "include"),
        ("Organization", "district", "include"),
        ("Organization", "general", "include"),
        ("ServiceRequest", middle, "match"),
        ("Task", middle_task, "include"),
        ("Appointment", middle_slip, "include"),
        ("ServiceRequest", late, "match"),
        ("Task", late_task, "include"),
        ("Appointment", shared_slip, "include"),
        ("Organization", "central", "include"),
        ("DocumentReference", summary_id, "include"),
    ]

    operator = token_for(hub, client_id="test-operator", role="operator")

    def entries() -> list[tuple[str, str, str]]:
        answer = api.get("/Patient/p1/$referral-history", token=operator)
        assert answer.status_code == 200, answer.text
        return [
            (e["resource"]["resourceType"], e["resource"]["id"], e["search"]["mode"])
            for e in answer.json()["entry"]
        ]

    assert entries() == expected
    monkeypatch.setattr(history, "CHUNK", 2)  # the letters split over two searches
    assert entries() == expected
    monkeypatch.setattr(history, "LIMIT", 1)  # pages of one: the first of each kind only
    assert entries() == expected[:2] + expected[3:6]
