"""The demo network (``emr-hub demo``): the contract's hospitals, clients and partnership, its
Endpoints and patients, and the finished referral chain seen through ``$referral-history``.

The command line itself (secrets printed once, tokens) is tested in ``test_cli_and_serve``."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from emr_hub.demo import (
    DEMO_PATIENT_ID,
    DEMO_TAG,
    HOSPITALS,
    LEVEL_SYSTEM,
    PATIENTS,
    TUYEN_SYSTEM,
    load_demo,
    notification_endpoints,
)
from emr_hub.demo_chain import BAC_NINH_CT, FIRST_REFERRAL, SECOND_REFERRAL
from emr_hub.fhir import interactions
from emr_hub.fhir.identifiers import CCCD, FACILITY_CODE, INSURANCE, identifier_problem
from emr_hub.fhir.store import HISTORY, RESOURCE, FhirStore
from emr_hub.hub import Hub
from emr_hub.imaging.study import ENDPOINT_ID
from emr_hub.main import create_app
from emr_hub.referrals import workflow
from emr_hub.referrals.enforcement import _partners, install
from emr_hub.referrals.xml130 import Table13, Table14, parse_envelope, read_tables
from emr_hub.security import install as install_security
from emr_hub.security.citizens import citizen_person
from emr_hub.security.clients import client_scopes, get_client
from emr_hub.security.principal import OPERATOR
from emr_hub.security.scopes import ScopeSet
from emr_hub.security.tokens import issue_access_token, issue_citizen_token
from emr_hub.subscriptions import install as install_subscriptions
from storage.tables import OutboxMessage, SubscriptionRoute
from tests.fhir.conftest import Api, token_for

CONTRACT_CLIENTS = ("bach-mai", "bac-ninh-general", "bac-ninh-district")
EXPECTED_LEVELS = {
    "bach-mai": ("CHUYEN_SAU", "TRUNG_UONG", None),
    "bac-ninh-general": ("CO_BAN", "TINH", None),
    "bac-ninh-district": ("BAN_DAU", "HUYEN", "Organization/bac-ninh-general"),
    "bac-ninh-commune": ("BAN_DAU", "XA", "Organization/bac-ninh-district"),
}


@pytest.fixture
def demo(hub: Hub) -> dict[str, str]:
    """The hub with the demo loaded under the referral rules; the secrets it printed."""
    install_security(hub.settings)  # as under `emr-hub demo`: grants, then the referral rules
    install()  # the letters must pass the hub's rules
    install_subscriptions(hub.settings)
    return load_demo(hub).secrets


@pytest.fixture
def api(hub: Hub, demo: dict[str, str]) -> Iterator[Api]:
    """Bạch Mai's client (a demo client, after the demo created it)."""
    with TestClient(create_app(hub)) as client:
        yield Api(client, token_for(hub, client_id="bach-mai"))


def current(hub: Hub, resource_type: str, resource_id: str) -> dict[str, Any]:
    with hub.db.snapshot() as session:
        stored = FhirStore(session).current(resource_type, resource_id)
    assert stored is not None and stored.content is not None, f"{resource_type}/{resource_id}"
    return stored.content


def codes(organization: dict[str, Any], system: str) -> list[str]:
    return [
        coding["code"]
        for concept in organization["type"]
        for coding in concept["coding"]
        if coding["system"] == system
    ]


def test_demo_loads_the_contract_network(hub: Hub, demo: dict[str, str]) -> None:
    assert set(EXPECTED_LEVELS) == {h.client_id for h in HOSPITALS}
    assert set(demo) == set(EXPECTED_LEVELS)  # a secret for every client, on the first load
    for org_id, (level, tuyen, part_of) in EXPECTED_LEVELS.items():
        org = current(hub, "Organization", org_id)
        assert codes(org, LEVEL_SYSTEM) == [level] and codes(org, TUYEN_SYSTEM) == [tuyen]
        assert (org.get("partOf") or {}).get("reference") == part_of
        [facility_code] = [i["value"] for i in org["identifier"] if i["system"] == FACILITY_CODE]
        assert identifier_problem(FACILITY_CODE, facility_code) is None
        assert DEMO_TAG in org["meta"]["tag"]
    with hub.db.snapshot() as session:
        for org_id in EXPECTED_LEVELS:
            client = get_client(session, org_id)
            assert client is not None and client.active
            assert (client.organization, client.scopes) == (
                f"Organization/{org_id}",
                "system/*.cruds",
            )
        assert set(CONTRACT_CLIENTS) <= set(EXPECTED_LEVELS)


def test_partnership_is_an_affiliation_the_rules_read(hub: Hub, demo: dict[str, str]) -> None:
    affiliation = current(hub, "OrganizationAffiliation", "bac-ninh-general-bach-mai")
    assert affiliation["active"] is True
    assert affiliation["period"]["start"] and affiliation["period"]["end"]
    assert affiliation["organization"] == {"reference": "Organization/bach-mai"}
    assert affiliation["participatingOrganization"] == {
        "reference": "Organization/bac-ninh-general"
    }
    with hub.db.snapshot() as session:
        store = FhirStore(session)
        assert _partners(store, "bach-mai") == {"Organization/bac-ninh-general"}
        assert _partners(store, "bac-ninh-general") == {"Organization/bach-mai"}


def test_every_hospital_has_a_notification_endpoint(hub: Hub, demo: dict[str, str]) -> None:
    pairs = notification_endpoints()
    assert [org_id for org_id, _ in pairs] == [h.client_id for h in HOSPITALS]
    for org_id, address in pairs:
        assert address == f"http://127.0.0.1:8090/notifications/{org_id}"
        [reference] = current(hub, "Organization", org_id)["endpoint"]
        endpoint = current(hub, *reference["reference"].split("/"))
        assert endpoint["status"] == "active"
        assert endpoint["connectionType"]["code"] == "hl7-fhir-rest"
        assert endpoint["payloadType"] and endpoint["address"] == address
        assert endpoint["managingOrganization"] == {"reference": f"Organization/{org_id}"}


def test_every_endpoint_is_subscribed_to_the_tasks_of_its_hospital(
    hub: Hub, demo: dict[str, str], api: Api
) -> None:
    with hub.db.transaction() as session:
        routes = {(r.resource_type, r.criteria) for r in session.scalars(select(SubscriptionRoute))}
        assert session.scalar(select(func.count()).select_from(OutboxMessage)) == 0
    assert routes == {
        ("Task", f"Task?{role}=Organization/{h.client_id}")
        for h in HOSPITALS
        for role in ("owner", "requester")
    }
    sender = token_for(hub, client_id="bac-ninh-general")
    task = {
        "resourceType": "Task",
        "status": "draft",
        "intent": "proposal",
        "for": {"reference": f"Patient/{DEMO_PATIENT_ID}"},  # Bạch Mai treats her: it may see
        "requester": {"reference": "Organization/bac-ninh-general"},
        "owner": {"reference": "Organization/bach-mai"},
    }
    assert api.post("/Task", task, token=sender).status_code == 201
    with hub.db.transaction() as session:
        owed = {m.subject for m in session.scalars(select(OutboxMessage))}
    assert owed == {
        "Subscription/bach-mai-owner-tasks",
        "Subscription/bac-ninh-general-requester-tasks",
    }


def test_every_patient_has_a_valid_cccd_and_card(hub: Hub, demo: dict[str, str]) -> None:
    assert len(PATIENTS) >= 3 and PATIENTS[0].id == DEMO_PATIENT_ID
    for person in PATIENTS:
        patient = current(hub, "Patient", person.id)
        by_system = {i["system"]: i["value"] for i in patient["identifier"]}
        cccd = by_system[CCCD]
        assert identifier_problem(CCCD, cccd, patient["birthDate"]) is None
        # the century digit also says the sex: even for men, odd for women
        assert int(cccd[3]) % 2 == (patient["gender"] == "female")
        assert identifier_problem(INSURANCE, by_system[INSURANCE]) is None
        assert patient["name"][0]["family"] and DEMO_TAG in patient["meta"]["tag"]


def versions(hub: Hub) -> tuple[list[tuple[str, str, int]], int]:
    with hub.db.snapshot() as session:
        rows = session.execute(
            select(RESOURCE.c.resource_type, RESOURCE.c.id, RESOURCE.c.version_id)
        ).all()
        history = session.scalar(select(func.count()).select_from(HISTORY))
    return sorted((t, i, v) for t, i, v in rows), int(history or 0)


def test_loading_again_writes_nothing_and_prints_no_secret(hub: Hub, demo: dict[str, str]) -> None:
    before = versions(hub)
    again = load_demo(hub)
    assert (again.secrets, again.written, again.kept) == ({}, [], [])
    assert versions(hub) == before
    every_demo_resource_is_tagged(hub)


def every_demo_resource_is_tagged(hub: Hub) -> None:
    """Every resource is the demo's, and tagged, but the hub's own DICOMweb Endpoint (made by
    the first upload, the demo study's: it stays the hub's address for every later study)."""
    with hub.db.snapshot() as session:
        rows = session.execute(select(RESOURCE.c.resource_type, RESOURCE.c.id, RESOURCE.c.content))
        contents = {(kind, id_): content for kind, id_, content in rows}
    assert contents.pop(("Endpoint", ENDPOINT_ID))["address"].endswith("/dicomweb")
    assert ("ImagingStudy", BAC_NINH_CT) in contents
    assert all(DEMO_TAG in c["meta"]["tag"] for c in contents.values())


def test_referral_history_shows_the_finished_chain(api: Api) -> None:
    response = api.get(f"/Patient/{DEMO_PATIENT_ID}/$referral-history")
    assert response.status_code == 200, response.text
    history = response.json()
    assert history["total"] == 2
    entries = [(e["resource"], e["search"]["mode"]) for e in history["entry"]]
    assert [r["id"] for r, mode in entries if mode == "match"] == [FIRST_REFERRAL, SECOND_REFERRAL]
    split = next(i for i, (r, _) in enumerate(entries) if r["id"] == SECOND_REFERRAL)
    first = {(r["resourceType"], r["id"]): r for r, _ in entries[:split]}
    second = {(r["resourceType"], r["id"]): r for r, _ in entries[split:]}

    letter = second[("ServiceRequest", SECOND_REFERRAL)]
    assert letter["basedOn"] == [{"reference": f"ServiceRequest/{FIRST_REFERRAL}"}]
    for block, sender, receiver in (
        (first, "bac-ninh-district", "bac-ninh-general"),
        (second, "bac-ninh-general", "bach-mai"),
    ):
        [task] = [r for (kind, _), r in block.items() if kind == "Task"]
        assert task["status"] == "completed"
        assert task["requester"]["reference"] == f"Organization/{sender}"
        assert task["owner"]["reference"] == f"Organization/{receiver}"
        summaries = [
            o["valueReference"]["reference"].split("/")
            for o in task["output"]
            if o["valueReference"]["reference"].startswith("DocumentReference/")
        ]
        assert summaries and all(tuple(s) in block for s in summaries)
    organizations = {r["id"] for r, _ in entries if r["resourceType"] == "Organization"}
    assert organizations == {"bac-ninh-district", "bac-ninh-general", "bach-mai"}  # each once
    [appointment] = [r for (kind, _), r in second.items() if kind == "Appointment"]
    assert appointment["status"] == "booked"
    assert appointment["basedOn"] == [{"reference": f"ServiceRequest/{SECOND_REFERRAL}"}]
    assert appointment["supportingInformation"][0]["reference"].startswith("Encounter/")
    assert appointment["participant"][0]["actor"] == {"reference": f"Patient/{DEMO_PATIENT_ID}"}
    assert not any(kind == "Appointment" for kind, _ in first)


@pytest.mark.parametrize("letter", [FIRST_REFERRAL, SECOND_REFERRAL])
def test_each_task_history_is_a_flow_the_hospitals_may_make(api: Api, letter: str) -> None:
    """requested → accepted → in-progress → completed, each step allowed for the hospital whose
    role it is (the demo writes as the operator, who is not checked)."""
    bundle = api.get(f"/Task/{letter}-task/_history").json()
    steps = sorted(
        (e["resource"] for e in bundle["entry"]), key=lambda r: int(r["meta"]["versionId"])
    )
    assert [s["status"] for s in steps] == ["requested", "accepted", "in-progress", "completed"]
    requester, owner = steps[0]["requester"]["reference"], steps[0]["owner"]["reference"]
    workflow.check_creation(steps[0], requester)
    for before, after in pairwise(steps):
        workflow.check_transition(before, after, owner)
    sent = api.get(f"/ServiceRequest/{letter}/_history").json()
    assert sorted(e["resource"]["status"] for e in sent["entry"]) == ["active", "completed"]


def test_loading_again_keeps_what_someone_changed_or_deleted_and_says_so(
    hub: Hub, demo: dict[str, str]
) -> None:
    task_id = f"{FIRST_REFERRAL}-task"
    finished = current(hub, "Task", task_id)
    with hub.db.transaction() as session:
        store = FhirStore(session)
        interactions.update(store, OPERATOR, "Task", task_id, {**finished, "status": "failed"})
        interactions.delete(store, OPERATOR, "Patient", "demo-pham-quoc-bao")
    before = versions(hub)

    again = load_demo(hub)

    assert sorted(again.kept) == ["Patient/demo-pham-quoc-bao", f"Task/{task_id}"]
    assert again.written == []
    assert versions(hub) == before
    assert current(hub, "Task", task_id)["status"] == "failed"


def test_a_reset_restores_an_edited_resource_in_one_version(hub: Hub, demo: dict[str, str]) -> None:
    """A demo resource changed since (here a Task moved back) returns to the demo's state with
    one new version, not a replay of the whole flow."""
    task_id = f"{FIRST_REFERRAL}-task"
    finished = current(hub, "Task", task_id)
    with hub.db.transaction() as session:
        store = FhirStore(session)
        interactions.update(store, OPERATOR, "Task", task_id, {**finished, "status": "failed"})
    reset = load_demo(hub, reset=True)
    assert (reset.written, reset.kept) == ([f"Task/{task_id}"], [])
    restored = current(hub, "Task", task_id)
    assert restored["status"] == "completed"
    assert int(restored["meta"]["versionId"]) == int(finished["meta"]["versionId"]) + 2


def demo_token(hub: Hub, client_id: str) -> str:
    """What ``emr-hub token <client>`` prints for a demo client, as it was registered."""
    with hub.db.transaction() as session:
        client = get_client(session, client_id)
        assert client is not None
        scopes = client_scopes(client)
    return issue_access_token(hub, client, scopes)[0]


def test_the_walk_through_who_may_see_what(hub: Hub, demo: dict[str, str], api: Api) -> None:
    """The README's four steps: a refused cross-hospital read, one granted through the
    referral chain, a break-the-glass read, and Lan's own access log."""
    summary = "/DocumentReference/demo-lan-bach-mai-discharge"
    commune, district = demo_token(hub, "bac-ninh-commune"), demo_token(hub, "bac-ninh-district")
    assert api.get(summary, token=commune).status_code == 404
    granted = api.get(summary, token=district)
    assert granted.status_code == 200
    assert granted.json()["author"][0]["reference"] == "Organization/bach-mai"
    emergency = {
        "X-Purpose-Of-Use": "ETREAT",
        "X-Break-Glass-Reason": "Cấp cứu: bệnh nhân bất tỉnh".encode(),
    }
    opened = api.get(f"/Patient/{DEMO_PATIENT_ID}/$everything", token=commune, headers=emergency)
    assert opened.status_code == 200
    assert any(e["resource"]["id"] == "demo-lan-bach-mai-discharge" for e in opened.json()["entry"])
    with hub.db.snapshot() as session:
        person = citizen_person(session, PATIENTS[0].cccd)
    lan = issue_citizen_token(hub, person, ScopeSet.parse("patient/*.rs patient/Consent.cu"))[0]
    log = api.get(f"/Patient/{DEMO_PATIENT_ID}/$access-log", token=lan).json()
    flagged = [
        {part["name"]: part for part in access["part"]}
        for access in log["parameter"]
        if access["name"] == "access"
    ]
    by_commune = [
        a
        for a in flagged
        if a.get("organization", {}).get("valueReference", {}).get("reference")
        == "Organization/bac-ninh-commune"
    ]
    assert any(a["breakGlass"]["valueBoolean"] for a in by_commune)
    assert any(a["outcome"]["valueCode"] == "4" for a in by_commune)  # the refused read


EXPORTS = (
    ("bac-ninh-district", f"/ServiceRequest/{FIRST_REFERRAL}/$xml130"),
    ("bac-ninh-general", f"/ServiceRequest/{SECOND_REFERRAL}/$xml130"),
    ("bach-mai", "/Appointment/demo-lan-bach-mai-reexam/$xml130"),
)


def test_the_demo_letters_and_re_exam_export_as_xml_130(
    hub: Hub, demo: dict[str, str], api: Api
) -> None:
    """Each referral letter exports as table 13 and the re-exam as table 14 for the hospital
    that wrote it, with the fields the demo gives them (read back by the hub's own parser)."""
    envelopes = {}
    for client_id, path in EXPORTS:
        response = api.get(path, token=demo_token(hub, client_id), headers={"Accept": "*/*"})
        assert response.status_code == 200, response.text
        envelopes[client_id] = response.content
    (first,) = read_tables(parse_envelope(envelopes["bac-ninh-district"]))
    letter = first[1]
    assert isinstance(letter, Table13)
    assert (letter.ma_lk, letter.so_hoso, letter.giay_chuyen_tuyen) == (
        "DM272.2610190042",
        "2026/CT-01873",
        "DM272-20261019-1873",
    )
    assert (letter.ma_noi_di, letter.ma_noi_den, letter.ma_lydo_ct) == ("DM272", "DM271", "1")
    assert letter.ma_bac_si == ("004518/BN-CCHN",) and letter.ma_ttdv == "001276/BN-CCHN"
    assert letter.ma_benh_chinh == "I48.0" and letter.chan_doan_rv
    (second,) = read_tables(parse_envelope(envelopes["bach-mai"]))
    slip = second[1]
    assert isinstance(slip, Table14)
    assert (slip.ma_lk, slip.so_giayhen_kl, slip.ma_cskcb) == (
        "DM001.2611030577",
        "HKL-2026-031127",
        "DM001",
    )
    assert slip.ma_bac_si == ("012877/HNO-CCHN",) and slip.ma_benh_chinh == "I05.0"
