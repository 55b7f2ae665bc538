"""Access grants kept in step with the writes: a change hook of the FHIR core.

A grant says why a hospital may see a person's records (:mod:`emr_hub.security.policy`). Grants
come from resources: an Encounter or EpisodeOfCare a hospital recorded, an Appointment it
holds, a referral (the referrals package declares that one), the person's Consent. Each
resource type with such a meaning has a *deriver*, registered here, that reads the resource as
stored and says which grants it stands for, keyed by the resource they come from (a Task
changes the grants of its referral, so a deriver may answer for another source).

Before every commit that changed resources, :func:`maintain_grants` asks the derivers about the
resources written (reading what is stored now, so a batch entry rolled back on its savepoint
counts for nothing), replaces the grants of each source they answer for, and moves the grants
of a Patient whose person changed (a CCCD added or corrected) to the new person. It runs before
the Subscription matching, which reads the grants.

Grants name patients; the person of each is looked up when the grant is written (the Patient's
own compartment row, or the id's person when no such Patient is stored yet, corrected when it
is).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, tuple_, update
from sqlalchemy.orm import Session

from emr_hub.fhir.persons import person_of, person_of_patient_id
from emr_hub.fhir.search.indexer import COMPARTMENT
from emr_hub.fhir.search.values import LOCAL_ZONE
from emr_hub.fhir.store import FhirStore, Stored
from emr_hub.security.policy import CARE, Grant, Policy
from storage.bulk import write_rows
from storage.tables import AccessGrant

GRANT = AccessGrant.__table__
CHUNK = 500


@dataclass(frozen=True)
class GrantSpec:
    """A grant as a deriver states it: for ``organization`` over ``patient_id``'s person."""

    organization: str
    patient_id: str
    kind: str = CARE
    starts: datetime | None = None
    ends: datetime | None = None
    purpose: str | None = None

    @property
    def strength(self) -> int:
        return Grant(self.organization, "", self.kind).strength()


Source = tuple[str, str]
Deriver = Callable[[FhirStore, Stored, Policy], dict[Source, list[GrantSpec]]]
_DERIVERS: dict[str, list[Deriver]] = {}


def register(resource_type: str, deriver: Deriver) -> None:
    """Declare that writes of ``resource_type`` make or change grants (once)."""
    derivers = _DERIVERS.setdefault(resource_type, [])
    if deriver not in derivers:
        derivers.append(deriver)


def maintain_grants(store: FhirStore, changes: list[Stored]) -> None:
    from emr_hub.security.access import process_policy

    policy = process_policy()
    keys = list(
        dict.fromkeys(
            (c.resource_type, c.id)
            for c in changes
            if c.resource_type in _DERIVERS or c.resource_type == "Patient"
        )
    )
    if not keys:
        return
    stored = {(s.resource_type, s.id): s for s in store.load_many(keys, checked=False)}
    grants: dict[Source, list[GrantSpec]] = {}
    for key in keys:
        current = stored.get(key)
        if key[0] in _DERIVERS:
            if current is None:  # deleted (or its write rolled back): it grants nothing
                grants[key] = []
                continue
            for deriver in _DERIVERS[key[0]]:
                grants.update(deriver(store, current, policy))
    if grants:
        replace_grants(store.session, grants)
    for (resource_type, resource_id), current in stored.items():
        if resource_type == "Patient" and current.content is not None:
            _move_to_person(store, resource_id, person_of(current.content))


def replace_grants(session: Session, grants: dict[Source, list[GrantSpec]]) -> None:
    """The grants of each source become exactly those given."""
    sources = sorted(grants)
    for start in range(0, len(sources), CHUNK):
        chunk = sources[start : start + CHUNK]
        session.execute(
            delete(GRANT).where(tuple_(GRANT.c.source_type, GRANT.c.source_id).in_(chunk))
        )
    specs = [(source, spec) for source in sources for spec in grants[source]]
    if not specs:
        return
    persons = persons_of(session, {spec.patient_id for _, spec in specs})
    rows = [
        {
            "organization": spec.organization,
            "person": persons[spec.patient_id],
            "kind": spec.kind,
            "strength": spec.strength,
            "purpose": spec.purpose,
            "patient_id": spec.patient_id,
            "source_type": source[0],
            "source_id": source[1],
            "starts": _utc(spec.starts),
            "ends": _utc(spec.ends),
        }
        for source, spec in dict.fromkeys(specs)
    ]
    write_rows(session, GRANT, rows)


def _utc(moment: datetime | None) -> datetime | None:
    """Stored in UTC, like every instant of the hub: SQLite keeps a datetime's wall time and
    drops its offset, so an end in Vietnam time would be read, and compared, 7 hours late."""
    return None if moment is None else moment.astimezone(UTC)


def persons_of(session: Session, patient_ids: Iterable[str]) -> dict[str, str]:
    """The person of each patient id: its stored Patient's, else the id's own."""
    wanted = sorted(set(patient_ids))
    found: dict[str, str] = {}
    for start in range(0, len(wanted), CHUNK):
        chunk = wanted[start : start + CHUNK]
        found.update(
            session.execute(
                select(COMPARTMENT.c.resource_id, COMPARTMENT.c.person).where(
                    COMPARTMENT.c.resource_type == "Patient",
                    COMPARTMENT.c.resource_id.in_(chunk),
                    COMPARTMENT.c.patient_id == COMPARTMENT.c.resource_id,
                )
            ).all()
        )
    return {pid: found.get(pid) or person_of_patient_id(pid) for pid in wanted}


def _move_to_person(store: FhirStore, patient_id: str, person: str) -> None:
    store.session.execute(
        update(GRANT)
        .where(GRANT.c.patient_id == patient_id, GRANT.c.person != person)
        .values(person=person)
    )


# ------------------------------------------------------------- reading resources
def patient_of(reference: Any) -> str | None:
    """The id of a local ``Patient/<id>`` reference, else None."""
    return _local_id(reference, "Patient")


def organization_of(reference: Any) -> str | None:
    """A local ``Organization/<id>`` reference as that text, else None."""
    local = _local_id(reference, "Organization")
    return f"Organization/{local}" if local else None


def _local_id(reference: Any, resource_type: str) -> str | None:
    text = reference.get("reference") if isinstance(reference, dict) else None
    if not isinstance(text, str) or not text.startswith(f"{resource_type}/"):
        return None
    rest = text.split("/", 2)[1]
    return rest or None


def instant(text: Any, *, end: bool = False) -> datetime | None:
    """A FHIR date, dateTime or instant as an aware datetime (without a zone: Asia/Ho_Chi_Minh,
    +07:00); None when absent or partial (a year or a month alone). A date alone as the
    ``end`` of a period covers its whole day: the instant is the next midnight."""
    if not isinstance(text, str) or len(text) < 10:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if end and len(text) == 10:
        moment += timedelta(days=1)
    return moment if moment.tzinfo else moment.replace(tzinfo=LOCAL_ZONE)


def after(moment: datetime | None, days: int) -> datetime | None:
    return None if moment is None else moment + timedelta(days=days)


# ------------------------------------------------------------------- derivers
def _visit(patient_element: str, organization_element: str) -> Deriver:
    """A visit (Encounter, EpisodeOfCare) makes its hospital a carer of the patient: the
    hospital whose client recorded it, or for the operator's records the one named."""

    def derive(store: FhirStore, stored: Stored, policy: Policy) -> dict[Source, list[GrantSpec]]:
        content = stored.content or {}
        patient = patient_of(content.get(patient_element))
        organization = stored.owner or organization_of(content.get(organization_element))
        specs = [GrantSpec(organization, patient)] if patient and organization else []
        return {(stored.resource_type, stored.id): specs}

    return derive


def _appointment(store: FhirStore, stored: Stored, policy: Policy) -> dict[Source, list[GrantSpec]]:
    """An Appointment makes the hospital holding it a carer of its patients, until
    ``referral_days`` after the appointment (open while it has no date)."""
    content = stored.content or {}
    key = (stored.resource_type, stored.id)
    if content.get("status") == "entered-in-error":
        return {key: []}
    actors = [p.get("actor") for p in content.get("participant") or [] if isinstance(p, dict)]
    patients = [p for p in (patient_of(a) for a in actors) if p]
    organizations = (
        [stored.owner] if stored.owner else [o for o in (organization_of(a) for a in actors) if o]
    )
    ends = after(instant(content.get("end")) or instant(content.get("start")), policy.referral_days)
    return {
        key: [GrantSpec(o, p, ends=ends) for o in dict.fromkeys(organizations) for p in patients]
    }


_ENCOUNTER = _visit("subject", "serviceProvider")
_EPISODE = _visit("patient", "managingOrganization")


def install() -> None:
    """Register the derivers of the core types (the referral's is the referrals package's)."""
    register("Encounter", _ENCOUNTER)
    register("EpisodeOfCare", _EPISODE)
    register("Appointment", _appointment)
