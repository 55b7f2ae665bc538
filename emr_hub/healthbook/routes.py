"""HTTP routes of the health book: ``Patient/$summary`` by id or by identifier."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from emr_hub.deps import HubDep
from emr_hub.errors import bad_request
from emr_hub.fhir.http import fhir_response, wants_pretty
from emr_hub.fhir.routes import in_snapshot
from emr_hub.fhir.store import FhirStore
from emr_hub.healthbook.summary import patient_summary
from emr_hub.referrals.history import find_patient
from emr_hub.security.principal import PrincipalDep

router = APIRouter(prefix="/fhir")


@router.get("/Patient/$summary")
def summary_by_identifier(request: Request, hub: HubDep, principal: PrincipalDep) -> Response:
    """The summary of the patient with ``identifier=<system>|<value>`` (a CCCD, a card)."""
    identifier = request.query_params.get("identifier")
    if not identifier or "|" not in identifier:
        raise bad_request("Give identifier=<system>|<value>", "identifier", code="required")
    base = hub.settings.fhir_base_url

    def summary(store: FhirStore) -> dict[str, Any]:
        patient_id = find_patient(store, principal, identifier, base)
        return patient_summary(store, principal, patient_id, base)

    pretty = wants_pretty(request)
    return fhir_response(in_snapshot(hub, principal, summary), pretty=pretty)


@router.get("/Patient/{patient_id}/$summary")
def summary_by_id(
    patient_id: str, request: Request, hub: HubDep, principal: PrincipalDep
) -> Response:
    base = hub.settings.fhir_base_url
    pretty = wants_pretty(request)
    bundle = in_snapshot(
        hub, principal, lambda store: patient_summary(store, principal, patient_id, base)
    )
    return fhir_response(bundle, pretty=pretty)
