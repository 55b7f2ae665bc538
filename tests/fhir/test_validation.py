"""Unit tests of validation rules that the API tests do not reach directly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emr_hub.errors import FhirError
from emr_hub.fhir.identifiers import INSURANCE, cccd_birth_year, cccd_problem, identifier_problem
from emr_hub.fhir.validation import (
    R4_RESOURCE_TYPES,
    is_resource_type,
    model_class,
    validate_resource,
)


def test_r4_types_are_the_r4_list_minus_what_r4b_dropped() -> None:
    assert len(R4_RESOURCE_TYPES) == 128  # 146 R4 types less the 18 that R4B removed
    assert {
        "Bundle",
        "Patient",
        "Task",
        "ServiceRequest",
        "Subscription",
        "Binary",
    } <= R4_RESOURCE_TYPES
    for not_r4 in ("Resource", "DomainResource", "SubscriptionTopic", "Citation", "patient", ""):
        assert not is_resource_type(not_r4)


def test_every_named_type_has_its_model() -> None:
    """The type list is written out, not probed at import (which would load every model):
    each name in it must still be a resource model of fhir.resources."""
    assert [t for t in sorted(R4_RESOURCE_TYPES) if model_class(t) is None] == []
    assert model_class("Nope") is None


@pytest.mark.parametrize(
    ("body", "expression", "status"),
    [
        ({"resourceType": "Patient", "active": "yes"}, "Patient.active", 400),
        ({"resourceType": "Patient", "gender": "M"}, "Patient.gender", 400),
        (
            {"resourceType": "Patient", "multipleBirthInteger": "2"},
            "Patient.multipleBirthInteger",
            400,
        ),
        ({"resourceType": "Patient", "name": [{"use": "nick"}]}, "Patient.name[0].use", 400),
        (
            {"resourceType": "Patient", "contact": [{"gender": "f"}]},
            "Patient.contact[0].gender",
            400,
        ),
        (
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "x"},
                "valueQuantity": {"value": "7.1"},
            },
            "Observation.valueQuantity.value",
            400,
        ),
        (
            {"resourceType": "Patient", "contained": [{"resourceType": "Patient", "gender": "x"}]},
            "Patient.contained[0].gender",
            400,
        ),
        ({"resourceType": "Patient", "name": [{}]}, "Patient.name[0]", 400),
        ({"resourceType": "Patient", "name": []}, "Patient.name", 400),
        (
            {"resourceType": "Patient", "managingOrganization": {"reference": "Organisation/x"}},
            "Patient.managingOrganization.reference",
            400,
        ),
        (
            {
                "resourceType": "Patient",
                "managingOrganization": {"reference": "Organization?identifier=x"},
            },
            "Patient.managingOrganization.reference",
            400,
        ),
        (
            {
                "resourceType": "Organization",
                "identifier": [
                    {"system": "http://fhir.hl7.org.vn/core/sid/ma-cskcb", "value": "1234"}
                ],
            },
            "Organization.identifier[0].value",
            422,
        ),
    ],
)
def test_refused_with_status_and_expression(body: dict, expression: str, status: int) -> None:
    with pytest.raises(FhirError) as caught:
        validate_resource(body)
    assert caught.value.status == status
    assert expression in {e for issue in caught.value.issues for e in issue.expression}


@pytest.mark.parametrize(
    "body",
    [
        {"resourceType": "Patient", "active": True, "gender": "unknown", "multipleBirthInteger": 2},
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "x"},
            "valueQuantity": {"value": 7},
        },
        {
            "resourceType": "Patient",
            "managingOrganization": {"reference": "#org"},
            "contained": [{"resourceType": "Organization", "id": "org"}],
        },
        {
            "resourceType": "Patient",
            "link": [
                {"other": {"reference": "https://other.example/fhir/Patient/9"}, "type": "seealso"}
            ],
        },
        {
            "resourceType": "Patient",
            "identifier": [{"system": INSURANCE, "value": "DN4270123456789"}],
        },
    ],
)
def test_accepted(body: dict) -> None:
    assert validate_resource(body) is body


@given(
    province=st.sampled_from(["001", "027", "079"]),
    century=st.integers(0, 5),
    year=st.integers(0, 99),
    serial=st.integers(0, 999_999),
)
def test_cccd_birth_year_round_trip(province: str, century: int, year: int, serial: int) -> None:
    value = f"{province}{century}{year:02d}{serial:06d}"
    born = 1900 + 100 * (century // 2) + year
    assert cccd_birth_year(value) == born
    assert cccd_problem(value, f"{born}-06-01") is None
    assert cccd_problem(value, f"{born + 1}-06-01") is not None


@given(st.text(max_size=14))
def test_cccd_shape_rejects_anything_but_12_digits(text: str) -> None:
    if not (len(text) == 12 and text.isascii() and text.isdigit()):
        assert cccd_problem(text) is not None


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("DN4270123456789", True),
        ("0123456789", True),
        ("027185000123", True),
        ("DN9270123456789", False),
        ("12345", False),
    ],
)
def test_insurance_number_shapes(value: str, ok: bool) -> None:
    assert (identifier_problem(INSURANCE, value) is None) is ok
