"""Reads (``GET [type]/[id]``) and vreads answered on the event loop, without FastAPI's router
or a worker thread.

Why: a read is the hub's most frequent request and one database statement. Through the
framework it paid, besides that statement, for matching the path against every route of the
app (about a hundred), solving the route's dependencies, a hop to a worker thread and back,
and an ORM session with a pool checkout: measured in process, about 1.2 ms of CPU a read, of
which the read itself (the policy's statement, the answer's JSON) was a small part.

What stays the same: this is a route of the app, inside the same middleware (access log,
metrics, the NUL guard, the audit record), and it reports the FHIR read's route template, so
logs, metrics and audit cannot tell the difference. It runs the same checks, the same policy
statement (:meth:`FhirStore.read_plan`, :meth:`FhirStore.vread_plan`) and the same rendering
as :func:`emr_hub.fhir.routes.read` and ``vread``; errors go to the app's handlers. It takes
only the paths the app's router would give those endpoints: the resource types are checked
once at startup against the router itself (so a type another router serves, such as
``AuditEvent``, stays there), and an id outside the FHIR id grammar goes the usual way. Where
there are no event-loop connections (SQLite, or an app whose startup did not run), the FastAPI
routes serve.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from starlette.datastructures import URLPath
from starlette.requests import Request
from starlette.routing import BaseRoute, Match, NoMatchFound
from starlette.types import Receive, Scope, Send

from emr_hub.fhir import interactions, output, routes
from emr_hub.fhir.validation import ID_PATTERN, R4_RESOURCE_TYPES
from emr_hub.hub import Hub
from emr_hub.security.access import store_for
from emr_hub.security.audit.recording import absorb_read
from emr_hub.security.principal import current_principal

PREFIX = "/fhir/"
PROBES = {"read": "{}/probe-id", "vread": "{}/probe-id/_history/1"}
"""A path each endpoint answers, per resource type, to ask the app's router about."""


class DirectRead(BaseRoute):
    """The FHIR read and vread for the resource types the app's router gives them."""

    def __init__(self, endpoints: dict[str, tuple[Any, frozenset[str]]]) -> None:
        self.read, self.read_types = endpoints["read"]
        self.vread, self.vread_types = endpoints["vread"]

    def url_path_for(self, name: str, /, **path_params: Any) -> URLPath:
        """No URL is named after this route: ``url_for`` goes on to the FHIR routes behind it
        (the base class would raise NotImplementedError, and this route is the first asked)."""
        raise NoMatchFound(name, path_params)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http" or scope["method"] != "GET":
            return Match.NONE, {}
        path: str = scope["path"]
        if not path.startswith(PREFIX) or getattr(scope["app"].state, "async_db", None) is None:
            return Match.NONE, {}  # not a read, or no event-loop reads: the FastAPI route serves
        parts = path[len(PREFIX) :].split("/")
        if len(parts) == 2:
            route, types = self.read, self.read_types
        elif len(parts) == 4 and parts[2] == "_history" and parts[3]:
            route, types = self.vread, self.vread_types
        else:
            return Match.NONE, {}
        if parts[0] not in types or not ID_PATTERN.fullmatch(parts[1]):
            return Match.NONE, {}
        params = {"resource_type": parts[0], "resource_id": parts[1]}
        if len(parts) == 4:
            params["version"] = parts[3]
        return Match.FULL, {"route": route, "endpoint": route.endpoint, "path_params": params}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope["app"].state
        hub: Hub = state.hub
        request = Request(scope, receive)
        params = scope["path_params"]
        resource_type, resource_id = params["resource_type"], params["resource_id"]
        principal = await current_principal(request, hub)
        version = params.get("version")
        if version is None:
            interactions.check_read(principal, resource_type, resource_id)
        else:
            number = interactions.check_vread(principal, resource_type, resource_id, version)
        # With no query (no _summary, _elements, _pretty ...) and no output filter for the
        # type, the stored JSON text is the answer's body: it is not parsed and re-serialised.
        verbatim = not scope["query_string"] and not output.filtered(resource_type)
        with hub.db.single_read() as session:  # it never connects: the statement runs on the loop
            store = store_for(session, hub.settings, principal)
            if version is None:
                plan = store.read_plan(resource_type, resource_id, verbatim=verbatim)
            else:
                plan = store.vread_plan(resource_type, resource_id, number, verbatim=verbatim)
            stored = plan.result(await state.async_db.first(plan.statement, plan.params))
            absorb_read(principal, store)
        response = routes.render_resource(request, stored, hub)
        await response(scope, receive, send)


def install(app: FastAPI) -> None:
    """Put the direct reads first, for the types the app's router gives the FHIR read and
    vread (call it once every route is in place)."""
    ordered = list(_flattened(app.router.routes))
    endpoints = {}
    for name, probe in PROBES.items():
        endpoint = getattr(routes, name)
        route = next(r for r in routes.router.routes if getattr(r, "endpoint", None) is endpoint)
        types = frozenset(
            t for t in R4_RESOURCE_TYPES if _first_match(ordered, PREFIX + probe.format(t)) is route
        )
        endpoints[name] = (route, types)
    app.router.routes.insert(0, DirectRead(endpoints))


def _flattened(candidates: list[BaseRoute], prefix: str = "") -> Iterator[tuple[str, BaseRoute]]:
    """The app's routes in the order its router tries them, included routers opened, each
    with the prefix its inclusion put before its path."""
    for candidate in candidates:
        included = getattr(candidate, "original_router", None)
        if included is None:
            yield prefix, candidate
            continue
        added = getattr(getattr(candidate, "include_context", None), "prefix", "") or ""
        yield from _flattened(included.routes, prefix + added)


def _first_match(ordered: list[tuple[str, BaseRoute]], path: str) -> BaseRoute | None:
    """The first route that takes ``GET path`` (a mount takes any method)."""
    for prefix, candidate in ordered:
        regex = getattr(candidate, "path_regex", None)
        if regex is None or not path.startswith(prefix) or not regex.match(path[len(prefix) :]):
            continue
        methods = getattr(candidate, "methods", None)
        if methods is None or "GET" in methods:
            return candidate
    return None
