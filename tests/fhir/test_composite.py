"""Composite parameters: both parts must match on the same element (both databases)."""

from __future__ import annotations

from typing import Any

from emr_hub.fhir.search.composite import composite_parts
from emr_hub.fhir.search.registry import params_for
from emr_hub.fhir.validation import R4_RESOURCE_TYPES
from tests.fhir.conftest import Api

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"


def mmhg(value: float) -> dict[str, Any]:
    return {"value": value, "unit": "mm[Hg]", "system": UCUM, "code": "mm[Hg]"}


def blood_pressure(systolic: float, diastolic: float) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "85354-9"}]},
        "effectiveDateTime": "2025-03-04T08:00:00+07:00",
        "component": [
            {
                "code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
                "valueQuantity": mmhg(systolic),
            },
            {
                "code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
                "valueQuantity": mmhg(diastolic),
            },
        ],
    }


def ids(api: Api, **params: str) -> set[str]:
    response = api.get("/Observation", params=params)
    assert response.status_code == 200, response.text
    return {e["resource"]["id"] for e in response.json().get("entry", [])}


def create(api: Api, resource: dict[str, Any]) -> str:
    response = api.post("/Observation", resource)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_component_pairs_stay_on_their_component(api: Api) -> None:
    normal = create(api, blood_pressure(118, 76))
    high = create(api, blood_pressure(152, 96))
    systolic_high = {"component-code-value-quantity": f"{LOINC}|8480-6$gt140"}
    assert ids(api, **systolic_high) == {high}
    # a diastolic above 100 exists in neither: the systolic values must not leak into the pair
    assert ids(api, **{"component-code-value-quantity": f"{LOINC}|8462-4$gt100"}) == set()
    assert ids(api, **{"component-code-value-quantity": "8462-4$lt80"}) == {normal}
    unit = f"{LOINC}|8480-6$150|{UCUM}|mm[Hg]"
    assert ids(api, **{"component-code-value-quantity": unit}) == set()  # 150 is [149.5, 150.5)
    near = f"{LOINC}|8480-6$152|{UCUM}|mm[Hg]"
    assert ids(api, **{"component-code-value-quantity": near}) == {high}
    either = f"{LOINC}|8480-6$gt150,{LOINC}|8462-4$lt77"
    assert ids(api, **{"combo-code-value-quantity": either}) == {normal, high}


def test_code_value_pairs_on_the_observation(api: Api) -> None:
    hba1c = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "4548-4"}]},
        "valueQuantity": {"value": 7.4, "unit": "%", "system": UCUM, "code": "%"},
    }
    high = create(api, hba1c)
    create(api, {**hba1c, "valueQuantity": {**hba1c["valueQuantity"], "value": 5.6}})
    assert ids(api, **{"code-value-quantity": f"{LOINC}|4548-4$ge7"}) == {high}
    smoking = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "72166-2"}]},
        "valueCodeableConcept": {
            "coding": [{"system": "http://snomed.info/sct", "code": "8517006"}]
        },
    }
    former = create(api, smoking)
    assert ids(api, **{"code-value-concept": "72166-2$http://snomed.info/sct|8517006"}) == {former}
    assert ids(api, **{"code-value-concept": "72166-2$266919005"}) == set()
    note = {**smoking, "valueString": "Hút thuốc lá", "valueCodeableConcept": None}
    del note["valueCodeableConcept"]
    text = create(api, note)
    assert ids(api, **{"code-value-string": "72166-2$hut thuoc"}) == {text}
    dated = {**smoking, "valueDateTime": "2020-05-01"}
    del dated["valueCodeableConcept"]
    when = create(api, dated)
    assert ids(api, **{"code-value-date": "72166-2$ge2020-01-01"}) == {when}
    assert ids(api, **{"code-value-date": "72166-2$lt2020"}) == set()


def test_bad_and_unsupported_composites(api: Api) -> None:
    assert api.get("/Observation", params={"code-value-quantity": "4548-4"}).status_code == 400
    assert api.get("/Observation", params={"code-value-quantity": "4548-4$abc"}).status_code == 400
    unsupported = next(
        (t, code)
        for t in sorted(R4_RESOURCE_TYPES)
        for code, p in params_for(t).items()
        if p.type == "composite" and composite_parts(p) is None
    )
    response = api.get(f"/{unsupported[0]}", params={unsupported[1]: "a$b"})
    assert response.status_code == 400
    assert response.json()["issue"][0]["code"] == "not-supported"
