"""Reading the audit trail: ``AuditEvent`` search and read, and the patient's access log.

* ``GET /fhir/AuditEvent?patient=&agent=&date=&entity=&outcome=&subtype=&action=`` and
  ``GET /fhir/AuditEvent/{id}``: the operator reads every record, a hospital the records of its
  own requests (its Organization was the requesting agent). Newest first, ``_count`` (default
  50, at most 1000), keyset ``next`` links. ``patient`` takes ``Patient/<id>`` or the id,
  ``agent`` an ``Organization/<id>`` or a client id, ``entity`` a ``Type/id``, ``date`` the
  prefixes of a date search (repeatable), ``outcome`` the BALP codes (0, 4, 8; a comma is OR).
* Writing an AuditEvent is the hub's alone: POST, PUT, PATCH and DELETE get 405.
* ``GET /fhir/Patient/{id}/$access-log``: who accessed the person's record (every Patient
  resource of her person): for the citizen herself (her own reads left out) and the operator.
  A ``Parameters`` with one ``access`` part per record, newest first: when, the hospital (with
  its name), the acting practitioner if the hospital named one, what was done and to which
  kinds of data, the purpose of use, the outcome, and whether it was a break-the-glass access
  (the opening itself, a request made with the emergency headers, or a request of that
  hospital while the opening lasted) with the reason given.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from sqlalchemy import ColumnElement, exists, or_, select
from sqlalchemy.orm import Session

from emr_hub.deps import HubDep
from emr_hub.errors import FhirError, Issue, bad_request, forbidden, not_found
from emr_hub.fhir import capability, operations
from emr_hub.fhir.http import fhir_response, public_url, wants_pretty
from emr_hub.fhir.search.compile import date_condition
from emr_hub.fhir.search.indexer import COMPARTMENT
from emr_hub.fhir.search.params import parse_count, split_values
from emr_hub.fhir.search.values import parse_date_query
from emr_hub.fhir.store import RESOURCE, format_instant
from emr_hub.hub import Hub
from emr_hub.security.audit.events import JOB_ROLE, RECIPIENT_SYSTEM
from emr_hub.security.audit.log import ENTITY, EVENT, PATIENT
from emr_hub.security.policy import BREAK_GLASS
from emr_hub.security.principal import Principal, PrincipalDep
from storage.db import as_utc
from storage.tables import AccessGrant

router = APIRouter(prefix="/fhir")
GRANT = AccessGrant.__table__
SEARCH_PARAMS = frozenset({"patient", "agent", "date", "entity", "outcome", "subtype", "action"})
RESULT_PARAMS = frozenset({"_count", "_cursor", "_pretty", "_format"})


def declare_operations() -> None:
    capability.declare_read_only(
        "AuditEvent",
        ("patient", "agent", "date", "entity", "outcome", "subtype", "action"),
        "The audit trail, written by the hub alone: the operator reads every record, a "
        "hospital those of its own requests.",
    )
    operations.declare(
        "Patient",
        "access-log",
        "urn:emr-hub:operation:access-log",
        "Who accessed the person's record (every Patient resource of her person), newest "
        "first: when, the hospital, the practitioner it named, what and which kinds of data, "
        "the purpose, break-the-glass flagged; for the citizen herself and the operator.",
    )


declare_operations()


# ------------------------------------------------------------------- AuditEvent
@router.get("/AuditEvent")
def search_audit_events(request: Request, hub: HubDep, principal: PrincipalDep) -> Response:
    principal.require("AuditEvent", "s")
    items = list(request.query_params.multi_items())
    count = parse_count(request.query_params.get("_count"))
    cursor = _cursor(request.query_params.get("_cursor"))
    conditions = [_visible(principal), *_filters(items)]
    if cursor is not None:
        conditions.append(EVENT.c.seq < cursor)
    with hub.db.snapshot() as session:
        rows = session.execute(
            select(EVENT.c.seq, EVENT.c.content)
            .where(*conditions)
            .order_by(EVENT.c.seq.desc())
            .limit(count + 1)
        ).all()
    base = hub.settings.fhir_base_url
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": [{"relation": "self", "url": public_url(request, hub.settings.base_url)}],
        "entry": [
            {
                "fullUrl": f"{base}/AuditEvent/{content['id']}",
                "resource": content,
                "search": {"mode": "match"},
            }
            for _, content in rows[:count]
        ],
    }
    if len(rows) > count and count > 0:
        kept = [(k, v) for k, v in items if k != "_cursor"]
        next_cursor = str(rows[count - 1][0])
        bundle["link"].append(
            {
                "relation": "next",
                "url": f"{base}/AuditEvent?" + urlencode([*kept, ("_cursor", next_cursor)]),
            }
        )
    elif cursor is None:
        bundle["total"] = len(rows)
    return fhir_response(bundle, pretty=wants_pretty(request))


@router.get("/AuditEvent/{event_id}")
def read_audit_event(
    event_id: str, request: Request, hub: HubDep, principal: PrincipalDep
) -> Response:
    principal.require("AuditEvent", "r")
    with hub.db.snapshot() as session:
        content = session.execute(
            select(EVENT.c.content).where(EVENT.c.event_id == event_id, _visible(principal))
        ).scalar()
    if content is None:
        raise not_found(f"AuditEvent/{event_id} is not known")
    return fhir_response(content, pretty=wants_pretty(request))


@router.api_route("/AuditEvent", methods=["POST", "PUT", "PATCH", "DELETE"])
@router.api_route("/AuditEvent/{event_id}", methods=["POST", "PUT", "PATCH", "DELETE"])
def write_audit_event() -> Response:
    raise FhirError(
        405,
        [
            Issue(
                "not-supported",
                "AuditEvent is written by the hub alone; the audit trail is append-only",
            )
        ],
    )


def _visible(principal: Principal) -> ColumnElement[bool]:
    if principal.is_operator:
        return EVENT.c.seq.is_not(None)
    if principal.is_citizen:
        raise forbidden("A citizen reads who accessed her record at Patient/{id}/$access-log")
    return EVENT.c.organization == principal.organization


def _filters(items: list[tuple[str, str]]) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    for name, raw in items:
        if name in RESULT_PARAMS:
            continue
        if name not in SEARCH_PARAMS:
            raise bad_request(
                f"Unknown AuditEvent search parameter {name!r}; the hub searches "
                f"{', '.join(sorted(SEARCH_PARAMS))}",
                name,
                code="not-supported",
            )
        values = [v for v in split_values(raw) if v]
        if not values:
            raise bad_request(f"Empty value for {name}", name)
        conditions.append(or_(*(_filter(name, value) for value in values)))
    return conditions


def _filter(name: str, value: str) -> ColumnElement[bool]:
    if name == "patient":
        patient_id = value.removeprefix("Patient/")
        return exists().where(
            PATIENT.c.audit_seq == EVENT.c.seq, PATIENT.c.patient_id == patient_id
        )
    if name == "agent":
        if value.startswith("Organization/"):
            return EVENT.c.organization == value
        return EVENT.c.client_id == value
    if name == "entity":
        resource_type, _, resource_id = value.partition("/")
        return exists().where(
            ENTITY.c.audit_seq == EVENT.c.seq,
            ENTITY.c.resource_type == resource_type,
            ENTITY.c.resource_id == resource_id.split("/")[0],
        )
    if name == "date":
        try:
            prefix, query = parse_date_query(value)
        except ValueError as error:
            raise bad_request(str(error), "date") from None
        return date_condition(prefix, query, EVENT.c.recorded, EVENT.c.recorded, point=True)
    column = {"outcome": EVENT.c.outcome, "subtype": EVENT.c.subtype, "action": EVENT.c.action}
    return column[name] == value.rpartition("|")[2]


def _cursor(text: str | None) -> int | None:
    if text is None:
        return None
    if not text.isdigit():
        raise bad_request("Malformed _cursor", "_cursor")
    return int(text)


# ------------------------------------------------------------------ $access-log
@router.get("/Patient/{patient_id}/$access-log")
async def access_log(
    patient_id: str, request: Request, hub: HubDep, principal: PrincipalDep
) -> Response:
    pretty = wants_pretty(request)
    count = parse_count(request.query_params.get("_count"), default=100)
    cursor = _cursor(request.query_params.get("_cursor"))
    body = await run_in_threadpool(_access_log, hub, principal, patient_id, count, cursor)
    return fhir_response(body, pretty=pretty)


def _access_log(
    hub: Hub, principal: Principal, patient_id: str, count: int, cursor: int | None
) -> dict[str, Any]:
    if not (principal.is_citizen or principal.is_operator):
        raise forbidden("The access log is the patient's own (and the operator's) to read")
    with hub.db.snapshot() as session:
        person = session.execute(
            select(COMPARTMENT.c.person).where(
                COMPARTMENT.c.resource_type == "Patient",
                COMPARTMENT.c.resource_id == patient_id,
                COMPARTMENT.c.patient_id == patient_id,
            )
        ).scalar()
        if person is None or (principal.is_citizen and person != principal.person):
            raise not_found(f"Patient/{patient_id} is not known")
        conditions = [
            exists().where(PATIENT.c.audit_seq == EVENT.c.seq, PATIENT.c.person == person),
            or_(EVENT.c.person.is_(None), EVENT.c.person != person),
        ]
        if cursor is not None:
            conditions.append(EVENT.c.seq < cursor)
        rows = session.execute(
            select(EVENT.c.seq, EVENT.c.content, EVENT.c.organization, EVENT.c.recorded)
            .where(*conditions)
            .order_by(EVENT.c.seq.desc())
            .limit(count + 1)
        ).all()
        windows = _break_glass_windows(session, person)
        names = _organization_names(session, {row.organization for row in rows})
    accesses = [
        {
            "name": "access",
            "part": _access_parts(row, person, names, windows),
        }
        for row in rows[:count]
    ]
    parameters: list[dict[str, Any]] = [
        {"name": "patient", "valueReference": {"reference": f"Patient/{patient_id}"}},
        *accesses,
    ]
    if len(rows) > count and count > 0:
        parameters.append({"name": "next", "valueString": str(rows[count - 1].seq)})
    return {"resourceType": "Parameters", "parameter": parameters}


def _break_glass_windows(
    session: Session, person: str
) -> dict[str, list[tuple[datetime, datetime]]]:
    windows: dict[str, list[tuple[datetime, datetime]]] = defaultdict(list)
    for organization, starts, ends in session.execute(
        select(GRANT.c.organization, GRANT.c.starts, GRANT.c.ends).where(
            GRANT.c.person == person, GRANT.c.kind == BREAK_GLASS
        )
    ):
        if starts is not None and ends is not None:
            windows[organization].append((as_utc(starts), as_utc(ends)))
    return windows


def _organization_names(session: Session, references: set[str | None]) -> dict[str, str]:
    ids = sorted(r.split("/", 1)[1] for r in references if r and r.startswith("Organization/"))
    if not ids:
        return {}
    rows = session.execute(
        select(RESOURCE.c.id, RESOURCE.c.content).where(
            RESOURCE.c.resource_type == "Organization",
            RESOURCE.c.id.in_(ids),
            RESOURCE.c.deleted.is_(False),
        )
    )
    return {f"Organization/{rid}": (content or {}).get("name", rid) for rid, content in rows}


def _access_parts(
    row: Any,
    person: str,
    names: dict[str, str],
    windows: dict[str, list[tuple[datetime, datetime]]],
) -> list[dict[str, Any]]:
    event = row.content
    recorded = as_utc(row.recorded)
    parts: list[dict[str, Any]] = [
        {"name": "when", "valueInstant": format_instant(recorded)},
        {"name": "event", "valueReference": {"reference": f"AuditEvent/{event['id']}"}},
    ]
    if row.organization:
        parts.append(
            {
                "name": "organization",
                "valueReference": {
                    "reference": row.organization,
                    "display": names.get(row.organization, row.organization),
                },
            }
        )
    for agent in event.get("agent") or []:
        identifier = (agent.get("who") or {}).get("identifier") or {}
        system = str(identifier.get("system") or "")
        if not agent.get("requestor") or not system or system.startswith("urn:emr-hub"):
            continue
        if system == RECIPIENT_SYSTEM:  # who opened a health link she shared: a name, no id
            parts.append({"name": "recipient", "valueString": str(identifier.get("value"))})
        else:
            parts.append(
                {
                    "name": "practitioner",
                    "valueIdentifier": {"system": system, "value": identifier.get("value")},
                }
            )
    subtype = (event.get("subtype") or [{}])[0]
    parts.append({"name": "what", "valueCoding": subtype})
    for entity in event.get("entity") or []:
        if entity.get("name") and (entity.get("role") or {}).get("code") == JOB_ROLE:
            parts.append({"name": "operation", "valueString": entity["name"]})
    for entity in event.get("entity") or []:
        details = {d.get("type"): d.get("valueString") for d in entity.get("detail") or []}
        if details.get("person") == person and details.get("types"):
            parts.append({"name": "data", "valueString": details["types"]})
            break
    purpose = (event.get("purposeOfEvent") or [{}])[0]
    code = ((purpose.get("coding") or [{}])[0]).get("code", "TREAT")
    parts.append({"name": "purpose", "valueCode": code})
    parts.append({"name": "outcome", "valueCode": event.get("outcome")})
    emergency = code == "ETREAT" or any(
        start <= recorded < end for start, end in windows.get(row.organization or "", [])
    )
    parts.append({"name": "breakGlass", "valueBoolean": emergency})
    if purpose.get("text"):
        parts.append({"name": "reason", "valueString": purpose["text"]})
    return parts
