"""The referral rules, enforced on every write through the FHIR core's write hooks.

* A referral ServiceRequest (category SNOMED 3457005) must go from an existing requester to an
  existing performer Organization along an allowed direction (:func:`rules.check_direction`),
  and its ``occurrencePeriod`` is computed when absent and checked when present
  (:func:`rules.check_validity`), from ``authoredOn`` (the signing).
* A Task whose ``focus`` is a ServiceRequest is a referral Task: it is created ``requested`` by
  the requester's hospital and moves only along the state machine, each step by the hospital
  whose role it is (:mod:`emr_hub.referrals.workflow`). The hospital is the caller's
  Organization (the API client's); the command-line operator is not checked.
* An Encounter using an Appointment (``Encounter.appointment``) marks it fulfilled; a second
  use is refused (:mod:`emr_hub.referrals.appointments`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from emr_hub.errors import unprocessable
from emr_hub.fhir import hooks, operations
from emr_hub.fhir.search.indexer import REFERENCE
from emr_hub.fhir.store import FhirStore, Stored
from emr_hub.referrals import rules, workflow
from emr_hub.referrals.appointments import use_appointments
from emr_hub.security.principal import OPERATOR, Principal

REFERRAL_CATEGORY = ("http://snomed.info/sct", "3457005")


def install() -> None:
    """Register the checks and state the referral operations (idempotent)."""
    hooks.register("ServiceRequest", check_service_request)
    hooks.register("Task", check_task)
    hooks.register("Encounter", use_appointments)
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


def check_service_request(
    store: FhirStore, principal: Principal, current: Stored | None, resource: dict[str, Any]
) -> dict[str, Any]:
    if not is_referral(resource):
        return resource
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
    focus = (resource.get("focus") or {}).get("reference", "")
    if not focus.startswith("ServiceRequest/") or principal.client_id == OPERATOR.client_id:
        return resource
    if current is None or current.content is None:
        workflow.check_creation(resource, principal.organization)
    else:
        workflow.check_transition(current.content, resource, principal.organization)
    return resource


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
    for affiliation in store.load_many(("OrganizationAffiliation", i) for i in affiliation_ids):
        content = affiliation.content or {}
        for key in ("organization", "participatingOrganization"):
            reference = (content.get(key) or {}).get("reference")
            if reference and reference != f"Organization/{organization_id}":
                partners.add(reference)
    return frozenset(partners)
