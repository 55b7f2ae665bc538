"""HTTP routes of the referral features (included before the FHIR router, whose
``/Patient/{id}/{type}`` compartment route would otherwise take ``$referral-history``, and
whose ``POST /{type}`` would take ``$import-xml130``)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from emr_hub.deps import HubDep
from emr_hub.errors import FhirError, Issue, bad_request
from emr_hub.fhir import operations
from emr_hub.fhir.http import fhir_response, public_url, wants_pretty
from emr_hub.fhir.routes import in_snapshot, in_transaction, read_raw_body
from emr_hub.fhir.store import FhirStore, Stored
from emr_hub.hub import Hub
from emr_hub.referrals import xml_exchange
from emr_hub.referrals.history import find_patient, history_bundle, referral_history
from emr_hub.security.principal import PrincipalDep

router = APIRouter(prefix="/fhir")

XML_MEDIA_TYPES = ("application/xml", "text/xml")


def _declare_operations() -> None:
    """State the XML 13/14 operations in /metadata: the routes below serve them, so importing
    this module (as the app does) declares them."""
    operations.declare(
        None,
        "import-xml130",
        "urn:emr-hub:operation:import-xml130",
        "POST a GIAMDINHHS envelope (application/xml) holding insurance XML tables 13 "
        "(referral letters) and 14 (re-exam slips): stored whole or not at all, as the "
        "caller's hospital; answers a batch-response Bundle listing each resource written.",
    )
    for resource_type, table in (("ServiceRequest", "13"), ("Appointment", "14")):
        operations.declare(
            resource_type,
            "xml130",
            "urn:emr-hub:operation:xml130",
            f"The {resource_type} as a GIAMDINHHS envelope holding insurance XML table {table} "
            "(application/xml).",
        )


_declare_operations()


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

    def history(store: FhirStore) -> list[tuple[Stored, str]]:
        target = patient_id or find_patient(store, principal, identifier or "", base)
        return referral_history(store, principal, target, base)

    entries = in_snapshot(hub, principal, history)
    return fhir_response(
        history_bundle(entries, base, public_url(request, hub.settings.base_url)), pretty=pretty
    )


# --------------------------------------------------------------- XML 13 / 14
@router.post("/$import-xml130")
async def import_xml130(request: Request, hub: HubDep, principal: PrincipalDep) -> Response:
    """Import the tables 13 and 14 of a GIAMDINHHS envelope in one transaction."""
    pretty = wants_pretty(request)
    xml = await read_xml_body(request, hub)
    tables = await run_in_threadpool(xml_exchange.read_envelope, xml)
    written = await run_in_threadpool(
        in_transaction,
        hub,
        principal,
        lambda store: xml_exchange.import_tables(store, principal, tables),
    )
    bundle = xml_exchange.import_bundle(written, hub.settings.fhir_base_url)
    return fhir_response(bundle, 200, pretty=pretty)


@router.get("/ServiceRequest/{resource_id}/$xml130")
def export_referral_xml130(resource_id: str, hub: HubDep, principal: PrincipalDep) -> Response:
    """The referral letter as an envelope holding its table 13."""
    xml = in_snapshot(
        hub, principal, lambda store: xml_exchange.export_referral(store, principal, resource_id)
    )
    return Response(xml, media_type="application/xml")


@router.get("/Appointment/{resource_id}/$xml130")
def export_reexam_xml130(resource_id: str, hub: HubDep, principal: PrincipalDep) -> Response:
    """The re-exam slip as an envelope holding its table 14."""
    xml = in_snapshot(
        hub, principal, lambda store: xml_exchange.export_reexam(store, principal, resource_id)
    )
    return Response(xml, media_type="application/xml")


async def read_xml_body(request: Request, hub: Hub) -> bytes:
    """The XML body, sent as XML (415) and within ``EMR_HUB_MAX_REQUEST_BYTES`` (413)."""
    media = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if media not in XML_MEDIA_TYPES:
        message = f"Send the envelope as {' or '.join(XML_MEDIA_TYPES)}, not {media or 'no type'}"
        raise FhirError(415, [Issue("not-supported", message)])
    raw = await read_raw_body(request, hub)
    if not raw.strip():
        raise bad_request(
            "The request body is empty; a GIAMDINHHS envelope was expected", code="required"
        )
    return raw
