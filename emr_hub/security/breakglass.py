"""Break-the-glass: a hospital with no relationship opens one person's record in an emergency.

A request with ``X-Purpose-Of-Use: ETREAT`` and ``X-Break-Glass-Reason: <text>``, from a
client registered as allowed to (``emr-hub client add ... --break-glass``), first opens the
record of the person it is about to that client's hospital for ``EMR_HUB_BREAK_GLASS_HOURS``
(a ``break-glass`` access grant, which outranks everything, a Consent's denial included), then
runs like any request, now within the grant. The opening is recorded as its own audit event
(DICOM Security Alert / Emergency Override Started, with the reason), in the same transaction
as the grant, counted in the ``emr_hub_break_glass_total`` metric, and flagged in the person's
access log; every request made with the headers is audited with purpose ETREAT.

Which person: break-the-glass opens one person's record, never a search across the network. The
request must name her: a resource's URL (``Patient/<id>``, ``Observation/<id>``,
``Patient/<id>/$everything``, ``Patient/<id>/Observation``...), or a search of Patients by
``identifier`` (the CCCD of an unconscious patient, ``Patient?identifier=...`` and
``Patient/$referral-history?identifier=...``), or a search with ``patient=``/``subject=`` naming
one Patient. Anything else is refused (400), and so is a request naming several persons.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from prometheus_client import Counter
from sqlalchemy import select

from emr_hub.errors import bad_request
from emr_hub.fhir.search.indexer import COMPARTMENT, TOKEN
from emr_hub.fhir.search.values import parse_token_query
from emr_hub.fhir.store import RESOURCE, now_instant
from emr_hub.security.audit.events import PatientEntity, break_glass_event
from emr_hub.security.audit.log import append
from emr_hub.security.grants import GrantSpec, replace_grants
from emr_hub.security.policy import BREAK_GLASS
from emr_hub.security.principal import Principal

if TYPE_CHECKING:
    from sqlalchemy.orm import Session
    from starlette.requests import Request

    from emr_hub.hub import Hub

BREAK_GLASS_OPENINGS = Counter(
    "emr_hub_break_glass_total",
    "Records opened by break-the-glass, by the hospital that opened them",
    ["organization"],
)
REFERENCE_PARAMS = ("patient", "subject")


def open_record(hub: Hub, request: Request, principal: Principal) -> None:
    """Open the record the break-the-glass ``request`` names to ``principal``'s hospital."""
    if principal.organization is None:
        raise bad_request("Only a hospital's client breaks the glass", "X-Purpose-Of-Use")
    moment = now_instant()
    until = moment + timedelta(hours=hub.settings.break_glass_hours)
    with hub.db.transaction() as session:
        members = _members(session, request)
        persons = {person for _, person in members}
        if len(persons) > 1:
            raise bad_request(
                "Break-the-glass opens one person's record; this request names several",
                "X-Purpose-Of-Use",
            )
        if not members:
            return  # nothing of that name is stored: the request will find nothing either
        trail = principal.trail
        event = break_glass_event(
            moment,
            principal,
            [PatientEntity(pid, person, ()) for pid, person in sorted(set(members))],
            trail.request_id if trail else "",
            trail.address if trail else None,
            hub.settings.fhir_base_url,
        )
        specs = [
            GrantSpec(principal.organization, pid, kind=BREAK_GLASS, starts=moment, ends=until)
            for pid, _ in sorted(set(members))
        ]
        replace_grants(session, {("AuditEvent", event["id"]): specs})
        if hub.settings.audit_enabled:
            append(session, [event])
    BREAK_GLASS_OPENINGS.labels(organization=principal.organization).inc()
    if principal.trail is not None:
        principal.trail.break_glass_persons |= persons


def _members(session: Session, request: Request) -> list[tuple[str, str]]:
    """The (patient, person) pairs the request is about, or 400 when it names none."""
    params = request.path_params
    if "patient_id" in params:
        return _compartment(session, "Patient", str(params["patient_id"]))
    if "resource_id" in params and "resource_type" in params:
        return _compartment(session, str(params["resource_type"]), str(params["resource_id"]))
    query = parse_qsl(request.url.query, keep_blank_values=True)
    names = {name for name, _ in query if not name.startswith("_")}
    resource_type = params.get("resource_type") or (
        "Patient" if request.url.path.endswith("/Patient/$referral-history") else None
    )
    if resource_type == "Patient" and names == {"identifier"}:
        return _by_identifier(session, [value for name, value in query if name == "identifier"])
    named = [v for n, v in query if n in REFERENCE_PARAMS]
    if resource_type is not None and names and names <= set(REFERENCE_PARAMS) and len(named) == 1:
        patient = named[0].removeprefix("Patient/")
        if "," not in patient and "/" not in patient:
            return _compartment(session, "Patient", patient)
    raise bad_request(
        "Break-the-glass opens one person's record: name her by a resource's URL "
        "(Patient/<id>, Patient/<id>/$everything ...), by Patient?identifier=..., or by a "
        "search with patient=<id>",
        "X-Purpose-Of-Use",
    )


def _compartment(session: Session, resource_type: str, resource_id: str) -> list[tuple[str, str]]:
    rows = session.execute(
        select(COMPARTMENT.c.patient_id, COMPARTMENT.c.person).where(
            COMPARTMENT.c.resource_type == resource_type, COMPARTMENT.c.resource_id == resource_id
        )
    )
    return [(patient, person) for patient, person in rows]


def _by_identifier(session: Session, values: list[str]) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for value in values:
        try:
            token = parse_token_query(value)
        except ValueError as error:
            raise bad_request(str(error), "identifier") from None
        if token.code is None or "," in value:
            raise bad_request("Break-the-glass names one identifier value", "identifier")
        query = select(TOKEN.c.resource_id).where(
            TOKEN.c.resource_type == "Patient",
            TOKEN.c.param == "identifier",
            TOKEN.c.code == token.code,
            RESOURCE.c.resource_type == "Patient",
            RESOURCE.c.id == TOKEN.c.resource_id,
            RESOURCE.c.deleted.is_(False),
        )
        if token.system_given:
            query = query.where(
                TOKEN.c.system.is_(None) if token.system is None else TOKEN.c.system == token.system
            )
        for patient_id in session.scalars(query.limit(10)):
            found += _compartment(session, "Patient", patient_id)
    return found
