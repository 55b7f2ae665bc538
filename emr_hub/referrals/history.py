"""A patient's referral history across the network (``Patient/$referral-history``).

Every referral ServiceRequest of the patient, oldest first (``authoredOn``), each followed by
its Tasks, the Organizations that sent and received it, what came back on the Tasks
(``Task.output``) and the Appointments based on it. Everything is read through the FHIR
search and store with the caller's principal, so scopes apply to every resource returned.
"""

from __future__ import annotations

from typing import Any

from emr_hub.errors import bad_request
from emr_hub.fhir.search.params import parse_search
from emr_hub.fhir.search.service import run_search
from emr_hub.fhir.store import FhirStore, Stored
from emr_hub.security.principal import Principal

REFERRAL = "http://snomed.info/sct|3457005"
LIMIT = 1000


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
    out: list[tuple[Stored, str]] = []
    seen: set[tuple[str, str]] = set()
    for referral in referrals:
        ref = f"ServiceRequest/{referral.id}"
        tasks = _search(
            store, principal, base_url, "Task", [("focus", ref), ("_sort", "_lastUpdated")]
        )
        appointments = _search(store, principal, base_url, "Appointment", [("based-on", ref)])
        content = referral.content or {}
        linked = [content.get("requester"), *(content.get("performer") or [])]
        for task in tasks:
            for output in (task.content or {}).get("output") or []:
                linked.append(output.get("valueReference"))
        related = [_key(r) for r in linked]
        included = store.load_many(
            k for k in related if k and k not in seen and principal.allows(k[0], "r")
        )
        out.append((referral, "match"))
        out += [(t, "include") for t in tasks] + [(a, "include") for a in appointments]
        for item in included:
            seen.add((item.resource_type, item.id))
            out.append((item, "include"))
    return out


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


def _key(reference: Any) -> tuple[str, str] | None:
    text = reference.get("reference", "") if isinstance(reference, dict) else ""
    parts = text.split("/")
    return (parts[0], parts[1]) if len(parts) == 2 and parts[0][:1].isupper() else None
