"""Compiled search-value extractors against the fhirpathpy reference interpreter.

The reference run evaluates each parameter's expression with fhirpathpy (R4 model), with two
adaptations the hub's search semantics need: ``as`` is run as ``ofType`` (fhirpathpy, like the
FHIRPath text, refuses ``as`` on a collection of several items, and the R4 definitions apply it
to ``Observation.component.value``), and ``resolve()`` is this module's own stub that returns
a bare resource of the type the reference names (``T/id``, an absolute URL ending in
``T/id``, either with ``/_history/v``), else of its ``type``, so that ``resolve() is T`` is
evaluated by fhirpathpy itself.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emr_hub.fhir.search.extract import (
    CompileError,
    compile_path,
    extract_all,
    extractor,
    fallback_params,
)
from emr_hub.fhir.search.registry import (
    SearchParam,
    get_param,
    member_applies,
    param_by_url,
    params_for,
    split_union,
)
from emr_hub.fhir.validation import R4_RESOURCE_TYPES

fhirpathpy = pytest.importorskip("fhirpathpy")
from fhirpathpy.engine.nodes import ResourceNode  # noqa: E402
from fhirpathpy.models import models  # noqa: E402

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

TOP_20 = (
    "Patient",
    "Observation",
    "Encounter",
    "Condition",
    "Procedure",
    "MedicationRequest",
    "DiagnosticReport",
    "Immunization",
    "AllergyIntolerance",
    "CarePlan",
    "Claim",
    "ExplanationOfBenefit",
    "Organization",
    "Practitioner",
    "ServiceRequest",
    "Task",
    "Appointment",
    "DocumentReference",
    "ImagingStudy",
    "Coverage",
)


# ------------------------------------------------------------------------ reference runner

_REFERENCE_TYPE = re.compile(
    r"(?:^|/)([A-Z][A-Za-z]+)/[A-Za-z0-9.\-]{1,64}(?:/_history/[A-Za-z0-9.\-]{1,64})?$"
)


def _stub_resolve(references: list[Any]) -> list[Any]:
    found = []
    for ref in references:
        if not isinstance(ref, dict):
            continue
        match = _REFERENCE_TYPE.search(ref.get("reference") or "")
        type_name = match.group(1) if match else ref.get("type")
        if type_name:
            found.append(ResourceNode.create_node({"resourceType": type_name}))
    return found


_OPTIONS = {"userInvocationTable": {"resolve": {"fn": _stub_resolve, "arity": {0: []}}}}


def _as_to_of_type(expression: str) -> str:
    expression = re.sub(r"\(([^()|]+?) as (\w+)\)", r"(\1.ofType(\2))", expression)
    return expression.replace(".as(", ".ofType(")


@cache
def _reference_fn(expression: str) -> Callable[..., list[Any]]:
    return fhirpathpy.compile(_as_to_of_type(expression), models["r4"], _OPTIONS)


def _norm(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_norm(v) for v in value]
    return value


def _bag(values: list[Any]) -> list[str]:
    """An order-insensitive multiset of JSON values."""
    return sorted(json.dumps(_norm(v), sort_keys=True) for v in values if v is not None)


def reference_values(expression: str, resource: dict[str, Any]) -> list[str]:
    return _bag(_reference_fn(expression)(copy.deepcopy(resource), {}))


def compiled_values(param: SearchParam, resource: dict[str, Any]) -> list[str]:
    return _bag([value for _, value in extractor(param)(resource)])


def _mismatches(resource: dict[str, Any]) -> list[str]:
    problems = []
    for param in params_for(resource["resourceType"]).values():
        if not param.expression:
            continue
        expected = reference_values(param.expression, resource)
        got = compiled_values(param, resource)
        if got != expected:
            problems.append(
                f"{resource['resourceType']}/{resource.get('id')} {param.code} "
                f"[{param.expression}]: compiled {got[:3]} != fhirpathpy {expected[:3]}"
            )
    return problems


# ---------------------------------------------------------------------------------- data


def _rewrite_references(node: Any, local: dict[str, str]) -> None:
    """Bundle-internal ``urn:uuid`` references as the transaction stores them: ``Type/id``."""
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str) and ref in local:
            node["reference"] = local[ref]
        for value in node.values():
            _rewrite_references(value, local)
    elif isinstance(node, list):
        for value in node:
            _rewrite_references(value, local)


@cache
def synthea_resources() -> tuple[dict[str, Any], ...]:
    resources: list[dict[str, Any]] = []
    for path in sorted(FIXTURES.glob("*.json")):
        bundle = json.loads(path.read_text())
        local = {
            e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}"
            for e in bundle.get("entry", ())
            if "fullUrl" in e and "id" in e.get("resource", {})
        }
        entries = [e["resource"] for e in bundle.get("entry", ())]
        _rewrite_references(entries, local)
        resources.extend(entries)
    return tuple(resources)


CC_LOINC = {"coding": [{"system": "http://loinc.org", "code": "8480-6"}], "text": "Systolic"}
CC_TWO = {
    "coding": [
        {"system": "http://loinc.org", "code": "8462-4", "display": "Diastolic"},
        {"system": "http://snomed.info/sct", "code": "271650006"},
    ]
}
QTY = {"value": 120.5, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}
PERIOD = {"start": "2020-01-01T10:00:00+07:00", "end": "2020-01-02"}
TIMING = {
    "event": ["2020-03-01", "2020-03-02T08:00:00Z"],
    "repeat": {"boundsPeriod": {"start": "2020-03-01"}, "frequency": 2, "period": 1},
}
RACE = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"
BIRTH_PLACE = "http://hl7.org/fhir/StructureDefinition/patient-birthPlace"

HAND_WRITTEN: list[dict[str, Any]] = [
    {
        "resourceType": "Patient",
        "id": "p1",
        "meta": {
            "lastUpdated": "2024-05-01T10:00:00.123Z",
            "profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"],
            "tag": [{"system": "urn:t", "code": "a"}, {"system": "urn:t", "code": "b"}],
            "security": [{"system": "urn:s", "code": "R"}],
            "source": "urn:hospital:1#abc",
        },
        "extension": [
            {
                "url": RACE,
                "extension": [
                    {
                        "url": "ombCategory",
                        "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238", "code": "1"},
                    },
                    {"url": "text", "valueString": "Kinh"},
                ],
            },
            {"url": BIRTH_PLACE, "valueAddress": {"city": "Hà Nội", "country": "VN"}},
        ],
        "identifier": [
            {
                "system": "urn:vn:cccd",
                "value": "001",
                "type": {"coding": [{"system": "urn:t", "code": "NI"}]},
            },
            {"system": "urn:vn:bhyt", "value": "HS4010"},
        ],
        "active": True,
        "name": [
            {
                "use": "official",
                "family": "Nguyễn",
                "given": ["Văn", "An"],
                "text": "Nguyễn Văn An",
            },
            {"use": "nickname", "given": ["An"]},
        ],
        "telecom": [
            {"system": "phone", "value": "0901", "use": "home"},
            {"system": "phone", "value": "0902", "use": "mobile"},
            {"system": "email", "value": "an@example.vn"},
            {"system": "fax", "value": "0243"},
            {"system": "sms", "value": "0903"},
        ],
        "gender": "male",
        "birthDate": "1980-02-29",
        "_birthDate": {"extension": [{"url": "urn:x", "valueString": "approx"}]},
        "deceasedDateTime": "2024-01-01T00:00:00+07:00",
        "address": [
            {"use": "home", "line": ["1 Tràng Tiền"], "city": "Hà Nội", "country": "VN"},
            {"city": "Huế", "postalCode": "530000", "period": PERIOD},
        ],
        "generalPractitioner": [
            {"reference": "Practitioner/dr1"},
            {"reference": "https://other.example/fhir/Organization/o1"},
            {"reference": "PractitionerRole/r1/_history/2"},
            {"type": "Practitioner", "identifier": {"value": "x"}},
            {"reference": "#c1"},
            {"reference": "urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0"},
        ],
        "managingOrganization": {"reference": "Organization/o1", "display": "BV"},
        "link": [
            {"other": {"reference": "Patient/p2"}, "type": "replaces"},
            {"other": {"reference": "RelatedPerson/rp1"}, "type": "seealso"},
        ],
        "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "vi"}]}}],
        "contact": [{"name": {"given": ["An"], "family": "Trần"}}],
    },
    {"resourceType": "Patient", "id": "p2", "deceasedBoolean": True, "active": False},
    {"resourceType": "Patient", "id": "p3", "deceasedBoolean": False},
    {"resourceType": "Patient", "id": "p4"},
    {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "category": [{"coding": [{"system": "urn:c", "code": "vital-signs"}]}],
        "code": CC_LOINC,
        "subject": {"reference": "Patient/p1", "type": "Group"},
        "focus": [{"reference": "http://x.example/fhir/Patient/p9/_history/1"}],
        "performer": [{"reference": "Practitioner/dr1"}, {"reference": "Patient/p1"}],
        "effectivePeriod": PERIOD,
        "valueCodeableConcept": CC_TWO,
        "component": [
            {"code": CC_LOINC, "valueQuantity": QTY},
            {"code": CC_TWO, "valueQuantity": {"value": 80, "unit": "mmHg"}},
            {"code": {"text": "note"}, "valueString": "fine"},
            {"code": CC_TWO, "valueCodeableConcept": CC_TWO},
            {
                "code": {"text": "ecg"},
                "valueSampledData": {"origin": {"value": 0}, "period": 10, "dimensions": 1},
            },
            {"code": {"text": "r"}, "valueRange": {"low": {"value": 1}, "high": {"value": 2}}},
            {"code": {"text": "absent"}, "dataAbsentReason": {"text": "asked"}},
        ],
    },
    {
        "resourceType": "Observation",
        "id": "o2",
        "status": "final",
        "code": {"text": "t"},
        "subject": {"reference": "Group/g1"},
        "effectiveTiming": TIMING,
        "valueString": "positive",
    },
    {
        "resourceType": "Observation",
        "id": "o3",
        "status": "final",
        "code": {"text": "t"},
        "subject": {"type": "Patient", "display": "unknown"},
        "effectiveInstant": "2021-01-01T00:00:00.5Z",
        "valueSampledData": {"origin": {"value": 1}, "period": 1, "dimensions": 1},
    },
    {
        "resourceType": "Observation",
        "id": "o4",
        "status": "final",
        "code": {"text": "t"},
        "effectiveDateTime": "2021-01",
        "valuePeriod": PERIOD,
        "dataAbsentReason": {"text": "n/a"},
    },
    {
        "resourceType": "Observation",
        "id": "o5",
        "status": "final",
        "code": {"text": "t"},
        "valueDateTime": "2021-01-01",
        "issued": "2021-01-01T00:00:00Z",
    },
    {"resourceType": "Observation", "id": "o6", "status": "final", "code": {}, "valueInteger": 7},
    {
        "resourceType": "Observation",
        "id": "o7",
        "status": "final",
        "code": {"text": "t"},
        "valueBoolean": False,
        "component": [{"code": {"text": "a"}, "valueBoolean": True}],
    },
    {
        "resourceType": "Condition",
        "id": "c1",
        "subject": {"reference": "Patient/p1"},
        "code": CC_TWO,
        "onsetAge": {"value": 3, "unit": "a", "system": "http://unitsofmeasure.org", "code": "a"},
        "abatementString": "later",
        "recordedDate": "2020-01-01",
    },
    {
        "resourceType": "Condition",
        "id": "c2",
        "subject": {"reference": "Group/g1"},
        "onsetPeriod": PERIOD,
        "abatementRange": {"low": {"value": 1}, "high": {"value": 2}},
    },
    {
        "resourceType": "Condition",
        "id": "c3",
        "subject": {"reference": "Patient/p1"},
        "onsetRange": {"low": {"value": 1, "unit": "a"}},
        "abatementDateTime": "2020",
    },
    {
        "resourceType": "Condition",
        "id": "c4",
        "subject": {"reference": "Patient/p1"},
        "onsetString": "childhood",
        "abatementAge": {"value": 5},
    },
    {
        "resourceType": "Encounter",
        "id": "e1",
        "status": "finished",
        "class": {"system": "urn:c", "code": "AMB"},
        "subject": {"reference": "Patient/p1"},
        "period": PERIOD,
        "length": {"value": 30, "unit": "min", "system": "http://unitsofmeasure.org"},
        "participant": [
            {"individual": {"reference": "Practitioner/dr1"}},
            {"individual": {"reference": "RelatedPerson/rp1"}},
            {"individual": {"reference": "PractitionerRole/r1"}},
        ],
        "location": [{"location": {"reference": "Location/l1"}, "period": PERIOD}],
        "reasonCode": [CC_LOINC, CC_TWO],
        "diagnosis": [{"condition": {"reference": "Condition/c1"}}],
        "serviceProvider": {"reference": "Organization/o1"},
    },
    {
        "resourceType": "MedicationRequest",
        "id": "mr1",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": CC_TWO,
        "subject": {"reference": "Patient/p1"},
        "requester": {"reference": "Practitioner/dr1"},
        "authoredOn": "2020-01-01",
        "dosageInstruction": [{"timing": TIMING}],
        "dispenseRequest": {"validityPeriod": PERIOD, "quantity": {"value": 10}},
    },
    {
        "resourceType": "MedicationRequest",
        "id": "mr2",
        "status": "active",
        "intent": "order",
        "medicationReference": {"reference": "Medication/m1"},
        "subject": {"reference": "Group/g1"},
    },
    {
        "resourceType": "Appointment",
        "id": "a1",
        "status": "booked",
        "start": "2020-01-01T10:00:00Z",
        "participant": [
            {"actor": {"reference": "Patient/p1"}, "status": "accepted"},
            {"actor": {"reference": "Practitioner/dr1"}, "status": "accepted"},
            {"actor": {"reference": "Location/l1"}, "status": "accepted"},
            {"actor": {"reference": "HealthcareService/h1"}, "status": "accepted"},
        ],
    },
    {
        "resourceType": "ServiceRequest",
        "id": "sr1",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "occurrenceTiming": TIMING,
        "code": CC_LOINC,
    },
    {
        "resourceType": "Immunization",
        "id": "i1",
        "status": "completed",
        "vaccineCode": CC_TWO,
        "patient": {"reference": "Patient/p1"},
        "occurrenceString": "as a child",
        "protocolApplied": [{"targetDisease": [CC_LOINC], "doseNumberPositiveInt": 1}],
    },
    {
        "resourceType": "RiskAssessment",
        "id": "ra1",
        "status": "final",
        "subject": {"reference": "Patient/p1"},
        "occurrencePeriod": PERIOD,
        "prediction": [{"probabilityDecimal": 0.25}],
    },
    {
        "resourceType": "Goal",
        "id": "g1",
        "lifecycleStatus": "active",
        "description": {"text": "x"},
        "subject": {"reference": "Patient/p1"},
        "startDate": "2020-01-01",
        "target": [{"dueDate": "2021-01-01"}, {"dueDuration": {"value": 3}}],
    },
    {
        "resourceType": "ConceptMap",
        "id": "cm1",
        "status": "active",
        "sourceUri": "http://a.example/vs",
        "targetCanonical": "http://b.example/vs",
        "useContext": [
            {"code": {"code": "age"}, "valueRange": {"low": {"value": 1}}},
            {"code": {"code": "focus"}, "valueCodeableConcept": CC_LOINC},
            {"code": {"code": "x"}, "valueQuantity": {"value": 2}},
        ],
    },
    {
        "resourceType": "Bundle",
        "id": "b1",
        "type": "document",
        "identifier": {"system": "urn:b", "value": "1"},
        "timestamp": "2020-01-01T00:00:00Z",
        "entry": [
            {"resource": {"resourceType": "Composition", "id": "cp1", "status": "final"}},
            {"resource": {"resourceType": "Patient", "id": "p1"}},
        ],
    },
    {
        "resourceType": "Substance",
        "id": "s1",
        "code": CC_LOINC,
        "ingredient": [
            {"substanceCodeableConcept": CC_TWO},
            {"substanceReference": {"reference": "Substance/s2"}},
        ],
    },
    {
        "resourceType": "Group",
        "id": "gr1",
        "type": "person",
        "actual": True,
        "characteristic": [
            {"code": CC_LOINC, "valueBoolean": True, "exclude": False},
            {"code": CC_TWO, "valueCodeableConcept": CC_TWO, "exclude": False},
            {"code": CC_TWO, "valueQuantity": {"value": 3}, "exclude": True},
        ],
    },
    {
        "resourceType": "Organization",
        "id": "org1",
        "name": "Bệnh viện Bạch Mai",
        "alias": ["Bệnh viện Bạch Mai", "BVBM"],
        "telecom": [{"system": "phone", "value": "024"}],
        "address": [{"city": "Hà Nội"}],
    },
    {
        "resourceType": "Location",
        "id": "l1",
        "name": "Khoa Nội",
        "alias": ["Khoa Nội", "Nội"],
        "position": {"longitude": 105.8, "latitude": 21.0},
    },
    {"resourceType": "InsurancePlan", "id": "ip1", "name": "Gold", "alias": ["G", "Gold"]},
    {
        "resourceType": "Practitioner",
        "id": "dr1",
        "name": [{"family": "Lê", "given": ["Bình"], "prefix": ["BS."]}],
        "telecom": [
            {"system": "email", "value": "b@example.vn"},
            {"system": "phone", "value": "1"},
        ],
        "qualification": [{"code": CC_LOINC, "period": PERIOD}],
    },
    {
        "resourceType": "Task",
        "id": "t1",
        "status": "requested",
        "intent": "order",
        "for": {"reference": "Patient/p1"},
        "owner": {"reference": "Practitioner/dr1"},
        "executionPeriod": PERIOD,
        "focus": {"reference": "ServiceRequest/sr1"},
    },
    {
        "resourceType": "CarePlan",
        "id": "cpl1",
        "status": "active",
        "intent": "plan",
        "subject": {"reference": "Group/g1"},
        "period": PERIOD,
        "activity": [
            {"detail": {"status": "scheduled", "scheduledTiming": TIMING, "code": CC_LOINC}},
            {"detail": {"status": "scheduled", "scheduledString": "soon"}},
            {"detail": {"status": "scheduled", "scheduledPeriod": PERIOD}},
        ],
    },
    {
        "resourceType": "DocumentReference",
        "id": "d1",
        "status": "current",
        "masterIdentifier": {"system": "urn:d", "value": "m"},
        "identifier": [{"system": "urn:d", "value": "m"}, {"system": "urn:d", "value": "2"}],
        "subject": {"reference": "Patient/p1"},
        "relatesTo": [{"code": "replaces", "target": {"reference": "DocumentReference/d0"}}],
        "content": [{"attachment": {"contentType": "application/pdf", "url": "http://x/a"}}],
        "context": {"period": PERIOD, "related": [{"reference": "Patient/p1"}]},
    },
    {
        "resourceType": "AuditEvent",
        "id": "ae1",
        "type": {"code": "rest"},
        "recorded": "2020-01-01T00:00:00Z",
        "agent": [{"who": {"reference": "Patient/p1"}, "requestor": True}],
        "entity": [{"what": {"reference": "Patient/p1"}}, {"what": {"reference": "Patient/p2"}}],
        "source": {"observer": {"reference": "Device/dev1"}},
    },
    {
        "resourceType": "ActivityDefinition",
        "id": "ad1",
        "status": "active",
        "library": ["http://x/Library/l1"],
        "relatedArtifact": [
            {"type": "depends-on", "resource": "http://x/Library/l2"},
            {"type": "composed-of", "resource": "http://x/ActivityDefinition/a2"},
            {"type": "successor", "resource": "http://x/ActivityDefinition/a3"},
            {"type": "depends-on", "display": "no resource"},
        ],
        "useContext": [{"code": {"code": "age"}, "valueQuantity": {"value": 5}}],
    },
]


# Forms the R4 definitions do not use, as custom parameters might.
CUSTOM_EXPRESSIONS = [
    ("Patient", f"Patient.extension('{RACE}').extension('ombCategory').value.ofType(Coding)"),
    ("Patient", f"Patient.extension('{RACE}').extension('text').value"),
    ("Patient", f"Patient.extension.where(url = '{BIRTH_PLACE}').value.ofType(Address).city"),
    ("Patient", f"Patient.extension.where(url = '{BIRTH_PLACE}').value.as(Address)"),
    ("Patient", "Patient.name.where(use = 'official').given"),
    ("Patient", "Patient.name.first().family"),
    ("Patient", "Patient.name.given.first()"),
    ("Patient", "Patient.telecom.where(system = 'phone' and use = 'home').value"),
    ("Patient", "Patient.telecom.where(system = 'phone' or system = 'sms')"),
    ("Patient", "Patient.telecom.where(system != 'phone')"),
    ("Patient", "Patient.communication.language.coding.where(system = 'urn:ietf:bcp:47').code"),
    ("Patient", "Patient.contact.name.given | Patient.name.given"),
    ("Patient", "Patient.identifier[1].value"),
    ("Patient", "Patient.active.not()"),
    ("Patient", "Patient.birthDate"),
    ("Patient", "Patient.link.other.where(resolve() is RelatedPerson)"),
    ("Patient", "Patient.generalPractitioner.where(resolve() is Practitioner)"),
    ("Patient", "Patient.generalPractitioner.where(resolve() is Organization)"),
    ("Patient", "Patient.address.where(period.exists()).postalCode"),
    (
        "Observation",
        "Observation.component.where(code.coding.code = '8480-6').value.ofType(Quantity)",
    ),
    (
        "Observation",
        "Observation.component.where(code.coding.where(code = '8462-4').exists()).code",
    ),
    ("Observation", "Observation.component.value.ofType(Quantity).value"),
    ("Observation", "Observation.effective.ofType(Timing).repeat.bounds.ofType(Period)"),
    ("Observation", "Observation.effective.ofType(Timing).event"),
    ("Observation", "Observation.value.exists()"),
    ("Observation", "Observation.component.value.empty()"),
    ("Observation", "(Observation.value as CodeableConcept).coding.code"),
    (
        "Observation",
        "Observation.component.dataAbsentReason.exists() and Observation.value.exists()",
    ),
    ("MedicationRequest", "MedicationRequest.dosageInstruction.timing.repeat.frequency"),
    ("MedicationRequest", "MedicationRequest.dispenseRequest.quantity"),
    ("CarePlan", "CarePlan.activity.detail.scheduled"),
    ("CarePlan", "CarePlan.activity.detail.scheduled.ofType(Timing).event"),
    ("RiskAssessment", "RiskAssessment.prediction.probability.ofType(decimal)"),
    ("Bundle", "Bundle.entry.resource.ofType(Patient)"),
    ("Bundle", "Bundle.entry[1].resource"),
]


def custom_param(resource_type: str, expression: str) -> SearchParam:
    return SearchParam(
        code="x-custom", type="token", resource_type=resource_type, expression=expression
    )


# --------------------------------------------------------------------- differential tests


def test_synthea_fixtures_match_fhirpathpy() -> None:
    resources = synthea_resources()
    assert len(resources) > 200
    assert any(
        r.get("subject", {}).get("reference", "").startswith("Patient/") for r in resources
    )  # resolve() is Patient sees real references, not only urn:uuid ones
    problems = [problem for resource in resources for problem in _mismatches(resource)]
    assert not problems, "\n".join(problems[:20])


@pytest.mark.parametrize(
    "resource", HAND_WRITTEN, ids=lambda r: f"{r['resourceType']}-{r.get('id')}"
)
def test_hand_written_resources_match_fhirpathpy(resource: dict[str, Any]) -> None:
    assert not _mismatches(resource)


@pytest.mark.parametrize("resource_type,expression", CUSTOM_EXPRESSIONS)
def test_other_compiled_forms_match_fhirpathpy(resource_type: str, expression: str) -> None:
    compile_path(expression, resource_type)  # compiled, no fallback
    param = custom_param(resource_type, expression)
    resources = [r for r in HAND_WRITTEN if r["resourceType"] == resource_type]
    assert resources
    seen_values = False
    for resource in resources:
        expected = reference_values(expression, resource)
        assert compiled_values(param, resource) == expected, resource.get("id")
        seen_values = seen_values or bool(expected)
    assert seen_values, "the data should exercise the expression"


def test_unsupported_forms_fall_back_to_fhirpathpy() -> None:
    expression = "Patient.name.select(given.first() + ' ' + family)"
    with pytest.raises(CompileError):
        compile_path(expression, "Patient")
    values = extractor(custom_param("Patient", expression))(HAND_WRITTEN[0])
    assert [value for _, value in values] == ["Văn Nguyễn"]
    assert ("Patient", "x-custom") in fallback_params(["Patient"])


# ------------------------------------------------------------------- types of the elements


def _typed(resource_type: str, code: str, resource: dict[str, Any]) -> list[tuple[str, Any]]:
    param = get_param(resource_type, code)
    assert param is not None
    return extractor(param)(resource)


def _by_id(id_: str) -> dict[str, Any]:
    return next(r for r in HAND_WRITTEN if r.get("id") == id_)


@pytest.mark.parametrize(
    "id_,code,types",
    [
        ("o1", "value-concept", ["CodeableConcept"]),
        ("o1", "code", ["CodeableConcept"]),
        ("o1", "date", ["Period"]),
        ("o1", "patient", ["Reference"]),
        ("o1", "component-value-quantity", ["Quantity", "Quantity", "SampledData"]),
        ("o2", "date", ["Timing"]),
        ("o2", "value-string", ["string"]),
        ("o3", "date", ["instant"]),
        ("o4", "date", ["dateTime"]),
        ("o4", "value-date", ["Period"]),
        ("o5", "value-date", ["dateTime"]),
        ("c1", "onset-age", ["Age"]),
        ("c1", "abatement-string", ["string"]),
        ("c3", "onset-age", ["Range"]),
        ("c3", "abatement-date", ["dateTime"]),
        ("c4", "abatement-age", ["Age"]),
        ("c4", "onset-info", ["string"]),
        ("p1", "birthdate", ["date"]),
        ("p1", "gender", ["code"]),
        ("p1", "active", ["boolean"]),
        ("p1", "deceased", ["boolean"]),
        ("p1", "death-date", ["dateTime"]),
        ("p1", "name", ["HumanName", "HumanName"]),
        ("p1", "address-city", ["string", "string"]),
        ("p1", "phone", ["ContactPoint", "ContactPoint"]),
        ("p1", "identifier", ["Identifier", "Identifier"]),
        ("p1", "_id", ["id"]),
        ("p1", "_lastUpdated", ["instant"]),
        ("p1", "_profile", ["canonical"]),
        ("p1", "_tag", ["Coding", "Coding"]),
        ("p1", "_source", ["uri"]),
        ("p1", "language", ["CodeableConcept"]),
        ("e1", "length", ["Duration"]),
        ("e1", "class", ["Coding"]),
        ("ra1", "probability", ["decimal"]),
        ("cm1", "source", []),
        ("cm1", "source-uri", ["uri"]),
        ("cm1", "target", ["canonical"]),
        ("cm1", "target-uri", ["canonical"]),  # FHIRPath: canonical is a uri
        ("cm1", "context-quantity", ["Range", "Quantity"]),
        ("g1", "start-date", ["date"]),
        ("g1", "target-date", ["date"]),
        ("b1", "composition", ["Composition"]),
        ("b1", "identifier", ["Identifier"]),
        ("gr1", "value", ["boolean", "CodeableConcept"]),
        ("ad1", "depends-on", ["canonical", "canonical"]),
        ("d1", "contenttype", ["code"]),
        ("d1", "identifier", ["Identifier", "Identifier"]),
    ],
)
def test_element_types(id_: str, code: str, types: list[str]) -> None:
    resource = _by_id(id_)
    assert sorted(t for t, _ in _typed(resource["resourceType"], code, resource)) == sorted(types)


def test_values_are_the_resources_json() -> None:
    observation = _by_id("o1")
    ((fhir_type, value),) = _typed("Observation", "value-concept", observation)
    assert fhir_type == "CodeableConcept"
    assert value is observation["valueCodeableConcept"]
    assert _typed("Patient", "deceased", _by_id("p4")) == [("boolean", False)]
    assert _typed("Patient", "deceased", _by_id("p2")) == [("boolean", True)]
    # duplicates are removed by a union (Location.name | Location.alias), kept by a path
    assert [v for _, v in _typed("Location", "name", _by_id("l1"))] == ["Khoa Nội", "Nội"]
    assert [v for _, v in _typed("DocumentReference", "identifier", _by_id("d1"))] == [
        {"system": "urn:d", "value": "m"},
        {"system": "urn:d", "value": "2"},
    ]


def test_resolve_is_reads_the_reference() -> None:
    patient = _by_id("p1")
    practitioners = extractor(
        custom_param("Patient", "Patient.generalPractitioner.where(resolve() is Practitioner)")
    )(patient)
    assert [v for _, v in practitioners] == [
        {"reference": "Practitioner/dr1"},
        {"type": "Practitioner", "identifier": {"value": "x"}},
    ]
    organizations = extractor(
        custom_param("Patient", "Patient.generalPractitioner.where(resolve() is Organization)")
    )(patient)
    assert [v for _, v in organizations] == [
        {"reference": "https://other.example/fhir/Organization/o1"}
    ]
    roles = extractor(
        custom_param("Patient", "Patient.generalPractitioner.where(resolve() is PractitionerRole)")
    )(patient)
    assert [v for _, v in roles] == [{"reference": "PractitionerRole/r1/_history/2"}]
    # the reference wins over a contradicting type
    assert _typed("Observation", "patient", _by_id("o1")) == [
        ("Reference", {"reference": "Patient/p1", "type": "Group"})
    ]
    assert _typed("Observation", "patient", _by_id("o2")) == []


# --------------------------------------------------------------------------- extract_all


def test_extract_all_gives_every_non_empty_param() -> None:
    for resource in [*HAND_WRITTEN, *synthea_resources()[:60]]:
        found = extract_all(resource)
        params = params_for(resource["resourceType"])
        for code, param in params.items():
            if not param.expression or param.type == "composite":
                assert code not in found
                continue
            values = extractor(param)(resource)
            if values:
                assert found[code] == values
            else:
                assert code not in found
    assert extract_all({"resourceType": "NotAType"}) == {}
    assert extract_all({}) == {}


def test_extract_all_survives_malformed_json() -> None:
    found = extract_all({"resourceType": "Patient", "name": "not a list", "gender": "female"})
    assert found["gender"] == [("code", "female")]


# ---------------------------------------------------------------------------- registry


def test_every_param_with_an_expression_gets_an_extractor() -> None:
    count = 0
    for resource_type in sorted(R4_RESOURCE_TYPES):
        params = params_for(resource_type)
        assert "_id" in params and "_lastUpdated" in params
        for param in params.values():
            if not param.expression:
                continue
            assert param.resource_type == resource_type
            extract = extractor(param)
            assert callable(extract)
            assert isinstance(extract({"resourceType": resource_type}), list)
            count += 1
    assert count > 1300


def test_no_fallback_for_the_common_clinical_types() -> None:
    for resource_type in TOP_20:
        for param in params_for(resource_type).values():
            if param.expression:
                compile_path(param.expression, resource_type)
    definitions = {
        key: why for key, why in fallback_params().items() if get_param(*key) is not None
    }
    assert not set(TOP_20) & {resource_type for resource_type, _ in definitions}
    assert len(definitions) <= 10, definitions  # only R4 elements the R4B models lack


def test_split_union() -> None:
    assert split_union("(X.value as Quantity) | (X.value as SampledData)") == [
        "(X.value as Quantity)",
        "(X.value as SampledData)",
    ]
    assert split_union("A.b.where(c = 'x|y') | B.c") == ["A.b.where(c = 'x|y')", "B.c"]
    assert split_union("A.b.where((c | d).exists()) | B.c") == [
        "A.b.where((c | d).exists())",
        "B.c",
    ]
    assert split_union("Observation") == ["Observation"]


def test_member_applies() -> None:
    assert member_applies("(Observation.value as Quantity)", "Observation")
    assert member_applies("Observation.code", "Observation")
    assert member_applies("Observation", "Observation")
    assert not member_applies("ObservationDefinition.code", "Observation")
    assert not member_applies("(Condition.onset as Age)", "Observation")


def test_params_per_type() -> None:
    assert params_for("Observation")["code"].expression == "Observation.code"
    assert params_for("MedicationRequest")["code"].expression == (
        "(MedicationRequest.medication as CodeableConcept)"
    )
    assert params_for("Observation")["value-quantity"].expression == (
        "(Observation.value as Quantity) | (Observation.value as SampledData)"
    )
    assert params_for("DocumentReference")["identifier"].expression == (
        "DocumentReference.masterIdentifier | DocumentReference.identifier"
    )
    assert params_for("InsurancePlan")["name"].expression == (
        "InsurancePlan.name | InsurancePlan.alias"
    )
    last_updated = params_for("Patient")["_lastUpdated"]
    assert last_updated.expression == "Patient.meta.lastUpdated"
    assert last_updated.type == "date"
    assert last_updated.resource_type == "Patient"
    assert params_for("Patient")["_text"].expression is None
    assert "_text" not in params_for("Bundle")
    subject = params_for("Observation")["subject"]
    assert subject.type == "reference" and "Patient" in subject.targets
    assert "ap" in params_for("Observation")["date"].comparators
    assert get_param("Patient", "no-such-param") is None
    assert params_for("NotAType") == {}


def test_composites_and_urls() -> None:
    composite = params_for("Observation")["code-value-quantity"]
    assert composite.type == "composite"
    assert composite.expression == "Observation"
    assert [url.rsplit("/", 1)[1] for url, _ in composite.components] == [
        "clinical-code",
        "Observation-value-quantity",
    ]
    assert [expression for _, expression in composite.components] == [
        "code",
        "value.as(Quantity)",
    ]
    code = param_by_url(composite.components[0][0], "Observation")
    assert code is not None and code.expression == "Observation.code"
    assert param_by_url(composite.components[0][0], "Patient") is None
    assert param_by_url("http://hl7.org/fhir/SearchParameter/Resource-id", "Patient") == get_param(
        "Patient", "_id"
    )
    for resource_type in sorted(R4_RESOURCE_TYPES):
        for param in params_for(resource_type).values():
            assert param_by_url(param.url, resource_type) == param
            for url, expression in param.components:
                component = param_by_url(url, resource_type)
                assert component is not None, url
                # the composite's items are what its components run on
                for item_type in {t for t, _ in extractor(param)({"resourceType": resource_type})}:
                    compile_path(expression, item_type)


def test_component_expressions_compile_on_the_composite_items() -> None:
    composite = params_for("Observation")["component-code-value-quantity"]
    assert composite.expression == "Observation.component"
    (item_type,) = {t for t, _ in extractor(composite)(_by_id("o1"))}
    assert item_type == "ObservationComponent"
    code_of, value_of = (compile_path(e, item_type) for _, e in composite.components)
    first = _by_id("o1")["component"][0]
    assert code_of(first) == [("CodeableConcept", CC_LOINC)]
    assert value_of(first) == [("Quantity", QTY)]


# --------------------------------------------------------------------------- hypothesis

_text = st.text(alphabet="abAB xy-1", min_size=1, max_size=5)
_coding = st.fixed_dictionaries(
    {"system": st.sampled_from(["http://loinc.org", "urn:x"]), "code": st.sampled_from("abc")},
    optional={"display": _text},
)
_concept = st.one_of(
    st.fixed_dictionaries({"coding": st.lists(_coding, min_size=1, max_size=2)}),
    st.fixed_dictionaries({"text": _text}),
    st.fixed_dictionaries({"coding": st.lists(_coding, min_size=1, max_size=2), "text": _text}),
)
_number = st.one_of(
    st.integers(-5, 500), st.floats(-1e4, 1e4, allow_nan=False).map(lambda x: round(x, 2))
)
_quantity = st.fixed_dictionaries(
    {"value": _number}, optional={"unit": st.sampled_from(["mg", "mmHg"]), "system": _text}
)
_date = st.sampled_from(["2020", "2020-02", "2020-02-29", "2020-02-29T10:00:00+07:00"])
_period = st.fixed_dictionaries({}, optional={"start": _date, "end": _date}).filter(bool)
_reference = st.one_of(
    st.builds(
        lambda t, i: {"reference": f"{t}/{i}"},
        st.sampled_from(["Patient", "Group", "Practitioner", "Device"]),
        st.sampled_from(["1", "2"]),
    ),
    st.builds(lambda i: {"reference": f"https://h.example/fhir/Patient/{i}"}, st.just("1")),
    st.just({"reference": "urn:uuid:4d1c8b1e-0000-4000-8000-000000000001"}),
    st.just({"reference": "#contained"}),
    st.builds(
        lambda t: {"type": t, "display": "x"}, st.sampled_from(["Patient", "Group", "Location"])
    ),
    st.just({"reference": "Group/1", "type": "Patient"}),
)
_value = st.one_of(
    st.builds(lambda v: {"valueQuantity": v}, _quantity),
    st.builds(lambda v: {"valueCodeableConcept": v}, _concept),
    st.builds(lambda v: {"valueString": v}, _text),
    st.builds(lambda v: {"valueBoolean": v}, st.booleans()),
    st.builds(lambda v: {"valueInteger": v}, st.integers(-3, 3)),
    st.builds(lambda v: {"valueDateTime": v}, _date),
    st.builds(lambda v: {"valuePeriod": v}, _period),
    st.builds(lambda lo, hi: {"valueRange": {"low": lo, "high": hi}}, _quantity, _quantity),
    st.builds(
        lambda o: {"valueSampledData": {"origin": o, "period": 1, "dimensions": 1}}, _quantity
    ),
    st.just({}),
)
_effective = st.one_of(
    st.builds(lambda v: {"effectiveDateTime": v}, _date),
    st.builds(lambda v: {"effectivePeriod": v}, _period),
    st.builds(lambda v: {"effectiveTiming": {"event": v}}, st.lists(_date, min_size=1, max_size=2)),
    st.just({"effectiveInstant": "2020-01-01T00:00:00Z"}),
    st.just({}),
)


def _merge(base: dict[str, Any], *parts: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for part in parts:
        out.update(part)
    return out


_component = st.builds(
    lambda code, value, absent: _merge({"code": code}, value, absent),
    _concept,
    _value,
    st.one_of(st.just({}), st.builds(lambda c: {"dataAbsentReason": c}, _concept)),
)
_identifier = st.fixed_dictionaries(
    {"value": _text}, optional={"system": st.sampled_from(["urn:a", "urn:b"]), "type": _concept}
)
_observation = st.builds(
    lambda code, value, effective, subject, category, components, identifiers: _merge(
        {"resourceType": "Observation", "id": "o", "status": "final", "code": code},
        value,
        effective,
        {"subject": subject} if subject else {},
        {"category": category} if category else {},
        {"component": components} if components else {},
        {"identifier": identifiers} if identifiers else {},
    ),
    _concept,
    _value,
    _effective,
    st.one_of(st.none(), _reference),
    st.lists(_concept, max_size=2),
    st.lists(_component, max_size=3),
    st.lists(_identifier, max_size=2),
)
_name = st.fixed_dictionaries(
    {},
    optional={
        "family": _text,
        "given": st.lists(_text, min_size=1, max_size=2),
        "text": _text,
        "use": st.sampled_from(["official", "nickname"]),
    },
).filter(bool)
_telecom = st.fixed_dictionaries(
    {"system": st.sampled_from(["phone", "email", "fax"]), "value": _text},
    optional={"use": st.sampled_from(["home", "work"])},
)
_deceased = st.one_of(
    st.just({}),
    st.builds(lambda v: {"deceasedBoolean": v}, st.booleans()),
    st.builds(lambda v: {"deceasedDateTime": v}, _date),
)
_patient = st.builds(
    lambda names, identifiers, telecom, deceased, gp, birth: _merge(
        {"resourceType": "Patient", "id": "p"},
        {"name": names} if names else {},
        {"identifier": identifiers} if identifiers else {},
        {"telecom": telecom} if telecom else {},
        deceased,
        {"generalPractitioner": gp} if gp else {},
        {"birthDate": birth} if birth else {},
    ),
    st.lists(_name, max_size=3),
    st.lists(_identifier, max_size=2),
    st.lists(_telecom, max_size=3),
    _deceased,
    st.lists(_reference, max_size=2),
    st.one_of(st.none(), st.sampled_from(["1990", "1990-01-01"])),
)

HYPOTHESIS_PARAMS = {
    "Patient": [
        "name",
        "given",
        "family",
        "identifier",
        "phone",
        "email",
        "telecom",
        "deceased",
        "death-date",
        "birthdate",
        "general-practitioner",
        "_id",
    ],
    "Observation": [
        "code",
        "category",
        "identifier",
        "patient",
        "subject",
        "date",
        "value-quantity",
        "value-string",
        "value-concept",
        "value-date",
        "combo-code",
        "combo-value-quantity",
        "combo-value-concept",
        "combo-data-absent-reason",
        "component-code",
        "component-value-quantity",
        "component-value-concept",
        "component-data-absent-reason",
    ],
}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_patient, _observation))
def test_random_resources_match_fhirpathpy(resource: dict[str, Any]) -> None:
    for code in HYPOTHESIS_PARAMS[resource["resourceType"]]:
        param = get_param(resource["resourceType"], code)
        assert param is not None and param.expression
        assert compiled_values(param, resource) == reference_values(param.expression, resource), (
            code
        )
