"""The patient's access log: who accessed the records of her person, read from the audit
trail (``GET /fhir/Patient/{id}/$access-log``, and the citizen's page).

One ``access`` part per audit record naming her person (her own requests left out), newest
first: when, the hospital (with its name), the acting practitioner or, for a health link she
shared, the recipient's given name; what was done, the operation, the kinds of data; the
purpose, the outcome, and whether it was a break-the-glass access (the opening itself, a
request with the emergency headers, or a request of that hospital while the opening lasted).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import exists, or_, select
from sqlalchemy.orm import Session

from emr_hub.errors import forbidden, not_found
from emr_hub.fhir.search.indexer import COMPARTMENT
from emr_hub.fhir.store import RESOURCE, format_instant
from emr_hub.hub import Hub
from emr_hub.security.audit.events import JOB_ROLE, RECIPIENT_SYSTEM
from emr_hub.security.audit.log import EVENT, PATIENT
from emr_hub.security.policy import BREAK_GLASS
from emr_hub.security.principal import Principal
from storage.db import as_utc
from storage.tables import AccessGrant

GRANT = AccessGrant.__table__


def read_access_log(
    hub: Hub, principal: Principal, patient_id: str, count: int, cursor: int | None
) -> dict[str, Any]:
    """The ``$access-log`` Parameters of ``Patient/{patient_id}``'s person: ``count`` records
    before the ``cursor`` sequence number, newest first; 403 unless ``principal`` is the
    citizen herself or the operator, 404 for another citizen's."""
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
