"""HTTP routes of the referral features (included before the FHIR router, whose
``/Patient/{id}/{type}`` compartment route would otherwise take ``$referral-history``)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from emr_hub.deps import HubDep
from emr_hub.errors import bad_request
from emr_hub.fhir.http import fhir_response, wants_pretty
from emr_hub.fhir.store import FhirStore
from emr_hub.referrals.history import find_patient, history_bundle, referral_history
from emr_hub.security.principal import PrincipalDep

router = APIRouter(prefix="/fhir")


@router.get("/Patient/$referral-history")
def referral_history_by_identifier(
    request: Request, hub: HubDep, principal: PrincipalDep
) -> Response:
    """The history of the patient with ``identifier=<system>|<value>`` (a CCCD, a card number)."""
    identifier = request.query_params.get("identifier")
    if not identifier or "|" not in identifier:
        raise bad_request("Give identifier=<system>|<value>", "identifier", code="required")
    return _history(request, hub, principal, identifier=identifier)


@router.get("/Patient/{patient_id}/$referral-history")
def referral_history_by_id(
    patient_id: str, request: Request, hub: HubDep, principal: PrincipalDep
) -> Response:
    return _history(request, hub, principal, patient_id=patient_id)


def _history(
    request: Request,
    hub: HubDep,
    principal: PrincipalDep,
    *,
    patient_id: str | None = None,
    identifier: str | None = None,
) -> Response:
    pretty = wants_pretty(request)
    base = hub.settings.fhir_base_url
    with hub.db.snapshot() as session:
        store = FhirStore(session, base_url=base)
        target = patient_id or find_patient(store, principal, identifier or "", base)
        entries = referral_history(store, principal, target, base)
    return fhir_response(history_bundle(entries, base, str(request.url)), pretty=pretty)
