"""FHIR R4 ``AuditEvent`` records shaped after IHE Basic Audit Log Patterns (BALP 1.1).

Every audited request gives one event:

* ``type`` ``rest`` (audit-event-type) with the FHIR restful interaction as ``subtype``
  (``read``, ``vread``, ``history-instance``, ``search-type``, ``create``, ``update``, ``patch``,
  ``delete``, ``transaction``, ``batch``, ``operation`` ...), ``action`` C, R, U, D or E (a
  search, a transaction and an operation are executions, as BALP records queries);
  a token request is DICOM's User Authentication (110114) / Login (110122).
* ``outcome`` 0 (success), 4 (refused or invalid: a 4xx answer) or 8 (a 5xx answer), with the
  HTTP status in ``outcomeDesc``.
* agents: the client application (``urn:emr-hub:client`` identifier and its network address),
  the hub (the server), and who asked: the hospital's Organization, the acting practitioner
  when the hospital named one (``X-Acting-Practitioner``), or the citizen (her person key,
  ``urn:emr-hub:person``). BALP's roles: for a read the client is the Destination (110152) and
  the hub the Source (110153), for queries and writes the other way round.
* ``purposeOfEvent``: TREAT, or ETREAT with the break-the-glass reason as its text.
* entities: the request id (BALP ``XrequestId``), the query of a search (base64, role Query),
  each resource read or written (role Domain Resource, with its version), the resource a
  refused request aimed at, and **one entity per patient** whose data was touched (type Person,
  role Patient, as BALP's patient patterns ask), each carrying the person key and the resource
  types touched (``detail``), which the access log shows.

A break-the-glass opening adds a second event, DICOM's Security Alert (110113) / Emergency
Override Started (110127), naming the patients opened and the reason.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from emr_hub.fhir.store import format_instant
from emr_hub.security.principal import Principal

DCM = "http://dicom.nema.org/resources/ontology/DCM"
EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
INTERACTION = "http://hl7.org/fhir/restful-interaction"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
BALP_ENTITY = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
CLIENT_SYSTEM = "urn:emr-hub:client"
PERSON_SYSTEM = "urn:emr-hub:person"
RECIPIENT_SYSTEM = "urn:smart-health-links:recipient"
"""The identifier system of an agent known only by the name it gave (who opened a health
link); not an ``urn:emr-hub`` system, so the access log shows it as who accessed."""
JOB_ROLE = "20"
"""The object role of the entity naming the operation a request ran."""

SOURCE_ROLE = {"system": DCM, "code": "110153", "display": "Source Role ID"}
DESTINATION_ROLE = {"system": DCM, "code": "110152", "display": "Destination Role ID"}
PERSON_DETAIL, TYPES_DETAIL, TARGET_DETAIL = "person", "types", "target"

READS = frozenset({"read", "vread", "history-instance", "history-type", "history-system"})
ACTIONS = {
    "create": "C",
    "read": "R",
    "vread": "R",
    "history-instance": "R",
    "history-type": "R",
    "history-system": "R",
    "update": "U",
    "patch": "U",
    "delete": "D",
}
"""Every other interaction (searches, transaction, batch, operations, login) executes: E."""


@dataclass(frozen=True)
class Entity:
    """A resource the event names: read or written (``version``), or aimed at."""

    resource_type: str
    resource_id: str
    version: int | None = None


@dataclass(frozen=True)
class PatientEntity:
    patient_id: str
    person: str
    types: tuple[str, ...]


@dataclass(frozen=True)
class EventFacts:
    """What the audit middleware knows of a request when it answers."""

    recorded: datetime
    interaction: str
    outcome: str
    status: int | None
    request_id: str
    address: str | None
    base_url: str
    principal: Principal | None
    claimed_client: str | None = None
    operation: str | None = None
    query: str | None = None
    entities: tuple[Entity, ...] = ()
    patients: tuple[PatientEntity, ...] = ()


def outcome_of(status: int) -> str:
    """BALP outcome of an HTTP status: 0 success, 4 minor failure (4xx), 8 serious (5xx)."""
    return "0" if status < 400 else ("4" if status < 500 else "8")


def rest_event(facts: EventFacts) -> dict[str, Any]:
    """The AuditEvent of one request."""
    login = facts.interaction == "login"
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(uuid.uuid4()),
        "type": (
            {"system": DCM, "code": "110114", "display": "User Authentication"}
            if login
            else {"system": EVENT_TYPE, "code": "rest", "display": "Restful Operation"}
        ),
        "subtype": [
            {"system": DCM, "code": "110122", "display": "Login"}
            if login
            else {"system": INTERACTION, "code": facts.interaction}
        ],
        "action": ACTIONS.get(facts.interaction, "E"),
        "recorded": format_instant(facts.recorded),
        "outcome": facts.outcome,
    }
    if facts.status is not None:
        event["outcomeDesc"] = f"HTTP {facts.status}"
    principal = facts.principal
    if principal is not None:
        event["purposeOfEvent"] = [_purpose(principal)]
    event["agent"] = _agents(facts)
    event["source"] = _source(facts.base_url)
    event["entity"] = _entities(facts)
    return event


def break_glass_event(
    recorded: datetime,
    principal: Principal,
    patients: list[PatientEntity],
    request_id: str,
    address: str | None,
    base_url: str,
) -> dict[str, Any]:
    """The security alert of a break-the-glass opening (DCM 110113 / 110127)."""
    facts = EventFacts(
        recorded=recorded,
        interaction="break-glass",
        outcome="0",
        status=None,
        request_id=request_id,
        address=address,
        base_url=base_url,
        principal=principal,
        patients=tuple(patients),
    )
    return {
        "resourceType": "AuditEvent",
        "id": str(uuid.uuid4()),
        "type": {"system": DCM, "code": "110113", "display": "Security Alert"},
        "subtype": [{"system": DCM, "code": "110127", "display": "Emergency Override Started"}],
        "action": "E",
        "recorded": format_instant(recorded),
        "outcome": "0",
        "purposeOfEvent": [_purpose(principal)],
        "agent": _agents(facts),
        "source": _source(base_url),
        "entity": _entities(facts),
    }


def _purpose(principal: Principal) -> dict[str, Any]:
    purpose: dict[str, Any] = {"coding": [{"system": ACT_REASON, "code": principal.purpose}]}
    if principal.break_glass_reason:
        purpose["text"] = principal.break_glass_reason
    return purpose


def _agents(facts: EventFacts) -> list[dict[str, Any]]:
    reading = facts.interaction in READS
    principal = facts.principal
    client_id = principal.client_id if principal is not None else facts.claimed_client
    client: dict[str, Any] = {
        "type": {"coding": [DESTINATION_ROLE if reading else SOURCE_ROLE]},
        "who": (
            {"identifier": {"system": CLIENT_SYSTEM, "value": client_id}}
            if client_id
            else {"display": "unauthenticated client"}
        ),
        "requestor": principal is None,
    }
    if facts.address:
        client["network"] = {"address": facts.address, "type": "2"}
    agents = [
        client,
        {
            "type": {"coding": [SOURCE_ROLE if reading else DESTINATION_ROLE]},
            "who": {"identifier": {"value": facts.base_url}, "display": "emr_hub"},
            "requestor": False,
            "network": {"address": facts.base_url, "type": "5"},
        },
    ]
    if principal is None:
        return agents
    role = {"system": PARTICIPATION, "code": "IRCP" if reading else "AUT"}
    if principal.is_citizen:
        agents.append(
            {
                "type": {"coding": [role]},
                "who": {"identifier": {"system": PERSON_SYSTEM, "value": principal.person}},
                "requestor": True,
            }
        )
        return agents
    if principal.organization:
        agents.append(
            {
                "type": {"coding": [role]},
                "who": {"reference": principal.organization},
                "requestor": principal.practitioner is None,
            }
        )
    if principal.practitioner:
        system, _, value = principal.practitioner.partition("|")
        agents.append(
            {
                "type": {"coding": [role]},
                "who": {"identifier": {"system": system, "value": value}},
                "requestor": True,
            }
        )
    return agents


def _source(base_url: str) -> dict[str, Any]:
    return {
        "site": base_url,
        "observer": {"identifier": {"value": base_url}, "display": "emr_hub"},
        "type": [{"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}],
    }


def _entities(facts: EventFacts) -> list[dict[str, Any]]:
    entities: list[dict[str, Any]] = [
        {
            "what": {"identifier": {"value": facts.request_id}},
            "type": {"system": BALP_ENTITY, "code": "XrequestId"},
        }
    ]
    if facts.query is not None:
        entities.append(
            {
                "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
                "role": {"system": OBJECT_ROLE, "code": "24", "display": "Query"},
                "query": base64.b64encode(facts.query.encode()).decode(),
            }
        )
    if facts.operation:
        entities.append(
            {
                "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
                "role": {"system": OBJECT_ROLE, "code": JOB_ROLE, "display": "Job"},
                "name": facts.operation,
            }
        )
    for item in facts.entities:
        reference = f"{item.resource_type}/{item.resource_id}"
        if item.version is not None:
            reference += f"/_history/{item.version}"
        entity: dict[str, Any] = {
            "what": {"reference": reference},
            "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
            "role": {"system": OBJECT_ROLE, "code": "4", "display": "Domain Resource"},
        }
        if item.version is None:
            entity["detail"] = [{"type": TARGET_DETAIL, "valueString": "requested"}]
        entities.append(entity)
    for patient in facts.patients:
        entities.append(
            {
                "what": {"reference": f"Patient/{patient.patient_id}"},
                "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
                "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"},
                "detail": [
                    {"type": PERSON_DETAIL, "valueString": patient.person},
                    {"type": TYPES_DETAIL, "valueString": ",".join(patient.types)},
                ],
            }
        )
    return entities
