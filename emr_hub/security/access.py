"""The access policy in SQL: the condition every read path adds, and the check every write
makes. Mirrors :mod:`emr_hub.security.policy` rule for rule (the property tests hold the two
to each other).

Reading, for a hospital ``O`` at instant ``now``, a row ``r`` of the resource table is kept when

* ``r`` is of a directory or shared type; or
* ``r.owner_org = O`` (and the type is not the hub's own); or
* ``r`` is patient data about at least one person (``patient_compartment``) and no person it
  is about is closed to ``O``: for each of its compartment rows, the strongest grant of
  ``access_grant`` for (person, ``O`` or ``*``) valid at ``now`` for the request's purpose
  (care grants left out when ``r`` carries a restricting security label) has an odd rank
  (:data:`~emr_hub.security.policy.STRENGTH`). One index probe per compartment row.

A citizen keeps directory and shared rows and the patient data about her person alone; the
operator keeps everything (no condition). When the query is about one type, the condition is
specialised to that type's category, so a search of Organizations carries none at all.
"""

from __future__ import annotations

import logging
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    ColumnElement,
    FromClause,
    String,
    and_,
    bindparam,
    case,
    false,
    func,
    or_,
    select,
)
from sqlalchemy.orm import Session

from emr_hub.errors import FhirError, Issue, forbidden
from emr_hub.fhir import hooks, labels
from emr_hub.fhir.search.compile import SEARCHED
from emr_hub.fhir.search.indexer import COMPARTMENT
from emr_hub.fhir.store import OPERATOR_AUTHOR, Author, FhirStore, Stored
from emr_hub.security import policy as rules
from emr_hub.security.policy import Policy, Reader, load_policy
from storage.tables import AccessGrant

if TYPE_CHECKING:
    from emr_hub.config import Settings
    from emr_hub.security.principal import Principal

log = logging.getLogger(__name__)
GRANT = AccessGrant.__table__


@lru_cache(maxsize=8)
def _policy(path: Path | None, referral_days: int, break_glass_hours: float) -> Policy:
    return load_policy(path, referral_days=referral_days, break_glass_hours=break_glass_hours)


def policy_of(settings: Settings) -> Policy:
    """The policy the settings describe (loaded once per distinct settings)."""
    return _policy(
        settings.access_policy, settings.referral_access_days, settings.break_glass_hours
    )


_process = {"policy": load_policy(), "enforced": True}
labels.configure(load_policy().restricted_labels)


def configure(settings: Settings) -> None:
    """Set the policy of what runs outside a request (the access grants a write makes, the
    matching of writes against Subscriptions, the labels the store reads) from the process's
    settings."""
    policy = policy_of(settings)
    _process["policy"] = policy
    _process["enforced"] = settings.policy_enforced
    if settings.benchmark_without:
        log.warning(
            "EMR_HUB_BENCHMARK_WITHOUT is set: %s off, for a benchmark only",
            settings.benchmark_without,
        )
    labels.configure(policy.restricted_labels)


def process_policy() -> Policy:
    policy = _process["policy"]
    assert isinstance(policy, Policy)
    return policy


def hospital_access(organization: str | None, now: datetime) -> PolicyAccess | None:
    """What ``organization`` may see at ``now`` (None: the operator, or no policy): the
    Subscriptions a hospital owns match only what it may read."""
    if organization is None or not _process["enforced"]:
        return None
    from emr_hub.security.principal import HOSPITAL, Principal
    from emr_hub.security.scopes import ScopeSet

    subscriber = Principal("subscriber", organization, ScopeSet(), "", kind=HOSPITAL)
    return PolicyAccess(process_policy(), subscriber, now)


def reader_of(principal: Principal) -> Reader:
    return Reader(
        kind=principal.kind,
        organization=principal.organization,
        person=principal.person,
        purpose=principal.purpose,
    )


def author_of(principal: Principal) -> Author:
    if principal.is_citizen:
        return Author(f"citizen/{principal.person}", None)
    return Author(principal.client_id, principal.organization, operator=principal.is_operator)


def store_for(
    session: Session,
    settings: Settings,
    principal: Principal | None,
    *,
    moment: datetime | None = None,
) -> FhirStore:
    """The FHIR store of one request: reads filtered and writes checked by the policy for
    ``principal`` (none for the operator or when a benchmark turns the policy off), every
    version written with ``principal`` as its author."""
    author = author_of(principal) if principal is not None else OPERATOR_AUTHOR
    store = FhirStore(session, moment=moment, base_url=settings.fhir_base_url, author=author)
    if principal is not None and settings.policy_enforced:
        store.access = PolicyAccess(policy_of(settings), principal, store.moment)
    return store


# The principal's values enter the SQL as named parameters without a value, so a condition
# built for one principal serves every other of the same kind, and a statement executed
# without the principal's values (PolicyAccess.params) fails instead of running with
# someone else's.
_ORGANIZATION = bindparam("policy_org", type_=String, required=True)
_PERSON = bindparam("policy_person", type_=String, required=True)
_PURPOSE = bindparam("policy_purpose", type_=String, required=True)
_NOW = bindparam("policy_now", type_=GRANT.c.starts.type, required=True)

SHARED_ALIASES: tuple[FromClause, ...] = (SEARCHED,)
"""The table aliases whose access condition is kept once built (every search uses them)."""
_CONDITIONS: dict[tuple[Any, ...], ColumnElement[bool] | None] = {}
"""Per (policy, kind of reader, shared alias, type): a few per type."""


class _Condition:
    """The access condition of a kind of reader under ``policy``, as SQL."""

    def __init__(self, policy: Policy, kind: str) -> None:
        self.policy = policy
        self.kind = kind

    def on(self, resource: FromClause, resource_type: str | None) -> ColumnElement[bool] | None:
        if resource_type is not None:
            return self._for_type(resource, resource_type)
        policy = self.policy
        kind = resource.c.resource_type
        public = kind.in_(sorted(policy.public_types))
        patient = and_(kind.in_(sorted(policy.patient_types)), self._patient_data(resource))
        if self.kind == "citizen":
            return or_(public, patient)
        owned = and_(resource.c.owner_org == _ORGANIZATION, kind.not_in(sorted(policy.hub_only)))
        return or_(public, owned, patient)

    def _for_type(self, resource: FromClause, resource_type: str) -> ColumnElement[bool] | None:
        category = self.policy.category(resource_type)
        if category in (rules.DIRECTORY, rules.SHARED):
            return None
        if self.kind == "citizen":
            return self._patient_data(resource) if category == rules.PATIENT else false()
        if category == rules.HUB_ONLY:
            return false()
        owned = resource.c.owner_org == _ORGANIZATION
        if category == rules.PRIVATE:
            return owned
        return or_(owned, self._patient_data(resource))

    def _patient_data(self, resource: FromClause) -> ColumnElement[bool]:
        """``resource`` is about someone, and about nobody closed to the reader: over its
        compartment rows, the least "open" (1) or "closed" (0) is 1 (and none is NULL). One
        scalar subquery, so a chain of several links stays within SQLite's parser depth."""
        member = COMPARTMENT.alias()
        if self.kind == "citizen":
            is_open: ColumnElement[Any] = case((member.c.person == _PERSON, 1), else_=0)
        else:
            is_open = self._openness(member, resource)
        least = (
            select(func.min(is_open))
            .where(
                member.c.resource_type == resource.c.resource_type,
                member.c.resource_id == resource.c.id,
            )
            .correlate(resource)
            .scalar_subquery()
        )
        return least == 1

    def _openness(self, member: FromClause, resource: FromClause) -> ColumnElement[Any]:
        """1 when a grant opens the person of compartment row ``member`` to the reader's
        hospital (the strongest applying grant has an odd rank), else 0. A care relationship
        does not count for a restricted resource."""
        grant = GRANT.alias()
        strongest = (
            select(func.max(grant.c.strength))
            .where(
                grant.c.person == member.c.person,
                or_(
                    grant.c.organization == _ORGANIZATION,
                    grant.c.organization == rules.EVERY_HOSPITAL,
                ),
                or_(grant.c.starts.is_(None), grant.c.starts <= _NOW),
                or_(grant.c.ends.is_(None), grant.c.ends > _NOW),
                or_(grant.c.purpose.is_(None), grant.c.purpose == _PURPOSE),
                or_(grant.c.kind != rules.CARE, resource.c.restricted.is_(False)),
            )
            .correlate(member, resource)
            .scalar_subquery()
        )
        return func.coalesce(strongest, 0).op("%")(2)


class PolicyAccess:
    """:class:`emr_hub.fhir.access.Access` for one principal at one instant."""

    def __init__(self, policy: Policy, principal: Principal, now: datetime) -> None:
        self.policy = policy
        self.principal = principal
        self.reader = reader_of(principal)
        self.now = now

    def shape(self, resource_type: str | None) -> tuple[Any, ...]:
        """What the SQL of :meth:`visible` depends on besides :meth:`params`."""
        return (id(self.policy), self.reader.kind, resource_type)

    def params(self) -> dict[str, Any]:
        """The values of the principal's named parameters."""
        return {
            "policy_org": self.reader.organization,
            "policy_person": self.reader.person,
            "policy_purpose": self.reader.purpose,
            "policy_now": self.now,
        }

    # ------------------------------------------------------------------ reading
    def visible(
        self, resource: FromClause, resource_type: str | None = None
    ) -> ColumnElement[bool] | None:
        """The condition on ``resource``; every statement that holds it is executed with
        :meth:`params`. On an alias every search shares (:data:`SHARED_ALIASES`) it is built
        once per policy, kind of reader and type, and reused."""
        if self.reader.kind == "operator":
            return None
        if not any(resource is shared for shared in SHARED_ALIASES):
            return _Condition(self.policy, self.reader.kind).on(resource, resource_type)
        key = (self.policy, self.reader.kind, resource, resource_type)
        if key not in _CONDITIONS:
            _CONDITIONS[key] = _Condition(self.policy, self.reader.kind).on(resource, resource_type)
        return _CONDITIONS[key]

    # ------------------------------------------------------------------ writing
    def check_writable_type(self, resource_type: str) -> None:
        if self.policy.category(resource_type) == rules.HUB_ONLY:
            raise FhirError(
                405, [Issue("not-supported", f"{resource_type} is written by the hub alone")]
            )

    def check_write(
        self,
        store: FhirStore,
        resource_type: str,
        current: Stored | None,
        new: dict[str, Any] | None,
    ) -> None:
        live = current.content if current is not None and not current.deleted else None
        editors = hooks.editors(resource_type, live) if live is not None else frozenset()
        own_patient = False
        if self.reader.kind == "citizen" and resource_type == "Consent":
            replaced_is_hers = live is not None and self._about_reader(store, live)
            own_patient = (new is None or self._about_reader(store, new)) and (
                current is None or replaced_is_hers
            )
        refusal = rules.change_refusal(
            self.policy,
            self.reader,
            resource_type,
            existing=current is not None,
            owner=current.owner if current is not None else None,
            current=live,
            new=new,
            editors=editors,
            own_patient=own_patient,
        )
        if refusal is None:
            return
        if self.policy.category(resource_type) == rules.HUB_ONLY:
            raise FhirError(405, [Issue("not-supported", refusal)])
        raise forbidden(refusal)

    def _about_reader(self, store: FhirStore, consent: dict[str, Any]) -> bool:
        """A Consent is the citizen's own: its ``patient`` is a Patient of her person."""
        reference = (consent.get("patient") or {}).get("reference", "")
        if not isinstance(reference, str) or not reference.startswith("Patient/"):
            return False
        patient_id = reference.split("/", 1)[1]
        person = store.session.execute(
            select(COMPARTMENT.c.person).where(
                COMPARTMENT.c.resource_type == "Patient",
                COMPARTMENT.c.resource_id == patient_id,
                COMPARTMENT.c.patient_id == patient_id,
            )
        ).scalar()
        return person is not None and person == self.reader.person
