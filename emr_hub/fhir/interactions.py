"""The FHIR interactions on one resource, free of HTTP: scope checks, validation, the access
policy's write check, store calls.

Both the REST routes and the Bundle processor call these, so a transaction entry is checked
exactly like the same request sent on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from emr_hub.errors import FhirError, Issue, bad_request, not_found, precondition_failed
from emr_hub.fhir import hooks
from emr_hub.fhir.patch import apply_patch
from emr_hub.fhir.search.compile import Compiler
from emr_hub.fhir.search.params import parse_search, require_search_scopes
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
    if resource_type.startswith("$"):
        raise unknown_operation(resource_type, "the server")
    if not is_resource_type(resource_type):
        raise not_found(f"Unknown resource type {resource_type!r}")


def check_instance(resource_type: str, resource_id: str) -> None:
    """A known type, and an id that is not an operation's name (``Patient/$foo``)."""
    check_type(resource_type)
    if resource_id.startswith("$"):
        raise unknown_operation(resource_id, resource_type)


def unknown_operation(name: str, where: str) -> FhirError:
    return FhirError(
        400,
        [
            Issue(
                "not-supported",
                f"Operation {name} is not supported on {where}; the operations this hub offers "
                "are listed in /fhir/metadata",
            )
        ],
    )


def read(store: FhirStore, principal: Principal, resource_type: str, resource_id: str) -> Stored:
    check_read(principal, resource_type, resource_id)
    return store.read(resource_type, resource_id)


def check_read(principal: Principal, resource_type: str, resource_id: str) -> None:
    """What a read asks of the request before the store is asked."""
    check_instance(resource_type, resource_id)
    principal.require(resource_type, "r")


def vread(
    store: FhirStore, principal: Principal, resource_type: str, resource_id: str, version: str
) -> Stored:
    return store.vread(
        resource_type, resource_id, check_vread(principal, resource_type, resource_id, version)
    )


def check_vread(principal: Principal, resource_type: str, resource_id: str, version: str) -> int:
    """What a vread asks of the request before the store is asked; the version number."""
    check_read(principal, resource_type, resource_id)
    if not version.isdigit():
        raise not_found(f"{resource_type}/{resource_id} has no version {version!r}")
    return int(version)


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
        require_search_scopes(principal, request)
        compiler = Compiler(store.base_url, visibility=store.visible)
        select_ids = compiler.select_ids(request).limit(limit)
    except FhirError as error:
        error.issues = [replace(issue, expression=(expression,)) for issue in error.issues]
        raise
    store.flush()
    return list(store.session.scalars(select_ids, store.access_params()))


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
    check_writable(store, resource_type)
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
    check_write(store, resource_type, None, resource)
    if hooks.has_hooks(resource_type):
        resource = hooks.before_write(store, principal, None, resource)
    return Result(201, store.create(resource, resource_id=assigned_id))


def check_writable(store: FhirStore, resource_type: str) -> None:
    if store.access is not None:
        store.access.check_writable_type(resource_type)


def check_write(
    store: FhirStore, resource_type: str, current: Stored | None, new: dict[str, Any] | None
) -> None:
    """The access policy's verdict on a write (a store without a policy allows everything)."""
    if store.access is not None:
        store.access.check_write(store, resource_type, current, new)


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
    check_instance(resource_type, resource_id)
    check_writable(store, resource_type)
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
    current = store.current(resource_type, resource_id, for_update=True)
    check_write(store, resource_type, current, resource)
    if hooks.has_hooks(resource_type):
        live = current if current is not None and not current.deleted else None
        resource = hooks.before_write(store, principal, live, resource)
    outcome = store.update(resource_type, resource_id, resource, if_match=if_match, current=current)
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
    check_writable(store, resource_type)
    principal.require(resource_type, "u")
    matches = find_matches(store, principal, resource_type, query, "url")
    if len(matches) > 1:
        raise precondition_failed(f"Conditional update {query!r} matches {len(matches)} resources")
    if not matches:
        resource = validate_resource(body, expected_type=resource_type, where=where)
        principal.require(resource_type, "c")
        new_id = resource.get("id")
        current = store.current(resource_type, new_id, for_update=True) if new_id else None
        if current is not None:  # the body's id is taken, by a resource the criteria missed
            return update(
                store, principal, resource_type, new_id, resource, if_match=if_match, where=where
            )
        check_write(store, resource_type, None, resource)
        if hooks.has_hooks(resource_type):
            resource = hooks.before_write(store, principal, None, resource)
        return Result(201, store.create(resource, resource_id=new_id, method="PUT"))
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
    """JSON Patch (RFC 6902) against the current version, validated like an update.

    A patch reads the resource as well as changing it (its answer is the whole result), so it
    needs the read scope and read access too; its work is bounded (:mod:`emr_hub.fhir.patch`)
    and its errors never show stored content."""
    check_instance(resource_type, resource_id)
    check_writable(store, resource_type)
    principal.require(resource_type, "u")
    principal.require(resource_type, "r")
    current = store.read(resource_type, resource_id)
    if if_match is not None and if_match != current.version_id:
        raise precondition_failed(
            f"If-Match version {if_match} is stale: {resource_type}/{resource_id} "
            f"is at version {current.version_id}"
        )
    assert current.content is not None
    patched = apply_patch(current.content, operations, resource_type, resource_id)
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
    check_writable(store, resource_type)
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
    check_instance(resource_type, resource_id)
    check_writable(store, resource_type)
    principal.require(resource_type, "d")
    current = store.current(resource_type, resource_id, for_update=True)
    if current is not None and not current.deleted:
        check_write(store, resource_type, current, None)
        hooks.before_delete(store, principal, current)
    deleted = store.delete(resource_type, resource_id, if_match=if_match, current=current)
    if deleted is None:
        return Result(204, None, f"{resource_type}/{resource_id} was not live; nothing to delete")
    return Result(204, deleted)
