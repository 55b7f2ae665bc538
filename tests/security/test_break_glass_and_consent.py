"""Break-the-glass and the person's Consent over the API: what each opens or closes, for whom,
how long, and how it shows in the audit trail and the person's access log."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select, update

from emr_hub.hub import Hub
from emr_hub.security.audit.log import EVENT
from emr_hub.security.citizens import citizen_person
from emr_hub.security.scopes import ScopeSet
from emr_hub.security.tokens import issue_citizen_token
from storage.tables import AccessGrant
from tests.fhir.conftest import Api, api, app_client, outcome_issue, token_for
from tests.security.builders import actors, privacy_consent

__all__ = ["api", "app_client"]

CCCD = "http://fhir.hl7.org.vn/core/sid/cccd"
HIV = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "HIV"}
GRANT = AccessGrant.__table__
REASON = "Bất tỉnh, cấp cứu"
# a header carries bytes: the reason, in Vietnamese, travels as UTF-8
EMERGENCY: dict[str, Any] = {"X-Purpose-Of-Use": "ETREAT", "X-Break-Glass-Reason": REASON.encode()}


@pytest.fixture
def world(hub: Hub, api: Api) -> dict[str, str]:
    """Hospital A keeps the patient, her pulse and an HIV result; B treats her (a visit); C has
    no relationship but may break the glass; D has none and may not."""
    tokens = {
        "a": token_for(hub, client_id="a"),
        "b": token_for(hub, client_id="b"),
        "c": token_for(hub, client_id="c", break_glass=True),
        "d": token_for(hub, client_id="d"),
        "operator": token_for(hub, client_id="test-operator", role="operator"),
    }
    patient = {
        "resourceType": "Patient",
        "id": "lan",
        "identifier": [{"system": CCCD, "value": "027185000123"}],
        "birthDate": "1985-04-12",
    }
    assert api.put("/Patient/lan", patient, token=tokens["a"]).status_code == 201
    for observation_id, labels in (("pulse", []), ("hiv", [HIV])):
        observation: dict[str, Any] = {
            "resourceType": "Observation",
            "id": observation_id,
            "status": "final",
            "code": {"text": observation_id},
            "subject": {"reference": "Patient/lan"},
        }
        if labels:
            observation["meta"] = {"security": labels}
        put = api.put(f"/Observation/{observation_id}", observation, token=tokens["a"])
        assert put.status_code == 201
    visit = {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"code": "AMB"},
        "subject": {"reference": "Patient/lan"},
    }
    assert api.post("/Encounter", visit, token=tokens["b"]).status_code == 201
    return tokens


def readable(api: Api, token: str, *paths: str) -> list[bool]:
    return [api.get(path, token=token).status_code == 200 for path in paths]


PATHS = ("/Observation/pulse", "/Observation/hiv")


def test_care_opens_ordinary_data_not_restricted(api: Api, world: dict[str, str]) -> None:
    assert readable(api, world["a"], *PATHS) == [True, True]  # its own
    assert readable(api, world["b"], *PATHS) == [True, False]  # a visit; HIV is restricted
    assert readable(api, world["c"], *PATHS) == [False, False]


def test_break_the_glass_opens_for_a_while_and_is_flagged(
    hub: Hub, api: Api, world: dict[str, str]
) -> None:
    c = world["c"]
    before = (
        REGISTRY.get_sample_value("emr_hub_break_glass_total", {"organization": "Organization/c"})
        or 0.0
    )
    no_reason = api.get("/Observation/pulse", token=c, headers={"X-Purpose-Of-Use": "ETREAT"})
    assert no_reason.status_code == 403
    assert "reason" in outcome_issue(no_reason)["diagnostics"]
    not_allowed = api.get("/Observation/pulse", token=world["d"], headers=EMERGENCY)
    assert not_allowed.status_code == 403
    too_wide = api.get("/Observation", token=c, headers=EMERGENCY, params={"code": "x"})
    assert too_wide.status_code == 400

    opened = api.get("/Patient/lan", token=c, headers=EMERGENCY)
    assert opened.status_code == 200, opened.text
    assert readable(api, c, *PATHS) == [True, True]  # within the window, without the headers
    after = REGISTRY.get_sample_value(
        "emr_hub_break_glass_total", {"organization": "Organization/c"}
    )
    assert after == before + 1

    with hub.db.snapshot() as session:
        [(starts, ends)] = session.execute(
            select(GRANT.c.starts, GRANT.c.ends).where(
                GRANT.c.organization == "Organization/c", GRANT.c.kind == "break-glass"
            )
        ).all()
        alerts = session.scalars(select(EVENT.c.content).where(EVENT.c.subtype == "110127")).all()
        request_event = session.scalar(
            select(EVENT.c.content).where(
                EVENT.c.request_id == opened.headers["x-request-id"], EVENT.c.subtype == "read"
            )
        )
    assert (ends - starts) == timedelta(hours=hub.settings.break_glass_hours)
    [alert] = alerts
    assert alert["type"]["code"] == "110113"
    assert alert["purposeOfEvent"][0]["text"] == REASON
    assert request_event["purposeOfEvent"][0]["coding"][0]["code"] == "ETREAT"

    log = api.get("/Patient/lan/$access-log", token=world["operator"]).json()
    accesses = [
        {p["name"]: next(v for k, v in p.items() if k.startswith("value")) for p in a["part"]}
        for a in log["parameter"]
        if a["name"] == "access"
    ]
    by_c = [a for a in accesses if a.get("organization", {}).get("reference") == "Organization/c"]
    assert by_c and all(a["breakGlass"] for a in by_c if a["outcome"] == "0")
    assert any(a.get("reason") == REASON for a in by_c)
    refused = [a for a in by_c if a["outcome"] == "4"]
    assert refused  # the refused attempts before the opening are in her log too

    with hub.db.transaction() as session:  # the hours pass
        past = datetime.now(UTC) - timedelta(minutes=1)
        session.execute(update(GRANT).where(GRANT.c.kind == "break-glass").values(ends=past))
    assert readable(api, c, *PATHS) == [False, False]


def test_break_the_glass_by_identifier(api: Api, world: dict[str, str]) -> None:
    found = api.get(
        "/Patient",
        token=world["c"],
        headers=EMERGENCY,
        params={"identifier": f"{CCCD}|027185000123"},
    ).json()
    assert [e["resource"]["id"] for e in found["entry"]] == ["lan"]
    everything = api.get("/Patient/lan/$everything", token=world["c"]).json()
    assert {e["resource"]["id"] for e in everything["entry"]} >= {"lan", "pulse", "hiv"}


def consent(provision: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return privacy_consent("lan", provision, **extra)


def post_consent(api: Api, token: str, body: dict[str, Any]) -> str:
    response = api.post("/Consent", body, token=token)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_a_consent_denies_a_carer_and_permits_a_stranger(api: Api, world: dict[str, str]) -> None:
    deny_b = post_consent(api, world["a"], consent({"type": "deny", "actor": actors("b")}))
    assert readable(api, world["b"], *PATHS) == [False, False]
    assert readable(api, world["a"], *PATHS) == [True, True]  # its own data stays its own
    permit_c = post_consent(api, world["a"], consent({"type": "permit", "actor": actors("c")}))
    assert readable(api, world["c"], *PATHS) == [True, True]  # a consent opens restricted data

    withdrawn = api.get(f"/Consent/{deny_b}", token=world["a"]).json() | {"status": "inactive"}
    assert api.put(f"/Consent/{deny_b}", withdrawn, token=world["a"]).status_code == 200
    assert readable(api, world["b"], *PATHS) == [True, False]
    ended = api.get(f"/Consent/{permit_c}", token=world["a"]).json()
    ended["provision"]["period"] = {"start": "2020-01-01", "end": "2020-12-31"}
    assert api.put(f"/Consent/{permit_c}", ended, token=world["a"]).status_code == 200
    assert readable(api, world["c"], *PATHS) == [False, False]


def test_deny_everyone_but_one(api: Api, world: dict[str, str]) -> None:
    body = consent({"type": "deny", "provision": [{"type": "permit", "actor": actors("c")}]})
    post_consent(api, world["a"], body)
    assert readable(api, world["b"], *PATHS) == [False, False]
    assert readable(api, world["c"], *PATHS) == [True, True]
    # break-the-glass wins over a denial
    opened = api.get("/Patient/lan", token=world["b"], headers=EMERGENCY)
    assert opened.status_code == 403  # b is not registered to break the glass


def test_a_denied_hospital_that_may_break_the_glass_gets_in(
    api: Api, world: dict[str, str]
) -> None:
    post_consent(api, world["a"], consent({"type": "deny", "actor": actors("c")}))
    assert readable(api, world["c"], *PATHS) == [False, False]
    assert api.get("/Patient/lan", token=world["c"], headers=EMERGENCY).status_code == 200
    assert readable(api, world["c"], *PATHS) == [True, True]


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"patient": None}, "Consent.patient"),
        ({"provision": None}, "Consent.provision"),
        (
            {
                "provision": {
                    "type": "permit",
                    "data": [{"meaning": "instance", "reference": {"reference": "Observation/1"}}],
                }
            },
            "Consent.provision.data",
        ),
        (
            {"provision": {"type": "permit", "actor": actors("Practitioner/p")}},
            "Consent.provision.actor[0].reference",
        ),
        ({"sourceAttachment": None}, "Consent.source[x]"),
    ],
)
def test_privacy_consents_are_checked(
    api: Api, world: dict[str, str], change: dict[str, Any], where: str
) -> None:
    body = {k: v for k, v in (consent({"type": "permit"}) | change).items() if v is not None}
    refused = api.post("/Consent", body, token=world["b"])
    assert refused.status_code == 422, refused.text
    assert outcome_issue(refused)["expression"] == [where]


def citizen_token(hub: Hub, cccd: str) -> str:
    with hub.db.snapshot() as session:
        person = citizen_person(session, cccd)
    scopes = ScopeSet.parse("patient/*.rs patient/Consent.cu")
    return issue_citizen_token(hub, person, scopes)[0]


def test_the_citizen_shares_her_record_and_reads_who_saw_it(
    hub: Hub, api: Api, world: dict[str, str]
) -> None:
    lan = citizen_token(hub, "027185000123")
    own = consent({"type": "permit", "actor": actors("c")})
    del own["sourceAttachment"]  # she consents herself: no paper form
    created = api.post("/Consent", own, token=lan)
    assert created.status_code == 201, created.text
    assert readable(api, world["c"], *PATHS) == [True, True]
    # nothing else is hers to write, nor anyone else's consent
    assert api.post("/Observation", {"resourceType": "Observation"}, token=lan).status_code in (
        400,
        403,
    )
    other = {
        "resourceType": "Patient",
        "id": "other",
        "identifier": [{"system": CCCD, "value": "001190000456"}],
        "birthDate": "1990-01-01",
    }
    assert api.put("/Patient/other", other, token=world["a"]).status_code == 201
    for_other = own | {"patient": {"reference": "Patient/other"}}
    assert api.post("/Consent", for_other, token=lan).status_code == 403
    consent_id = created.json()["id"]
    assert api.delete(f"/Consent/{consent_id}", token=lan).status_code == 403
    withdrawn = created.json() | {"status": "inactive"}
    assert api.put(f"/Consent/{consent_id}", withdrawn, token=lan).status_code == 200
    assert readable(api, world["c"], *PATHS) == [False, False]

    log = api.get("/Patient/lan/$access-log", token=lan)
    assert log.status_code == 200
    accesses = [p for p in log.json()["parameter"] if p["name"] == "access"]
    organizations = {
        part["valueReference"]["reference"]
        for access in accesses
        for part in access["part"]
        if part["name"] == "organization"
    }
    assert {"Organization/a", "Organization/c"} <= organizations
    again = api.get("/Patient/lan/$access-log", token=lan).json()["parameter"]
    assert len([p for p in again if p["name"] == "access"]) == len(accesses)  # hers are left out
    stranger = citizen_token(hub, "001190000456")
    assert api.get("/Patient/lan/$access-log", token=stranger).status_code == 404
    assert api.get("/Patient/lan/$access-log", token=world["a"]).status_code == 403
