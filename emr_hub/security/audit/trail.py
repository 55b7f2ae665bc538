"""What one request touched, gathered while it runs, for its audit record.

The audit middleware makes a trail for every audited request and puts it on the request's
state; the principal dependency attaches it to the principal; the FHIR routes hand it what
their store read and wrote (:meth:`AuditTrail.absorb`), inside the request's database session,
where the patients of those resources are looked up in one query.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, tuple_

from emr_hub.fhir.search.indexer import COMPARTMENT

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from emr_hub.fhir.store import FhirStore
    from emr_hub.security.principal import Principal

CHUNK = 500


@dataclass
class Touched:
    """A patient whose data the request read or wrote: the person, and the types touched."""

    person: str
    types: set[str] = field(default_factory=set)


@dataclass
class AuditTrail:
    request_id: str
    address: str | None
    method: str
    path: str
    started: datetime
    scope: dict[str, Any] = field(default_factory=dict, repr=False)
    """The request's ASGI scope (its route and path parameters once routed)."""
    principal: Principal | None = None
    interaction: str | None = None
    """The restful-interaction code when the route knows better than its template (a
    ``transaction`` or a ``batch`` on ``POST /fhir``)."""
    read: dict[tuple[str, str], int] = field(default_factory=dict)
    written: dict[tuple[str, str], int] = field(default_factory=dict)
    patients: dict[str, Touched] = field(default_factory=dict)
    persisted: bool = False
    """The audit record is already in the database (written in the transaction of the write)."""
    break_glass_persons: set[str] = field(default_factory=set)

    def absorb(self, store: FhirStore) -> None:
        """Take what ``store`` disclosed and changed, and look up the patients of it (in the
        store's session, so a write's new resources are seen)."""
        for stored in store.disclosed:
            self.read.setdefault((stored.resource_type, stored.id), stored.version_id)
        for stored in store.changes:
            self.written[(stored.resource_type, stored.id)] = stored.version_id
        known = store.members
        keys = [k for k in dict.fromkeys([*self.read, *self.written]) if k not in known]
        self._add_patients(store.session, keys)
        for key, members in known.items():
            for patient_id, person in members:
                self.patients.setdefault(patient_id, Touched(person)).types.add(key[0])
        store.disclosed = []

    def _add_patients(self, session: Session, keys: list[tuple[str, str]]) -> None:
        by_key: defaultdict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
        for start in range(0, len(keys), CHUNK):
            chunk = keys[start : start + CHUNK]
            rows = session.execute(
                select(
                    COMPARTMENT.c.resource_type,
                    COMPARTMENT.c.resource_id,
                    COMPARTMENT.c.patient_id,
                    COMPARTMENT.c.person,
                ).where(tuple_(COMPARTMENT.c.resource_type, COMPARTMENT.c.resource_id).in_(chunk))
            )
            for resource_type, resource_id, patient_id, person in rows:
                by_key[(resource_type, resource_id)].append((patient_id, person))
        for (resource_type, _), members in by_key.items():
            for patient_id, person in members:
                self.patients.setdefault(patient_id, Touched(person)).types.add(resource_type)

    def add_target_patients(self, session: Session, resource_type: str, resource_id: str) -> None:
        """The patients of the resource a refused request aimed at, so the refusal shows in
        their access log (looked up whoever asked: the audit may know what the caller may not)."""
        self._add_patients(session, [(resource_type, resource_id)])
