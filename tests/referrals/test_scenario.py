"""The closed-loop referral chain, played over real HTTP against `emr-hub serve`, PostgreSQL and a
Celery worker on Redis.

A district facility of Bắc Ninh (BAN_DAU) refers a patient to the provincial general hospital
(CO_BAN), which accepts, treats, and refers her on to Bạch Mai (CHUYEN_SAU). Bạch Mai accepts,
sends back a consult summary and books a re-exam; the provincial hospital then closes its
referral with a discharge summary. Each hospital has its own API client, its own Endpoint and a
small HTTP receiver standing in for its HIS, subscribed to the Tasks it owns and the Tasks it
requested. The test asserts every notification arrived exactly once, the referral history
(order and contents, read by Bạch Mai by CCCD) and the re-exam slip's single use.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from emr_hub.config import get_settings
from emr_hub.hub import Hub
from emr_hub.tasks import configure_celery
from tests.conftest import free_port, make_settings
from tests.fhir.conftest import token_for
from tests.processes import ApiServer, Worker, all_delivered, cli_env, wait_for
from tests.receiver import Receiver

LEVEL = "http://fhir.hl7.org.vn/core/CodeSystem/vn-facility-care-level-cs"
FACILITY = "http://fhir.hl7.org.vn/core/sid/ma-cskcb"
CCCD = {"system": "http://fhir.hl7.org.vn/core/sid/cccd", "value": "027185000123"}
ICD10 = "http://hl7.org/fhir/sid/icd-10"
REFERRAL = {"coding": [{"system": "http://snomed.info/sct", "code": "3457005"}]}
FHIR_JSON = "application/fhir+json"
HOSPITALS = (  # id, name, facility code, level, part of
    ("tu-son", "Trung tâm Y tế thị xã Từ Sơn", "TS271", "BAN_DAU", "bac-ninh"),
    ("bac-ninh", "Bệnh viện Đa khoa tỉnh Bắc Ninh", "BN271", "CO_BAN", None),
    ("bach-mai", "Bệnh viện Bạch Mai", "BM001", "CHUYEN_SAU", None),
)


@dataclass
class Hospital:
    id: str
    client: httpx.Client
    receiver: Receiver

    @property
    def reference(self) -> str:
        return f"Organization/{self.id}"

    def request(self, method: str, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        """A request to the FHIR base (``path`` is relative to ``/fhir``)."""
        content = orjson.dumps(body) if body is not None else None
        return self.client.request(method, f"/fhir{path}", content=content, **kw)

    def send(self, method: str, path: str, body: Any = None) -> Any:
        """A request that must succeed; its JSON body."""
        response = self.request(method, path, body)
        assert response.is_success, f"{method} {path}: {response.status_code} {response.text}"
        return response.json() if response.content else None

    def move_task(self, task: dict[str, Any], status: str, **extra: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.send(
            "PUT", f"/Task/{task['id']}", {**task, "status": status, **extra}
        )
        return result


@dataclass
class Stack:
    hub: Hub
    base: str
    hospitals: dict[str, Hospital]


@pytest.fixture
def stack(tmp_path: Path, postgres_url: str, redis_url: str) -> Iterator[Stack]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = make_settings(tmp_path, postgres_url, broker_url=redis_url, base_url=base)
    hub = Hub.from_settings(settings, migrate=True)
    configure_celery(settings, hub=hub)
    env = cli_env(tmp_path, postgres_url, EMR_HUB_BROKER_URL=redis_url, EMR_HUB_BASE_URL=base)
    worker = Worker(settings, tmp_path / "worker.log")
    server = ApiServer(env, port, tmp_path / "serve.log")
    receivers = [Receiver() for _ in HOSPITALS]
    clients: list[httpx.Client] = []
    try:
        for receiver in receivers:
            receiver.start()
        server.wait_ready()
        worker.wait_ready()
        admin = _client(base, token_for(hub, "system/*.cruds", "network-admin"))
        clients.append(admin)
        _build_network(admin, receivers)
        hospitals = {}
        for (org_id, *_), receiver in zip(HOSPITALS, receivers, strict=True):
            client = _client(base, token_for(hub, "system/*.cruds", org_id))
            clients.append(client)
            hospitals[org_id] = Hospital(org_id, client, receiver)
        yield Stack(hub, base, hospitals)
    finally:
        for client in clients:
            client.close()
        server.stop()
        worker.stop()
        for receiver in receivers:
            receiver.stop()
        configure_celery(get_settings())
        hub.close()


def _client(base: str, token: str) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}", "Accept": FHIR_JSON, "Content-Type": FHIR_JSON}
    return httpx.Client(base_url=base, headers=headers, timeout=30)


def _build_network(admin: httpx.Client, receivers: list[Receiver]) -> None:
    """The hospitals, their partnership and their Endpoints, as the operator would load them."""
    for (org_id, name, code, level, part_of), receiver in zip(HOSPITALS, receivers, strict=True):
        endpoint = {
            "resourceType": "Endpoint",
            "id": f"{org_id}-notifications",
            "status": "active",
            "connectionType": {
                "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                "code": "hl7-fhir-rest",
            },
            "managingOrganization": {"reference": f"Organization/{org_id}"},
            "payloadType": [{"text": "FHIR Task notifications"}],
            "payloadMimeType": [FHIR_JSON],
            "address": receiver.url(f"/{org_id}"),
        }
        organization: dict[str, Any] = {
            "resourceType": "Organization",
            "id": org_id,
            "active": True,
            "name": name,
            "identifier": [{"system": FACILITY, "value": code}],
            "type": [{"coding": [{"system": LEVEL, "code": level}]}],
            "endpoint": [{"reference": f"Endpoint/{org_id}-notifications"}],
        }
        if part_of:
            organization["partOf"] = {"reference": f"Organization/{part_of}"}
        entries = [endpoint, organization]
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "resource": r,
                    "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
                }
                for r in entries
            ],
        }
        assert admin.post("/fhir", content=orjson.dumps(bundle)).status_code == 200


def _subscribe(hospital: Hospital) -> None:
    """The hospital's HIS hears of the Tasks it owns and of those it requested, at its Endpoint."""
    endpoint = hospital.send("GET", f"/Endpoint/{hospital.id}-notifications")
    for role in ("owner", "requester"):
        subscription = {
            "resourceType": "Subscription",
            "status": "requested",
            "reason": f"Referral Tasks where {hospital.id} is the {role}",
            "criteria": f"Task?{role}={hospital.reference}",
            "channel": {
                "type": "rest-hook",
                "endpoint": endpoint["address"],
                "payload": FHIR_JSON,
                "header": [f"X-Hospital: {hospital.id}"],
            },
        }
        assert hospital.send("POST", "/Subscription", subscription)["status"] == "active"


def _referral_bundle(
    sender: Hospital, receiver: Hospital, patient: str, letter: str, reason: str, **extra: Any
) -> dict[str, Any]:
    referral = {
        "resourceType": "ServiceRequest",
        "identifier": [{"system": f"urn:emr-hub:referral-letter:{sender.id}", "value": letter}],
        "status": "active",
        "intent": "order",
        "category": [REFERRAL],
        "subject": {"reference": patient},
        "requester": {"reference": sender.reference},
        "performer": [{"reference": receiver.reference}],
        "reasonCode": [{"coding": [{"system": ICD10, "code": reason}]}],
        **extra,
    }
    task = {
        "resourceType": "Task",
        "status": "requested",
        "intent": "order",
        "focus": {"reference": "urn:uuid:5e3c1a55-0000-4000-8000-000000000001"},
        "for": {"reference": patient},
        "requester": {"reference": sender.reference},
        "owner": {"reference": receiver.reference},
    }
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:5e3c1a55-0000-4000-8000-000000000001",
                "resource": referral,
                "request": {"method": "POST", "url": "ServiceRequest"},
            },
            {"resource": task, "request": {"method": "POST", "url": "Task"}},
        ],
    }


def _created(response: dict[str, Any], resource_type: str) -> str:
    for entry in response["entry"]:
        location = entry["response"]["location"]
        if location.startswith(f"{resource_type}/") or f"/{resource_type}/" in location:
            return str(location.split(f"{resource_type}/", 1)[1].split("/")[0])
    raise AssertionError(f"no {resource_type} in {response}")


def _summary(hospital: Hospital, patient: str, title: str) -> str:
    document = {
        "resourceType": "DocumentReference",
        "status": "current",
        "type": {"text": title},
        "subject": {"reference": patient},
        "author": [{"reference": hospital.reference}],
        "content": [{"attachment": {"contentType": "text/plain", "title": title}}],
    }
    return str(hospital.send("POST", "/DocumentReference", document)["id"])


@pytest.mark.postgres
@pytest.mark.redis
def test_bac_ninh_to_bach_mai_chain_over_http_with_the_worker(stack: Stack) -> None:
    tu_son, bac_ninh, bach_mai = (stack.hospitals[h] for h in ("tu-son", "bac-ninh", "bach-mai"))
    for hospital in (tu_son, bac_ninh, bach_mai):
        _subscribe(hospital)

    # 1. Từ Sơn registers the visit and refers the patient up to the provincial hospital.
    visit = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:5e3c1a55-0000-4000-8000-0000000000a1",
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [CCCD],
                    "name": [{"family": "Nguyễn", "given": ["Thị", "Lan"]}],
                    "gender": "female",
                    "birthDate": "1985-04-12",
                },
                "request": {
                    "method": "POST",
                    "url": "Patient",
                    "ifNoneExist": f"identifier={CCCD['system']}|{CCCD['value']}",
                },
            }
        ],
    }
    patient_id = _created(tu_son.send("POST", "", visit), "Patient")
    patient = f"Patient/{patient_id}"
    first_bundle = _referral_bundle(
        tu_son, bac_ninh, patient, "CT-2026-0001", "J18.9", authoredOn="2026-03-02T08:00:00+07:00"
    )
    first_response = tu_son.send("POST", "", first_bundle)
    first_referral, first_task_id = (
        _created(first_response, "ServiceRequest"),
        _created(first_response, "Task"),
    )

    # 2. The provincial hospital accepts (JSON Patch) and starts (PUT).
    patch = [{"op": "replace", "path": "/status", "value": "accepted"}]
    response = bac_ninh.request(
        "PATCH",
        f"/Task/{first_task_id}",
        patch,
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert response.status_code == 200, response.text
    first_task = bac_ninh.move_task(response.json(), "in-progress")

    # 3. ... and refers her on to Bạch Mai; the letter points at the one it builds on.
    second_bundle = _referral_bundle(
        bac_ninh,
        bach_mai,
        patient,
        "CT-2026-0107",
        "I21.9",
        authoredOn="2026-03-05T10:00:00+07:00",
        basedOn=[{"reference": f"ServiceRequest/{first_referral}"}],
    )
    second_response = bac_ninh.send("POST", "", second_bundle)
    second_referral = _created(second_response, "ServiceRequest")
    second_task = bach_mai.send("GET", f"/Task/{_created(second_response, 'Task')}")

    # 4. Bạch Mai accepts, treats, sends back its consult summary and books a re-exam.
    second_task = bach_mai.move_task(second_task, "accepted")
    second_task = bach_mai.move_task(second_task, "in-progress")
    consult = _summary(bach_mai, patient, "Consult summary")
    output = [
        {
            "type": {"text": "consult summary"},
            "valueReference": {"reference": f"DocumentReference/{consult}"},
        }
    ]
    second_task = bach_mai.move_task(second_task, "completed", output=output)
    slip = {
        "resourceType": "Appointment",
        "status": "booked",
        "identifier": [{"system": "urn:emr-hub:reexam-slip:BM001", "value": "GH-2026-0042"}],
        "basedOn": [{"reference": f"ServiceRequest/{second_referral}"}],
        "start": "2026-04-06T08:00:00+07:00",
        "end": "2026-04-07T00:00:00+07:00",
        "participant": [{"actor": {"reference": patient}, "status": "accepted"}],
    }
    appointment_id = bach_mai.send("POST", "/Appointment", slip)["id"]

    # 5. The provincial hospital closes its referral with a discharge summary.
    discharge = _summary(bac_ninh, patient, "Discharge summary")
    output = [
        {
            "type": {"text": "discharge summary"},
            "valueReference": {"reference": f"DocumentReference/{discharge}"},
        }
    ]
    first_task = bac_ninh.move_task(first_task, "completed", output=output)

    # Every notification owed arrives exactly once, at the hospital it is for.
    wait_for(all_delivered(stack.hub, 16), 60, "16 notifications delivered", None)
    versions = {"1", "2", "3", "4"}
    expected = {
        "tu-son": {(f"/tu-son/Task/{first_task_id}", v) for v in versions},
        "bac-ninh": {(f"/bac-ninh/Task/{first_task_id}", v) for v in versions}
        | {(f"/bac-ninh/Task/{second_task['id']}", v) for v in versions},
        "bach-mai": {(f"/bach-mai/Task/{second_task['id']}", v) for v in versions},
    }
    for hospital in (tu_son, bac_ninh, bach_mai):
        received = hospital.receiver.requests
        assert all(r.method == "PUT" and r.status == 200 for r in received)
        got = [(r.path, r.body["meta"]["versionId"]) for r in received]
        assert Counter(got) == Counter(expected[hospital.id]), hospital.id
        assert len({r.key for r in received}) == len(received)
        assert {r.headers["x-hospital"] for r in received} == {hospital.id}
    last = {r.body["meta"]["versionId"]: r.body for r in tu_son.receiver.requests}["4"]
    assert last["status"] == "completed" and last["output"][0]["valueReference"]["reference"] == (
        f"DocumentReference/{discharge}"
    )

    # Bạch Mai's doctor reads the whole chain by CCCD.
    history = bach_mai.request(
        "GET",
        "/Patient/$referral-history",
        params={"identifier": f"{CCCD['system']}|{CCCD['value']}"},
    ).json()
    entries = [
        (e["resource"]["resourceType"], e["resource"]["id"], e["search"]["mode"])
        for e in history["entry"]
    ]
    assert [i for _, i, mode in entries if mode == "match"] == [first_referral, second_referral]
    split = entries.index(("ServiceRequest", second_referral, "match"))
    first_block, second_block = set(entries[:split]), set(entries[split:])
    assert {
        ("Task", first_task_id, "include"),
        ("DocumentReference", discharge, "include"),
        ("Organization", "tu-son", "include"),
        ("Organization", "bac-ninh", "include"),
    } <= first_block
    assert {
        ("Task", second_task["id"], "include"),
        ("DocumentReference", consult, "include"),
        ("Appointment", appointment_id, "include"),
        ("Organization", "bach-mai", "include"),
    } <= second_block
    resources = {
        (e["resource"]["resourceType"], e["resource"]["id"]): e["resource"]
        for e in history["entry"]
    }
    assert resources[("Task", first_task_id)]["status"] == "completed"
    assert resources[("ServiceRequest", second_referral)]["basedOn"] == [
        {"reference": f"ServiceRequest/{first_referral}"}
    ]
    assert resources[("ServiceRequest", first_referral)]["occurrencePeriod"]["end"].startswith(
        "2026-03-16"
    )

    # The re-exam slip is used once.
    visit_back = {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": patient},
        "serviceProvider": {"reference": bach_mai.reference},
        "appointment": [{"reference": f"Appointment/{appointment_id}"}],
    }
    assert bach_mai.request("POST", "/Encounter", visit_back).status_code == 201
    assert bach_mai.send("GET", f"/Appointment/{appointment_id}")["status"] == "fulfilled"
    again = bach_mai.request("POST", "/Encounter", visit_back)
    assert again.status_code == 409
    assert again.json()["issue"][0]["expression"] == ["Encounter.appointment[0]"]
