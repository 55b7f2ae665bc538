"""The person's Consent to share (FHIR R4 ``Consent``, scope ``patient-privacy``).

A privacy Consent says which hospitals may (``permit``) or may not (``deny``) see the person's
records, optionally for a period and a purpose of use::

    {"resourceType": "Consent", "status": "active",
     "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                           "code": "patient-privacy"}]},
     "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
     "patient": {"reference": "Patient/demo-nguyen-thi-lan"},
     "dateTime": "2026-12-06T09:00:00+07:00",
     "provision": {"type": "permit",
                   "period": {"start": "2026-12-06", "end": "2027-12-06"},
                   "actor": [{"role": {"coding": [{"system":
                        "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                        "code": "IRCP"}]},
                              "reference": {"reference": "Organization/bac-ninh-commune"}}],
                   "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                                "code": "TREAT"}]}}

* ``provision.actor`` names Organizations; a provision naming none applies to every hospital.
  Nested ``provision.provision`` items are exceptions to the base one (``deny`` everyone, but
  ``permit`` one hospital), each with its own actors, period and purposes.
* A grant naming a hospital outranks one for every hospital; a deny outranks a permit for the
  same hospitals (:mod:`emr_hub.security.policy`).
* Only an ``active`` Consent counts; withdrawing it is setting ``inactive`` (a Consent is not
  deleted: it is the evidence of what the person agreed to, and when).
* The citizen posts her own; a hospital posting one on her behalf attaches the signed paper
  form (``sourceAttachment``) or points at it (``sourceReference``).

Checked on every write of a privacy Consent (422 naming the element): a ``patient`` that is a
local Patient, a ``provision`` with a ``type``, actors that are Organizations, and none of the
provision elements that would restrict only part of the record (``data``, ``class``, ``code``,
``securityLabel``, ``dataPeriod``), which the hub cannot enforce and will not pretend to.
Consents of other scopes (treatment, research) are stored and have no effect on access.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from emr_hub.errors import unprocessable
from emr_hub.fhir.store import FhirStore, Stored
from emr_hub.security import grants
from emr_hub.security.grants import GrantSpec, Source, instant, organization_of, patient_of
from emr_hub.security.policy import DENY, EVERY_HOSPITAL, PERMIT, Policy
from emr_hub.security.principal import Principal

SCOPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/consentscope"
PRIVACY = "patient-privacy"
PURPOSE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
PARTIAL = ("data", "class", "code", "securityLabel", "dataPeriod")


def is_privacy_consent(consent: dict[str, Any]) -> bool:
    scope = consent.get("scope") or {}
    return any(
        coding.get("system") == SCOPE_SYSTEM and coding.get("code") == PRIVACY
        for coding in scope.get("coding") or []
        if isinstance(coding, dict)
    )


def check_consent(
    store: FhirStore, principal: Principal, current: Stored | None, resource: dict[str, Any]
) -> dict[str, Any]:
    """The write hook of Consent."""
    if not is_privacy_consent(resource):
        return resource
    if patient_of(resource.get("patient")) is None:
        raise unprocessable(
            "A privacy Consent names its patient as a local Patient/<id>", "Consent.patient"
        )
    provision = resource.get("provision")
    if not isinstance(provision, dict):
        raise unprocessable(
            "A privacy Consent needs a provision saying permit or deny", "Consent.provision"
        )
    for item, where in _provisions(provision, "Consent.provision"):
        _check_provision(item, where, nested=where != "Consent.provision")
    if (
        not principal.is_citizen
        and not principal.is_operator
        and not (resource.get("sourceAttachment") or resource.get("sourceReference"))
    ):
        raise unprocessable(
            "A hospital records a Consent on the person's behalf with the signed form "
            "(sourceAttachment, or sourceReference to it)",
            "Consent.source[x]",
            code="required",
        )
    return resource


def _provisions(provision: dict[str, Any], where: str) -> Iterator[tuple[dict[str, Any], str]]:
    yield provision, where
    for index, nested in enumerate(provision.get("provision") or []):
        if isinstance(nested, dict):
            yield from _provisions(nested, f"{where}.provision[{index}]")


def _check_provision(provision: dict[str, Any], where: str, *, nested: bool) -> None:
    if provision.get("type") not in (PERMIT, DENY):
        raise unprocessable("A provision's type is permit or deny", f"{where}.type")
    for name in PARTIAL:
        if provision.get(name):
            raise unprocessable(
                f"The hub shares or withholds a person's whole record per hospital; a "
                f"provision limited by {name} is not supported",
                f"{where}.{name}",
                code="not-supported",
            )
    for index, actor in enumerate(provision.get("actor") or []):
        reference = actor.get("reference") if isinstance(actor, dict) else None
        if organization_of(reference) is None:
            raise unprocessable(
                "A provision's actor is an Organization (Organization/<id>): the hub shares "
                "records hospital by hospital",
                f"{where}.actor[{index}].reference",
            )
    for index, purpose in enumerate(provision.get("purpose") or []):
        if not isinstance(purpose, dict) or purpose.get("system") != PURPOSE_SYSTEM:
            raise unprocessable(
                f"A provision's purpose is coded in {PURPOSE_SYSTEM} (TREAT, ETREAT ...)",
                f"{where}.purpose[{index}]",
            )
    if nested and provision.get("provision"):
        raise unprocessable("Exceptions to a provision go one level deep", f"{where}.provision")


def derive_consent(
    store: FhirStore, stored: Stored, policy: Policy
) -> dict[Source, list[GrantSpec]]:
    """The grants of an active privacy Consent: one per (provision, hospital, purpose)."""
    content = stored.content or {}
    key = (stored.resource_type, stored.id)
    patient = patient_of(content.get("patient"))
    provision = content.get("provision")
    if (
        content.get("status") != "active"
        or not is_privacy_consent(content)
        or patient is None
        or not isinstance(provision, dict)
    ):
        return {key: []}
    specs: list[GrantSpec] = []
    base_period = provision.get("period") or {}
    for item, _ in _provisions(provision, "Consent.provision"):
        period = item.get("period") or base_period
        organizations = [
            organization_of(actor.get("reference"))
            for actor in item.get("actor") or []
            if isinstance(actor, dict)
        ] or [EVERY_HOSPITAL]
        purposes = [p.get("code") for p in item.get("purpose") or []] or [None]
        for organization in organizations:
            for purpose in purposes:
                specs.append(
                    GrantSpec(
                        organization or EVERY_HOSPITAL,
                        patient,
                        kind=item["type"],
                        starts=instant(period.get("start")),
                        ends=instant(period.get("end"), end=True),
                        purpose=purpose,
                    )
                )
    return {key: specs}


def install() -> None:
    from emr_hub.fhir import hooks

    hooks.register("Consent", check_consent)
    grants.register("Consent", derive_consent)
