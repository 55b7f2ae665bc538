"""The pure access policy: categories, who opens a person's records, who may write what."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from emr_hub.security.policy import (
    BREAK_GLASS,
    CARE,
    DENY,
    DIRECTORY,
    EVERY_HOSPITAL,
    HUB_ONLY,
    PATIENT,
    PERMIT,
    PRIVATE,
    SHARED,
    Facts,
    Grant,
    Reader,
    change_refusal,
    described_by,
    load_policy,
    may_read,
    person_open,
)

NOW = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)
A, B = "Organization/a", "Organization/b"
POLICY = load_policy()


def test_categories() -> None:
    assert POLICY.category("Organization") == DIRECTORY
    assert POLICY.category("Observation") == PATIENT
    assert POLICY.category("Consent") == PATIENT
    assert POLICY.category("Subscription") == PRIVATE
    assert POLICY.category("Medication") == SHARED
    assert POLICY.category("Schedule") == SHARED  # in the compartment, but listed as shared
    assert POLICY.category("AuditEvent") == HUB_ONLY


@pytest.mark.parametrize(
    ("grants", "restricted", "expected"),
    [
        ([], False, False),
        ([Grant(A, "p", CARE)], False, True),
        ([Grant(A, "p", CARE)], True, False),  # care does not open restricted data
        ([Grant(B, "p", CARE)], False, False),  # another hospital's relationship
        ([Grant(A, "q", CARE)], False, False),  # another person
        ([Grant(A, "p", CARE), Grant(A, "p", DENY)], False, False),  # a deny wins over care
        ([Grant(A, "p", CARE), Grant(EVERY_HOSPITAL, "p", DENY)], False, False),
        ([Grant(A, "p", PERMIT), Grant(EVERY_HOSPITAL, "p", DENY)], False, True),  # exception
        ([Grant(A, "p", PERMIT), Grant(A, "p", DENY)], False, False),
        ([Grant(A, "p", PERMIT)], True, True),  # a consent opens restricted data
        ([Grant(EVERY_HOSPITAL, "p", PERMIT)], True, True),
        ([Grant(A, "p", DENY), Grant(A, "p", BREAK_GLASS)], True, True),  # glass wins
        ([Grant(A, "p", CARE, ends=NOW)], False, False),  # ended at this instant
        ([Grant(A, "p", CARE, starts=NOW + timedelta(seconds=1))], False, False),
        ([Grant(A, "p", PERMIT, purpose="HRESCH")], True, False),  # another purpose
        ([Grant(A, "p", PERMIT, purpose="TREAT")], True, True),
    ],
)
def test_person_open(grants: list[Grant], restricted: bool, expected: bool) -> None:
    assert (
        person_open(A, "p", restricted=restricted, grants=grants, now=NOW, purpose="TREAT")
        is expected
    )


def test_reading_by_kind() -> None:
    hospital, citizen = Reader("hospital", A), Reader("citizen", person="p")
    observation = Facts("Observation", B, frozenset({"p"}), False)
    shared_by_two = Facts("Group", B, frozenset({"p", "q"}), False)
    nobody = Facts("Observation", B, frozenset(), False)
    care = [Grant(A, "p", CARE)]
    assert may_read(POLICY, hospital, observation, care, NOW)
    assert not may_read(POLICY, hospital, observation, [], NOW)
    assert not may_read(POLICY, hospital, shared_by_two, care, NOW)  # every person must be open
    assert not may_read(POLICY, hospital, nobody, care, NOW)  # about no one: its author's only
    assert may_read(POLICY, hospital, Facts("Observation", A, frozenset(), False), [], NOW)
    assert may_read(POLICY, citizen, observation, [], NOW)
    assert not may_read(POLICY, citizen, shared_by_two, [], NOW)
    assert not may_read(POLICY, citizen, Facts("Subscription", B, frozenset(), False), [], NOW)
    assert may_read(POLICY, citizen, Facts("Organization", None, frozenset(), False), [], NOW)
    assert not may_read(POLICY, hospital, Facts("Subscription", B, frozenset(), False), [], NOW)
    assert may_read(POLICY, Reader("operator"), shared_by_two, [], NOW)


def test_described_by() -> None:
    assert described_by({"resourceType": "Organization", "id": "x"}) == {"Organization/x"}
    department = {"resourceType": "Organization", "id": "d", "partOf": {"reference": A}}
    assert described_by(department) == {"Organization/d", A}
    location = {"resourceType": "Location", "managingOrganization": {"reference": B}}
    assert described_by(location) == {B}
    assert described_by({"resourceType": "Practitioner"}) is None


def refusal(writer: Reader, resource_type: str, **kw: object) -> str | None:
    defaults: dict[str, object] = {"existing": True, "owner": B, "current": None, "new": {}}
    return change_refusal(POLICY, writer, resource_type, **{**defaults, **kw})  # type: ignore[arg-type]


def test_writing() -> None:
    a = Reader("hospital", A)
    assert refusal(a, "Observation", existing=False, owner=None) is None  # create for anyone
    assert refusal(a, "Observation", owner=A) is None
    assert "only its author" in str(refusal(a, "Observation"))
    assert refusal(a, "Task", editors=frozenset({A})) is None
    assert "hub alone" in str(refusal(a, "AuditEvent", existing=False))
    assert "hub alone" in str(refusal(Reader("operator"), "AuditEvent", existing=False))
    assert refusal(Reader("operator"), "Observation") is None
    bach_mai = {"resourceType": "Organization", "id": "a"}
    assert refusal(a, "Organization", owner=None, current=bach_mai) is None  # its own entry
    other = {"resourceType": "Organization", "id": "b"}
    assert "describes another hospital" in str(refusal(a, "Organization", current=other))
    assert "evidence" in str(refusal(a, "Consent", owner=A, new=None))
    citizen = Reader("citizen", person="p")
    assert refusal(citizen, "Consent", existing=False, own_patient=True) is None
    assert "herself" in str(refusal(citizen, "Consent", existing=False, own_patient=False))
    assert "only her own Consents" in str(refusal(citizen, "Observation", existing=False))


def test_policy_file_overrides_and_is_checked(tmp_path: Path) -> None:
    override = tmp_path / "policy.json"
    override.write_text('{"shared": ["Schedule", "Slot", "Binary"], "private": ["Subscription"]}')
    policy = load_policy(override)
    assert policy.category("Binary") == SHARED
    assert policy.category("Bundle") == SHARED  # no longer private: only what the file lists
    override.write_text('{"private": ["NotAType"]}')
    with pytest.raises(ValueError, match="NotAType"):
        load_policy(override)
    override.write_text("[1]")
    with pytest.raises(ValueError, match="not a JSON object"):
        load_policy(override)
