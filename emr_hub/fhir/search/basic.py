"""Search by ``_id`` and ``identifier`` (the conditional criteria) and the searchset Bundle.

Used by ``GET /fhir/{type}`` and by GET entries of transactions and batches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from emr_hub.errors import bad_request
from emr_hub.fhir import interactions
from emr_hub.fhir.elements import apply_elements, apply_summary
from emr_hub.fhir.store import FhirStore, Stored

if TYPE_CHECKING:
    from emr_hub.security.principal import Principal

RESULT_PARAMS = {"_format", "_pretty", "_summary", "_elements", "_count"}
DEFAULT_COUNT = 50
MAX_COUNT = 1000


def parse_count(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_COUNT
    if not raw.isdigit():
        raise bad_request(f"_count must be a non-negative integer, not {raw!r}", "_count")
    return min(int(raw), MAX_COUNT)


def search(
    store: FhirStore,
    principal: Principal,
    resource_type: str,
    criteria: str,
    count: int,
    where: str,
) -> tuple[list[Stored], bool]:
    """Up to ``count`` matches, and whether they are all the matches there are."""
    interactions.check_type(resource_type)
    if not criteria:
        raise bad_request("Give search criteria: _id or identifier", where, code="required")
    ids = interactions.find_matches(
        store, principal, resource_type, criteria, where, limit=count + 1
    )
    return [store.read(resource_type, i) for i in ids[:count]], len(ids) <= count


def searchset(
    found: list[Stored],
    complete: bool,
    base_url: str,
    self_url: str,
    summary: str | None = None,
    elements: list[str] | None = None,
) -> dict[str, Any]:
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if complete:  # the total is only stated when this page holds every match
        bundle["total"] = len(found)
    bundle["link"] = [{"relation": "self", "url": self_url}]
    if summary != "count":
        bundle["entry"] = [
            {
                "fullUrl": f"{base_url}/{stored.resource_type}/{stored.id}",
                "resource": apply_elements(apply_summary(stored.content or {}, summary), elements),
                "search": {"mode": "match"},
            }
            for stored in found
        ]
    return bundle
