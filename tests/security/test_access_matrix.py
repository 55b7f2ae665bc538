"""The access matrix: every kind of principal against every way of reaching a patient's data,
over HTTP, on SQLite and PostgreSQL; every refusal audited as a failure; totals and paging
exact under the policy.

The world: hospital ``author`` registered and treated Lan and wrote her results (one of them
HIV, a restricted label). ``referrer`` sent her a referral letter it wrote (so ``receiver``, the
letter's performer, has a referral relationship too), ``booker`` holds an Appointment with her,
``stranger`` has nothing, ``medic`` has nothing but may break the glass, ``denied`` treated her
(a visit) but her Consent denies it. Lan herself (a citizen) reads everything about her and
changes none of it; another citizen reads nothing of hers. Each row says what a principal may
do; each column is an interaction; every cell is checked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select

from emr_hub.hub import Hub
from emr_hub.security.audit.log import EVENT
from emr_hub.security.citizens import citizen_person
from emr_hub.security.scopes import ScopeSet
from emr_hub.security.tokens import issue_citizen_token
from storage.tables import OutboxMessage
from tests.fhir.conftest import Api, api, app_client, token_for
from tests.security.builders import actors, privacy_consent, referral_letter

__all__ = ["api", "app_client"]

CCCD = "http://fhir.hl7.org.vn/core/sid/cccd"
LAN_CCCD = "027185000123"
OTHER_CCCD = "001190000456"
CITIZEN_SCOPES = "patient/*.rs patient/Consent.cu"
LEVEL = "http://fhir.hl7.org.vn/core/CodeSystem/vn-facility-care-level-cs"
HIV = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "HIV"}
EMERGENCY: dict[str, Any] = {
    "X-Purpose-Of-Use": "ETREAT",
    "X-Break-Glass-Reason": "Ngừng tuần hoàn tại cấp cứu".encode(),
}
HOSPITALS = ("author", "referrer", "receiver", "booker", "stranger", "medic", "denied")


def observation(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "pulse"},
        "subject": {"reference": "Patient/lan"},
        **extra,
    }


@dataclass
class World:
    api: Api
    hub: Hub
    tokens: dict[str, str]

    def citizen(self, cccd: str) -> str:
        """The token ``emr-hub token --citizen CCCD`` prints."""
        with self.hub.db.snapshot() as session:
            person = citizen_person(session, cccd)
        return issue_citizen_token(self.hub, person, ScopeSet.parse(CITIZEN_SCOPES))[0]

    def as_(self, who: str) -> tuple[str, dict[str, Any]]:
        """(token, extra headers) of a principal of the matrix. ``medic-glass`` first breaks
        the glass on Lan's record, then works within the opening, as a doctor would."""
        if who == "medic-glass":
            opened = self.api.get("/Patient/lan", token=self.tokens["medic"], headers=EMERGENCY)
            assert opened.status_code == 200, opened.text
            return self.tokens["medic"], {}
        if who == "citizen":
            return self.citizen(LAN_CCCD), {}
        if who == "other-citizen":
            return self.citizen(OTHER_CCCD), {}
        if who == "medic-no-reason":
            return self.tokens["medic"], {"X-Purpose-Of-Use": "ETREAT"}
        return self.tokens[who], {}


@pytest.fixture
def world(hub: Hub, api: Api) -> World:
    operator = token_for(hub, client_id="test-operator", role="operator")
    tokens = {h: token_for(hub, client_id=h, break_glass=h == "medic") for h in HOSPITALS}
    tokens["operator"] = operator
    for hospital, level in (("referrer", "CO_BAN"), ("receiver", "CHUYEN_SAU")):
        organization = {
            "resourceType": "Organization",
            "id": hospital,
            "name": hospital,
            "type": [{"coding": [{"system": LEVEL, "code": level}]}],
        }
        assert api.put(f"/Organization/{hospital}", organization, token=operator).status_code == 201
    author = tokens["author"]
    lan = {
        "resourceType": "Patient",
        "id": "lan",
        "identifier": [{"system": CCCD, "value": LAN_CCCD}],
        "birthDate": "1985-04-12",
    }
    assert api.put("/Patient/lan", lan, token=author).status_code == 201
    someone_else = {
        "resourceType": "Patient",
        "id": "other",
        "identifier": [{"system": CCCD, "value": OTHER_CCCD}],
        "birthDate": "1990-01-01",
    }
    assert api.put("/Patient/other", someone_else, token=author).status_code == 201
    pulse = observation(id="pulse", identifier=[{"system": "urn:x", "value": "pulse"}])
    assert api.put("/Observation/pulse", pulse, token=author).status_code == 201
    hiv = observation(id="hiv", meta={"security": [HIV]}, code={"text": "HIV"})
    assert api.put("/Observation/hiv", hiv, token=author).status_code == 201
    letter = referral_letter("lan", "referrer", "receiver")
    assert api.post("/ServiceRequest", letter, token=tokens["referrer"]).status_code == 201
    booking = {
        "resourceType": "Appointment",
        "status": "booked",
        "start": "2026-12-20T08:00:00+07:00",
        "end": "2026-12-20T08:30:00+07:00",
        "participant": [{"actor": {"reference": "Patient/lan"}, "status": "accepted"}],
    }
    assert api.post("/Appointment", booking, token=tokens["booker"]).status_code == 201
    visit = {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"code": "AMB"},
        "subject": {"reference": "Patient/lan"},
    }
    for carer in ("author", "denied"):  # both treated her; her Consent denies the second
        assert api.post("/Encounter", visit, token=tokens[carer]).status_code == 201
    consent = privacy_consent(
        "lan",
        {"type": "deny", "actor": actors("denied")},
        sourceAttachment={"contentType": "application/pdf", "title": "Phiếu từ chối"},
    )
    assert api.post("/Consent", consent, token=author).status_code == 201
    return World(api, hub, tokens)


# ---------------------------------------------------------------- the columns
Check = Callable[[World, str, dict[str, Any]], bool]
"""Run one interaction as (token, headers); True when it reached Lan's pulse."""


def _get(world: World, path: str, token: str, headers: dict[str, Any], **params: str) -> Any:
    return world.api.get(path, token=token, headers=headers, params=params or None)


def _ids(response: Any, resource_type: str = "Observation") -> set[str]:
    if response.status_code != 200:
        return set()
    return {
        e["resource"]["id"]
        for e in response.json().get("entry", [])
        if e["resource"]["resourceType"] == resource_type
    }


def read(w: World, t: str, h: dict[str, Any]) -> bool:
    return bool(_get(w, "/Observation/pulse", t, h).status_code == 200)


def vread(w: World, t: str, h: dict[str, Any]) -> bool:
    return bool(_get(w, "/Observation/pulse/_history/1", t, h).status_code == 200)


def history(w: World, t: str, h: dict[str, Any]) -> bool:
    return "pulse" in _ids(_get(w, "/Observation/pulse/_history", t, h))


def type_history(w: World, t: str, h: dict[str, Any]) -> bool:
    return "pulse" in _ids(_get(w, "/Observation/_history", t, h))


def search_by_id(w: World, t: str, h: dict[str, Any]) -> bool:
    return "pulse" in _ids(_get(w, "/Observation", t, h, _id="pulse"))


def search_by_cccd(w: World, t: str, h: dict[str, Any]) -> bool:
    found = _get(w, "/Patient", t, h, identifier=f"{CCCD}|{LAN_CCCD}")
    return "lan" in _ids(found, "Patient")


def chain(w: World, t: str, h: dict[str, Any]) -> bool:
    found = _get(w, "/Observation", t, h, **{"subject:Patient.identifier": LAN_CCCD})
    return "pulse" in _ids(found)


def has(w: World, t: str, h: dict[str, Any]) -> bool:
    found = _get(w, "/Patient", t, h, **{"_has:Observation:subject:_id": "pulse"})
    return "lan" in _ids(found, "Patient")


def include(w: World, t: str, h: dict[str, Any]) -> bool:
    found = _get(w, "/Observation", t, h, _id="pulse", _include="Observation:subject")
    return "lan" in _ids(found, "Patient")


def revinclude(w: World, t: str, h: dict[str, Any]) -> bool:
    found = _get(w, "/Patient", t, h, _id="lan", _revinclude="Observation:subject")
    return "pulse" in _ids(found)


def everything(w: World, t: str, h: dict[str, Any]) -> bool:
    return "pulse" in _ids(_get(w, "/Patient/lan/$everything", t, h))


def compartment(w: World, t: str, h: dict[str, Any]) -> bool:
    return "pulse" in _ids(_get(w, "/Patient/lan/Observation", t, h))


def referral_history(w: World, t: str, h: dict[str, Any]) -> bool:
    found = _get(w, "/Patient/lan/$referral-history", t, h)
    return bool(_ids(found, "ServiceRequest"))


def conditional_create(w: World, t: str, h: dict[str, Any]) -> bool:
    """If-None-Exist finds the pulse (200) only for who may see it; others create (201)."""
    headers = {**h, "If-None-Exist": "identifier=urn:x|pulse"}
    answer = w.api.post("/Observation", observation(), token=t, headers=headers)
    return bool(answer.status_code == 200)


def update(w: World, t: str, h: dict[str, Any]) -> bool:
    body = observation(id="pulse", identifier=[{"system": "urn:x", "value": "pulse"}])
    body["note"] = [{"text": f"by {t[:8]}"}]
    return bool(w.api.put("/Observation/pulse", body, token=t, headers=h).status_code == 200)


def conditional_update(w: World, t: str, h: dict[str, Any]) -> bool:
    body = observation(identifier=[{"system": "urn:x", "value": "pulse"}], valueString="x")
    answer = w.api.put("/Observation?identifier=urn:x|pulse", body, token=t, headers=h)
    return bool(answer.status_code == 200)


def patch(w: World, t: str, h: dict[str, Any]) -> bool:
    operations = [{"op": "add", "path": "/valueString", "value": "patched"}]
    return bool(
        w.api.patch("/Observation/pulse", operations, token=t, headers=h).status_code == 200
    )


def delete(w: World, t: str, h: dict[str, Any]) -> bool:
    answer = w.api.delete("/Observation/hiv", token=t, headers=h)
    return (
        answer.status_code == 204
        and _get(w, "/Observation/hiv", w.tokens["author"], {}).status_code == 410
    )


def conditional_delete(w: World, t: str, h: dict[str, Any]) -> bool:
    answer = w.api.delete("/Observation?identifier=urn:x|pulse", token=t, headers=h)
    gone = _get(w, "/Observation/pulse", w.tokens["author"], {}).status_code == 410
    return answer.status_code == 204 and gone


def subscription(w: World, t: str, h: dict[str, Any]) -> bool:
    """A Subscription to Lan's Observations is notified of a new one only for who may see it."""
    body = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "matrix",
        "criteria": "Observation?subject=Patient/lan",
        "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/matrix"},
    }
    created = w.api.post("/Subscription", body, token=t, headers=h)
    if created.status_code != 201:
        return False
    subscription_id = created.json()["id"]
    assert w.api.post("/Observation", observation(), token=w.tokens["author"]).status_code == 201
    with w.hub.db.snapshot() as session:
        owed = session.scalars(
            select(OutboxMessage.subject).where(
                OutboxMessage.subject == f"Subscription/{subscription_id}"
            )
        ).all()
    return bool(owed)


def restricted_read(w: World, t: str, h: dict[str, Any]) -> bool:
    return bool(_get(w, "/Observation/hiv", t, h).status_code == 200)


READS: dict[str, Check] = {
    "read": read,
    "vread": vread,
    "history": history,
    "type-history": type_history,
    "search-by-id": search_by_id,
    "search-by-cccd": search_by_cccd,
    "chain": chain,
    "has": has,
    "include": include,
    "revinclude": revinclude,
    "everything": everything,
    "compartment": compartment,
    "conditional-create": conditional_create,
    "subscription": subscription,
}
WRITING_PROBES = frozenset({"conditional-create", "subscription"})
WRITES: dict[str, Check] = {
    "update": update,
    "patch": patch,
    "conditional-update": conditional_update,
    "delete": delete,
    "conditional-delete": conditional_delete,
}

# principal → (may read Lan's ordinary data, may read her restricted data, may change it)
MATRIX: dict[str, tuple[bool, bool, bool]] = {
    "author": (True, True, True),
    "referrer": (True, False, False),
    "receiver": (True, False, False),
    "booker": (True, False, False),
    "stranger": (False, False, False),
    "medic-glass": (True, True, False),
    "medic-no-reason": (False, False, False),
    "denied": (False, False, False),
    "operator": (True, True, True),
    "citizen": (True, True, False),
    "other-citizen": (False, False, False),
}


@pytest.mark.parametrize("who", list(MATRIX))
def test_the_access_matrix(world: World, who: str) -> None:
    may_read, may_read_restricted, may_change = MATRIX[who]
    token, headers = world.as_(who)
    wrong = []
    for name, check in READS.items():
        # a citizen writes nothing but her Consents: the columns that probe by writing fail
        expected = may_read and not (who.endswith("citizen") and name in WRITING_PROBES)
        if check(world, token, headers) != expected:
            wrong.append(f"{name}: expected {expected}")
    if restricted_read(world, token, headers) != may_read_restricted:
        wrong.append(f"restricted read: expected {may_read_restricted}")
    if referral_history(world, token, headers) != may_read:
        wrong.append(f"referral history: expected {may_read}")
    for name, check in WRITES.items():
        if check(world, token, headers) != may_change:
            wrong.append(f"{name}: expected {may_change}")
        if may_change:  # put the data back for the next column
            restore(world)
    assert not wrong, f"{who}: {wrong}"
    if not may_read:
        failures = refusals_of(world, who)
        assert failures, f"{who}: no refusal was audited"


def restore(world: World) -> None:
    author = world.tokens["author"]
    for observation_id in ("pulse", "hiv"):
        body = observation(id=observation_id)
        if observation_id == "pulse":
            body["identifier"] = [{"system": "urn:x", "value": "pulse"}]
        else:
            body |= {"meta": {"security": [HIV]}, "code": {"text": "HIV"}}
        assert world.api.put(f"/Observation/{observation_id}", body, token=author).status_code in (
            200,
            201,
        )


def refusals_of(world: World, who: str) -> list[dict[str, Any]]:
    """The failures audited for this principal (its hospital, or the citizen's person)."""
    if who.endswith("citizen"):
        with world.hub.db.snapshot() as session:
            person = citizen_person(session, OTHER_CCCD)
        column, value = EVENT.c.person, person
    else:
        column, value = EVENT.c.organization, f"Organization/{who.split('-')[0]}"
    with world.hub.db.snapshot() as session:
        return list(
            session.scalars(select(EVENT.c.content).where(column == value, EVENT.c.outcome == "4"))
        )


def test_totals_and_paging_under_the_policy(hub: Hub, api: Api, world: World) -> None:
    author, booker = world.tokens["author"], world.tokens["booker"]
    for _ in range(4):
        assert api.post("/Observation", observation(), token=author).status_code == 201
        elsewhere = observation(subject={"reference": "Patient/other"})
        assert api.post("/Observation", elsewhere, token=author).status_code == 201
    # the booker sees Lan's 5 ordinary results (pulse and four more), not the HIV one, and
    # none of the other patient's
    first = api.get(
        "/Observation", token=booker, params={"_count": "2", "_total": "accurate"}
    ).json()
    assert first["total"] == 5
    seen = [e["resource"]["id"] for e in first["entry"]]
    page = first
    while any(link["relation"] == "next" for link in page["link"]):
        url = next(link["url"] for link in page["link"] if link["relation"] == "next")
        page = api.get(url.split("/fhir", 1)[1], token=booker).json()
        seen += [e["resource"]["id"] for e in page.get("entry", [])]
    assert len(seen) == len(set(seen)) == 5 and "hiv" not in seen
    counted = api.get("/Observation", token=booker, params={"_summary": "count"}).json()
    assert counted["total"] == 5
    assert api.get("/Observation", token=author, params={"_summary": "count"}).json()["total"] == 10
