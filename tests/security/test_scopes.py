"""SMART v2 scope parsing, permission checks and set inclusion (pure, no database)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emr_hub.security.scopes import Scope, ScopeSet


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("system/Patient.rs", "system/Patient.rs"),
        ("system/*.cruds", "system/*.cruds"),
        ("system/Observation.c", "system/Observation.c"),
        ("system/Patient.cd", "system/Patient.cd"),
        ("user/Encounter.r", "user/Encounter.r"),
        ("patient/*.rs patient/Consent.cu", "patient/*.rs patient/Consent.cu"),
        ("system/*.read", "system/*.rs"),
        ("system/*.write", "system/*.cud"),
        ("system/*.*", "system/*.cruds"),
        ("system/Patient.read", "system/Patient.rs"),
        ("system/Patient.r system/Patient.s", "system/Patient.rs"),
        ("system/Patient.rs system/Patient.rs", "system/Patient.rs"),
        ("  system/Patient.r \t system/*.s  ", "system/*.s system/Patient.r"),
        ("system/Observation.r system/*.c", "system/*.c system/Observation.r"),
        ("", ""),
    ],
)
def test_valid_scopes_parse_to_canonical_text(text: str, canonical: str) -> None:
    assert str(ScopeSet.parse(text)) == canonical


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("system/Patient.sr", "in that order"),
        ("system/Patient.rr", "in that order"),
        ("system/Patient.x", "non-empty subset"),
        ("system/Patient.", "non-empty subset"),
        ("system/Patient.R", "non-empty subset"),
        ("system/Patient.readwrite", "non-empty subset"),
        ("system/Patient", "lacks permissions"),
        ("system/Foo.r", "not a FHIR resource type"),
        ("system/patient.r", "not a FHIR resource type"),
        ("system/Resource.r", "not a FHIR resource type"),
        ("system/HumanName.r", "not a FHIR resource type"),
        ("system/.r", "not a FHIR resource type"),
        ("launch/Patient.r", "must start with system/, user/ or patient/"),
        ("openid", "not supported"),
        ("system/Observation.rs?category=laboratory", "granular"),
        ("system/Patient.rs system/Nope.r", "Nope"),
    ],
)
def test_invalid_scopes_are_refused_with_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ScopeSet.parse(text)


@pytest.mark.parametrize(
    ("scopes", "resource_type", "interaction", "allowed"),
    [
        ("system/Patient.rs", "Patient", "r", True),
        ("system/Patient.rs", "Patient", "s", True),
        ("system/Patient.rs", "Patient", "c", False),
        ("system/Patient.rs", "Observation", "r", False),
        ("system/*.rs", "Observation", "r", True),
        ("system/*.rs", "Observation", "u", False),
        ("system/*.write", "Observation", "d", True),
        ("user/Observation.c", "Observation", "c", True),
        ("system/Patient.r system/*.c", "Encounter", "c", True),
        ("", "Patient", "r", False),
    ],
)
def test_allows(scopes: str, resource_type: str, interaction: str, allowed: bool) -> None:
    assert ScopeSet.parse(scopes).allows(resource_type, interaction) is allowed


@pytest.mark.parametrize("interaction", ["x", "", "rs", "read", "C"])
def test_allows_refuses_unknown_interactions(interaction: str) -> None:
    with pytest.raises(ValueError, match="interaction"):
        ScopeSet.parse("system/*.cruds").allows("Patient", interaction)


@pytest.mark.parametrize(
    ("requested", "registered", "subset"),
    [
        ("system/Patient.r", "system/Patient.rs", True),
        ("system/Patient.rs", "system/Patient.rs", True),
        ("system/Patient.rs", "system/Patient.r", False),
        ("system/Patient.r", "system/*.rs", True),
        ("system/*.r", "system/Patient.rs", False),
        ("system/*.r", "system/Patient.rs system/*.r", True),
        ("system/Patient.r system/Observation.c", "system/*.r system/Observation.cruds", True),
        ("system/Patient.r system/Observation.c", "system/*.r", False),
        ("user/Patient.r", "system/Patient.r", True),
        ("system/*.read", "system/*.rs", True),
        ("system/*.cruds", "system/*.read system/*.write", True),
        ("", "system/Patient.r", True),
        ("system/Patient.r", "", False),
    ],
)
def test_issubset(requested: str, registered: str, subset: bool) -> None:
    assert ScopeSet.parse(requested).issubset(ScopeSet.parse(registered)) is subset


def test_equal_meaning_compares_equal() -> None:
    assert ScopeSet.parse("system/*.read") == ScopeSet.parse("system/*.s system/*.r")
    assert hash(ScopeSet.parse("system/*.*")) == hash(ScopeSet.parse("system/*.cruds"))
    assert ScopeSet.parse("system/Patient.r").scopes == (Scope("system", "Patient", "r"),)


def test_empty_set_is_falsy() -> None:
    assert not ScopeSet.parse("")
    assert ScopeSet.parse("system/Patient.r")


CONTEXTS = st.sampled_from(["system", "user"])
TYPES = st.sampled_from(["*", "Patient", "Observation", "Encounter", "ServiceRequest", "Bundle"])
V2_PERMISSIONS = st.sets(st.sampled_from("cruds"), min_size=1).map(
    lambda letters: "".join(c for c in "cruds" if c in letters)
)
PERMISSIONS = st.one_of(V2_PERMISSIONS, st.sampled_from(["read", "write", "*"]))
SCOPE_TOKENS = st.builds(lambda c, t, p: f"{c}/{t}.{p}", CONTEXTS, TYPES, PERMISSIONS)
SCOPE_TEXTS = st.builds(
    lambda tokens, sep: sep.join(tokens),
    st.lists(SCOPE_TOKENS, max_size=8),
    st.sampled_from([" ", "  ", "\t", " \n "]),
)


@given(SCOPE_TEXTS)
def test_canonical_text_round_trips(text: str) -> None:
    parsed = ScopeSet.parse(text)
    assert ScopeSet.parse(str(parsed)) == parsed
    assert str(ScopeSet.parse(str(parsed))) == str(parsed)


CONCRETE_TYPES = ["Patient", "Observation", "Encounter", "ServiceRequest", "Bundle", "Condition"]


@given(SCOPE_TEXTS, SCOPE_TEXTS)
def test_issubset_means_every_allowed_interaction_stays_allowed(left: str, right: str) -> None:
    a, b = ScopeSet.parse(left), ScopeSet.parse(right)
    assert a.issubset(a)
    if a.issubset(b):
        for resource_type in CONCRETE_TYPES:
            for letter in "cruds":
                assert not a.allows(resource_type, letter) or b.allows(resource_type, letter)
    union = ScopeSet(a.scopes + b.scopes)
    assert a.issubset(union)
    assert b.issubset(union)
