"""A patient's referral history across the network (``Patient/$referral-history``).

Every referral ServiceRequest of the patient, oldest first (``authoredOn``), each followed by
its Tasks, the Organizations that sent and received it, what came back on the Tasks
(``Task.output``), the Appointments based on it, and its images: the ImagingStudies in its
``supportingInfo`` and those of its Encounter, each followed by its DICOMweb Endpoint.
Everything is read through the FHIR search and store with the caller's principal, so scopes
apply to every resource returned.

Cost: the patient, the referral search, then the Tasks (``focus``) and the Appointments
(``based-on``) of :data:`CHUNK` referrals per search, and one ``load_many`` for the
Organizations and outputs of all the referrals. The results are grouped per referral here, by
the same reading of references as the search index
(:func:`~emr_hub.fhir.search.values.reference_rows`), so the order is the one a search per
referral gives.

Why :data:`CHUNK` is 1 (one search per referral, each an index probe on ``search_reference``):
a search with several references ORed is planned by PostgreSQL as a scan of every Task
``focus`` (or Appointment ``based-on``) row of the hub, filtered. Referral resources are rare
among the index rows, so the planner expects a handful of rows for the (type, parameter)
prefix and sees no point in probing per value (``IN`` fares the same). Measured with
``bench/referral_history.py``: ORing all of a patient's referrals took a 3-referral history
from 14.6 to 8.6 ms at 100,000 resources, but at 1,000,000 (1,796 Tasks) the OR statement alone
took 3.6 ms against 0.5 ms for one probe, and it grows with every referral the network makes.
Raise :data:`CHUNK` once the search compiles multi-value references into per-value probes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from emr_hub.errors import bad_request
from emr_hub.fhir.search.params import parse_search
from emr_hub.fhir.search.service import run_search
from emr_hub.fhir.search.values import reference_rows
from emr_hub.fhir.store import FhirStore, Stored
from emr_hub.security.principal import Principal

REFERRAL = "http://snomed.info/sct|3457005"
LIMIT = 1000
"""At most this many referrals, and Tasks and Appointments per referral."""
CHUNK = 1
"""Referrals per Task or Appointment search (their references ORed); see the module
docstring for why it is 1."""


def find_patient(store: FhirStore, principal: Principal, identifier: str, base_url: str) -> str:
    request = parse_search("Patient", [("identifier", identifier), ("_count", "2")])
    matches = run_search(store, principal, request, base_url).matches
    if len(matches) != 1:
        found = "no patient" if not matches else "several patients"
        raise bad_request(f"{found} with identifier {identifier.split('|')[0]}|…", "identifier")
    return matches[0].id


def referral_history(
    store: FhirStore, principal: Principal, patient_id: str, base_url: str
) -> list[tuple[Stored, str]]:
    """(resource, role) in display order: each referral, then what belongs to it."""
    principal.require("Patient", "r")
    store.read("Patient", patient_id)  # 404 / 410
    referrals = _search(
        store,
        principal,
        base_url,
        "ServiceRequest",
        [("subject", f"Patient/{patient_id}"), ("category", REFERRAL), ("_sort", "authored")],
    )
    if not referrals:
        return []
    ids = [referral.id for referral in referrals]
    tasks = _per_referral(
        store, principal, base_url, ("Task", "focus", "focus"), ids, [("_sort", "_lastUpdated")]
    )
    appointments = _per_referral(
        store, principal, base_url, ("Appointment", "based-on", "basedOn"), ids, []
    )
    related: dict[str, list[tuple[str, str]]] = {}
    for referral in referrals:
        content = referral.content or {}
        linked = [content.get("requester"), *(content.get("performer") or [])]
        for task in tasks[referral.id]:
            for output in (task.content or {}).get("output") or []:
                linked.append(output.get("valueReference"))
        linked += _imaging_of(store, principal, base_url, content)
        keys = (_key(reference) for reference in linked)
        related[referral.id] = list(dict.fromkeys(k for k in keys if k))
    wanted = (k for keys in related.values() for k in keys if principal.allows(k[0], "r"))
    loaded = {(item.resource_type, item.id): item for item in store.load_many(wanted)}
    _add_endpoints(store, principal, related, loaded)
    out: list[tuple[Stored, str]] = []
    seen: set[tuple[str, str]] = set()  # included once, under the first referral naming it
    for referral in referrals:
        out.append((referral, "match"))
        out += [(t, "include") for t in tasks[referral.id]]
        out += [(a, "include") for a in appointments[referral.id]]
        for key in related[referral.id]:
            item = loaded.get(key)
            if item is not None and key not in seen:
                seen.add(key)
                out.append((item, "include"))
    return out


def _imaging_of(
    store: FhirStore, principal: Principal, base_url: str, referral: dict[str, Any]
) -> list[Any]:
    """The ImagingStudies a referral brings: those in its ``supportingInfo`` and those of its
    Encounter."""
    found = [
        item
        for item in referral.get("supportingInfo") or []
        if (_key(item) or ("",))[0] == "ImagingStudy"
    ]
    encounter = _key(referral.get("encounter"))
    if encounter is not None and encounter[0] == "Encounter":
        query = [("encounter", "/".join(encounter))]
        studies = _search(store, principal, base_url, "ImagingStudy", query)
        found += [{"reference": f"ImagingStudy/{study.id}"} for study in studies]
    return found


def _add_endpoints(
    store: FhirStore,
    principal: Principal,
    related: dict[str, list[tuple[str, str]]],
    loaded: dict[tuple[str, str], Stored],
) -> None:
    """Each ImagingStudy is followed by its Endpoints (the DICOMweb address to fetch it from:
    ``<Endpoint.address>/studies/<Study Instance UID>``)."""
    if not principal.allows("Endpoint", "r"):
        return
    for keys in related.values():
        for key in [k for k in keys if k[0] == "ImagingStudy" and k in loaded]:
            endpoints = (loaded[key].content or {}).get("endpoint") or []
            position = keys.index(key) + 1
            for endpoint in (_key(e) for e in endpoints):
                if endpoint is not None and endpoint not in keys:
                    keys.insert(position, endpoint)
                    position += 1
    missing = {k for keys in related.values() for k in keys if k[0] == "Endpoint"} - set(loaded)
    loaded.update({(e.resource_type, e.id): e for e in store.load_many(sorted(missing))})


def history_bundle(
    entries: list[tuple[Stored, str]], base_url: str, self_url: str
) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": sum(1 for _, role in entries if role == "match"),
        "link": [{"relation": "self", "url": self_url}],
        "entry": [
            {
                "fullUrl": f"{base_url}/{stored.resource_type}/{stored.id}",
                "resource": stored.content,
                "search": {"mode": role},
            }
            for stored, role in entries
        ],
    }


def _search(
    store: FhirStore,
    principal: Principal,
    base_url: str,
    resource_type: str,
    query: list[tuple[str, str]],
) -> list[Stored]:
    if not principal.allows(resource_type, "s"):
        return []
    request = parse_search(resource_type, [*query, ("_count", str(LIMIT))])
    return run_search(store, principal, request, base_url).matches


def _per_referral(
    store: FhirStore,
    principal: Principal,
    base_url: str,
    target: tuple[str, str, str],
    referral_ids: list[str],
    query: list[tuple[str, str]],
) -> dict[str, list[Stored]]:
    """Referral id → the resources of ``target`` (type, search parameter, element) pointing
    at it, in the search's order: one search per :data:`CHUNK` referrals, every page of it
    read, so no referral loses its resources to another's."""
    resource_type, param, element = target
    groups: dict[str, list[Stored]] = {i: [] for i in referral_ids}
    if not principal.allows(resource_type, "s"):
        return groups
    for start in range(0, len(referral_ids), CHUNK):
        chunk = referral_ids[start : start + CHUNK]
        values = ",".join(f"ServiceRequest/{i}" for i in chunk)
        request = parse_search(resource_type, [(param, values), *query, ("_count", str(LIMIT))])
        in_chunk = set(chunk)  # one pointing at referrals of two chunks is found twice
        while True:
            result = run_search(store, principal, request, base_url)
            for item in result.matches:
                for referral_id in _referrals_named((item.content or {}).get(element), base_url):
                    group = groups[referral_id] if referral_id in in_chunk else None
                    if group is not None and len(group) < LIMIT:
                        group.append(item)
            if result.next_cursor is None:
                break
            request.cursor = result.next_cursor
    return groups


def _referrals_named(references: Any, base_url: str) -> Iterable[str]:
    """Ids of the ServiceRequests a Reference (or a list of them) points at, read as the
    search index reads them (relative, absolute under ``base_url``, with ``_history``)."""
    items = references if isinstance(references, list) else [references]
    found = {
        row.target_id
        for item in items
        for row in reference_rows(("Reference", item), base_url)
        if row.target_type == "ServiceRequest" and row.target_id
    }
    return sorted(found)


def _key(reference: Any) -> tuple[str, str] | None:
    text = reference.get("reference", "") if isinstance(reference, dict) else ""
    parts = text.split("/")
    return (parts[0], parts[1]) if len(parts) == 2 and parts[0][:1].isupper() else None
