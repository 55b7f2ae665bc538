"""Property tests of the pure access policy: :func:`person_open` is the precedence its module
states, a hospital reads what it wrote or what every person it is about opens, and a hospital
changes only what it created (or what a feature package lets it edit)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from emr_hub.security.policy import (
    BREAK_GLASS,
    CARE,
    DENY,
    DIRECTORY,
    EVERY_HOSPITAL,
    HUB_ONLY,
    PERMIT,
    Facts,
    Grant,
    Reader,
    change_refusal,
    described_by,
    load_policy,
    may_read,
    person_open,
)

POLICY = load_policy()


# ---------------------------------------------------------------------- the pure policy
NOW = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)
A, B = "Organization/a", "Organization/b"
MOMENTS = st.sampled_from(
    [None, NOW - timedelta(days=2), NOW - timedelta(seconds=1), NOW, NOW + timedelta(seconds=1)]
)


@st.composite
def grants(draw: st.DrawFn) -> Grant:
    kind = draw(st.sampled_from([CARE, PERMIT, DENY, BREAK_GLASS]))
    hospitals = [A, B, EVERY_HOSPITAL] if kind in (PERMIT, DENY) else [A, B]
    return Grant(
        draw(st.sampled_from(hospitals)),
        draw(st.sampled_from(["p", "q"])),
        kind,
        starts=draw(MOMENTS),
        ends=draw(MOMENTS),
        purpose=draw(st.sampled_from([None, "TREAT", "HRESCH"])),
    )


def open_by_precedence(
    organization: str, person: str, restricted: bool, granted: list[Grant], purpose: str
) -> bool:
    """The module docstring's list, read top to bottom: the first kind of grant that applies
    decides; a care relationship counts only for data that is not restricted."""
    applying = [
        g
        for g in granted
        if g.person == person
        and (g.starts is None or g.starts <= NOW)
        and (g.ends is None or g.ends > NOW)
        and g.purpose in (None, purpose)
    ]
    precedence = [
        (BREAK_GLASS, organization, True),
        (DENY, organization, False),
        (PERMIT, organization, True),
        (DENY, EVERY_HOSPITAL, False),
        (PERMIT, EVERY_HOSPITAL, True),
        (CARE, organization, not restricted),
    ]
    for kind, hospital, verdict in precedence:
        if any(g.kind == kind and g.organization == hospital for g in applying):
            return verdict
    return False


@settings(max_examples=400, deadline=None)
@given(
    granted=st.lists(grants(), max_size=6),
    restricted=st.booleans(),
    purpose=st.sampled_from(["TREAT", "HRESCH"]),
)
def test_person_open_is_the_documented_precedence(
    granted: list[Grant], restricted: bool, purpose: str
) -> None:
    for organization in (A, B):
        for person in ("p", "q"):
            expected = open_by_precedence(organization, person, restricted, granted, purpose)
            actual = person_open(
                organization,
                person,
                restricted=restricted,
                grants=granted,
                now=NOW,
                purpose=purpose,
            )
            assert actual is expected, (organization, person)


@settings(max_examples=300, deadline=None)
@given(
    granted=st.lists(grants(), max_size=6),
    persons=st.frozensets(st.sampled_from(["p", "q"])),
    owner=st.sampled_from([A, B, None]),
    restricted=st.booleans(),
    resource_type=st.sampled_from(["Observation", "Subscription", "Organization", "AuditEvent"]),
)
def test_a_hospital_reads_its_own_or_what_every_person_opens(
    granted: list[Grant],
    persons: frozenset[str],
    owner: str | None,
    restricted: bool,
    resource_type: str,
) -> None:
    facts = Facts(resource_type, owner, persons, restricted)
    category = POLICY.category(resource_type)
    expected = category == DIRECTORY or (
        category != HUB_ONLY
        and (
            owner == A
            or (
                category == "patient"
                and bool(persons)
                and all(open_by_precedence(A, p, restricted, granted, "TREAT") for p in persons)
            )
        )
    )
    assert may_read(POLICY, Reader("hospital", A), facts, granted, NOW) is expected
    citizen = Reader("citizen", person="p")
    assert may_read(POLICY, citizen, facts, granted, NOW) is (
        category == DIRECTORY or (category == "patient" and persons == {"p"})
    )


WRITABLE = ["Observation", "Encounter", "Task", "Patient", "Subscription", "Medication"]


@settings(max_examples=300, deadline=None)
@given(
    resource_type=st.sampled_from([*WRITABLE, "Organization", "Location", "Consent"]),
    writer=st.sampled_from([A, B]),
    owner=st.sampled_from([A, B, None]),
    editors=st.frozensets(st.sampled_from([A, B])),
    existing=st.booleans(),
    deleting=st.booleans(),
    describes=st.sampled_from([None, A, B]),
)
def test_a_hospital_changes_only_what_it_created(
    resource_type: str,
    writer: str,
    owner: str | None,
    editors: frozenset[str],
    existing: bool,
    deleting: bool,
    describes: str | None,
) -> None:
    current: dict[str, Any] | None = {"resourceType": resource_type}
    if resource_type == "Organization" and describes:
        current = {"resourceType": "Organization", "id": describes.split("/")[1]}
    elif resource_type == "Location" and describes:
        current = {"resourceType": "Location", "managingOrganization": {"reference": describes}}
    if not existing:
        current, owner = None, None
    new = None if deleting else {"resourceType": resource_type}
    refusal = change_refusal(
        POLICY,
        Reader("hospital", writer),
        resource_type,
        existing=existing,
        owner=owner,
        current=current,
        new=new,
        editors=editors,
    )
    described = described_by(current) if current is not None else None
    if resource_type == "Consent" and deleting:
        allowed = False  # withdrawn, never deleted
    elif not existing:
        allowed = True  # a create, for any patient
    else:
        allowed = (
            owner == writer
            or writer in editors
            or (POLICY.category(resource_type) == DIRECTORY and writer in (described or ()))
        )
    assert (refusal is None) is allowed, refusal
    assert (
        change_refusal(
            POLICY,
            Reader("operator"),
            resource_type,
            existing=existing,
            owner=owner,
            current=current,
            new=new,
            editors=editors,
        )
        is None
    )  # the operator changes everything but the hub's own records
