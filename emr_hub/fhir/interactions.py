"""The FHIR interactions on one resource, free of HTTP: scope checks, validation, store calls.

Both the REST routes and the Bundle processor call these, so a transaction entry is checked
exactly like the same request sent on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import jsonpatch

from emr_hub.errors import FhirError, Issue, bad_request, not_found, precondition_failed
from emr_hub.fhir import hooks
from emr_hub.fhir.search.compile import Compiler
from emr_hub.fhir.search.params import parse_search
from emr_hub.fhir.store import FhirStore, Stored
from emr_hub.fhir.validation import check_id, is_resource_type, validate_resource

if TYPE_CHECKING:
    from emr_hub.security.principal import Principal


@dataclass(frozen=True)
class Result:
    """What an interaction did: the HTTP status and the version it produced or found."""

    status: int
    stored: Stored | None = None
    message: str | None = None


def check_type(resource_type: str) -> None:
    if not is_resource_type(resource_type):
        raise not_found(f"Unknown resource type {resource_type!r}")


def read(store: FhirStore, principal: Principal, resource_type: str, resource_id: str) -> Stored:
    check_type(resource_type)
    principal.require(resource_type, "r")
    return store.read(resource_type, resource_id)


def vread(
    store: FhirStore, principal: Principal, resource_type: str, resource_id: str, version: str
) -> Stored:
    check_type(resource_type)
    principal.require(resource_type, "r")
    if not version.isdigit():
        raise not_found(f"{resource_type}/{resource_id} has no version {version!r}")
    return store.vread(resource_type, resource_id, int(version))


def find_matches(
    store: FhirStore,
    principal: Principal,
    resource_type: str,
    query: str,
    expression: str,
    *,
    limit: int = 2,
) -> list[str]:
    """Ids matching criteria; the default limit of 2 is enough to tell one match from many.

    Matching is a search, so it needs the search scope on the type: without it a client could
    probe, through conditional operations, whether a patient with a given CCCD is known.
    """
    principal.require(resource_type, "s")
    try:
        request = parse_search(resource_type, parse_qsl(query, keep_blank_values=True))
        if not request.filters:
            raise bad_request(f"Criteria {query!r} hold no search parameter", expression)
        select_ids = Compiler(store.base_url).select_ids(request).limit(limit)
    except FhirError as error:
        error.issues = [replace(issue, expression=(expression,)) for issue in error.issues]
        raise
    store.flush()
    return list(store.session.scalars(select_ids))


def create(
    store: FhirStore,
    principal: Principal,
    resource_type: str,
    body: Any,
    *,
    if_none_exist: str | None = None,
    assigned_id: str | None = None,
    where: str = "",
) -> Result:
    """Create under a new id; with ``if_none_exist``, return the match instead when there is one."""
    check_type(resource_type)
    principal.require(resource_type, "c")
    resource = validate_resource(body, expected_type=resource_type, where=where)
    if if_none_exist:
        matches = find_matches(store, principal, resource_type, if_none_exist, "If-None-Exist")
        if len(matches) > 1:
            raise precondition_failed(
                f"If-None-Exist {if_none_exist!r} matches {len(matches)} resources"
            )
        if matches:
            return Result(
                200,
                store.read(resource_type, matches[0]),
                "matched an existing resource; nothing created",
            )
    if hooks.has_hooks(resource_type):
        resource = hooks.before_write(store, principal, None, resource)
    return Result(201, store.create(resource, resource_id=assigned_id))


def update(
    store: FhirStore,
    principal: Principal,
    resource_type: str,
    resource_id: str,
    body: Any,
    *,
    if_match: int | None = None,
    where: str = "",
) -> Result:
    """Update, or create with the client's id (create-on-update)."""
    check_type(resource_type)
    check_id(resource_id, "id")
    principal.require(resource_type, "u")
    resource = validate_resource(body, expected_type=resource_type, where=where)
    body_id = resource.get("id")
    if body_id is None:
        raise bad_request(
            "The resource in an update must carry its id",
            f"{where or resource_type}.id",
            code="required",
        )
    if body_id != resource_id:
        raise bad_request(
            f"The resource id {body_id!r} does not match the URL's id {resource_id!r}",
            f"{where or resource_type}.id",
        )
    if hooks.has_hooks(resource_type):
        current = store.current(resource_type, resource_id, for_update=True)
        live = current if current is not None and not current.deleted else None
        resource = hooks.before_write(store, principal, live, resource)
    outcome = store.update(resource_type, resource_id, resource, if_match=if_match)
    if outcome.created:
        principal.require(resource_type, "c")
    if not outcome.changed:
        return Result(200, outcome.stored, "content unchanged; no new version")
    return Result(201 if outcome.created else 200, outcome.stored)


def conditional_update(
    store: FhirStore,
    principal: Principal,
    resource_type: str,
    query: str,
    body: Any,
    *,
    if_match: int | None = None,
    where: str = "",
) -> Result:
    """PUT Type?criteria: no match creates, one match updates it, several is 412."""
    check_type(resource_type)
    principal.require(resource_type, "u")
    matches = find_matches(store, principal, resource_type, query, "url")
    if len(matches) > 1:
        raise precondition_failed(f"Conditional update {query!r} matches {len(matches)} resources")
    if not matches:
        resource = validate_resource(body, expected_type=resource_type, where=where)
        principal.require(resource_type, "c")
        if hooks.has_hooks(resource_type):
            resource = hooks.before_write(store, principal, None, resource)
        return Result(201, store.create(resource, resource_id=resource.get("id"), method="PUT"))
    target = matches[0]
    if isinstance(body, dict) and body.get("id") not in (None, target):
        raise bad_request(
            f"The resource id {body.get('id')!r} differs from the matched {target!r}", "id"
        )
    return update(
        store,
        principal,
        resource_type,
        target,
        {**body, "id": target} if isinstance(body, dict) else body,
        if_match=if_match,
        where=where,
    )


def patch(
    store: FhirStore,
    principal: Principal,
    resource_type: str,
    resource_id: str,
    operations: Any,
    *,
    if_match: int | None = None,
    where: str = "",
) -> Result:
    """JSON Patch (RFC 6902) against the current version, validated like an update."""
    check_type(resource_type)
    principal.require(resource_type, "u")
    current = store.read(resource_type, resource_id)
    if if_match is not None and if_match != current.version_id:
        raise precondition_failed(
            f"If-Match version {if_match} is stale: {resource_type}/{resource_id} "
            f"is at version {current.version_id}"
        )
    if not isinstance(operations, list):
        raise bad_request("A JSON Patch body is an array of operations", code="structure")
    try:
        patched = jsonpatch.JsonPatch(operations).apply(current.content)
    except (
        jsonpatch.JsonPatchException,
        jsonpatch.JsonPointerException,
        TypeError,
        KeyError,
        ValueError,
    ) as exc:
        raise FhirError(
            422, [Issue("processing", f"JSON Patch could not be applied: {exc}")]
        ) from None
    if (
        not isinstance(patched, dict)
        or patched.get("resourceType") != resource_type
        or patched.get("id") != resource_id
    ):
        raise FhirError(422, [Issue("processing", "JSON Patch may not change resourceType or id")])
    return update(
        store,
        principal,
        resource_type,
        resource_id,
        patched,
        if_match=current.version_id,
        where=where,
    )


def conditional_delete(
    store: FhirStore, principal: Principal, resource_type: str, query: str, expression: str = "url"
) -> Result:
    """Delete the single resource matching ``query``; none is a no-op, several is 412."""
    check_type(resource_type)
    principal.require(resource_type, "d")
    matches = find_matches(store, principal, resource_type, query, expression)
    if len(matches) > 1:
        raise precondition_failed(f"Conditional delete {query!r} matches {len(matches)} resources")
    if not matches:
        return Result(204, None, f"Nothing matches {query!r}; nothing to delete")
    return delete(store, principal, resource_type, matches[0])


def delete(
    store: FhirStore,
    principal: Principal,
    resource_type: str,
    resource_id: str,
    *,
    if_match: int | None = None,
) -> Result:
    check_type(resource_type)
    principal.require(resource_type, "d")
    deleted = store.delete(resource_type, resource_id, if_match=if_match)
    if deleted is None:
        return Result(204, None, f"{resource_type}/{resource_id} was not live; nothing to delete")
    return Result(204, deleted)
