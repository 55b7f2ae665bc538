"""What leaves the hub: filters feature packages register for a resource type, applied to every
FHIR response body (a resource, or the resources of a Bundle's entries, nested ones too), so
no read path can forget one. A filter returns a new resource; the stored one is never touched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

OutputFilter = Callable[[dict[str, Any]], dict[str, Any]]
_FILTERS: dict[str, OutputFilter] = {}


def register(resource_type: str, output_filter: OutputFilter) -> None:
    _FILTERS[resource_type] = output_filter


def present(body: Any) -> Any:
    """``body`` as it may be sent: filtered resources, Bundles rebuilt around them."""
    if not _FILTERS or not isinstance(body, dict):
        return body
    resource_type = body.get("resourceType")
    if resource_type in _FILTERS:
        return _FILTERS[resource_type](body)
    if resource_type != "Bundle" or not isinstance(body.get("entry"), list):
        return body
    entries = []
    changed = False
    for entry in body["entry"]:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        shown = present(resource) if resource is not None else None
        if shown is not resource:
            entry = {**entry, "resource": shown}
            changed = True
        entries.append(entry)
    return {**body, "entry": entries} if changed else body


def filtered(resource_type: str) -> bool:
    """Whether resources of this type leave the hub changed (their stored JSON cannot be sent
    as it is)."""
    return resource_type in _FILTERS
