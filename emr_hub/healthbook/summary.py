"""``Patient/$summary``: the patient's health book as an International Patient Summary
``document`` Bundle, built from every hospital's records the caller may see.

What is read: the patient's compartment rows (one query,
:mod:`emr_hub.fhir.operations.everything`), then the resources of the types the sections use
(:data:`~emr_hub.healthbook.sections.LOADED_TYPES`) through the store, so the access policy of
the caller is in the SQL: a citizen sees all of her record, a hospital what the policy opens
to it. Each section picks its entries (:mod:`.sections`); the Bundle holds the Composition,
the Patient, the entries, and what those point at (two rounds: an Observation's Encounter,
then the Encounter's Organization), the few resources outside the compartment loaded by id
for the round. Only what goes into the Bundle is disclosed to the audit trail.

The Bundle's ``identifier`` and ``timestamp`` change with every call; :func:`content_digest`
is the digest of everything else, so two summaries of an unchanged record have the same.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from emr_hub.fhir.operations.everything import compartment_members
from emr_hub.fhir.store import FhirStore, Stored
from emr_hub.healthbook import narrative
from emr_hub.healthbook.sections import LOADED_TYPES, SECTIONS, Context, Section
from emr_hub.security.principal import Principal

LOINC = "http://loinc.org"
IPS_DOCUMENT = "60591-5"
IPS_PROFILE = "http://hl7.org/fhir/uv/ips/StructureDefinition/Bundle-uv-ips"
EMPTY_REASON = "http://terminology.hl7.org/CodeSystem/list-empty-reason"
NIL_KNOWN = "nilknown"
"""IPS ``emptyReason`` of a section the hub found nothing for among the records it holds."""
REFERENCE_ROUNDS = 2
REFERENCED_TYPES = LOADED_TYPES | {"ImagingStudy", "Endpoint"}
"""What an entry may point at and the Bundle then holds: the types the sections read, and a
referral's images (``supportingInfo``) with their DICOMweb Endpoint, which no section reads."""
HUB_AUTHOR = "emr_hub"


def patient_summary(
    store: FhirStore,
    principal: Principal,
    patient_id: str,
    base_url: str,
    *,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The IPS document of ``Patient/{patient_id}`` as ``principal`` may see it (404 when the
    patient is not visible to it, 410 when deleted)."""
    principal.require("Patient", "r")
    patient = store.read("Patient", patient_id)
    moment = now or datetime.now(UTC)
    loaded = _load(store, principal, patient_id)
    by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for item in loaded.values():
        if item.content is not None:
            by_type[item.resource_type].append(item.content)
    context = Context(moment, _names(loaded))
    chosen = [(section, section.select(by_type, context)) for section in SECTIONS]
    included = _with_references(
        store,
        principal,
        [patient, *(loaded[_key(r)] for _, entries in chosen for r in entries)],
        loaded,
    )
    store.disclose(included)
    composition = _composition(patient, chosen, context, base_url)
    return {
        "resourceType": "Bundle",
        "meta": {"profile": [IPS_PROFILE]},
        "identifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{uuid.uuid4()}"},
        "type": "document",
        "timestamp": _instant(moment),
        "entry": [
            {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": composition},
            *(
                {"fullUrl": f"{base_url}/{s.resource_type}/{s.id}", "resource": s.content}
                for s in included
            ),
        ],
    }


def content_digest(bundle: dict[str, Any]) -> str:
    """SHA-256 of the summary without what changes at every call (the Bundle's identifier
    and timestamp, the Composition's fullUrl and date): equal for an unchanged record."""
    entries = bundle.get("entry") or []
    stable = [entries[0]["resource"] | {"date": None}, *(e["resource"] for e in entries[1:])]
    canonical = json.dumps(stable, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _load(store: FhirStore, principal: Principal, patient_id: str) -> dict[tuple, Stored]:
    """The patient's compartment, of the types the sections read, as the caller may see it."""
    wanted = sorted(
        key
        for key in compartment_members(store, patient_id)
        if key[0] in LOADED_TYPES and principal.allows(key[0], "r")
    )
    return {(s.resource_type, s.id): s for s in store.load_many(wanted, disclose=False)}


def _key(resource: dict[str, Any]) -> tuple[str, str]:
    return (resource["resourceType"], resource["id"])


def _with_references(
    store: FhirStore, principal: Principal, chosen: list[Stored], loaded: dict[tuple, Stored]
) -> list[Stored]:
    """``chosen`` in order without repeats, then what they point at, in
    :data:`REFERENCE_ROUNDS` rounds. What is not in ``loaded`` yet (the Organizations,
    Practitioners, Locations ... outside the compartment) is loaded for the round, few ids in
    one statement per type, and added to ``loaded`` for the narratives' names."""
    out: dict[tuple[str, str], Stored] = {}
    for item in chosen:
        out.setdefault((item.resource_type, item.id), item)
    frontier = list(out.values())
    for _ in range(REFERENCE_ROUNDS):
        named = [key for item in frontier for key in _references(item.content)]
        missing = sorted(
            {
                key
                for key in named
                if key not in loaded
                and key[0] in REFERENCED_TYPES
                and principal.allows(key[0], "r")
            }
        )
        for item in store.load_many(missing, disclose=False) if missing else ():
            loaded[(item.resource_type, item.id)] = item
        frontier = []
        for key in named:
            target = loaded.get(key)
            if target is not None and key not in out:
                out[key] = target
                frontier.append(target)
    return list(out.values())


def _references(value: Any) -> Iterator[tuple[str, str]]:
    """Every ``Type/id`` reference in a resource (relative references, as the hub stores)."""
    if isinstance(value, dict):
        reference = value.get("reference")
        if isinstance(reference, str):
            parts = reference.split("/")
            if len(parts) == 2 and parts[0][:1].isupper():
                yield (parts[0], parts[1])
        for child in value.values():
            if isinstance(child, dict | list):
                yield from _references(child)
    elif isinstance(value, list):
        for child in value:
            yield from _references(child)


def _names(loaded: dict[tuple, Stored]) -> Any:
    def name(reference: Any) -> str:
        if not isinstance(reference, dict):
            return ""
        target = reference.get("reference")
        item = None
        if isinstance(target, str) and target.count("/") == 1:
            item = loaded.get(tuple(target.split("/")))  # type: ignore[arg-type]
        if item is not None and item.content is not None:
            return _display(item.content) or str(reference.get("display") or "")
        return str(reference.get("display") or "")

    return name


def _display(resource: dict[str, Any]) -> str:
    if resource.get("resourceType") == "Condition":
        return narrative.concept(resource.get("code"))
    if resource.get("resourceType") == "Medication":
        return narrative.concept(resource.get("code"))
    value = resource.get("name")
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[0], dict):
        human = value[0]
        if human.get("text"):
            return str(human["text"])
        return " ".join(
            [
                *(human.get("prefix") or []),
                *(human.get("given") or []),
                str(human.get("family") or ""),
            ]
        ).strip()
    return ""


def _composition(
    patient: Stored,
    chosen: Iterable[tuple[Section, list[dict[str, Any]]]],
    context: Context,
    base_url: str,
) -> dict[str, Any]:
    subject = {"reference": f"{base_url}/Patient/{patient.id}"}
    return {
        "resourceType": "Composition",
        "status": "final",
        "type": {
            "coding": [
                {"system": LOINC, "code": IPS_DOCUMENT, "display": "Patient summary Document"}
            ]
        },
        "subject": subject,
        "date": _instant(context.now),
        "author": [{"display": HUB_AUTHOR}],
        "title": "Sổ sức khỏe điện tử — Tóm tắt hồ sơ sức khỏe",
        "language": "vi",
        "section": [_section(section, entries, context, base_url) for section, entries in chosen],
    }


def _section(
    section: Section, entries: list[dict[str, Any]], context: Context, base_url: str
) -> dict[str, Any]:
    rows = [section.row(resource, context) for resource in entries]
    out: dict[str, Any] = {
        "title": section.title,
        "code": {"coding": [{"system": LOINC, "code": section.code, "display": section.display}]},
        "text": {"status": "generated", "div": narrative.table(section.headers, rows)},
    }
    if entries:
        out["entry"] = [{"reference": f"{base_url}/{r['resourceType']}/{r['id']}"} for r in entries]
    else:
        out["emptyReason"] = {
            "coding": [{"system": EMPTY_REASON, "code": NIL_KNOWN, "display": "Nil Known"}]
        }
    return out


def _instant(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
