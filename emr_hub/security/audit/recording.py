"""The AuditEvent of a request, from its trail: for the middleware (reads, refusals) and for
the write's own transaction (successful writes, which commit their record with their data)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from emr_hub.security.audit.events import (
    READS,
    Entity,
    EventFacts,
    PatientEntity,
    outcome_of,
    rest_event,
)
from emr_hub.security.audit.log import append
from emr_hub.security.audit.trail import AuditTrail
from storage.db import after_commit, before_commit

if TYPE_CHECKING:
    from emr_hub.fhir.store import FhirStore
    from emr_hub.hub import Hub
    from emr_hub.security.principal import Principal

TOKEN_PATH = "/auth/token"  # noqa: S105 - a URL path

_TEMPLATES = {
    ("GET", "/fhir/{resource_type}/{resource_id}"): "read",
    ("GET", "/fhir/{resource_type}/{resource_id}/_history/{version}"): "vread",
    ("GET", "/fhir/{resource_type}/{resource_id}/_history"): "history-instance",
    ("GET", "/fhir/{resource_type}/_history"): "history-type",
    ("GET", "/fhir/_history"): "history-system",
    ("GET", "/fhir/{resource_type}"): "search-type",
    ("POST", "/fhir/{resource_type}/_search"): "search-type",
    ("GET", "/fhir/Patient/{patient_id}/{resource_type}"): "search-type",
    ("GET", "/fhir"): "search-system",
    ("POST", "/fhir"): "transaction",
    ("POST", "/fhir/{resource_type}"): "create",
    ("PUT", "/fhir/{resource_type}/{resource_id}"): "update",
    ("PUT", "/fhir/{resource_type}"): "update",
    ("PATCH", "/fhir/{resource_type}/{resource_id}"): "patch",
    ("DELETE", "/fhir/{resource_type}/{resource_id}"): "delete",
    ("DELETE", "/fhir/{resource_type}"): "delete",
}
_BY_METHOD = {"GET": "read", "POST": "create", "PUT": "update", "PATCH": "patch"}


def absorb_read(principal: Principal | None, store: FhirStore) -> None:
    """A read-only request's store is done: its trail takes what it returned."""
    trail = principal.trail if principal is not None else None
    if trail is not None:
        trail.absorb(store)


def absorb_write(hub: Hub, principal: Principal | None, store: FhirStore, status: int) -> None:
    """A write's work is done: its trail takes what it read and wrote, and its AuditEvent is
    appended in its own transaction just before the commit (after the change hooks), so the
    write and its record commit together."""
    trail = principal.trail if principal is not None else None
    if trail is None or not hub.settings.audit_enabled:
        return
    trail.absorb(store)
    session = store.session

    def append_record() -> None:
        append(session, [event_of(hub, trail, status)])

    def persisted() -> None:
        trail.persisted = True

    before_commit(session, append_record)
    after_commit(session, persisted)


def failure_aware_event(hub: Hub, trail: AuditTrail, status: int) -> dict[str, Any]:
    """The event of a request answered by the middleware; for a refusal aimed at a resource,
    the patients of that resource are named too (so the refusal shows in their access log)."""
    target = _target(trail.scope.get("path_params") or {})
    if status >= 400 and target is not None and not trail.patients:
        with hub.db.snapshot() as session:
            trail.add_target_patients(session, *target)
    return event_of(hub, trail, status)


def event_of(hub: Hub, trail: AuditTrail, status: int | None) -> dict[str, Any]:
    interaction, operation = interaction_of(trail)
    return rest_event(facts_of(hub, trail, status, interaction, operation))


def facts_of(
    hub: Hub,
    trail: AuditTrail,
    status: int | None,
    interaction: str,
    operation: str | None,
) -> EventFacts:
    scope = trail.scope
    target = _target(scope.get("path_params") or {})
    entities: list[Entity] = []
    if interaction in ("read", "vread", "history-instance"):
        entities += [Entity(t, i, v) for (t, i), v in trail.read.items()]
    entities += [Entity(t, i, v) for (t, i), v in trail.written.items()]
    if target is not None and not any((e.resource_type, e.resource_id) == target for e in entities):
        entities.append(Entity(*target))
    query = None
    if interaction not in READS and trail.method == "GET":
        query = scope.get("query_string", b"").decode("latin-1") or None
    state = scope.get("state") or {}
    return EventFacts(
        recorded=datetime.now(UTC),
        interaction=interaction,
        outcome=outcome_of(status) if status is not None else "0",
        status=status,
        request_id=trail.request_id,
        address=trail.address,
        base_url=hub.settings.fhir_base_url,
        principal=trail.principal,
        claimed_client=state.get("token_client_id"),
        operation=operation,
        query=query,
        entities=tuple(entities),
        patients=tuple(
            PatientEntity(patient_id, touched.person, tuple(sorted(touched.types)))
            for patient_id, touched in sorted(trail.patients.items())
        ),
    )


def interaction_of(trail: AuditTrail) -> tuple[str, str | None]:
    """The restful-interaction code of the request, and the operation's name for one."""
    scope = trail.scope
    if trail.path == TOKEN_PATH:
        return "login", None
    template = getattr(scope.get("route"), "path", None)
    method = trail.method
    if template and "$" in template:
        name = next(part for part in template.split("/") if part.startswith("$"))
        return "operation", name
    if trail.interaction is not None:
        return trail.interaction, None
    if template is None:
        operation = next((p for p in trail.path.split("/") if p.startswith("$")), None)
        if operation:
            return "operation", operation
        return _BY_METHOD.get(method, "delete" if method == "DELETE" else "read"), None
    return _TEMPLATES.get((method, template), _BY_METHOD.get(method, "read")), None


def _target(params: dict[str, Any]) -> tuple[str, str] | None:
    if "resource_id" in params and "resource_type" in params:
        return str(params["resource_type"]), str(params["resource_id"])
    for name, resource_type in (("patient_id", "Patient"), ("subscription_id", "Subscription")):
        if name in params:
            return resource_type, str(params[name])
    return None
