"""``GET [type]/[id]`` answered on the event loop, without FastAPI's router or a worker thread.

Why: a read is the hub's most frequent request and one database statement. Through the
framework it paid, besides that statement, for matching the path against every route of the
app (about a hundred), solving the route's dependencies, a hop to a worker thread and back,
and an ORM session with a pool checkout: measured in process, about 1.2 ms of CPU a read, of
which the read itself (the policy's statement, the answer's JSON) was a small part.

What stays the same: this is a route of the app, inside the same middleware (access log,
metrics, the NUL guard, the audit record), and it reports the FHIR read's route template, so
logs, metrics and audit cannot tell the difference. It runs the same checks, the same policy
statement (:meth:`FhirStore.read_statement`) and the same rendering as
:func:`emr_hub.fhir.routes.read`; errors go to the app's handlers. It takes only the paths the
app's router would give that endpoint: resource types are checked once at startup against the
router itself (so a type another router serves, such as ``AuditEvent``, stays there), and an id
outside the FHIR id grammar goes the usual way. Where there are no event-loop connections
(SQLite, or an app whose startup did not run), it hands the request to the FastAPI route.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.routing import BaseRoute, Match
from starlette.types import Receive, Scope, Send

from emr_hub.fhir import interactions, routes
from emr_hub.fhir.validation import ID_PATTERN, R4_RESOURCE_TYPES
from emr_hub.hub import Hub
from emr_hub.security.access import store_for
from emr_hub.security.audit.recording import absorb_read
from emr_hub.security.principal import current_principal
from storage.async_reads import AsyncReads

PREFIX = "/fhir/"
PROBE_ID = "probe-id"


class DirectRead(BaseRoute):
    """The FHIR read for ``types``, in front of the app's other routes."""

    def __init__(self, route: Any, types: frozenset[str]) -> None:
        self.route = route
        self.path = route.path
        self.types = types

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http" or scope["method"] != "GET":
            return Match.NONE, {}
        if getattr(scope["app"].state, "reads", None) is None:
            return Match.NONE, {}  # the FastAPI route serves it
        path: str = scope["path"]
        if not path.startswith(PREFIX):
            return Match.NONE, {}
        resource_type, slash, resource_id = path[len(PREFIX) :].partition("/")
        if (
            not slash
            or resource_type not in self.types
            or "/" in resource_id
            or not ID_PATTERN.fullmatch(resource_id)
        ):
            return Match.NONE, {}
        params = {"resource_type": resource_type, "resource_id": resource_id}
        return Match.FULL, {"route": self.route, "endpoint": routes.read, "path_params": params}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope["app"].state
        request = Request(scope, receive)
        params = scope["path_params"]
        response = await read(
            request, state.hub, state.reads, params["resource_type"], params["resource_id"]
        )
        await response(scope, receive, send)


async def read(
    request: Request, hub: Hub, reads: AsyncReads, resource_type: str, resource_id: str
) -> Any:
    """:func:`emr_hub.fhir.routes.read`, with its statement run on the event loop."""
    principal = await current_principal(request, hub)
    interactions.check_read(principal, resource_type, resource_id)
    with hub.db.single_read() as session:  # it never connects: the statement runs on `reads`
        store = store_for(session, hub.settings, principal)
        statement, params = store.read_statement(resource_type, resource_id)
        stored = store.read_result(resource_type, resource_id, await reads.first(statement, params))
        absorb_read(principal, store)
    return routes.render_resource(request, stored, hub)


def install(app: FastAPI) -> None:
    """Put the direct read first, for the types the app's router sends to the FHIR read (call
    it once every route is in place)."""
    route = next(r for r in routes.router.routes if getattr(r, "endpoint", None) is routes.read)
    ordered = list(_flattened(app.router.routes))
    types = frozenset(t for t in R4_RESOURCE_TYPES if _first_match(ordered, t) is route)
    app.router.routes.insert(0, DirectRead(route, types))


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


def _first_match(ordered: list[tuple[str, BaseRoute]], resource_type: str) -> BaseRoute | None:
    """The first route that takes ``GET /fhir/<type>/<id>`` (a mount takes any method)."""
    path = f"{PREFIX}{resource_type}/{PROBE_ID}"
    for prefix, candidate in ordered:
        regex = getattr(candidate, "path_regex", None)
        if regex is None or not path.startswith(prefix) or not regex.match(path[len(prefix) :]):
            continue
        methods = getattr(candidate, "methods", None)
        if methods is None or "GET" in methods:
            return candidate
    return None
