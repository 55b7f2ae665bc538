"""``Patient/$summary`` through the app, on SQLite and PostgreSQL: the document's shape, each
section's entries against the records posted, empty sections, references, the digest, and who
may ask."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from fastapi.testclient import TestClient

from emr_hub.demo import PATIENTS
from emr_hub.fhir.identifiers import CCCD
from emr_hub.fhir.persons import person_of_cccd
from emr_hub.fhir.validation import validate_resource
from emr_hub.healthbook.summary import content_digest
from emr_hub.hub import Hub
from emr_hub.security.scopes import ScopeSet
from emr_hub.security.tokens import CITIZEN_SCOPE, issue_citizen_token
from tests.fhir.conftest import Api, token_for

LAN = PATIENTS[0]
TOAN = PATIENTS[1]
LOINC = "http://loinc.org"
SECTION_CODES = [
    "11450-4", "48765-2", "10160-0", "11369-6", "30954-2", "8716-3", "47519-4", "11348-0",
    "57133-1", "18776-5", "46240-8",
]  # fmt: skip
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"


def citizen(hub: Hub, client: TestClient, cccd: str) -> Api:
    token, _ = issue_citizen_token(hub, person_of_cccd(cccd), ScopeSet.parse(CITIZEN_SCOPE))
    return Api(client, token)


def hospital(hub: Hub, client: TestClient, client_id: str) -> Api:
    return Api(client, token_for(hub, client_id=client_id))


def summary_of(api: Api, patient_id: str) -> dict[str, Any]:
    response = api.get(f"/Patient/{patient_id}/$summary")
    assert response.status_code == 200, response.text
    bundle: dict[str, Any] = response.json()
    return bundle


def sections(bundle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    composition = bundle["entry"][0]["resource"]
    return {s["code"]["coding"][0]["code"]: s for s in composition["section"]}


def entries_of(bundle: dict[str, Any], code: str) -> list[str]:
    """``Type/id`` of a section's entries, in the section's order."""
    return [e["reference"].split("/fhir/", 1)[1] for e in sections(bundle)[code].get("entry", [])]


def cells(section: dict[str, Any]) -> list[list[str]]:
    """The narrative table's rows, as text."""
    rows = re.findall(r"<tr>(.*?)</tr>", section["text"]["div"])[1:]  # after the header row
    return [re.findall(r"<td>(.*?)</td>", row) for row in rows]


def search_ids(api: Api, query: str) -> list[str]:
    response = api.get(f"/{query}&_count=1000")
    assert response.status_code == 200, response.text
    return [f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in response.json().get(
        "entry", []) if e.get("search", {}).get("mode") == "match"]  # fmt: skip


def test_the_summary_is_an_ips_document_of_the_patient(demo_hub: Hub, client: TestClient) -> None:
    bundle = summary_of(citizen(demo_hub, client, LAN.cccd), LAN.id)
    assert bundle["type"] == "document"
    assert bundle["identifier"]["value"].startswith("urn:uuid:")
    assert datetime.fromisoformat(bundle["timestamp"]) <= datetime.now(UTC)
    composition = bundle["entry"][0]["resource"]
    assert composition["resourceType"] == "Composition"
    assert composition["type"]["coding"][0] == {
        "system": LOINC, "code": "60591-5", "display": "Patient summary Document",
    }  # fmt: skip
    base = demo_hub.settings.fhir_base_url
    assert composition["subject"] == {"reference": f"{base}/Patient/{LAN.id}"}
    assert bundle["entry"][1]["fullUrl"] == f"{base}/Patient/{LAN.id}"
    assert list(sections(bundle)) == SECTION_CODES
    validate_resource(bundle)  # raises FhirError unless it is a valid R4 Bundle
    full_urls = [entry["fullUrl"] for entry in bundle["entry"]]
    assert len(full_urls) == len(set(full_urls))  # every resource once
    for section in composition["section"]:
        assert section["title"] and section["text"]["status"] == "generated"
        assert section["text"]["div"].startswith('<div xmlns="http://www.w3.org/1999/xhtml">')
        for entry in section.get("entry", []):
            assert entry["reference"] in full_urls  # every entry is in the Bundle


def test_referrals_re_exams_and_visits_come_from_every_hospital(
    demo_hub: Hub, client: TestClient
) -> None:
    bundle = summary_of(citizen(demo_hub, client, LAN.cccd), LAN.id)
    operator = Api(client, token_for(demo_hub, client_id="ops", role="operator"))
    referrals = search_ids(
        operator, f"ServiceRequest?subject=Patient/{LAN.id}&category=3457005&_sort=-authored"
    )
    assert len(referrals) == 2  # the demo's chain: district → province → Bạch Mai
    assert entries_of(bundle, "57133-1") == referrals
    letters = {r["id"]: r for r in (operator.get(f"/{ref}").json() for ref in referrals)}
    for row, reference in zip(cells(sections(bundle)["57133-1"]), referrals, strict=True):
        letter = letters[reference.split("/")[1]]
        assert row[0] == letter["authoredOn"][:10]
        assert row[-1] == letter["occurrencePeriod"]["end"][:10]  # valid until
        assert row[-2] == {"completed": "Đã hoàn tất", "active": "Đang hiệu lực"}.get(
            letter["status"], row[-2]
        )

    appointments = [
        operator.get(f"/{ref}").json()
        for ref in search_ids(operator, f"Appointment?patient=Patient/{LAN.id}")
    ]
    upcoming = sorted(
        (a for a in appointments if a["status"] in ("booked", "pending", "proposed")
         and datetime.fromisoformat(a["start"]) >= datetime.now(UTC)),
        key=lambda a: a["start"],
    )  # fmt: skip
    assert entries_of(bundle, "18776-5") == [f"Appointment/{a['id']}" for a in upcoming]

    encounters = [
        operator.get(f"/{ref}").json()
        for ref in search_ids(operator, f"Encounter?patient=Patient/{LAN.id}")
    ]
    newest = sorted(encounters, key=lambda e: (e["period"]["start"][:10], e["id"]), reverse=True)
    assert entries_of(bundle, "46240-8") == [f"Encounter/{e['id']}" for e in newest[:10]]
    facilities = {row[1] for row in cells(sections(bundle)["46240-8"])}
    assert "Bệnh viện Bạch Mai" in facilities  # the Organization's name, not its reference
    diagnosed = [row[3] for row in cells(sections(bundle)["46240-8"])]
    assert all(diagnosed)  # every demo visit names its diagnosis


def test_sections_pick_what_the_health_book_shows(demo_hub: Hub, client: TestClient) -> None:
    bach_mai = hospital(demo_hub, client, "bach-mai")
    patient = f"Patient/{LAN.id}"
    posted = post_records(bach_mai, patient)
    bundle = summary_of(citizen(demo_hub, client, LAN.cccd), LAN.id)

    problems = entries_of(bundle, "11450-4")
    assert posted["diabetes"] in problems and posted["asthma-no-status"] in problems
    assert posted["fracture"] not in problems and posted["error"] not in problems
    assert posted["fracture"] in entries_of(bundle, "11348-0")  # resolved: past illness
    assert posted["error"] not in entries_of(bundle, "11348-0")
    assert entries_of(bundle, "48765-2") == [posted["penicillin"]]
    assert entries_of(bundle, "10160-0") == [posted["metformin"]]  # the stopped one is not
    assert entries_of(bundle, "11369-6") == [posted["flu-2026"], posted["flu-2025"]]
    results = entries_of(bundle, "30954-2")
    assert posted["glucose-new"] in results  # the newest value of a code, not the older
    assert posted["glucose-old"] not in results and posted["glucose-cancelled"] not in results
    assert entries_of(bundle, "8716-3")[:1] == [posted["pressure"]]
    pressure_row = cells(sections(bundle)["8716-3"])[0]
    assert "120 mm[Hg]" in pressure_row[1] and "80 mm[Hg]" in pressure_row[1]  # components
    assert posted["appendectomy"] in entries_of(bundle, "47519-4")
    narrative = sections(bundle)["48765-2"]["text"]["div"]
    assert "Penicillin" in narrative and "Nổi mày đay" in narrative
    included = {e["fullUrl"].split("/fhir/", 1)[1] for e in bundle["entry"][1:]}
    left_out = {posted[name] for name in ("error", "glucose-old", "glucose-cancelled", "stopped")}
    assert set(posted.values()) - left_out <= included


def test_empty_sections_say_so(demo_hub: Hub, client: TestClient) -> None:
    bundle = summary_of(citizen(demo_hub, client, TOAN.cccd), TOAN.id)
    for code in ("48765-2", "10160-0", "11369-6"):
        section = sections(bundle)[code]
        assert "entry" not in section
        assert section["emptyReason"]["coding"][0]["code"] == "nilknown"
        assert "Không có thông tin." in section["text"]["div"]


def test_every_reference_of_the_entries_resolves_in_the_bundle(
    demo_hub: Hub, client: TestClient
) -> None:
    """What the sections say about her is all in the document: each entry's references (its
    encounter, performer, facility, diagnosis ...) and the Patient's are Bundle entries."""
    post_records(hospital(demo_hub, client, "bach-mai"), f"Patient/{LAN.id}")
    bundle = summary_of(citizen(demo_hub, client, LAN.cccd), LAN.id)
    base = demo_hub.settings.fhir_base_url
    resources = {entry["fullUrl"]: entry["resource"] for entry in bundle["entry"]}
    listed = [e["reference"] for s in sections(bundle).values() for e in s.get("entry", [])]
    checked = 0
    for full_url in [f"{base}/Patient/{LAN.id}", *listed]:
        for reference in references(resources[full_url]):
            assert f"{base}/{reference}" in resources, (full_url, reference)
            checked += 1
    assert checked > 20


def test_the_digest_changes_with_the_record_only(demo_hub: Hub, client: TestClient) -> None:
    lan = citizen(demo_hub, client, LAN.cccd)
    first, second = summary_of(lan, LAN.id), summary_of(lan, LAN.id)
    assert first["identifier"] != second["identifier"]
    assert content_digest(first) == content_digest(second)
    post_records(hospital(demo_hub, client, "bach-mai"), f"Patient/{LAN.id}")
    assert content_digest(summary_of(lan, LAN.id)) != content_digest(first)


def test_by_identifier_is_the_same_summary(demo_hub: Hub, client: TestClient) -> None:
    lan = citizen(demo_hub, client, LAN.cccd)
    response = lan.get(f"/Patient/$summary?identifier={CCCD}|{LAN.cccd}")
    assert response.status_code == 200, response.text
    assert content_digest(response.json()) == content_digest(summary_of(lan, LAN.id))
    missing = lan.get("/Patient/$summary")
    assert missing.status_code == 400
    assert missing.json()["issue"][0]["expression"] == ["identifier"]


def test_another_citizen_and_an_unrelated_hospital_are_refused(
    demo_hub: Hub, client: TestClient
) -> None:
    toan = citizen(demo_hub, client, TOAN.cccd)
    assert toan.get(f"/Patient/{LAN.id}/$summary").status_code == 404
    by_identifier = toan.get(f"/Patient/$summary?identifier={CCCD}|{LAN.cccd}")
    assert by_identifier.status_code == 400  # her search finds no such patient
    assert LAN.cccd not in by_identifier.text
    stranger = hospital(demo_hub, client, "hospital-without-relationship")
    response = stranger.get(f"/Patient/{LAN.id}/$summary")
    assert response.status_code == 404
    assert LAN.family not in response.text
    assert Api(client, None).get(f"/Patient/{LAN.id}/$summary").status_code == 401


def test_a_hospital_reading_the_summary_is_in_her_access_log(
    demo_hub: Hub, client: TestClient
) -> None:
    summary_of(hospital(demo_hub, client, "bach-mai"), LAN.id)
    log = citizen(demo_hub, client, LAN.cccd).get(f"/Patient/{LAN.id}/$access-log").json()
    accesses = [p["part"] for p in log["parameter"] if p["name"] == "access"]
    readers = [
        part["valueReference"]["reference"]
        for parts in accesses
        for part in parts
        if part["name"] == "organization"
    ]
    assert "Organization/bach-mai" in readers


# ------------------------------------------------------------------ helpers
def references(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        target = value.get("reference")
        if isinstance(target, str) and re.fullmatch(r"[A-Z][A-Za-z]+/[^/]+", target):
            yield target
        for child in value.values():
            yield from references(child)
    elif isinstance(value, list):
        for child in value:
            yield from references(child)


def post_records(api: Api, patient: str) -> dict[str, str]:
    """Post records of every kind the sections choose among, some of which they must leave
    out; the ``Type/id`` of each, by name."""
    encounter = {
        "resourceType": "Encounter", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": patient},
        "period": {"start": "2026-11-02T08:00:00+07:00", "end": "2026-11-02T09:00:00+07:00"},
        "serviceProvider": {"reference": "Organization/bach-mai"},
    }  # fmt: skip

    def condition(text: str, clinical: str | None, verification: str = "confirmed") -> dict:
        body: dict[str, Any] = {
            "resourceType": "Condition", "subject": {"reference": patient},
            "code": {"text": text}, "onsetDateTime": "2020-01-01",
            "verificationStatus": {"coding": [{"system": VERIFICATION, "code": verification}]},
        }  # fmt: skip
        if clinical:
            body["clinicalStatus"] = {"coding": [{"system": CLINICAL, "code": clinical}]}
        return body

    def observation(category: str, code: str, when: str, status: str = "final", **value: Any):
        return {
            "resourceType": "Observation", "status": status, "subject": {"reference": patient},
            "category": [{"coding": [{"system": CATEGORY, "code": category}]}],
            "code": {"coding": [{"system": LOINC, "code": code}], "text": code},
            "effectiveDateTime": when, "encounter": {"reference": "urn:uuid:encounter"}, **value,
        }  # fmt: skip

    def mmhg(value: int) -> dict[str, Any]:
        return {"value": value, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org",
                "code": "mm[Hg]"}  # fmt: skip

    def immunization(when: str) -> dict[str, Any]:
        return {
            "resourceType": "Immunization", "status": "completed",
            "patient": {"reference": patient}, "vaccineCode": {"text": "Cúm mùa"},
            "occurrenceDateTime": when,
        }  # fmt: skip

    def medication(text: str, status: str) -> dict[str, Any]:
        return {
            "resourceType": "MedicationRequest", "status": status, "intent": "order",
            "subject": {"reference": patient}, "medicationCodeableConcept": {"text": text},
            "authoredOn": "2026-10-01", "dosageInstruction": [{"text": "1 viên sáng"}],
        }  # fmt: skip

    # fmt: off
    records: dict[str, dict[str, Any]] = {
        "encounter": encounter,
        "diabetes": condition("Đái tháo đường típ 2", "active"),
        "asthma-no-status": condition("Hen phế quản", None),
        "fracture": condition("Gãy xương cẳng tay", "resolved"),
        "error": condition("Nhập nhầm", "active", "entered-in-error"),
        "penicillin": {
            "resourceType": "AllergyIntolerance", "patient": {"reference": patient},
            "code": {"text": "Penicillin"}, "criticality": "high",
            "reaction": [{"manifestation": [{"text": "Nổi mày đay"}]}],
        },
        "metformin": medication("Metformin 500 mg", "active"),
        "stopped": medication("Amoxicillin 500 mg", "stopped"),
        "flu-2025": immunization("2025-10-01"),
        "flu-2026": immunization("2026-10-01"),
        "glucose-old": observation("laboratory", "2339-0", "2026-01-01",
                                   valueQuantity={"value": 7.9, "unit": "mmol/L"}),
        "glucose-new": observation("laboratory", "2339-0", "2026-11-02",
                                   valueQuantity={"value": 6.1, "unit": "mmol/L"}),
        "glucose-cancelled": observation("laboratory", "2339-0", "2026-12-01", "cancelled",
                                         valueQuantity={"value": 1.0, "unit": "mmol/L"}),
        "pressure": observation("vital-signs", "85354-9", "2026-11-02T08:10:00+07:00",
                                component=[
                                    {"code": {"text": "Tâm thu"}, "valueQuantity": mmhg(120)},
                                    {"code": {"text": "Tâm trương"}, "valueQuantity": mmhg(80)},
                                ]),
        "appendectomy": {
            "resourceType": "Procedure", "status": "completed", "subject": {"reference": patient},
            "code": {"text": "Cắt ruột thừa"}, "performedDateTime": "2019-05-05",
        },
    }
    # fmt: on
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"urn:uuid:{name}",
                "resource": body,
                "request": {"method": "POST", "url": body["resourceType"]},
            }
            for name, body in records.items()
        ],
    }
    response = api.post("", bundle)
    assert response.status_code == 200, response.text
    locations = [e["response"]["location"] for e in response.json()["entry"]]
    return {
        name: "/".join(location.split("/")[:2])
        for name, location in zip(records, locations, strict=True)
    }
