"""The CapabilityStatement lists the search the hub really answers: every parameter it states
parses and compiles, the ones it cannot answer (composites, no expression) are not stated."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from emr_hub.fhir import capability
from emr_hub.fhir.capability import capability_statement, supported_params
from emr_hub.fhir.search.compile import Compiler
from emr_hub.fhir.search.composite import composite_parts
from emr_hub.fhir.search.params import parse_search
from emr_hub.fhir.search.registry import params_for
from emr_hub.fhir.validation import R4_RESOURCE_TYPES

BASE = "http://hub.example/fhir"
PUBLISHED = "2024-01-01T00:00:00Z"
SAMPLE_VALUES = {
    "token": "http://example.org|x",
    "string": "x",
    "date": "ge2020-01-01",
    "reference": "x",
    "quantity": "5.4|http://unitsofmeasure.org|mg",
    "number": "5",
    "uri": "http://example.org/x",
}


@pytest.fixture(scope="module")
def statement() -> dict[str, Any]:
    return capability_statement(BASE, PUBLISHED)


def resource(statement: dict[str, Any], resource_type: str) -> dict[str, Any]:
    return next(r for r in statement["rest"][0]["resource"] if r["type"] == resource_type)


def search_params(statement: dict[str, Any], resource_type: str) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in resource(statement, resource_type)["searchParam"]}


def test_patient_parameters(statement: dict[str, Any]) -> None:
    params = search_params(statement, "Patient")
    assert {
        name: params[name]["type"] for name in ("name", "identifier", "birthdate", "gender")
    } == {
        "name": "string",
        "identifier": "token",
        "birthdate": "date",
        "gender": "token",
    }
    assert params["birthdate"]["definition"] == (
        "http://hl7.org/fhir/SearchParameter/individual-birthdate"
    )
    assert params["name"]["definition"] == "http://hl7.org/fhir/SearchParameter/Patient-name"
    assert params["_id"] == {
        "name": "_id",
        "type": "token",
        "definition": "http://hl7.org/fhir/SearchParameter/Resource-id",
    }
    assert params["_lastUpdated"]["type"] == "date"
    assert params["general-practitioner"]["type"] == "reference"


def test_observation_parameters(statement: dict[str, Any]) -> None:
    params = search_params(statement, "Observation")
    assert {
        name: params[name]["type"] for name in ("code", "date", "patient", "value-quantity")
    } == {"code": "token", "date": "date", "patient": "reference", "value-quantity": "quantity"}
    assert params["value-quantity"]["definition"] == (
        "http://hl7.org/fhir/SearchParameter/Observation-value-quantity"
    )
    # composites of a token and one value are answered and stated
    for name in (
        "code-value-quantity",
        "combo-code-value-quantity",
        "component-code-value-quantity",
    ):
        assert params[name]["type"] == "composite"


def store_types(statement: dict[str, Any]) -> list[dict[str, Any]]:
    """The types the FHIR store serves (AuditEvent is the audit trail's own)."""
    return [e for e in statement["rest"][0]["resource"] if e["type"] != "AuditEvent"]


def test_audit_events_are_read_and_searched_only(statement: dict[str, Any]) -> None:
    entry = resource(statement, "AuditEvent")
    assert [i["code"] for i in entry["interaction"]] == ["read", "search-type"]
    assert [p["name"] for p in entry["searchParam"]] == [
        "patient", "agent", "date", "entity", "outcome", "subtype", "action",
    ]  # fmt: skip
    assert "updateCreate" not in entry and "conditionalDelete" not in entry


def test_exactly_the_answerable_parameters_of_every_type(statement: dict[str, Any]) -> None:
    for entry in store_types(statement):
        resource_type = entry["type"]
        stated = {p["name"]: p for p in entry["searchParam"]}
        registry = params_for(resource_type)
        answerable = {
            code
            for code, param in registry.items()
            if param.expression
            and (param.type not in ("composite", "special") or composite_parts(param) is not None)
        }
        if capability._interpreter_available():
            assert set(stated) == answerable, resource_type
        else:
            assert set(stated) <= answerable, resource_type
        assert {"_id", "_lastUpdated"} <= set(stated), resource_type
        assert not {"_content", "_text", "_query"} & set(stated)
        for name, param in stated.items():
            assert param["type"] == registry[name].type
            assert param["definition"] == registry[name].url
        assert [p["name"] for p in entry["searchParam"]] == sorted(stated)


def test_every_stated_parameter_parses_and_compiles(statement: dict[str, Any]) -> None:
    compiler = Compiler(BASE, "postgresql")
    for entry in store_types(statement):
        resource_type = entry["type"]
        for param in entry["searchParam"]:
            if param["type"] == "composite":
                parts = composite_parts(params_for(resource_type)[param["name"]])
                assert parts is not None
                value = f"{SAMPLE_VALUES['token']}${SAMPLE_VALUES[parts[1].type]}"
            else:
                value = SAMPLE_VALUES[param["type"]]
            request = parse_search(resource_type, [(param["name"], value)])
            compiler.select_ids(request).compile()
        for include in entry["searchInclude"]:
            assert parse_search(resource_type, [("_include", include)]).includes
        for include in entry.get("searchRevInclude", []):
            assert parse_search(resource_type, [("_revinclude", include)]).includes


def test_includes_and_revincludes(statement: dict[str, Any]) -> None:
    patient = resource(statement, "Patient")
    assert {"*", "Patient:general-practitioner", "Patient:organization", "Patient:link"} == set(
        patient["searchInclude"]
    )
    # _revinclude values are stated on the type they bring in resources for: the Patient's
    # list says which Observation (etc.) parameters may point at a Patient
    assert {
        "Observation:subject",
        "Observation:patient",
        "Encounter:patient",
        "Condition:subject",
        "Patient:link",
        "Provenance:target",
    } <= set(patient["searchRevInclude"])
    assert "Observation:encounter" not in patient["searchRevInclude"]
    observation = resource(statement, "Observation")
    assert {
        "Observation:subject",
        "Observation:patient",
        "Observation:encounter",
        "Observation:performer",
        "Observation:has-member",
    } <= set(observation["searchInclude"])
    assert "Observation:code" not in observation["searchInclude"]
    assert {"DiagnosticReport:result", "Observation:has-member"} <= set(
        observation["searchRevInclude"]
    )
    for entry in store_types(statement):
        assert entry["searchInclude"][0] == "*"
        for value in entry["searchInclude"][1:]:
            source, code = value.split(":")
            assert source == entry["type"]
            assert params_for(source)[code].type == "reference"
        for value in entry.get("searchRevInclude", []):
            source, code = value.split(":")
            param = params_for(source)[code]
            assert param.type == "reference"
            assert not param.targets or entry["type"] in param.targets


def test_interactions_and_rest_level(statement: dict[str, Any]) -> None:
    rest = statement["rest"][0]
    assert [p["name"] for p in rest["searchParam"]] == [
        "_id",
        "_lastUpdated",
        "_tag",
        "_profile",
        "_security",
    ]
    assert {p["name"]: p["type"] for p in rest["searchParam"]} == {
        "_id": "token",
        "_lastUpdated": "date",
        "_tag": "token",
        "_profile": "uri",
        "_security": "token",
    }
    assert all(
        p["definition"].startswith("http://hl7.org/fhir/SearchParameter/Resource-")
        for p in rest["searchParam"]
    )
    assert {i["code"] for i in rest["interaction"]} == {
        "transaction",
        "batch",
        "history-system",
        "search-system",
    }
    assert {r["type"] for r in rest["resource"]} == set(R4_RESOURCE_TYPES)
    for entry in store_types(statement):
        codes = [i["code"] for i in entry["interaction"]]
        assert "search-type" in codes and len(codes) == len(set(codes))
        assert "conditionalRead" not in entry
        assert entry["conditionalDelete"] == "single"
        assert entry["versioning"] == "versioned-update"


def test_a_valid_capability_statement(statement: dict[str, Any]) -> None:
    parsed = CapabilityStatement.model_validate(orjson.loads(orjson.dumps(statement)))
    assert parsed.fhirVersion == "4.0.1"


def test_operations_of_the_core_and_of_installed_features(app_client: Any) -> None:
    """The app installs the features; /metadata then states their operations on their types."""
    served = app_client.get("/fhir/metadata").json()
    operations = {
        (entry["type"], op["name"])
        for entry in served["rest"][0]["resource"]
        for op in entry.get("operation", [])
    }
    assert {
        ("Patient", "everything"),
        ("Patient", "referral-history"),
        ("Subscription", "delivery-log"),
    } <= operations
    CapabilityStatement.model_validate(served)


def test_built_once(statement: dict[str, Any]) -> None:
    assert capability_statement(BASE, PUBLISHED) is capability_statement(BASE, PUBLISHED)
    assert capability_statement("http://other.example/fhir", PUBLISHED) is not statement


@pytest.fixture
def without_interpreter(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def clear() -> None:
        for cached in (capability._unindexed, capability._rev_includes, supported_params):
            cached.cache_clear()

    monkeypatch.setattr(capability, "_interpreter_available", lambda: False)
    clear()
    yield
    monkeypatch.undo()
    clear()


@pytest.mark.usefixtures("without_interpreter")
def test_parameters_outside_the_compiled_subset_need_fhirpathpy() -> None:
    """Without fhirpathpy the few R4 parameters the R4B models cannot compile index nothing:
    they are not stated then."""
    evidence = {p.code for p in supported_params("Evidence")}
    assert "name" not in evidence and "topic" not in evidence
    assert {"_id", "url", "status"} <= evidence
    assert "name" in {p.code for p in supported_params("Patient")}
