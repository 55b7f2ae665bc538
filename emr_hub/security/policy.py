"""The access policy: who may see and change what. Pure: no I/O, no SQL.

This module is the policy's one statement. :mod:`emr_hub.security.access` applies the same
rules inside the SQL of every read path, and the property tests check that the two agree.

Resource types fall in five categories (``data/access_policy.json``, overridable):

* **directory** (Organization, Location, Endpoint, Practitioner ...): every authenticated
  principal reads them; an entry is changed by the hospital it describes (:func:`described_by`:
  an Organization, its departments, Locations, Endpoints...) and by its author, never by
  another hospital. A hospital may add entries (the outside laboratory of a result, a payer).
* **patient** data (every other type of the R4 Patient compartment): a hospital reads a
  resource when it wrote it, or when it may see *every* person the resource is about
  (:func:`person_open`): a care relationship, the person's Consent, or break-the-glass. A
  citizen reads what is about her alone. A resource of a patient type that names no patient is
  its author's only.
* **private** (Subscription, Binary, Bundle, Device ...): its author's only.
* **shared** (Medication, Questionnaire, ValueSet ... everything else): every authenticated
  principal reads them; its author writes them.
* **hub_only** (AuditEvent): written by the hub alone, read through the audit routes.

Writes: a hospital creates for any patient (recording a visit is how a relationship starts:
such self-declared access is audited and shown to the patient) and changes or deletes only
what it wrote; feature packages may name more editors of a resource (the referral workflow's
two hospitals on a referral Task). A citizen writes only Consents about herself. The operator
sees and changes everything.

Whether a person's records are open to a hospital (:func:`person_open`), from the grants that
concern the pair, strongest first:

1. break-the-glass by this hospital: open (it wins over everything, deny included);
2. a Consent denying this hospital: closed;
3. a Consent permitting this hospital: open;
4. a Consent denying every hospital: closed;
5. a Consent permitting every hospital: open;
6. a care relationship of this hospital: open, unless the resource is restricted.

A restricted resource (security label R or V, or a sensitive category such as HIV, mental
health or substance use) is open only through 1, 3, 5, to its author and to the patient.
Consent grants with a purpose apply to requests of that purpose only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from emr_hub.fhir.search.compartment import patient_compartment
from emr_hub.fhir.validation import R4_RESOURCE_TYPES

DIRECTORY, PATIENT, PRIVATE, SHARED, HUB_ONLY = (
    "directory",
    "patient",
    "private",
    "shared",
    "hub_only",
)
CARE, PERMIT, DENY, BREAK_GLASS = "care", "permit", "deny", "break-glass"
GRANT_KINDS = (CARE, PERMIT, DENY, BREAK_GLASS)
EVERY_HOSPITAL = "*"
"""The ``organization`` of a Consent grant that names no hospital: it applies to all."""

STRENGTH = {BREAK_GLASS: 7, DENY: 6, PERMIT: 5, "deny-all": 4, "permit-all": 3, CARE: 1}
"""The rank of each grant in :func:`person_open`: the strongest grant decides, and an odd rank
opens. Shared with the SQL form, which takes the maximum rank in one probe."""

DIRECTORY_DESCRIBERS: Mapping[str, tuple[str, ...]] = {
    "Organization": ("partOf",),
    "OrganizationAffiliation": ("organization", "participatingOrganization"),
    "Location": ("managingOrganization",),
    "Endpoint": ("managingOrganization",),
    "HealthcareService": ("providedBy",),
    "PractitionerRole": ("organization",),
}
"""For each directory type, the elements naming the Organizations it describes (an Organization
also describes itself). A Practitioner names none: its author maintains it."""


@dataclass(frozen=True)
class Policy:
    """The policy's data: categories, the labels that restrict, and the relationship windows."""

    directory: frozenset[str]
    private: frozenset[str]
    shared: frozenset[str]
    hub_only: frozenset[str]
    restricted_labels: frozenset[tuple[str, str]]
    referral_days: int = 90
    break_glass_hours: float = 4.0
    patient_types: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        listed = self.directory | self.private | self.shared | self.hub_only
        object.__setattr__(self, "patient_types", frozenset(patient_compartment()) - listed)

    def category(self, resource_type: str) -> str:
        if resource_type in self.patient_types:
            return PATIENT
        for name in (DIRECTORY, PRIVATE, HUB_ONLY):
            if resource_type in getattr(self, name):
                return name
        return SHARED

    @property
    def public_types(self) -> frozenset[str]:
        """Types every authenticated principal reads: directory and shared."""
        return frozenset(t for t in R4_RESOURCE_TYPES if self.category(t) in (DIRECTORY, SHARED))

    def is_restricted(self, labels: Iterable[tuple[str | None, str | None]]) -> bool:
        return any((system, code) in self.restricted_labels for system, code in labels)


def load_policy(
    override: Path | None = None, *, referral_days: int = 90, break_glass_hours: float = 4.0
) -> Policy:
    """The policy of ``data/access_policy.json``, with the keys of ``override`` replacing its
    own (a JSON file the operator points ``EMR_HUB_ACCESS_POLICY`` at)."""
    data = dict(_default_data())
    if override is not None:
        try:
            replacement = json.loads(Path(override).read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"EMR_HUB_ACCESS_POLICY {override}: {exc}") from exc
        if not isinstance(replacement, dict):
            raise ValueError(f"EMR_HUB_ACCESS_POLICY {override}: not a JSON object")
        data.update(replacement)
    categories = {}
    for name in (DIRECTORY, PRIVATE, SHARED, HUB_ONLY):
        types = frozenset(data.get(name) or ())
        unknown = sorted(types - R4_RESOURCE_TYPES)
        if unknown:
            raise ValueError(f"access policy {name}: not R4 resource types: {unknown}")
        categories[name] = types
    labels = data.get("restricted_labels") or {}
    restricted = frozenset(
        (system, code) for system, codes in labels.items() if system != "source" for code in codes
    )
    return Policy(
        restricted_labels=restricted,
        referral_days=referral_days,
        break_glass_hours=break_glass_hours,
        **categories,
    )


@cache
def _default_data() -> Mapping[str, Any]:
    text = resources.files("emr_hub.security.data").joinpath("access_policy.json").read_text()
    return json.loads(text)  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------- grants
@dataclass(frozen=True)
class Grant:
    """One reason (or, ``deny``, one refusal) for ``organization`` to see ``person``'s data."""

    organization: str
    person: str
    kind: str
    starts: datetime | None = None
    ends: datetime | None = None
    purpose: str | None = None

    def applies(self, now: datetime, purpose: str) -> bool:
        return (
            (self.starts is None or self.starts <= now)
            and (self.ends is None or self.ends > now)
            and (self.purpose is None or self.purpose == purpose)
        )

    def strength(self) -> int:
        if self.organization == EVERY_HOSPITAL:
            return STRENGTH[f"{self.kind}-all"]
        return STRENGTH[self.kind]


def person_open(
    organization: str,
    person: str,
    *,
    restricted: bool,
    grants: Iterable[Grant],
    now: datetime,
    purpose: str,
) -> bool:
    """Whether ``person``'s data (a restricted resource when ``restricted``) is open to the
    hospital ``organization`` at ``now`` for ``purpose``: the strongest applying grant decides
    (see the module docstring); a care relationship does not open restricted data."""
    ranks = [
        grant.strength()
        for grant in grants
        if grant.person == person
        and grant.organization in (organization, EVERY_HOSPITAL)
        and grant.applies(now, purpose)
        and not (grant.kind == CARE and restricted)
    ]
    return bool(ranks) and max(ranks) % 2 == 1


# --------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class Reader:
    """The facts about a principal that reading depends on."""

    kind: str  # hospital | operator | citizen
    organization: str | None = None
    person: str | None = None
    purpose: str = "TREAT"


@dataclass(frozen=True)
class Facts:
    """The facts about a stored resource that the policy reads."""

    resource_type: str
    owner: str | None
    persons: frozenset[str]
    restricted: bool


def may_read(
    policy: Policy, reader: Reader, facts: Facts, grants: Iterable[Grant], now: datetime
) -> bool:
    if reader.kind == "operator":
        return True
    category = policy.category(facts.resource_type)
    if category in (DIRECTORY, SHARED):
        return True
    if reader.kind == "citizen":
        return category == PATIENT and bool(facts.persons) and facts.persons == {reader.person}
    if category != HUB_ONLY and facts.owner is not None and facts.owner == reader.organization:
        return True
    if category != PATIENT or not facts.persons or reader.organization is None:
        return False
    grants = list(grants)
    return all(
        person_open(
            reader.organization,
            person,
            restricted=facts.restricted,
            grants=grants,
            now=now,
            purpose=reader.purpose,
        )
        for person in facts.persons
    )


# --------------------------------------------------------------------------- writing
def described_by(resource: Mapping[str, Any]) -> frozenset[str] | None:
    """The Organizations (``Organization/<id>``) a directory resource describes, or None for a
    type whose rows are maintained by their author (Practitioner, non-directory types)."""
    resource_type = resource.get("resourceType")
    elements = DIRECTORY_DESCRIBERS.get(str(resource_type))
    if elements is None:
        return None
    found = set()
    if resource_type == "Organization" and resource.get("id"):
        found.add(f"Organization/{resource['id']}")
    for element in elements:
        value = resource.get(element)
        for item in value if isinstance(value, list) else [value]:
            reference = item.get("reference") if isinstance(item, dict) else None
            if isinstance(reference, str) and reference.startswith("Organization/"):
                found.add(reference)
    return frozenset(found)


def change_refusal(
    policy: Policy,
    writer: Reader,
    resource_type: str,
    *,
    existing: bool,
    owner: str | None,
    current: Mapping[str, Any] | None,
    new: Mapping[str, Any] | None,
    editors: frozenset[str] = frozenset(),
    own_patient: bool = False,
) -> str | None:
    """Why ``writer`` may not make this write, or None when it may.

    ``existing``: something is stored under the id (live, or deleted: then ``current`` is
    None); ``owner`` the Organization that created it; ``current`` its live content; ``new``
    the resource to store (None for a delete); ``editors`` the Organizations a feature package
    lets change it besides its owner; ``own_patient`` whether a citizen's Consent (and the one
    it replaces) is about herself.
    """
    category = policy.category(resource_type)
    if category == HUB_ONLY:
        return f"{resource_type} is written by the hub alone"
    if writer.kind == "operator":
        return None
    if resource_type == "Consent" and new is None:
        return "A Consent is withdrawn (status inactive), not deleted: it is evidence"
    if writer.kind == "citizen":
        if resource_type != "Consent":
            return "A citizen writes only her own Consents"
        return None if own_patient else "A citizen writes Consents about herself only"
    organization = writer.organization
    if category == DIRECTORY and current is not None:
        described = described_by(current)
        if described is not None and organization in described:
            return None  # the hospital an entry describes maintains it (and so does its author)
    if not existing:
        return None
    if owner is not None and owner == organization:
        return None
    if organization in editors:
        return None
    if category == DIRECTORY:
        return (
            f"This {resource_type} describes another hospital: only that hospital, or the one "
            "that wrote it, may change it"
        )
    return f"{resource_type} was written by another hospital: only its author may change it"
