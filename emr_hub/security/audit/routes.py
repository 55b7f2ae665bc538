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

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from sqlalchemy import ColumnElement, exists, or_, select

from emr_hub.deps import HubDep
from emr_hub.errors import FhirError, Issue, bad_request, forbidden, not_found
from emr_hub.fhir import capability, operations
from emr_hub.fhir.http import fhir_response, public_url, wants_pretty
from emr_hub.fhir.search.compile import date_condition
from emr_hub.fhir.search.params import parse_count, split_values
from emr_hub.fhir.search.values import parse_date_query
from emr_hub.security.audit.access_log import read_access_log
from emr_hub.security.audit.log import ENTITY, EVENT, PATIENT
from emr_hub.security.principal import Principal, PrincipalDep

router = APIRouter(prefix="/fhir")
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
    body = await run_in_threadpool(read_access_log, hub, principal, patient_id, count, cursor)
    return fhir_response(body, pretty=pretty)
