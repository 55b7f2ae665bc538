"""The kick-off request of ``$export``: its parameters read from a query string or a
``Parameters`` body, checked against what the caller may export, and kept as JSON on the job.

Bulk Data Access IG (STU 2, https://hl7.org/fhir/uv/bulkdata/STU2/export.html): ``_outputFormat``
(three spellings of NDJSON), ``_since`` (an instant), ``_type`` (comma-separated, repeatable),
``_typeFilter`` (``Type?search``; several for one type are ORed), and on POST ``patient``
(references). ``Prefer: handling=lenient`` turns refusals of what the hub does not support
(``_elements``, ``includeAssociatedData``, unknown parameters, types the scopes do not cover)
into notes in the export's error file; without it they are a 400 (or 403 for scopes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from emr_hub.errors import bad_request, forbidden
from emr_hub.fhir.search.compartment import patient_compartment
from emr_hub.fhir.search.params import SearchRequest, parse_search, require_search_scopes
from emr_hub.fhir.stored import format_instant
from emr_hub.fhir.validation import R4_RESOURCE_TYPES
from emr_hub.security.principal import Principal
from storage.db import as_utc

NDJSON = "application/fhir+ndjson"
OUTPUT_FORMATS = frozenset({NDJSON, "application/ndjson", "ndjson"})
SYSTEM, PATIENT, GROUP = "system", "patient", "group"
MAX_PATIENTS = 100_000
"""Patients one export may name (the ``patient`` parameter, or a Group's members)."""
MAX_TYPE_FILTERS = 50
NOT_EXPORTED = frozenset({"AuditEvent"})
"""Kept apart from clinical data: the audit trail is read through its own API."""
KNOWN = frozenset({"_outputFormat", "_since", "_type", "_typeFilter", "patient"})
UNSUPPORTED = frozenset({"_elements", "includeAssociatedData", "organizeOutputBy"})


@dataclass
class ExportRequest:
    """What one export is to contain (stored as the job's ``parameters``)."""

    level: str
    types: list[str]
    """The types to export, in order; the scan runs them one after the other."""
    since: str | None = None
    type_filters: dict[str, list[str]] = field(default_factory=dict)
    patients: list[str] | None = None
    """Patient ids the export is limited to (``patient``, a Group's members); None: all."""
    group_id: str | None = None
    notes: list[str] = field(default_factory=list)
    """What a lenient request asked that was left out (written to the error file)."""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExportRequest:
        return cls(**data)

    @property
    def since_instant(self) -> datetime | None:
        return None if self.since is None else datetime.fromisoformat(self.since)


def compartment_types() -> frozenset[str]:
    """The types a Patient or Group export holds: the Patient compartment, Patient itself."""
    return frozenset(patient_compartment()) | {"Patient"}


def parse_query_items(items: list[tuple[str, str]]) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for name, value in items:
        values.setdefault(name, []).append(value)
    return values


def parse_parameters_body(body: Any) -> dict[str, list[str]]:
    """The values of a POST kick-off's ``Parameters`` resource, by parameter name."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise bad_request("A POST $export takes a Parameters resource", "Parameters")
    values: dict[str, list[str]] = {}
    for index, part in enumerate(body.get("parameter") or []):
        where = f"Parameters.parameter[{index}]"
        name = part.get("name") if isinstance(part, dict) else None
        if not isinstance(name, str):
            raise bad_request("Each parameter needs a name", where)
        value = _part_value(part, where)
        values.setdefault(name, []).append(value)
    return values


def _part_value(part: dict[str, Any], where: str) -> str:
    for key in ("valueString", "valueInstant", "valueDateTime", "valueCode", "valueBoolean"):
        if key in part:
            return str(part[key]).lower() if key == "valueBoolean" else str(part[key])
    reference = part.get("valueReference")
    if isinstance(reference, dict) and isinstance(reference.get("reference"), str):
        return reference["reference"]
    raise bad_request("A parameter needs a value[x] of a string, instant or reference", where)


def build_request(
    principal: Principal,
    level: str,
    values: dict[str, list[str]],
    *,
    lenient: bool,
    exportable: frozenset[str],
    posted: bool,
    group_id: str | None = None,
) -> ExportRequest:
    """Check the kick-off's ``values`` and decide the types and filters of the export.

    ``exportable`` is what this hub may put in an export for the principal at all (its
    policy's categories); scopes narrow it further."""
    notes: list[str] = []
    for name in values:
        if name in KNOWN or name.startswith("_format") or name == "_pretty":
            continue
        reason = "is not supported" if name in UNSUPPORTED else "is not a parameter of $export"
        if not lenient:
            raise bad_request(f"{name} {reason}", name, code="not-supported")
        notes.append(f"{name} {reason}: ignored")
    formats = values.get("_outputFormat", [])
    for output_format in formats:
        if output_format not in OUTPUT_FORMATS:
            raise bad_request(
                f"_outputFormat {output_format!r} is not served: only {NDJSON}",
                "_outputFormat",
                code="not-supported",
            )
    since = _since(values.get("_since", []))
    allowed = exportable if level == SYSTEM else exportable & compartment_types()
    types = _types(principal, values.get("_type", []), allowed, lenient, notes)
    filters = _type_filters(principal, values.get("_typeFilter", []), types, lenient, notes)
    patients = _patients(values.get("patient", []), level, posted)
    return ExportRequest(
        level=level,
        types=types,
        since=since,
        type_filters=filters,
        patients=patients,
        group_id=group_id,
        notes=notes,
    )


def _since(raw: list[str]) -> str | None:
    if not raw:
        return None
    if len(raw) > 1:
        raise bad_request("_since is given more than once", "_since")
    text = raw[0].strip()
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None or "T" not in text:
        raise bad_request(
            f"_since must be a FHIR instant with a time zone, e.g. 2026-12-01T00:00:00Z: {text!r}",
            "_since",
        )
    return format_instant(as_utc(moment))


def _types(
    principal: Principal,
    raw: list[str],
    allowed: frozenset[str],
    lenient: bool,
    notes: list[str],
) -> list[str]:
    readable = {t for t in allowed if principal.allows(t, "r")}
    if not raw:
        return sorted(readable)
    asked = [name.strip() for value in raw for name in value.split(",") if name.strip()]
    chosen: list[str] = []
    for name in dict.fromkeys(asked):
        if name not in R4_RESOURCE_TYPES:
            problem = f"_type {name} is not an R4 resource type"
        elif name not in allowed:
            problem = f"_type {name} is not part of this kind of export"
        elif name not in readable:
            if not lenient:
                principal.require(name, "r")  # 403 naming the scope needed
            problem = f"_type {name} is not covered by the token's scopes"
        else:
            chosen.append(name)
            continue
        if not lenient:
            raise bad_request(problem, "_type")
        notes.append(f"{problem}: left out")
    return chosen


def _type_filters(
    principal: Principal,
    raw: list[str],
    types: list[str],
    lenient: bool,
    notes: list[str],
) -> dict[str, list[str]]:
    if len(raw) > MAX_TYPE_FILTERS:
        raise bad_request(f"At most {MAX_TYPE_FILTERS} _typeFilter values", "_typeFilter")
    filters: dict[str, list[str]] = {}
    for text in raw:
        resource_type, mark, query = text.partition("?")
        resource_type = resource_type.strip()
        if not mark or not query or resource_type not in R4_RESOURCE_TYPES:
            raise bad_request(
                f"_typeFilter must be Type?search-parameters: {text!r}", "_typeFilter"
            )
        if resource_type not in types:
            problem = f"_typeFilter on {resource_type}, which the export does not hold"
            if not lenient:
                raise bad_request(problem, "_typeFilter")
            notes.append(f"{problem}: ignored")
            continue
        request = parse_type_filter(resource_type, query)
        require_search_scopes(principal, request)
        filters.setdefault(resource_type, []).append(query)
    return filters


def parse_type_filter(resource_type: str, query: str) -> SearchRequest:
    """A ``_typeFilter`` as a search: conditions only (no paging, sorting or includes)."""
    items = parse_qsl(query, keep_blank_values=True)
    request = parse_search(resource_type, items)
    if request.sort or request.includes or request.total or request.summary or request.elements:
        raise bad_request(
            f"_typeFilter {resource_type}?{query} may hold search conditions only",
            "_typeFilter",
        )
    if any(name == "_count" for name, _ in items):
        raise bad_request("_typeFilter may not page (_count)", "_typeFilter")
    return request


def _patients(raw: list[str], level: str, posted: bool) -> list[str] | None:
    if not raw:
        return None
    if level == SYSTEM or not posted:
        raise bad_request(
            "patient is a parameter of a POST Patient/$export or Group/[id]/$export", "patient"
        )
    if len(raw) > MAX_PATIENTS:
        raise bad_request(f"At most {MAX_PATIENTS} patients", "patient", code="too-costly")
    ids = []
    for reference in raw:
        kind, _, patient_id = reference.rpartition("/")
        if not kind.endswith("Patient") or not patient_id:
            raise bad_request(f"patient must reference a Patient: {reference!r}", "patient")
        ids.append(patient_id)
    return sorted(set(ids))


def refuse_principal(principal: Principal) -> None:
    """Exports are for hospital systems and the operator, never in an emergency override."""
    if principal.is_citizen:
        raise forbidden("A citizen reads her record through the health book, not $export")
    if principal.breaking_glass:
        raise forbidden("Break-the-glass opens one patient's record, not a bulk export")
