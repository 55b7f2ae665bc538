"""The referral rules, enforced on every write through the FHIR core's write hooks.

* A referral ServiceRequest (category SNOMED 3457005) must go from an existing requester to an
  existing performer Organization along an allowed direction (:func:`rules.check_direction`),
  and its ``occurrencePeriod`` is computed when absent and checked when present
  (:func:`rules.check_validity`), from ``authoredOn`` (the signing).
  The letter is written by the referring hospital: its ``requester`` is the caller's
  Organization (403 otherwise).
* A Task whose ``focus`` is a ServiceRequest is a referral Task: it is created ``requested`` by
  the requester's hospital and moves only along the state machine, each step by the hospital
  whose role it is (:mod:`emr_hub.referrals.workflow`). The hospital is the caller's
  Organization (the API client's); the operator is not checked. A stored referral Task stays
  one: an update dropping or changing ``focus`` is checked (and refused) like any change of an
  immutable element. The Task's two hospitals are its editors for the access policy, which
  otherwise lets only a resource's author change it.
* Referral letters and their Tasks are not deleted (409): the sending hospital cancels the Task
  and revokes the letter, so the record of the referral stays. The operator may delete.
* A referral opens the patient's record to both hospitals (an access grant, see
  :func:`referral_grants`) from the letter until the configured days after its Tasks end.
* An Encounter using an Appointment (``Encounter.appointment``) marks it fulfilled; a second
  use is refused (:mod:`emr_hub.referrals.appointments`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from emr_hub.errors import conflict, forbidden, unprocessable
from emr_hub.fhir import hooks, operations
from emr_hub.fhir.search.indexer import REFERENCE
from emr_hub.fhir.store import FhirStore, Stored
from emr_hub.referrals import rules, workflow
from emr_hub.referrals.appointments import use_appointments
from emr_hub.security import grants
from emr_hub.security.grants import GrantSpec, Source, after, instant, patient_of
from emr_hub.security.policy import Policy
from emr_hub.security.principal import Principal

REFERRAL_CATEGORY = ("http://snomed.info/sct", "3457005")


def install() -> None:
    """Register the checks and state the referral operations (idempotent)."""
    hooks.register("ServiceRequest", check_service_request)
    hooks.register("Task", check_task)
    hooks.register("Encounter", use_appointments)
    hooks.register_delete("ServiceRequest", keep_referral)
    hooks.register_delete("Task", keep_referral)
    hooks.register_editors("Task", referral_task_hospitals)
    grants.register("ServiceRequest", referral_grants)
    grants.register("Task", referral_grants_of_task)
    operations.declare(
        "Patient",
        "referral-history",
        "urn:emr-hub:operation:referral-history",
        "Every referral of the patient across the network, oldest first, each with its Tasks, "
        "the two Organizations, the returned outputs and its Appointments; also "
        "Patient/$referral-history?identifier=<system>|<value>.",
    )


def is_referral(service_request: dict[str, Any]) -> bool:
    return any(
        (coding.get("system"), coding.get("code")) == REFERRAL_CATEGORY
        for concept in service_request.get("category") or []
        for coding in concept.get("coding") or []
    )


def is_referral_task(task: dict[str, Any] | None) -> bool:
    focus = ((task or {}).get("focus") or {}).get("reference", "")
    return isinstance(focus, str) and focus.startswith("ServiceRequest/")


def check_service_request(
    store: FhirStore, principal: Principal, current: Stored | None, resource: dict[str, Any]
) -> dict[str, Any]:
    if not is_referral(resource):
        return resource
    requester = (resource.get("requester") or {}).get("reference")
    if not principal.is_operator and requester != principal.organization:
        raise forbidden(
            f"A referral letter is written by the referring hospital: its requester must be "
            f"{principal.organization}, not {requester}"
        )
    sender = _facility(store, resource.get("requester"), "ServiceRequest.requester")
    performers = resource.get("performer") or []
    if len(performers) != 1:
        raise unprocessable(
            "A referral names exactly one receiving Organization", "ServiceRequest.performer"
        )
    receiver = _facility(store, performers[0], "ServiceRequest.performer[0]")
    diagnoses = rules.diagnoses_from_service_request(resource)
    rules.check_direction(
        sender, receiver, rules.skip_reason_from_service_request(resource), diagnoses
    )
    signed = _signed(resource)
    period = rules.check_validity(resource.get("occurrencePeriod"), signed, diagnoses)
    return {**resource, "occurrencePeriod": period}


def check_task(
    store: FhirStore, principal: Principal, current: Stored | None, resource: dict[str, Any]
) -> dict[str, Any]:
    stored = current.content if current is not None else None
    if principal.is_operator or not (is_referral_task(stored) or is_referral_task(resource)):
        return resource
    if stored is None:
        workflow.check_creation(resource, principal.organization)
    else:
        workflow.check_transition(stored, resource, principal.organization)
    return resource


def keep_referral(store: FhirStore, principal: Principal, current: Stored) -> None:
    """Referral letters and their Tasks are not deleted, except by the operator."""
    content = current.content or {}
    referral = (
        is_referral(content)
        if current.resource_type == "ServiceRequest"
        else (is_referral_task(content))
    )
    if referral and not principal.is_operator:
        raise conflict(
            "A referral is not deleted: the sending hospital cancels its Task (status "
            "cancelled) and revokes the letter (status revoked), so the record stays",
            code="business-rule",
        )


def referral_task_hospitals(task: dict[str, Any]) -> frozenset[str]:
    """A referral Task is changed by its two hospitals (the workflow says which step is whose)."""
    if not is_referral_task(task):
        return frozenset()
    found = (workflow.organization_of(task.get(role) or {}) for role in ("requester", "owner"))
    return frozenset(org for org in found if org)


# ------------------------------------------------------------------------- access
ENDED = workflow.FINAL | {"entered-in-error"}


def referral_grants(
    store: FhirStore, stored: Stored, policy: Policy
) -> dict[Source, list[GrantSpec]]:
    """A referral letter opens the patient's record to its two hospitals, from the letter
    until ``referral_days`` after its Tasks have all ended (open while one is live, or while
    the letter has no Task and is still active); none for a letter entered in error."""
    content = stored.content or {}
    key = (stored.resource_type, stored.id)
    patient = patient_of(content.get("subject"))
    status = content.get("status")
    if not is_referral(content) or patient is None or status == "entered-in-error":
        return {key: []}
    hospitals = [
        workflow.organization_of(item or {})
        for item in (content.get("requester"), *(content.get("performer") or []))
    ]
    tasks = _tasks_of(store, stored.id)
    if tasks:
        live = [task for task in tasks if (task.content or {}).get("status") not in ENDED]
        ended = None if live else max(_task_end(task) for task in tasks)
    elif status in ("active", "draft", "on-hold"):
        ended = None
    else:
        ended = stored.last_updated
    ends = after(ended, policy.referral_days)
    return {key: [GrantSpec(h, patient, ends=ends) for h in dict.fromkeys(hospitals) if h]}


def referral_grants_of_task(
    store: FhirStore, stored: Stored, policy: Policy
) -> dict[Source, list[GrantSpec]]:
    """A referral Task's status moves its letter's grants: derive the letter's again."""
    focus = ((stored.content or {}).get("focus") or {}).get("reference", "")
    if not isinstance(focus, str) or not focus.startswith("ServiceRequest/"):
        return {}
    letter = store.current("ServiceRequest", focus.split("/", 2)[1])
    if letter is None or letter.deleted:
        return {}
    return referral_grants(store, letter, policy)


def _tasks_of(store: FhirStore, letter_id: str) -> list[Stored]:
    ids = store.session.scalars(
        select(REFERENCE.c.resource_id).where(
            REFERENCE.c.resource_type == "Task",
            REFERENCE.c.param == "focus",
            REFERENCE.c.target_type == "ServiceRequest",
            REFERENCE.c.target_id == letter_id,
        )
    ).all()
    return store.load_many((("Task", i) for i in ids), checked=False)


def _task_end(task: Stored) -> datetime:
    content = task.content or {}
    period_end = instant((content.get("executionPeriod") or {}).get("end"), end=True)
    return period_end or instant(content.get("lastModified")) or task.last_updated


def _signed(resource: dict[str, Any]) -> datetime:
    authored = resource.get("authoredOn")
    if isinstance(authored, str):
        moment = datetime.fromisoformat(authored.replace("Z", "+00:00"))
        return moment if moment.tzinfo else moment.replace(tzinfo=rules.LOCAL_ZONE)
    return datetime.now(UTC)


def _facility(store: FhirStore, reference: Any, expression: str) -> rules.Facility:
    text = (reference or {}).get("reference", "") if isinstance(reference, dict) else ""
    if not text.startswith("Organization/"):
        raise unprocessable("A referral is between Organizations (Organization/<id>)", expression)
    organization_id = text.split("/", 2)[1]
    organization = store.current("Organization", organization_id)
    if organization is None or organization.deleted or organization.content is None:
        raise unprocessable(f"{text} is not known to the hub", expression)
    level = rules.level_of_organization(organization.content)
    if level is None:
        raise unprocessable(f"{text} has no level of care ({rules.LEVEL_SYSTEM})", expression)
    return rules.Facility(
        reference=text,
        level=level,
        accepts_referrals=organization.content.get("active", True) is not False,
        partners=_partners(store, organization_id),
    )


def _partners(store: FhirStore, organization_id: str) -> frozenset[str]:
    """The Organizations affiliated with this one through an OrganizationAffiliation."""
    affiliation_ids = store.session.scalars(
        select(REFERENCE.c.resource_id).where(
            REFERENCE.c.resource_type == "OrganizationAffiliation",
            REFERENCE.c.target_type == "Organization",
            REFERENCE.c.target_id == organization_id,
        )
    ).all()
    partners: set[str] = set()
    affiliations = (("OrganizationAffiliation", i) for i in affiliation_ids)
    for affiliation in store.load_many(affiliations, checked=False):
        content = affiliation.content or {}
        for key in ("organization", "participatingOrganization"):
            reference = (content.get(key) or {}).get("reference")
            if reference and reference != f"Organization/{organization_id}":
                partners.add(reference)
    return frozenset(partners)
