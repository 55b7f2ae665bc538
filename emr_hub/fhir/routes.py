"""The FHIR REST API under ``/fhir``: an HTTP adapter over :mod:`emr_hub.fhir.interactions`.

Each handler parses the request, runs the interaction inside one database transaction and
renders the result; errors are :class:`emr_hub.errors.FhirError` rendered by the app.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from emr_hub.deps import HubDep
from emr_hub.errors import FhirError, Issue, bad_request, not_found, operation_outcome
from emr_hub.fhir import interactions
from emr_hub.fhir.bundle import process_bundle
from emr_hub.fhir.capability import capability_statement
from emr_hub.fhir.elements import SUMMARY_MODES, apply_elements, apply_summary, parse_elements
from emr_hub.fhir.http import (
    FHIR_JSON,
    fhir_response,
    parse_if_match,
    parse_json_body,
    prefer_return,
    public_url,
    read_limited,
    version_headers,
    wants_pretty,
)
from emr_hub.fhir.operations.everything import everything, everything_bundle
from emr_hub.fhir.search.compartment import in_patient_compartment
from emr_hub.fhir.search.params import Condition, parse_count
from emr_hub.fhir.search.searchset import (
    one_statement,
    parsed_search,
    parsed_search_bundle,
    system_search_bundle,
)
from emr_hub.fhir.store import FhirStore, Stored, format_instant
from emr_hub.fhir.validation import is_resource_type
from emr_hub.hub import Hub
from emr_hub.security.access import store_for
from emr_hub.security.audit.recording import absorb_read, absorb_write
from emr_hub.security.principal import Principal, PrincipalDep

router = APIRouter(prefix="/fhir")
T = TypeVar("T")
STARTED = format_instant(datetime.now(UTC))


def in_transaction(hub: Hub, principal: Principal, work: Callable[[FhirStore], T]) -> T:
    """Run a write in one transaction with ``principal``'s store (policy and authorship); its
    audit record is committed with it."""
    with hub.db.transaction() as session:
        store = store_for(session, hub.settings, principal)
        result = work(store)
        store.flush()
        status = result.status if isinstance(result, interactions.Result) else 200
        absorb_write(hub, principal, store, status)
        return result


def in_snapshot(
    hub: Hub, principal: Principal, work: Callable[[FhirStore], T], *, single: bool = False
) -> T:
    """Run a read-only interaction on one consistent snapshot, without taking a write lock,
    with ``principal``'s store; what it returned goes to the request's audit trail.

    ``single``: the work reads with one statement (read, vread), which needs no transaction
    around it (:meth:`storage.db.Database.single_read`)."""
    with hub.db.single_read() if single else hub.db.snapshot() as session:
        store = store_for(session, hub.settings, principal)
        result = work(store)
        absorb_read(principal, store)
        return result


async def read_raw_body(request: Request, hub: Hub) -> bytes:
    """The body's bytes, refused (413) past ``EMR_HUB_MAX_REQUEST_BYTES``: by its declared
    length before reading anything, else as soon as what has arrived passes the limit (a
    chunked body declares no length: it is counted while it streams, never held whole)."""
    declared = request.headers.get("content-length")
    limit = hub.settings.max_request_bytes
    if declared and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    return await read_limited(request, limit, lambda: _too_large(limit))


async def read_body(request: Request, hub: Hub) -> Any:
    raw = await read_raw_body(request, hub)
    return parse_json_body(raw, request.headers.get("content-type"))


def _too_large(limit: int) -> FhirError:
    return FhirError(413, [Issue("too-costly", f"Request body exceeds {limit} bytes")])


async def run_write(
    request: Request,
    hub: Hub,
    principal: Principal,
    work: Callable[[FhirStore], interactions.Result],
) -> Response:
    """Run a write interaction in one transaction off the event loop and render its result."""
    result = await run_in_threadpool(in_transaction, hub, principal, work)
    return render_write(request, result, hub)


def render_resource(request: Request, stored: Stored, hub: Hub, status: int = 200) -> Response:
    pretty = wants_pretty(request)
    summary = request.query_params.get("_summary")
    if summary is not None and summary not in SUMMARY_MODES:
        raise bad_request(f"Unknown _summary value {summary!r}", "_summary")
    if stored.text is not None:  # read to be sent as stored (nothing asked to change it)
        headers = version_headers(stored, hub.settings.fhir_base_url)
        return Response(stored.text.encode(), status, media_type=FHIR_JSON, headers=headers)
    assert stored.content is not None
    body = apply_summary(stored.content, summary)
    body = apply_elements(body, parse_elements(request.query_params.getlist("_elements")))
    return fhir_response(body, status, version_headers(stored, hub.settings.fhir_base_url), pretty)


def render_write(request: Request, result: interactions.Result, hub: Hub) -> Response:
    pretty = wants_pretty(request)
    stored = result.stored
    headers = version_headers(stored, hub.settings.fhir_base_url) if stored else {}
    mode = prefer_return(request)
    if stored is None or stored.content is None or mode == "minimal":
        return fhir_response(None, result.status, headers)
    if mode == "OperationOutcome":
        text = result.message or f"{stored.reference} stored as version {stored.version_id}"
        outcome = operation_outcome([Issue("informational", text, severity="information")])
        return fhir_response(outcome, result.status, headers, pretty)
    return fhir_response(stored.content, result.status, headers, pretty)


# ------------------------------------------------------------------- system
@router.get("/metadata")
def metadata(request: Request, hub: HubDep) -> Response:
    pretty = wants_pretty(request)
    return fhir_response(capability_statement(hub.settings.fhir_base_url, STARTED), pretty=pretty)


@router.post("")
async def transaction_or_batch(request: Request, hub: HubDep, principal: PrincipalDep) -> Response:
    pretty = wants_pretty(request)
    bundle = await read_body(request, hub)
    representation = prefer_return(request, default="minimal") == "representation"
    base = hub.settings.fhir_base_url
    if principal.trail is not None and isinstance(bundle, dict):
        principal.trail.interaction = "batch" if bundle.get("type") == "batch" else "transaction"
    result = await run_in_threadpool(
        in_transaction,
        hub,
        principal,
        lambda store: process_bundle(store, principal, bundle, base, representation=representation),
    )
    return fhir_response(result, 200, pretty=pretty)


@router.get("")
def system_search(request: Request, hub: HubDep, principal: PrincipalDep) -> Response:
    """Search across types: ``_type`` names them; the other parameters apply to each."""
    pretty = wants_pretty(request)
    types = [t for v in request.query_params.getlist("_type") for t in v.split(",") if t]
    if not types:
        raise bad_request("A system-level search needs _type (one or more resource types)", "_type")
    for resource_type in types:
        if not is_resource_type(resource_type):
            raise bad_request(f"Unknown resource type {resource_type!r} in _type", "_type")
    items = list(request.query_params.multi_items())
    lenient = "handling=lenient" in request.headers.get("prefer", "").replace(" ", "")
    base = hub.settings.fhir_base_url
    bundle = in_snapshot(
        hub,
        principal,
        lambda store: system_search_bundle(
            store,
            principal,
            types,
            items,
            base,
            public_url(request, hub.settings.base_url),
            lenient=lenient,
        ),
    )
    return fhir_response(bundle, pretty=pretty)


@router.get("/_history")
def system_history(request: Request, hub: HubDep, principal: PrincipalDep) -> Response:
    principal.require("*", "s")
    return _history(request, hub, principal, None, None)


# --------------------------------------------------------------------- type
@router.get("/{resource_type}/_history")
def type_history(
    resource_type: str, request: Request, hub: HubDep, principal: PrincipalDep
) -> Response:
    interactions.check_type(resource_type)
    principal.require(resource_type, "s")
    return _history(request, hub, principal, resource_type, None)


@router.get("/{resource_type}")
def search_type(
    resource_type: str, request: Request, hub: HubDep, principal: PrincipalDep
) -> Response:
    """Search a type from the URL's query (R4 search over the official parameters)."""
    return _search(request, hub, principal, resource_type, list(request.query_params.multi_items()))


@router.post("/{resource_type}/_search")
async def search_type_post(
    resource_type: str, request: Request, hub: HubDep, principal: PrincipalDep
) -> Response:
    """Search with the parameters in a form body (and any in the URL), as R4 allows."""
    media = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if media != "application/x-www-form-urlencoded":
        raise FhirError(
            415, [Issue("not-supported", "POST _search takes application/x-www-form-urlencoded")]
        )
    raw = await read_raw_body(request, hub)
    try:
        form = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise bad_request("The form body is not UTF-8") from None
    items = list(request.query_params.multi_items()) + form
    return await run_in_threadpool(_search, request, hub, principal, resource_type, items)


def _search(
    request: Request,
    hub: Hub,
    principal: Principal,
    resource_type: str,
    items: list[tuple[str, str]],
    scope: Condition | None = None,
) -> Response:
    interactions.check_type(resource_type)
    principal.require(resource_type, "s")
    pretty = wants_pretty(request)
    lenient = "handling=lenient" in request.headers.get("prefer", "").replace(" ", "")
    base = hub.settings.fhir_base_url
    parsed = parsed_search(resource_type, items, lenient=lenient, scope=scope)
    self_url = public_url(request, hub.settings.base_url)
    bundle = in_snapshot(
        hub,
        principal,
        lambda store: parsed_search_bundle(store, principal, parsed, items, base, self_url),
        single=one_statement(parsed),
    )
    return fhir_response(bundle, pretty=pretty)


@router.post("/{resource_type}")
async def create(
    resource_type: str, request: Request, hub: HubDep, principal: PrincipalDep
) -> Response:
    interactions.check_type(resource_type)
    principal.require(resource_type, "c")
    body = await read_body(request, hub)
    if_none_exist = request.headers.get("if-none-exist")
    return await run_write(
        request,
        hub,
        principal,
        lambda store: interactions.create(
            store, principal, resource_type, body, if_none_exist=if_none_exist
        ),
    )


@router.put("/{resource_type}")
async def conditional_update(
    resource_type: str, request: Request, hub: HubDep, principal: PrincipalDep
) -> Response:
    interactions.check_type(resource_type)
    body = await read_body(request, hub)
    query = str(request.url.query)
    if not query:
        raise bad_request(
            "PUT on a type needs search criteria (conditional update) or an id in the URL", "url"
        )
    if_match = parse_if_match(request.headers.get("if-match"))
    return await run_write(
        request,
        hub,
        principal,
        lambda store: interactions.conditional_update(
            store, principal, resource_type, query, body, if_match=if_match
        ),
    )


@router.delete("/{resource_type}")
def conditional_delete(
    resource_type: str, request: Request, hub: HubDep, principal: PrincipalDep
) -> Response:
    """DELETE Type?criteria: deletes the one match; several matches is 412 (single mode)."""
    interactions.check_type(resource_type)
    query = str(request.url.query)
    if not query:
        raise bad_request("DELETE on a type needs search criteria (conditional delete)", "url")
    result = in_transaction(
        hub,
        principal,
        lambda store: interactions.conditional_delete(store, principal, resource_type, query),
    )
    headers = {"ETag": result.stored.etag} if result.stored else {}
    return fhir_response(None, 204, headers)


# ----------------------------------------------------------------- instance
@router.get("/{resource_type}/{resource_id}")
def read(
    resource_type: str, resource_id: str, request: Request, hub: HubDep, principal: PrincipalDep
) -> Response:
    stored = in_snapshot(
        hub,
        principal,
        lambda store: interactions.read(store, principal, resource_type, resource_id),
        single=True,
    )
    return render_resource(request, stored, hub)


@router.get("/{resource_type}/{resource_id}/_history")
def instance_history(
    resource_type: str, resource_id: str, request: Request, hub: HubDep, principal: PrincipalDep
) -> Response:
    interactions.check_instance(resource_type, resource_id)
    principal.require(resource_type, "r")
    return _history(request, hub, principal, resource_type, resource_id)


@router.get("/{resource_type}/{resource_id}/_history/{version}")
def vread(
    resource_type: str,
    resource_id: str,
    version: str,
    request: Request,
    hub: HubDep,
    principal: PrincipalDep,
) -> Response:
    stored = in_snapshot(
        hub,
        principal,
        lambda store: interactions.vread(store, principal, resource_type, resource_id, version),
        single=True,
    )
    return render_resource(request, stored, hub)


@router.get("/Patient/{patient_id}/$everything")
def patient_everything(
    patient_id: str, request: Request, hub: HubDep, principal: PrincipalDep
) -> Response:
    """The patient's record: the compartment and what it points at, paged by ``_count``."""
    pretty = wants_pretty(request)
    params = request.query_params
    types = {t for v in params.getlist("_type") for t in v.split(",") if t} or None
    for unknown in (types or set()) - {t for t in types or () if is_resource_type(t)}:
        raise bad_request(f"Unknown resource type {unknown!r} in _type", "_type")
    since = _instant(params.get("_since"), "_since")
    count = parse_count(params.get("_count"), default=100)
    base = hub.settings.fhir_base_url
    page = in_snapshot(
        hub,
        principal,
        lambda store: everything(
            store,
            principal,
            patient_id,
            since=since,
            types=types,
            count=count,
            cursor=params.get("_cursor"),
        ),
    )
    next_url = None
    if page.next_cursor:
        kept = [(k, v) for k, v in params.multi_items() if k != "_cursor"]
        next_url = f"{base}/Patient/{patient_id}/$everything?" + urlencode(
            [*kept, ("_cursor", page.next_cursor)]
        )
    return fhir_response(
        everything_bundle(page, base, public_url(request, hub.settings.base_url), next_url),
        pretty=pretty,
    )


@router.get("/Patient/{patient_id}/{resource_type}")
def patient_compartment_search(
    patient_id: str, resource_type: str, request: Request, hub: HubDep, principal: PrincipalDep
) -> Response:
    """Search ``resource_type`` inside Patient/<id>'s compartment (R4 compartment search)."""
    if resource_type.startswith("$"):
        raise interactions.unknown_operation(resource_type, f"Patient/{patient_id}")
    interactions.check_type(resource_type)
    membership = in_patient_compartment(resource_type, patient_id)
    if membership is None:
        raise bad_request(f"{resource_type} is not in the Patient compartment", "url")
    return _search(
        request, hub, principal, resource_type, list(request.query_params.multi_items()), membership
    )


@router.put("/{resource_type}/{resource_id}")
async def update(
    resource_type: str, resource_id: str, request: Request, hub: HubDep, principal: PrincipalDep
) -> Response:
    interactions.check_instance(resource_type, resource_id)
    principal.require(resource_type, "u")
    body = await read_body(request, hub)
    if_match = parse_if_match(request.headers.get("if-match"))
    return await run_write(
        request,
        hub,
        principal,
        lambda store: interactions.update(
            store, principal, resource_type, resource_id, body, if_match=if_match
        ),
    )


@router.patch("/{resource_type}/{resource_id}")
async def patch(
    resource_type: str, resource_id: str, request: Request, hub: HubDep, principal: PrincipalDep
) -> Response:
    interactions.check_instance(resource_type, resource_id)
    principal.require(resource_type, "u")
    media = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if media != "application/json-patch+json":
        raise FhirError(
            415,
            [
                Issue(
                    "not-supported", "PATCH takes application/json-patch+json (RFC 6902 JSON Patch)"
                )
            ],
        )
    operations = await read_body(request, hub)
    if_match = parse_if_match(request.headers.get("if-match"))
    return await run_write(
        request,
        hub,
        principal,
        lambda store: interactions.patch(
            store, principal, resource_type, resource_id, operations, if_match=if_match
        ),
    )


@router.delete("/{resource_type}/{resource_id}")
def delete(
    resource_type: str, resource_id: str, request: Request, hub: HubDep, principal: PrincipalDep
) -> Response:
    if_match = parse_if_match(request.headers.get("if-match"))
    result = in_transaction(
        hub,
        principal,
        lambda store: interactions.delete(
            store, principal, resource_type, resource_id, if_match=if_match
        ),
    )
    headers = {"ETag": result.stored.etag} if result.stored else {}
    return fhir_response(None, 204, headers)


@router.api_route("/{resource_type}/{name}", methods=["POST"])
@router.api_route(
    "/{resource_type}/{resource_id}/{name}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"]
)
def no_such_route(resource_type: str, name: str, request: Request) -> Response:
    """What no route above serves: an operation the hub does not offer, or a wrong method."""
    where = resource_type
    if "resource_id" in request.path_params:
        where = f"{resource_type}/{request.path_params['resource_id']}"
    if name.startswith("$"):
        raise interactions.unknown_operation(name, where)
    raise FhirError(
        405, [Issue("not-supported", f"{request.method} is not supported on {request.url.path}")]
    )


# ------------------------------------------------------------------ history
def _history(
    request: Request,
    hub: Hub,
    principal: Principal,
    resource_type: str | None,
    resource_id: str | None,
) -> Response:
    pretty = wants_pretty(request)
    count = max(parse_count(request.query_params.get("_count")), 1)
    since = _instant(request.query_params.get("_since"), "_since")
    cursor_text = request.query_params.get("_cursor")
    if cursor_text is not None and not cursor_text.isdigit():
        raise bad_request("Malformed _cursor", "_cursor")
    cursor = int(cursor_text) if cursor_text else None

    def read_history(store: FhirStore) -> tuple[list[Stored], int | None]:
        found = store.history(
            resource_type, resource_id, since=since, before_seq=cursor, count=count
        )
        # An empty page of an instance: nothing there (404) or nothing in this window.
        empty = not found[0]
        if resource_type and resource_id and empty and not store.exists(resource_type, resource_id):
            raise not_found(f"{resource_type}/{resource_id} is not known")
        return found

    # One statement in the common case; an empty instance page adds the existence check, whose
    # own snapshot may be a moment later (a resource created meanwhile reads as empty history).
    page, next_cursor = in_snapshot(hub, principal, read_history, single=True)
    base = hub.settings.fhir_base_url
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "history",
        "link": [{"relation": "self", "url": public_url(request, hub.settings.base_url)}],
        "entry": [_history_entry(stored, base) for stored in page],
    }
    if next_cursor is not None:
        params = dict(request.query_params)
        params["_cursor"] = str(next_cursor)
        params["_count"] = str(count)
        bundle["link"].append(
            {"relation": "next", "url": public_url(request, hub.settings.base_url, **params)}
        )
    return fhir_response(bundle, pretty=pretty)


def _history_entry(stored: Stored, base: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"fullUrl": f"{base}/{stored.resource_type}/{stored.id}"}
    if stored.content is not None:
        entry["resource"] = stored.content
    method = stored.method
    entry["request"] = {
        "method": method,
        "url": stored.resource_type if method == "POST" else f"{stored.resource_type}/{stored.id}",
    }
    status = (
        "201 Created"
        if stored.version_id == 1
        else ("204 No Content" if stored.deleted else "200 OK")
    )
    entry["response"] = {
        "status": status,
        "etag": stored.etag,
        "lastModified": format_instant(stored.last_updated),
    }
    return entry


def _instant(text: str | None, name: str) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise bad_request(
            f"{name} must be a FHIR instant such as 2026-01-31T08:00:00+07:00", name
        ) from None
    if moment.tzinfo is None:
        raise bad_request(f"{name} needs a time zone", name)
    return moment


__all__ = ["Principal", "router"]
