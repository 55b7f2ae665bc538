"""JSON bodies the hub refuses although a lenient parser would take them."""

from __future__ import annotations

from tests.fhir.conftest import Api, outcome_issue


def test_a_key_named_twice_in_one_object_is_refused(api: Api) -> None:
    """Parsers disagree on which of two values wins; the hub takes neither."""
    body = b'{"resourceType":"Patient","name":[{"family":"A","family":"B"}]}'
    response = api.client.post("/fhir/Patient", content=body, headers=api.headers())
    assert response.status_code == 400
    assert "'family' twice" in outcome_issue(response)["diagnostics"]
    bundle = b'{"resourceType":"Bundle","type":"batch","type":"transaction","entry":[]}'
    assert api.client.post("/fhir", content=bundle, headers=api.headers()).status_code == 400
    assert api.get("/Patient", params={"_summary": "count"}).json()["total"] == 0
