"""Decimals keep their digits (FHIR R4 datatypes: decimal), on SQLite and PostgreSQL.

Bodies are written and read as bytes: the literals are checked as text (``1.50`` is not
``1.5``), through every way a resource leaves the hub.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from emr_hub.hub import Hub
from tests.fhir.conftest import Api, outcome_issue
from tests.processes import wait_for
from tests.receiver import Receiver
from tests.subscriptions.test_subscriptions import delivered, subscribe

FHIR_DECIMAL = r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?"
LITERALS = [
    "1.50",
    "0.0",
    "-0.000",
    "100",
    "1E+2",
    "1e2",
    "2.50e-3",
    "0.1000000000000000055",
    "3.14159265358979323846264338327950288419716939937510",
    "123456789012345678901234567890",
    "-98765432109876543210.012345678901234567890",
]
"""Trailing zeros, zeros, an integer, exponents, digits past a double's precision."""


class Literal(str):
    """A number read as its JSON text."""


def as_text(raw: bytes) -> Any:
    """A JSON body with every number as its literal (:class:`Literal`)."""
    return json.loads(raw, parse_float=Literal, parse_int=Literal)


def components(literals: list[str]) -> str:
    return ",".join(
        f'{{"code":{{"text":"c{i}"}},"valueQuantity":{{"value":{text},"unit":"mg"}}}}'
        for i, text in enumerate(literals)
    )


def observation_text(patient: str, literals: list[str] = LITERALS, value: str = "1.50") -> str:
    return (
        '{"resourceType":"Observation","status":"final","code":{"text":"weight"},'
        f'"subject":{{"reference":"{patient}"}},'
        f'"identifier":[{{"system":"urn:x","value":"obs-{len(literals)}"}}],'
        f'"valueQuantity":{{"value":{value},"unit":"kg"}},'
        f'"component":[{components(literals)}]}}'
    )


def patient_text() -> str:
    return (
        '{"resourceType":"Patient","name":[{"family":"Nguyen"}],'
        '"extension":[{"url":"urn:x:score","valueDecimal":7.250}]}'
    )


def component_literals(resource: dict[str, Any]) -> list[str]:
    return [c["valueQuantity"]["value"] for c in resource["component"]]


def post(api: Api, path: str, text: str, **headers: str) -> Any:
    response = api.post(path, raw=text.encode(), headers=headers or None)
    assert response.status_code in (200, 201), response.text
    return response


def entries(raw: bytes) -> list[dict[str, Any]]:
    return [entry["resource"] for entry in as_text(raw).get("entry", []) if "resource" in entry]


@pytest.fixture
def stored(api: Api) -> tuple[str, str]:
    """(Patient/id, Observation/id) holding the decimals."""
    patient = "Patient/" + post(api, "/Patient", patient_text()).json()["id"]
    created = post(api, "/Observation", observation_text(patient))
    assert component_literals(as_text(created.content)) == LITERALS
    return patient, "Observation/" + created.json()["id"]


def test_read_vread_and_history_give_the_literals_back(api: Api, stored: tuple[str, str]) -> None:
    _, observation = stored
    for path in (observation, f"{observation}/_history/1"):
        response = api.get(f"/{path}")
        assert response.status_code == 200
        body = as_text(response.content)
        assert component_literals(body) == LITERALS
        assert body["valueQuantity"]["value"] == "1.50"
    pretty = api.get(f"/{observation}", params={"_pretty": "true"})
    assert component_literals(as_text(pretty.content)) == LITERALS
    (version,) = entries(api.get(f"/{observation}/_history").content)
    assert component_literals(version) == LITERALS
    (typed,) = entries(api.get("/Observation/_history").content)
    assert component_literals(typed) == LITERALS


def test_searches_includes_elements_and_everything_give_them_back(
    api: Api, stored: tuple[str, str]
) -> None:
    patient, observation = stored
    obs_id = observation.split("/")[1]
    found = entries(
        api.get("/Observation", params={"_id": obs_id, "_include": "Observation:subject"}).content
    )
    assert [r["resourceType"] for r in found] == ["Observation", "Patient"]
    assert component_literals(found[0]) == LITERALS
    assert found[1]["extension"][0]["valueDecimal"] == "7.250"
    reverse = entries(
        api.get(
            "/Patient",
            params={"_id": patient.split("/")[1], "_revinclude": "Observation:subject"},
        ).content
    )
    assert component_literals(reverse[1]) == LITERALS
    (trimmed,) = entries(
        api.get("/Observation", params={"_id": obs_id, "_elements": "component"}).content
    )
    assert component_literals(trimmed) == LITERALS
    read = as_text(api.get(f"/{observation}", params={"_summary": "data"}).content)
    assert component_literals(read) == LITERALS
    everything = entries(api.get(f"/{patient}/$everything").content)
    by_type = {r["resourceType"]: r for r in everything}
    assert component_literals(by_type["Observation"]) == LITERALS
    assert by_type["Patient"]["extension"][0]["valueDecimal"] == "7.250"


def test_updates_patches_and_conditional_writes_keep_them(
    api: Api, stored: tuple[str, str]
) -> None:
    patient, observation = stored
    body = observation_text(patient, value="1.5")[:-1] + f',"id":"{observation.split("/")[1]}"}}'
    updated = api.put(f"/{observation}", raw=body.encode())
    assert updated.status_code == 200, updated.text
    assert updated.json()["meta"]["versionId"] == "2"  # 1.50 -> 1.5 is a change, not a retry
    assert as_text(updated.content)["valueQuantity"]["value"] == "1.5"
    again = api.put(f"/{observation}", raw=body.encode())
    assert again.json()["meta"]["versionId"] == "2"  # the same literals: a retry
    assert as_text(api.get(f"/{observation}/_history/1").content)["valueQuantity"]["value"] == (
        "1.50"
    )

    patch = b'[{"op":"replace","path":"/valueQuantity/value","value":2.50E0}]'
    patched = api.client.patch(
        f"/fhir/{observation}",
        content=patch,
        headers=api.headers({"Content-Type": "application/json-patch+json"}),
    )
    assert patched.status_code == 200, patched.text
    read = as_text(api.get(f"/{observation}").content)
    assert read["valueQuantity"]["value"] == "2.50E0"
    assert component_literals(read) == LITERALS

    conditional = observation_text(patient, LITERALS[:3], value="9.90")
    created = post(api, "/Observation", conditional, **{"If-None-Exist": "identifier=urn:x|obs-3"})
    assert created.status_code == 201
    kept = post(api, "/Observation", conditional, **{"If-None-Exist": "identifier=urn:x|obs-3"})
    assert kept.status_code == 200
    replaced = observation_text(patient, LITERALS[:3], value="-0.0010")
    put = api.put("/Observation", raw=replaced.encode(), params={"identifier": "urn:x|obs-3"})
    assert put.status_code == 200, put.text
    read = as_text(api.get(f"/Observation/{created.json()['id']}").content)
    assert read["valueQuantity"]["value"] == "-0.0010"
    assert component_literals(read) == LITERALS[:3]


@pytest.mark.parametrize("kind", ["transaction", "batch"])
def test_bundles_store_them_and_answer_them(api: Api, kind: str) -> None:
    patient_url = "urn:uuid:4f5e6a1c-0000-4000-8000-000000000001"
    patient_entry = (
        f'{{"fullUrl":"{patient_url}","resource":{patient_text()},'
        '"request":{"method":"POST","url":"Patient"}}'
    )
    if kind == "transaction":  # the Observation names the Patient by its fullUrl
        subject, sent = patient_url, [patient_entry]
    else:
        subject, sent = "Patient/" + post(api, "/Patient", patient_text()).json()["id"], []
    sent.append(
        f'{{"resource":{observation_text(subject)},"request":{{"method":"POST","url":"Observation"}}}}'
    )
    bundle = f'{{"resourceType":"Bundle","type":"{kind}","entry":[{",".join(sent)}]}}'
    response = post(api, "", bundle, Prefer="return=representation")
    answered = {r["resourceType"]: r for r in entries(response.content)}
    assert component_literals(answered["Observation"]) == LITERALS
    if kind == "transaction":
        assert answered["Patient"]["extension"][0]["valueDecimal"] == "7.250"
    location = response.json()["entry"][-1]["response"]["location"]
    read = as_text(api.get("/" + "/".join(location.split("/")[:2])).content)
    assert component_literals(read) == LITERALS


def test_a_patch_entry_in_a_bundle_keeps_them(api: Api, stored: tuple[str, str]) -> None:
    _, observation = stored
    operations = b'[{"op":"replace","path":"/valueQuantity/value","value":7.000}]'
    data = base64.b64encode(operations).decode()
    bundle = (
        '{"resourceType":"Bundle","type":"transaction","entry":[{"resource":'
        f'{{"resourceType":"Binary","contentType":"application/json-patch+json","data":"{data}"}},'
        f'"request":{{"method":"PATCH","url":"{observation}"}}}}]}}'
    )
    post(api, "", bundle)
    assert as_text(api.get(f"/{observation}").content)["valueQuantity"]["value"] == "7.000"


def test_search_on_a_decimal_uses_the_precision_of_the_search_value(api: Api, hub: Hub) -> None:
    ids = {}
    for text in ("1.50", "1E+2", "0.1000000000000000055", "-0.000"):
        body = (
            '{"resourceType":"Observation","status":"final","code":{"text":"v"},'
            f'"valueQuantity":{{"value":{text},"system":"http://unitsofmeasure.org","code":"mg"}}}}'
        )
        ids[text] = post(api, "/Observation", body).json()["id"]

    def matches(value: str) -> set[str]:
        found = api.get("/Observation", params={"value-quantity": value, "_count": "50"})
        assert found.status_code == 200, found.text
        return {e["resource"]["id"] for e in found.json().get("entry", [])}

    assert matches("1.5") == {ids["1.50"]}  # [1.45, 1.55)
    assert matches("1.50") == {ids["1.50"]}
    assert matches("1.500") == {ids["1.50"]}
    assert matches("1.51") == set()
    assert matches("100") == {ids["1E+2"]}
    assert matches("1e2|http://unitsofmeasure.org|mg") == {ids["1E+2"]}
    assert matches("0.1") == {ids["0.1000000000000000055"]}
    if hub.db.url.startswith("postgresql"):  # numeric index rows; SQLite's hold doubles
        assert matches("0.1000000000000000055") == {ids["0.1000000000000000055"]}
        assert matches("0.1000000000000000054") == set()  # past a double: the digits as written
    assert matches("0.000") == {ids["-0.000"]}  # [-0.0005, 0.0005)
    assert matches("gt99") == {ids["1E+2"]}
    assert matches("le0") == {ids["-0.000"]}


def test_a_subscription_payload_carries_them(api: Api, hub: Hub, receiver: Receiver) -> None:
    subscribe(api, receiver.url("/fhir/"), payload="application/fhir+json")
    task = (
        '{"resourceType":"Task","status":"requested","intent":"order",'
        '"owner":{"reference":"Organization/hosp-b"},'
        '"input":[{"type":{"text":"dose"},"valueDecimal":0.250},'
        '{"type":{"text":"big"},"valueDecimal":1E+2}]}'
    )
    post(api, "/Task", task)
    wait_for(lambda: delivered(hub, 1), 15, "one delivery")
    (request,) = receiver.requests
    assert [i["valueDecimal"] for i in as_text(request.raw)["input"]] == ["0.250", "1E+2"]


def test_a_literal_that_is_not_a_number_is_still_refused(api: Api) -> None:
    for bad in ("01.5", "1.", ".5", "1e", "+1", "NaN", "1e400"):
        body = (
            '{"resourceType":"Observation","status":"final","code":{"text":"x"},'
            f'"valueQuantity":{{"value":{bad}}}}}'
        )
        response = api.post("/Observation", raw=body.encode())
        assert response.status_code == 400, (bad, response.text)
        assert "Malformed JSON" in outcome_issue(response)["diagnostics"]
    integer = '{"resourceType":"Patient","multipleBirthInteger":2.0}'
    response = api.post("/Patient", raw=integer.encode())
    assert response.status_code == 400
    assert outcome_issue(response)["expression"] == ["Patient.multipleBirthInteger"]
    big = '{"resourceType":"Patient","multipleBirthInteger":123456789012345678901234567890}'
    response = api.post("/Patient", raw=big.encode())
    assert response.status_code == 400
    assert outcome_issue(response)["expression"] == ["Patient.multipleBirthInteger"]


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(literal=st.from_regex(FHIR_DECIMAL, fullmatch=True).filter(lambda t: t != "-0"))
@example(literal="0E1000000000000000000")  # an exponent Decimal cannot hold: found by hypothesis
def test_any_fhir_decimal_round_trips_through_post_and_read(api: Api, literal: str) -> None:
    """``-0``, an integer, reads as ``0``: integers stay integers, and zero has no sign."""
    body = (
        '{"resourceType":"Observation","status":"final","code":{"text":"x"},'
        f'"valueQuantity":{{"value":{literal}}}}}'
    )
    response = api.post("/Observation", raw=body.encode())
    if float(literal) in (float("inf"), float("-inf")):  # past a double: refused, as before
        assert response.status_code == 400
        return
    assert response.status_code == 201, response.text
    read = api.get(f"/Observation/{response.json()['id']}")
    assert as_text(read.content)["valueQuantity"]["value"] == literal
