"""A NUL character (U+0000), which PostgreSQL cannot store, is a 400 naming where it is, on
both databases alike: in a resource (only that entry of a batch fails), a search (URL, form,
Bundle entry), a URL path, a token request. Nothing is stored, and the refusal is audited (the
``app_client`` fixture checks one audit record per request) with the NUL replaced."""

from __future__ import annotations

import base64
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select

from emr_hub.fhir.unstorable import REPLACEMENT, may_hold_nul, nul_path, without_nul
from emr_hub.hub import Hub
from emr_hub.security.audit.log import EVENT
from tests.fhir.conftest import Api, outcome_issue

NUL = "\x00"


def patient(**fields: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", **fields}


def stored_patients(api: Api) -> int:
    return int(api.get("/Patient", params={"_summary": "count"}).json()["total"])


def test_a_nul_in_a_resource_is_a_400_naming_the_element(api: Api) -> None:
    response = api.post("/Patient", patient(name=[{"family": "Trần", "given": ["Văn", f"A{NUL}"]}]))
    assert response.status_code == 400
    issue = outcome_issue(response)
    assert issue["expression"] == ["Patient.name[0].given[1]"]
    assert "NUL" in issue["diagnostics"]
    in_a_key = api.post("/Patient", patient(**{f"gen{NUL}der": "male"}))
    assert in_a_key.status_code == 400
    assert outcome_issue(in_a_key)["expression"] == [f"Patient.gen{REPLACEMENT}der"]
    assert stored_patients(api) == 0


def test_the_six_characters_backslash_u0000_are_text_like_any_other(api: Api) -> None:
    created = api.post("/Patient", patient(name=[{"text": "\\u0000"}]))
    assert created.status_code == 201
    assert api.get(f"/Patient/{created.json()['id']}").json()["name"][0]["text"] == "\\u0000"


def entry(resource: dict[str, Any]) -> dict[str, Any]:
    return {"resource": resource, "request": {"method": "POST", "url": resource["resourceType"]}}


def test_in_a_transaction_nothing_is_stored_and_in_a_batch_only_that_entry_fails(
    api: Api,
) -> None:
    entries = [entry(patient(gender="male")), entry(patient(name=[{"family": NUL}]))]
    refused = api.post("", {"resourceType": "Bundle", "type": "transaction", "entry": entries})
    assert refused.status_code == 400
    assert outcome_issue(refused)["expression"] == ["Bundle.entry[1].resource.name[0].family"]
    assert stored_patients(api) == 0

    batch = api.post("", {"resourceType": "Bundle", "type": "batch", "entry": entries})
    assert batch.status_code == 200
    statuses = [e["response"]["status"] for e in batch.json()["entry"]]
    assert statuses[0].startswith("201") and statuses[1].startswith("400")
    assert stored_patients(api) == 1


def test_a_nul_in_a_search_is_a_400_wherever_the_search_comes_from(api: Api) -> None:
    in_url = api.get("/Patient", params={"name": f"a{NUL}b"})
    assert in_url.status_code == 400
    assert outcome_issue(in_url)["expression"] == ["name"]
    in_form = api.client.post(
        "/fhir/Patient/_search",
        content=b"identifier=a%00b",
        headers={**api.headers(), "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert in_form.status_code == 400
    assert outcome_issue(in_form)["expression"] == ["identifier"]
    search_entry = {"request": {"method": "GET", "url": "Patient?_id=a%00b"}}
    batch = api.post("", {"resourceType": "Bundle", "type": "batch", "entry": [search_entry]})
    assert batch.json()["entry"][0]["response"]["status"].startswith("400")
    conditional = api.post(
        "/Patient", patient(gender="male"), headers={"If-None-Exist": "identifier=a%00b"}
    )
    assert conditional.status_code == 400
    assert stored_patients(api) == 0


def test_a_nul_in_the_path_is_a_400_and_its_audit_record_is_stored(api: Api, hub: Hub) -> None:
    response = api.get("/Patient/a%00b")
    assert response.status_code == 400
    assert outcome_issue(response)["expression"] == ["URL path"]
    with hub.db.snapshot() as session:
        contents = session.scalars(
            select(EVENT.c.content).where(EVENT.c.request_id == response.headers["x-request-id"])
        ).all()
    assert len(contents) == 1 and not may_hold_nul(contents[0])


def test_a_nul_in_a_token_request_is_refused(api: Api) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    posted = api.client.post(
        "/auth/token",
        content=b"grant_type=client_credentials&client_id=a%00b&client_secret=s",
        headers=form,
    )
    assert posted.status_code == 400
    assert posted.json()["error"] == "invalid_request"
    basic = base64.b64encode(b"a\x00b:s").decode()
    in_basic = api.client.post(
        "/auth/token",
        content=b"grant_type=client_credentials",
        headers={**form, "Authorization": f"Basic {basic}"},
    )
    assert in_basic.status_code == 401
    assert in_basic.json()["error"] == "invalid_client"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet=st.sampled_from("ab\\u0\x00")),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(alphabet=st.sampled_from("ab\x00"), max_size=3), children, max_size=4
        )
    ),
    max_leaves=20,
)


def holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return NUL in value
    if isinstance(value, dict):
        return any(NUL in k or holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(holds_nul(v) for v in value)
    return False


@given(JSON)
def test_the_checks_find_every_nul_and_only_nuls(value: Any) -> None:
    assert (nul_path(value, "R") is not None) == holds_nul(value)
    if holds_nul(value):
        assert may_hold_nul(value)  # the fast check never misses one
    cleaned = without_nul(value)
    assert not holds_nul(cleaned)
    assert cleaned == value or holds_nul(value)  # nothing else changes
