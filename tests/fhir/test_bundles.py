"""Transaction and batch Bundles (``POST /fhir``), driven over the real API.

The Synthea round trip runs on the function-scoped ``api`` fixture (a fresh database); the
other tests share one migrated hub per database for the module (``shared_api``), which keeps
the module fast on PostgreSQL. They stay independent by using fresh identifiers and client
ids, and by comparing the newest system-history entry before and after a refused request.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import uuid
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from emr_hub.main import create_app
from tests.conftest import fresh_postgres_database, make_settings
from tests.fhir.conftest import Api, outcome_issue, token_for

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
HOSPITALS = "00-hospital-information.json"
PRACTITIONERS = "00-practitioner-information.json"
SYNTHEA_PATIENT = "02-1484a42d-0eaf-4654-9cbf-6b050a5cd73b.json"
SYNTHEA_ID = "https://github.com/synthetichealth/synthea"
NPI = "http://hl7.org/fhir/sid/us-npi"
TEST_SYSTEM = "urn:oid:1.2.3.4.5.6"  # identifiers made up by these tests
CCCD = "http://fhir.hl7.org.vn/core/sid/cccd"
GOOD_CCCD = "027185000123"  # Bắc Ninh (027), century digit 1 (a woman of the 1900s), born 1985
XHTML = "http://www.w3.org/1999/xhtml"
LOCATION = re.compile(r"(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})/_history/(?P<v>\d+)")


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def shared_hub(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """One migrated hub per database for the whole module."""
    from emr_hub.hub import Hub

    tmp = tmp_path_factory.mktemp(f"bundles-{request.param}")
    if request.param == "sqlite":
        instance = Hub.from_settings(
            make_settings(tmp, f"sqlite:///{tmp / 'hub.db'}"), migrate=True
        )
        yield instance
        instance.close()
        return
    with fresh_postgres_database() as url:
        instance = Hub.from_settings(make_settings(tmp, url), migrate=True)
        yield instance
        instance.close()


@pytest.fixture(scope="module")
def shared_client(shared_hub: Any) -> Iterator[TestClient]:
    with TestClient(create_app(shared_hub)) as client:
        yield client


@pytest.fixture(scope="module")
def shared_api(shared_hub: Any, shared_client: TestClient) -> Api:
    return Api(shared_client, token_for(shared_hub))


# ------------------------------------------------------------------- helpers
@cache
def _fixture_text(name: str) -> str:
    return (FIXTURES / name).read_text("utf-8")


def load_fixture(name: str) -> dict[str, Any]:
    return json.loads(_fixture_text(name))


def new_value() -> str:
    return uuid.uuid4().hex


def urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def identifier(value: str, system: str = TEST_SYSTEM) -> dict[str, str]:
    return {"system": system, "value": value}


def patient(value: str | None = None, **extra: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "name": [{"family": "Nguyễn", "given": ["Thị", "Lan"]}],
        "gender": "female",
        "birthDate": "1985-03-04",
    }
    if value is not None:
        resource["identifier"] = [identifier(value)]
    resource.update(extra)
    return resource


def observation(
    subject: str | None = None, value: str | None = None, **extra: Any
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {
            "coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]
        },
        "valueQuantity": {
            "value": 72,
            "unit": "/min",
            "system": "http://unitsofmeasure.org",
            "code": "/min",
        },
    }
    if subject is not None:
        resource["subject"] = {"reference": subject}
    if value is not None:
        resource["identifier"] = [identifier(value)]
    resource.update(extra)
    return resource


def practitioner(resource_id: str | None = None, **extra: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Practitioner",
        "name": [{"family": "Trần", "given": ["Văn"]}],
    }
    if resource_id is not None:
        resource["id"] = resource_id
    resource.update(extra)
    return resource


def entry(
    method: str,
    url: str,
    resource: dict[str, Any] | None = None,
    full_url: str | None = None,
    **request: str,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if full_url is not None:
        out["fullUrl"] = full_url
    if resource is not None:
        out["resource"] = resource
    out["request"] = {"method": method, "url": url, **request}
    return out


def post(resource: dict[str, Any], full_url: str | None = None, **request: str) -> dict[str, Any]:
    return entry("POST", resource["resourceType"], resource, full_url, **request)


def put(resource: dict[str, Any], full_url: str | None = None, **request: str) -> dict[str, Any]:
    return entry(
        "PUT", f"{resource['resourceType']}/{resource['id']}", resource, full_url, **request
    )


def bundle(kind: str, *entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def transaction(*entries: dict[str, Any]) -> dict[str, Any]:
    return bundle("transaction", *entries)


def patch_binary(operations: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Binary",
        "contentType": "application/json-patch+json",
        "data": base64.b64encode(orjson.dumps(operations)).decode(),
    }


def status_code(response_entry: dict[str, Any]) -> int:
    return int(response_entry["response"]["status"].split()[0])


def reference_of(response_entry: dict[str, Any]) -> str:
    """``Type/id`` from a response entry's location."""
    match = LOCATION.fullmatch(response_entry["response"]["location"])
    assert match, response_entry
    return f"{match['type']}/{match['id']}"


def post_ok(api: Api, body: dict[str, Any]) -> list[dict[str, Any]]:
    """POST a Bundle that must succeed; the response entries."""
    response = api.post("", body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["resourceType"] == "Bundle"
    assert result["type"] == f"{body['type']}-response"
    assert len(result["entry"]) == len(body["entry"])
    return result["entry"]


def create(api: Api, resource: dict[str, Any]) -> str:
    """Create through the plain REST API; the new ``Type/id``."""
    if "id" in resource:
        response = api.put(f"/{resource['resourceType']}/{resource['id']}", resource)
    else:
        response = api.post(f"/{resource['resourceType']}", resource)
    assert response.status_code == 201, response.text
    return f"{resource['resourceType']}/{response.json()['id']}"


def read(api: Api, reference: str) -> dict[str, Any]:
    response = api.get(f"/{reference}")
    assert response.status_code == 200, (reference, response.text)
    return response.json()


def read_many(api: Api, references: list[str], chunk: int = 100) -> dict[str, dict[str, Any]]:
    """``Type/id`` → the stored resource, read by ``_id`` searches of ``chunk`` ids at a time
    (a search answers the same content as a read, in a fraction of the requests)."""
    by_type: dict[str, list[str]] = {}
    for reference in references:
        resource_type, _, resource_id = reference.partition("/")
        by_type.setdefault(resource_type, []).append(resource_id)
    found: dict[str, dict[str, Any]] = {}
    for resource_type, ids in by_type.items():
        for start in range(0, len(ids), chunk):
            part = ids[start : start + chunk]
            response = api.get(
                f"/{resource_type}", params={"_id": ",".join(part), "_count": str(chunk)}
            )
            assert response.status_code == 200, response.text
            for entry in response.json().get("entry", []):
                resource = entry["resource"]
                found[f"{resource['resourceType']}/{resource['id']}"] = resource
    missing = [reference for reference in references if reference not in found]
    assert not missing, missing[:5]
    return found


def search_ids(api: Api, resource_type: str, value: str, system: str = TEST_SYSTEM) -> list[str]:
    response = api.get(f"/{resource_type}", params={"identifier": f"{system}|{value}"})
    assert response.status_code == 200, response.text
    return [e["resource"]["id"] for e in response.json().get("entry", [])]


def newest_version(api: Api) -> tuple[str, str, str] | None:
    """The newest entry of the system history: any write at all changes it."""
    response = api.get("/_history", params={"_count": "1"})
    assert response.status_code == 200, response.text
    entries = response.json()["entry"]
    if not entries:
        return None
    first = entries[0]
    return first["fullUrl"], first["response"]["etag"], first["response"]["lastModified"]


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)
    elif isinstance(node, str):
        yield node


def references(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(path, value) of every ``reference`` element."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                yield f"{path}.{key}", value
            else:
                yield from references(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from references(item, f"{path}[{index}]")


def rewrite_references(node: Any, rewrite: Any) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                node[key] = rewrite(value)
            else:
                rewrite_references(value, rewrite)
    elif isinstance(node, list):
        for item in node:
            rewrite_references(item, rewrite)


def without_server_fields(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource minus ``id`` and the server-owned ``meta.versionId``/``meta.lastUpdated``."""
    out = {k: v for k, v in resource.items() if k not in ("id", "meta")}
    meta = {
        k: v
        for k, v in (resource.get("meta") or {}).items()
        if k not in ("versionId", "lastUpdated")
    }
    if meta:
        out["meta"] = meta
    return out


# ---------------------------------------------------------- 1. Synthea round trip
def post_synthea(api: Api, body: dict[str, Any]) -> dict[str, str]:
    """POST a Synthea transaction, check its response, return fullUrl → ``Type/id``."""
    answers = post_ok(api, body)
    mapping: dict[str, str] = {}
    for sent, answer in zip(body["entry"], answers, strict=True):
        response = answer["response"]
        assert response["status"].startswith("201"), answer
        match = LOCATION.fullmatch(response["location"])
        assert match, response
        assert match["type"] == sent["request"]["url"]
        assert match["v"] == "1"
        assert response["etag"] == 'W/"1"'
        mapping[sent["fullUrl"]] = f"{match['type']}/{match['id']}"
    assert len(set(mapping.values())) == len(mapping)  # every entry created its own resource
    return mapping


def check_round_trip(api: Api, body: dict[str, Any], mapping: dict[str, str]) -> None:
    """Each stored resource equals what was posted, references rewritten and nothing else."""
    conditional: dict[str, str] = {}

    def expected_reference(value: str) -> str:
        if value.startswith("urn:uuid:"):
            return mapping[value]
        if "?" in value and not value.startswith(("http:", "https:")):
            if value not in conditional:
                resource_type, _, query = value.partition("?")
                found = api.get(f"/{resource_type}?{query}").json()
                assert found["total"] == 1, (value, found)
                conditional[value] = f"{resource_type}/{found['entry'][0]['resource']['id']}"
            return conditional[value]
        return value

    stored_by_reference = read_many(api, [mapping[sent["fullUrl"]] for sent in body["entry"]])
    for sent in body["entry"]:
        reference = mapping[sent["fullUrl"]]
        stored = stored_by_reference[reference]
        assert stored["id"] == reference.split("/")[1]
        assert stored["meta"]["versionId"] == "1"
        assert stored["meta"]["lastUpdated"]
        expected = copy.deepcopy(sent["resource"])
        rewrite_references(expected, expected_reference)
        assert without_server_fields(stored) == without_server_fields(expected), reference
        assert not [s for s in strings(stored) if "urn:uuid:" in s], reference
        local = [(p, v) for p, v in references(sent["resource"]) if v.startswith("#")]
        assert [(p, v) for p, v in references(stored) if v.startswith("#")] == local


def conditional_variant(body: dict[str, Any]) -> dict[str, Any]:
    """Newer Synthea: the patient bundle points at hospitals and clinicians by identifier."""
    replaced: dict[str, str] = {}
    kept = []
    for item in body["entry"]:
        resource = item["resource"]
        if resource["resourceType"] == "Organization":
            value = resource["identifier"][0]["value"]
            replaced[item["fullUrl"]] = f"Organization?identifier={SYNTHEA_ID}|{value}"
        elif resource["resourceType"] == "Practitioner":
            value = resource["identifier"][0]["value"]
            replaced[item["fullUrl"]] = f"Practitioner?identifier={NPI}|{value}"
        else:
            kept.append(item)
    assert len(replaced) == 2
    for item in kept:
        rewrite_references(item["resource"], lambda value: replaced.get(value, value))
    return {**body, "entry": kept}


def test_synthea_bundles_round_trip(api: Api) -> None:
    directory: dict[str, str] = {}  # hospitals and clinicians: fullUrl → Type/id
    for name in (HOSPITALS, PRACTITIONERS):
        body = load_fixture(name)
        directory |= post_synthea(api, body)
        check_round_trip(api, body, directory)

    # the patient bundle as Synthea wrote it: urn:uuid: references only
    body = load_fixture(SYNTHEA_PATIENT)
    local = [v for e in body["entry"] for _, v in references(e["resource"]) if v.startswith("#")]
    assert {"#coverage", "#referral"} <= set(local)  # Claims/EOBs point into their contained
    mapping = post_synthea(api, body)
    check_round_trip(api, body, mapping)

    # the same patient pointing at its hospital and clinician by identifier: the bundle above
    # created a second Organization and Practitioner with those identifiers, so the
    # conditional references are ambiguous now and the transaction is refused whole
    variant = conditional_variant(load_fixture(SYNTHEA_PATIENT))
    before = newest_version(api)
    response = api.post("", variant)
    assert response.status_code == 412, response.text
    assert outcome_issue(response)["expression"][0].startswith("Bundle.entry[")
    assert newest_version(api) == before
    for reference in (mapping[e["fullUrl"]] for e in body["entry"]):
        if reference.startswith(("Organization/", "Practitioner/")):
            assert api.delete(f"/{reference}").status_code == 204

    # once they are unique again, they resolve to the hospital and clinician bundles' resources
    conditional = {v for e in variant["entry"] for _, v in references(e["resource"]) if "?" in v}
    assert len(conditional) == 2
    mapping = post_synthea(api, variant)
    check_round_trip(api, variant, mapping)
    originals = {p: v for e in variant["entry"] for p, v in references(e["resource"])}
    resolved = {
        originals[p]: v
        for e in variant["entry"]
        for p, v in references(read(api, mapping[e["fullUrl"]]))
        if "?" in originals[p]
    }
    assert set(resolved) == conditional
    assert set(resolved.values()) <= set(directory.values())


# ------------------------------------------------- 2. urn:uuid: resolution everywhere
def test_urn_uuid_references_are_rewritten_everywhere(shared_api: Api) -> None:
    api = shared_api
    patient_urn, first_urn, second_urn, encounter_urn = urn(), urn(), urn(), urn()
    encounter_id = f"enc-{new_value()[:12]}"
    first = observation(patient_urn)
    second = observation(
        patient_urn,
        hasMember=[{"reference": first_urn}],
        derivedFrom=[{"reference": first_urn}],
        focus=[{"reference": patient_urn}],
        encounter={"reference": encounter_urn},
        contained=[
            {
                "resourceType": "Specimen",
                "id": "spec",
                "subject": {"reference": patient_urn},
                "type": {"text": "blood"},
            }
        ],
        specimen={"reference": "#spec"},
        component=[
            {
                "extension": [
                    {
                        "url": "http://example.org/fhir/StructureDefinition/who",
                        "valueReference": {"reference": patient_urn},
                    }
                ],
                "code": {"text": "part"},
                "valueString": "x",
            }
        ],
    )
    encounter = {
        "resourceType": "Encounter",
        "id": encounter_id,
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": patient_urn},
        "extension": [
            {
                "url": "http://example.org/fhir/StructureDefinition/about",
                "valueReference": {"reference": patient_urn},
            },
            {
                "url": "http://example.org/fhir/StructureDefinition/nested",
                "extension": [{"url": "inner", "valueReference": {"reference": patient_urn}}],
            },
        ],
    }
    # the Patient comes last: forward references resolve as well as backward ones
    answers = post_ok(
        api,
        transaction(
            post(second, second_urn),
            put(encounter, encounter_urn),
            post(first, first_urn),
            post(patient(new_value()), patient_urn),
        ),
    )
    assert [status_code(a) for a in answers] == [201, 201, 201, 201]
    patient_ref = reference_of(answers[3])
    first_ref = reference_of(answers[2])
    assert reference_of(answers[1]) == f"Encounter/{encounter_id}"
    read(api, patient_ref)

    stored_second = read(api, reference_of(answers[0]))
    assert stored_second["subject"] == {"reference": patient_ref}
    assert stored_second["focus"] == [{"reference": patient_ref}]
    assert stored_second["hasMember"] == [{"reference": first_ref}]
    assert stored_second["derivedFrom"] == [{"reference": first_ref}]
    assert stored_second["encounter"] == {"reference": f"Encounter/{encounter_id}"}
    assert stored_second["contained"][0]["subject"] == {"reference": patient_ref}
    assert stored_second["specimen"] == {"reference": "#spec"}
    assert stored_second["component"][0]["extension"][0]["valueReference"] == {
        "reference": patient_ref
    }

    stored_encounter = read(api, f"Encounter/{encounter_id}")
    assert stored_encounter["subject"] == {"reference": patient_ref}
    assert stored_encounter["extension"][0]["valueReference"] == {"reference": patient_ref}
    assert stored_encounter["extension"][1]["extension"][0]["valueReference"] == {
        "reference": patient_ref
    }
    assert read(api, first_ref)["subject"] == {"reference": patient_ref}
    for reference in (reference_of(answers[0]), f"Encounter/{encounter_id}", first_ref):
        assert not [s for s in strings(read(api, reference)) if "urn:uuid:" in s]


@pytest.mark.parametrize(
    "where",
    [
        "attachment-url",
        "narrative-href",
    ],
)
def test_uri_elements_and_narrative_links_to_a_full_url_are_rewritten(
    shared_api: Api, where: str
) -> None:
    """R4 transaction rules: matching links in elements of type uri/url and in narrative
    ``<a href>`` are replaced like references."""
    api = shared_api
    binary_urn, patient_urn = urn(), urn()
    document = {
        "resourceType": "DocumentReference",
        "status": "current",
        "subject": {"reference": patient_urn},
        "content": [{"attachment": {"contentType": "text/plain", "url": binary_urn}}],
        "text": {
            "status": "generated",
            "div": f'<div xmlns="{XHTML}"><a href="{patient_urn}">patient</a></div>',
        },
    }
    answers = post_ok(
        api,
        transaction(
            post(
                {"resourceType": "Binary", "contentType": "text/plain", "data": "eGluIGNow6Bv"},
                binary_urn,
            ),
            post(patient(new_value()), patient_urn),
            post(document),
        ),
    )
    stored = read(api, reference_of(answers[2]))
    assert stored["subject"] == {"reference": reference_of(answers[1])}
    if where == "attachment-url":
        assert stored["content"][0]["attachment"]["url"].endswith(reference_of(answers[0]))
    else:
        assert f'href="{reference_of(answers[1])}"' in stored["text"]["div"]
    assert not [s for s in strings(stored) if "urn:uuid:" in s]


def test_identifier_values_equal_to_a_full_url_are_left_alone(shared_api: Api) -> None:
    api = shared_api
    full_url = urn()
    same_uuid = {"system": "urn:ietf:rfc:3986", "value": full_url}
    body = transaction(
        post(
            patient(identifier=[same_uuid]),
            full_url,
            ifNoneExist=f"identifier=urn:ietf:rfc:3986|{full_url}",
        )
    )
    first = post_ok(api, body)
    assert status_code(first[0]) == 201
    assert read(api, reference_of(first[0]))["identifier"] == [same_uuid]
    second = post_ok(api, body)
    assert status_code(second[0]) == 200
    assert reference_of(second[0]) == reference_of(first[0])


# ----------------------------------------------------- 3. conditional create (ifNoneExist)
def test_if_none_exist_creates_once_and_links_to_the_existing_resource(shared_api: Api) -> None:
    api = shared_api
    value, patient_urn = new_value(), urn()
    body = transaction(
        post(patient(value), patient_urn, ifNoneExist=f"identifier={TEST_SYSTEM}|{value}"),
        post(observation(patient_urn)),
    )
    first = post_ok(api, body)
    assert [status_code(a) for a in first] == [201, 201]
    patient_ref = reference_of(first[0])

    second = post_ok(api, body)
    assert status_code(second[0]) == 200
    assert reference_of(second[0]) == patient_ref
    assert second[0]["response"]["location"] == f"{patient_ref}/_history/1"
    assert status_code(second[1]) == 201
    assert reference_of(second[1]) != reference_of(first[1])
    assert read(api, reference_of(second[1]))["subject"] == {"reference": patient_ref}
    assert search_ids(api, "Patient", value) == [patient_ref.split("/")[1]]
    assert read(api, patient_ref)["meta"]["versionId"] == "1"


# ----------------------------------------------------- 4. conditional references
def test_conditional_reference_resolves_to_the_existing_resource(shared_api: Api) -> None:
    api = shared_api
    value = new_value()
    patient_ref = create(api, patient(value))
    answers = post_ok(
        api, transaction(post(observation(f"Patient?identifier={TEST_SYSTEM}|{value}")))
    )
    assert status_code(answers[0]) == 201
    assert read(api, reference_of(answers[0]))["subject"] == {"reference": patient_ref}


def test_conditional_reference_resolves_to_a_resource_of_the_same_transaction(
    shared_api: Api,
) -> None:
    api = shared_api
    value = new_value()
    answers = post_ok(
        api,
        transaction(
            post(observation(f"Patient?identifier={TEST_SYSTEM}|{value}")),
            post(patient(value), urn()),
        ),
    )
    patient_ref = reference_of(answers[1])
    assert read(api, reference_of(answers[0]))["subject"] == {"reference": patient_ref}


@pytest.mark.parametrize("matches", [0, 2])
def test_unresolvable_or_ambiguous_conditional_reference_writes_nothing(
    shared_api: Api, matches: int
) -> None:
    api = shared_api
    value, good = new_value(), new_value()
    for _ in range(matches):
        create(api, patient(value))
    before = newest_version(api)
    response = api.post(
        "",
        transaction(
            post(patient(good), urn()),
            post(observation(f"Patient?identifier={TEST_SYSTEM}|{value}", value=good)),
        ),
    )
    assert response.status_code == (400 if matches == 0 else 412), response.text
    issue = outcome_issue(response)
    assert issue["expression"] == ["Bundle.entry[1].resource.subject.reference"]
    assert newest_version(api) == before
    assert search_ids(api, "Patient", good) == []
    assert search_ids(api, "Observation", good) == []


# --------------------------------------------------------------- 5. all or nothing
BAD_ENTRIES = {
    "unknown-element": (400, lambda existing: post(patient(new_value(), favouriteColour="blue"))),
    "bad-cccd": (
        422,
        # 1 → a woman of the 1900s, 85 → 1985; this patient was born in 1990
        lambda existing: post(
            patient(birthDate="1990-06-01", identifier=[identifier(GOOD_CCCD, CCCD)])
        ),
    ),
    "unresolvable-urn": (400, lambda existing: post(observation(urn()))),
    "stale-if-match": (
        412,
        lambda existing: put({**patient(), "id": existing, "active": False}, ifMatch='W/"1"'),
    ),
    "invalid-patch": (
        400,
        lambda existing: entry(
            "PATCH",
            f"Patient/{existing}",
            patch_binary([{"op": "add", "path": "/bogus", "value": 1}]),
        ),
    ),
}
EXPECTED_EXPRESSION = {
    "unknown-element": "Bundle.entry[2].resource.favouriteColour",
    "bad-cccd": "Bundle.entry[2].resource.identifier[0].value",
    "unresolvable-urn": "Bundle.entry[2].resource.subject.reference",
}


def run_all_or_nothing(api: Api, case: str) -> tuple[Any, dict[str, Any]]:
    """A transaction of three good entries and one bad one; the response and the ids used."""
    existing_id = f"pt-{new_value()[:16]}"
    create(api, {**patient(), "id": existing_id})
    updated = api.put(f"/Patient/{existing_id}", {**patient(), "id": existing_id, "active": True})
    assert updated.status_code == 200  # now at version 2
    doomed_id = f"pr-{new_value()[:16]}"
    create(api, practitioner(doomed_id))
    status, make_bad = BAD_ENTRIES[case]
    good, patient_urn = new_value(), urn()
    body = transaction(
        # a well-formed CCCD: it must not be what fails
        post(
            patient(good, identifier=[identifier(good), identifier(GOOD_CCCD, CCCD)]), patient_urn
        ),
        entry("DELETE", f"Practitioner/{doomed_id}"),
        make_bad(existing_id),
        post(observation(patient_urn, value=good)),
    )
    before = newest_version(api)
    response = api.post("", body)
    assert response.status_code == status, response.text
    ids = {"good": good, "existing": existing_id, "doomed": doomed_id, "before": before}
    return response, ids


@pytest.mark.parametrize("case", list(BAD_ENTRIES))
def test_transaction_with_one_bad_entry_writes_nothing(shared_api: Api, case: str) -> None:
    api = shared_api
    response, ids = run_all_or_nothing(api, case)
    outcome_issue(response)
    assert newest_version(api) == ids["before"]
    assert search_ids(api, "Patient", ids["good"]) == []
    assert search_ids(api, "Observation", ids["good"]) == []
    assert read(api, f"Practitioner/{ids['doomed']}")["meta"]["versionId"] == "1"  # not deleted
    assert read(api, f"Patient/{ids['existing']}")["meta"]["versionId"] == "2"


@pytest.mark.parametrize(
    "case",
    [case for case in BAD_ENTRIES],
)
def test_transaction_error_names_the_entry(shared_api: Api, case: str) -> None:
    response, _ = run_all_or_nothing(shared_api, case)
    issue = outcome_issue(response)
    expressions = issue.get("expression", [])
    assert expressions, issue
    assert all(e.startswith("Bundle.entry[2]") for e in expressions), issue
    if case in EXPECTED_EXPRESSION:
        assert EXPECTED_EXPRESSION[case] in expressions, issue


def test_a_resource_may_appear_only_once_in_a_transaction(shared_api: Api) -> None:
    """R4 transaction rules: if resource identities overlap in DELETE/POST/PUT, the
    transaction SHALL fail."""
    api = shared_api
    client_id = f"pt-{new_value()[:16]}"
    before = newest_version(api)
    response = api.post(
        "",
        transaction(
            put({**patient(), "id": client_id}), put({**patient(), "id": client_id, "active": True})
        ),
    )
    assert 400 <= response.status_code < 500, response.text
    outcome_issue(response)
    assert newest_version(api) == before
    assert api.get(f"/Patient/{client_id}").status_code == 404


# --------------------------------------------------------------- 6. processing order
def test_entries_run_in_specification_order_and_answer_in_request_order(shared_api: Api) -> None:
    api = shared_api
    gone_id, kept_id = f"pt-{new_value()[:16]}", f"pt-{new_value()[:16]}"
    create(api, {**patient(), "id": gone_id})
    create(api, {**patient(), "id": kept_id})
    new = new_value()
    renamed = {**patient(), "id": kept_id, "name": [{"family": "Lê", "given": ["Hoa"]}]}
    answers = post_ok(
        api,
        transaction(
            entry("GET", f"Patient/{kept_id}"),
            put(renamed),
            post(patient(new), urn()),
            entry("DELETE", f"Patient/{gone_id}"),
        ),
    )
    # answers in request order
    assert status_code(answers[0]) == 200
    assert answers[0]["resource"]["id"] == kept_id
    assert answers[0]["resource"]["name"] == renamed["name"]  # the GET ran after the PUT
    assert answers[0]["resource"]["meta"]["versionId"] == "2"
    assert status_code(answers[1]) == 200
    assert answers[1]["response"]["location"] == f"Patient/{kept_id}/_history/2"
    assert status_code(answers[2]) == 201
    assert reference_of(answers[2]) == f"Patient/{search_ids(api, 'Patient', new)[0]}"
    assert status_code(answers[3]) in (200, 204)
    assert api.get(f"/Patient/{gone_id}").status_code == 410

    # the history shows the writes in execution order: DELETE, POST, then PUT (newest first)
    history = api.get("/_history", params={"_count": "3"}).json()["entry"]
    assert [(h["fullUrl"].split("/fhir/")[1], h["response"]["etag"]) for h in history] == [
        (f"Patient/{kept_id}", 'W/"2"'),
        (reference_of(answers[2]), 'W/"1"'),
        (f"Patient/{gone_id}", 'W/"2"'),
    ]


@pytest.mark.parametrize("kind", ["transaction", "batch"])
def test_get_search_entry_returns_every_match(shared_api: Api, kind: str) -> None:
    api = shared_api
    value = new_value()
    created = sorted(create(api, patient(value)).split("/")[1] for _ in range(3))
    answers = post_ok(api, bundle(kind, entry("GET", f"Patient?identifier={TEST_SYSTEM}|{value}")))
    assert status_code(answers[0]) == 200
    searchset = answers[0]["resource"]
    assert searchset["type"] == "searchset"
    assert sorted(e["resource"]["id"] for e in searchset["entry"]) == created
    assert searchset["total"] == 3


def test_transaction_creates_are_recorded_as_creates_in_history(shared_api: Api) -> None:
    api = shared_api
    answers = post_ok(api, transaction(post(patient(new_value()), urn())))
    reference = reference_of(answers[0])
    history = api.get(f"/{reference}/_history").json()["entry"]
    assert history[0]["request"] == {"method": "POST", "url": "Patient"}  # as for POST /Patient


# ---------------------------------------------------------------------- 7. batch
def test_batch_reports_each_entry_and_keeps_the_good_ones(shared_api: Api) -> None:
    api = shared_api
    good_patient, bad_patient, good_observation = new_value(), new_value(), new_value()
    answers = post_ok(
        api,
        bundle(
            "batch",
            post(patient(good_patient)),
            post(patient(bad_patient, favouriteColour="blue")),
            post(observation(value=good_observation)),
        ),
    )
    assert status_code(answers[0]) == 201
    assert status_code(answers[2]) == 201
    assert 400 <= status_code(answers[1]) < 500
    outcome = answers[1]["response"]["outcome"]
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["severity"] == "error"
    assert "location" not in answers[1]["response"]
    assert read(api, reference_of(answers[0]))["identifier"] == [identifier(good_patient)]
    assert read(api, reference_of(answers[2]))["identifier"] == [identifier(good_observation)]
    assert search_ids(api, "Patient", good_patient) == [reference_of(answers[0]).split("/")[1]]
    assert search_ids(api, "Patient", bad_patient) == []


# ------------------------------------------------------- 8. PUT, DELETE and PATCH entries
def test_put_entries_create_update_and_skip_unchanged(shared_api: Api) -> None:
    api = shared_api
    client_id = f"pt-{new_value()[:16]}"
    original = {**patient(), "id": client_id}
    changed = {**original, "active": True}

    answers = post_ok(api, transaction(put(original)))
    assert status_code(answers[0]) == 201
    assert answers[0]["response"]["location"] == f"Patient/{client_id}/_history/1"

    answers = post_ok(api, transaction(put(changed)))
    assert status_code(answers[0]) == 200
    assert answers[0]["response"]["location"] == f"Patient/{client_id}/_history/2"
    assert answers[0]["response"]["etag"] == 'W/"2"'

    before = newest_version(api)
    answers = post_ok(api, transaction(put(changed)))
    assert status_code(answers[0]) == 200
    assert answers[0]["response"]["location"] == f"Patient/{client_id}/_history/2"
    assert newest_version(api) == before
    stored = read(api, f"Patient/{client_id}")
    assert stored["meta"]["versionId"] == "2"
    assert stored["active"] is True
    history = api.get(f"/Patient/{client_id}/_history").json()["entry"]
    assert len(history) == 2


def test_delete_and_patch_entries(shared_api: Api) -> None:
    api = shared_api
    doomed, patched = f"pt-{new_value()[:16]}", f"pt-{new_value()[:16]}"
    create(api, {**patient(), "id": doomed})
    create(api, {**patient(), "id": patched})
    operations = [
        {"op": "add", "path": "/active", "value": False},
        {"op": "replace", "path": "/name/0/family", "value": "Phạm"},
    ]
    answers = post_ok(
        api,
        transaction(
            entry("PATCH", f"Patient/{patched}", patch_binary(operations), ifMatch='W/"1"'),
            entry("DELETE", f"Patient/{doomed}"),
        ),
    )
    assert status_code(answers[0]) == 200
    assert answers[0]["response"]["location"] == f"Patient/{patched}/_history/2"
    assert status_code(answers[1]) in (200, 204)
    assert api.get(f"/Patient/{doomed}").status_code == 410
    stored = read(api, f"Patient/{patched}")
    assert stored["active"] is False
    assert stored["name"][0]["family"] == "Phạm"
    assert stored["meta"]["versionId"] == "2"

    # a PATCH entry that makes the resource invalid fails the whole transaction
    before = newest_version(api)
    response = api.post(
        "",
        transaction(
            post(patient(new_value())),
            entry(
                "PATCH",
                f"Patient/{patched}",
                patch_binary([{"op": "add", "path": "/bogus", "value": 1}]),
            ),
        ),
    )
    assert 400 <= response.status_code < 500, response.text
    outcome_issue(response)
    assert newest_version(api) == before


# ------------------------------------------------------------------ 9. bad bundles
def _bad_bundles() -> dict[str, dict[str, Any]]:
    full_url = urn()
    return {
        "not-a-bundle": patient(new_value()),
        "collection": bundle("collection", post(patient(new_value()), urn())),
        "entry-without-request": transaction(
            post(patient(new_value())), {"resource": patient(new_value())}
        ),
        "post-with-id": transaction(
            post(patient(new_value())),
            entry("POST", "Patient/abc", {**patient(new_value()), "id": "abc"}),
        ),
        "duplicate-full-url": transaction(
            post(patient(new_value()), full_url), post(patient(new_value()), full_url)
        ),
    }


@pytest.mark.parametrize("case", list(_bad_bundles()))
def test_malformed_bundles_are_refused_whole(shared_api: Api, case: str) -> None:
    api = shared_api
    body = _bad_bundles()[case]
    before = newest_version(api)
    response = api.post("", body)
    assert response.status_code == 400, response.text
    outcome_issue(response)
    assert newest_version(api) == before
    values = [
        i["value"]
        for e in body.get("entry", [{"resource": body}])
        for i in e["resource"]["identifier"]
    ]
    for value in values:
        assert search_ids(api, "Patient", value) == []


# ---------------------------------------------------------------------- 10. scopes
def test_every_entry_needs_its_scope(shared_api: Api, shared_hub: Any) -> None:
    api = shared_api
    token = token_for(shared_hub, "system/Patient.cruds")
    value, patient_urn = new_value(), urn()
    before = newest_version(api)
    response = api.post(
        "",
        transaction(post(patient(value), patient_urn), post(observation(patient_urn, value=value))),
        token=token,
    )
    assert response.status_code == 403, response.text
    issue = outcome_issue(response)
    assert issue["code"] == "forbidden"
    assert "Observation" in issue["diagnostics"]
    assert newest_version(api) == before
    assert search_ids(api, "Patient", value) == []

    # the same token may run a transaction that stays within its scope
    response = api.post("", transaction(post(patient(value), patient_urn)), token=token)
    assert response.status_code == 200, response.text
    assert search_ids(api, "Patient", value) != []


def test_conditional_reference_needs_search_scope_on_its_target(
    shared_api: Api, shared_hub: Any
) -> None:
    api = shared_api
    token = token_for(shared_hub, "system/Observation.cruds")
    value = new_value()
    create(api, patient(value))
    before = newest_version(api)
    response = api.post(
        "", transaction(post(observation(f"Patient?identifier={TEST_SYSTEM}|{value}"))), token=token
    )
    assert response.status_code == 403, response.text
    assert newest_version(api) == before
