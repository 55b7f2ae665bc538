"""Patient/$everything and compartment search, on the Synthea fixtures (both databases)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from tests.fhir.conftest import Api

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
PATIENT_BUNDLE = "02-1484a42d-0eaf-4654-9cbf-6b050a5cd73b.json"


def load(api: Api) -> dict[str, str]:
    """Post the Synthea patient bundle; fullUrl → Type/id."""
    body = orjson.loads((FIXTURES / PATIENT_BUNDLE).read_bytes())
    response = api.post("", body)
    assert response.status_code == 200, response.text
    return {
        sent["fullUrl"]: "/".join(answer["response"]["location"].split("/")[:2])
        for sent, answer in zip(body["entry"], response.json()["entry"], strict=True)
    }


def all_pages(api: Api, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
    bundle = api.get(path, params=params).json()
    entries = list(bundle.get("entry", []))
    while nxt := next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None):
        bundle = api.client.get(nxt, headers=api.headers()).json()
        entries += bundle.get("entry", [])
    return entries


def test_everything_returns_the_whole_compartment_with_paging(api: Api) -> None:
    mapping = load(api)
    patient = next(ref for ref in mapping.values() if ref.startswith("Patient/"))
    expected = set(mapping.values())  # the bundle is one patient's record, with its providers
    entries = all_pages(api, f"/{patient}/$everything", {"_count": "7"})
    found = [f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in entries]
    assert len(found) == len(set(found))  # paging repeats nothing
    assert set(found) == expected
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": patient},
    }
    created = api.post("/Observation", observation)
    assert created.status_code == 201
    entries = all_pages(api, f"/{patient}/$everything", {"_count": "50"})
    again = {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in entries}
    assert again == expected | {f"Observation/{created.json()['id']}"}


def test_everything_type_and_since(api: Api) -> None:
    mapping = load(api)
    patient = next(ref for ref in mapping.values() if ref.startswith("Patient/"))
    only = all_pages(api, f"/{patient}/$everything", {"_type": "Encounter,Condition"})
    assert only and {e["resource"]["resourceType"] for e in only} == {"Encounter", "Condition"}
    assert all_pages(api, f"/{patient}/$everything", {"_since": "2999-01-01T00:00:00Z"}) == []
    assert api.get("/Patient/nobody/$everything").status_code == 404
    assert api.get(f"/{patient}/$everything", params={"_type": "Unicorn"}).status_code == 400


def test_compartment_search(api: Api) -> None:
    mapping = load(api)
    patient = next(ref for ref in mapping.values() if ref.startswith("Patient/"))
    encounters = {r for r in mapping.values() if r.startswith("Encounter/")}
    found = all_pages(api, f"/{patient}/Encounter", {"_count": "5"})
    assert {f"Encounter/{e['resource']['id']}" for e in found} == encounters
    other = api.post("/Patient", {"resourceType": "Patient"}).json()["id"]
    assert all_pages(api, f"/Patient/{other}/Encounter", {}) == []
    newest_first = api.get(f"/{patient}/Encounter", params={"_sort": "-date", "_count": "100"})
    starts = [e["resource"]["period"]["start"] for e in newest_first.json()["entry"]]
    assert starts == sorted(starts, reverse=True)
    assert api.get(f"/{patient}/Organization").status_code == 400  # not in the compartment


def test_system_search_over_several_types(api: Api) -> None:
    mapping = load(api)
    wanted = {r for r in mapping.values() if r.split("/")[0] in ("Encounter", "Condition")}
    entries = all_pages(api, "", {"_type": "Encounter,Condition", "_count": "4"})
    found = [f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in entries]
    assert len(found) == len(set(found)) and set(found) == wanted
    tagged = api.get(
        "", params={"_type": "Patient,Encounter", "_lastUpdated": "ge2000-01-01"}
    ).json()
    assert {e["resource"]["resourceType"] for e in tagged["entry"]} == {"Patient", "Encounter"}
    assert api.get("", params={"name": "x"}).status_code == 400  # no _type
    assert api.get("", params={"_type": "Patient,Encounter", "family": "x"}).status_code == 400
