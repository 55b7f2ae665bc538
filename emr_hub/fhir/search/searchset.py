"""The searchset Bundle of a search: matches, included resources, links and total."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from emr_hub.errors import Issue, operation_outcome
from emr_hub.fhir.elements import apply_elements, apply_summary
from emr_hub.fhir.search.params import Condition, SearchRequest, parse_search
from emr_hub.fhir.search.service import SearchResult, run_search
from emr_hub.fhir.store import FhirStore

if TYPE_CHECKING:
    from emr_hub.security.principal import Principal


def search_bundle(
    store: FhirStore,
    principal: Principal,
    resource_type: str,
    query: list[tuple[str, str]],
    base_url: str,
    self_url: str,
    *,
    lenient: bool = False,
    scope: Condition | None = None,
) -> dict[str, Any]:
    """Parse, run and render one search: what GET/POST on a type and bundle GETs share.

    ``scope`` is an extra condition every match must meet (a compartment)."""
    request = parsed_search(resource_type, query, lenient=lenient, scope=scope)
    return parsed_search_bundle(store, principal, request, query, base_url, self_url)


def parsed_search(
    resource_type: str,
    query: list[tuple[str, str]],
    *,
    lenient: bool = False,
    scope: Condition | None = None,
) -> SearchRequest:
    request = parse_search(resource_type, query, lenient=lenient)
    if scope is not None:
        request.filters.append(scope)
    return request


def parsed_search_bundle(
    store: FhirStore,
    principal: Principal,
    request: SearchRequest,
    query: list[tuple[str, str]],
    base_url: str,
    self_url: str,
) -> dict[str, Any]:
    result = run_search(store, principal, request, base_url)
    return searchset(request, result, base_url, self_url, query)


def one_statement(request: SearchRequest) -> bool:
    """Whether :func:`run_search` answers ``request`` with a single statement (no includes;
    no count beside the page), which then needs no transaction around it."""
    only_count = request.summary == "count" or request.count == 0
    return not request.includes and (only_count or request.total != "accurate")


def system_search_bundle(
    store: FhirStore,
    principal: Principal,
    resource_types: list[str],
    query: list[tuple[str, str]],
    base_url: str,
    self_url: str,
    *,
    lenient: bool = False,
) -> dict[str, Any]:
    """``GET /fhir?_type=A,B&...``: the same parameters over several types, paged together."""
    requests = [parse_search(t, query, lenient=lenient) for t in resource_types]
    result = run_search(store, principal, requests[0], base_url, also=requests[1:])
    return searchset(requests[0], result, base_url, self_url, query, link_path="")


def searchset(
    request: SearchRequest,
    result: SearchResult,
    base_url: str,
    self_url: str,
    query: list[tuple[str, str]],
    link_path: str | None = None,
) -> dict[str, Any]:
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if result.total is not None and request.total != "none":
        bundle["total"] = result.total
    links = [{"relation": "self", "url": self_url}]
    if result.next_cursor:
        kept = [(k, v) for k, v in query if k != "_cursor"]
        path = request.resource_type if link_path is None else link_path
        links.append(
            {
                "relation": "next",
                "url": (f"{base_url}/{path}" if path else base_url)
                + "?"
                + urlencode([*kept, ("_cursor", result.next_cursor)]),
            }
        )
    bundle["link"] = links
    if request.summary == "count":
        return bundle
    entries: list[dict[str, Any]] = []
    for mode, found in (("match", result.matches), ("include", result.included)):
        for stored in found:
            resource = apply_elements(
                apply_summary(stored.content or {}, request.summary), request.elements
            )
            entries.append(
                {
                    "fullUrl": f"{base_url}/{stored.resource_type}/{stored.id}",
                    "resource": resource,
                    "search": {"mode": mode},
                }
            )
    if request.ignored:
        warning = Issue(
            "not-supported",
            f"Ignored unknown search parameters: {', '.join(request.ignored)}",
            tuple(request.ignored),
            severity="warning",
        )
        entries.append({"resource": operation_outcome([warning]), "search": {"mode": "outcome"}})
    if entries:
        bundle["entry"] = entries
    return bundle
