"""Transaction and batch Bundles (``POST /fhir``).

A transaction is all-or-nothing inside the caller's database transaction: ids are assigned
first, ``urn:uuid:`` fullUrls and conditional references (``Patient?identifier=...``) are
resolved and rewritten everywhere in the entries' resources, every entry is validated, then
the entries run in the specification's order (DELETE, POST, PUT/PATCH, GET) and the
response lists them in request order. Any error raises and the caller rolls everything back.
A batch runs each entry on its own savepoint and reports each entry's outcome.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from emr_hub.errors import FhirError, bad_request, fhir_error, operation_outcome
from emr_hub.fhir import interactions
from emr_hub.fhir.http import parse_if_match
from emr_hub.fhir.search.params import split_values
from emr_hub.fhir.search.searchset import search_bundle
from emr_hub.fhir.search.values import parse_token_query
from emr_hub.fhir.store import FhirStore, Stored, format_instant
from emr_hub.fhir.validation import ID_PATTERN, is_resource_type
from storage import json_codec

if TYPE_CHECKING:
    from emr_hub.security.principal import Principal

ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
STATUS_TEXT = {200: "200 OK", 201: "201 Created", 204: "204 No Content"}


@dataclass
class Entry:
    index: int
    method: str
    url: str
    resource_type: str
    resource_id: str | None
    query: str | None
    resource: Any
    full_url: str | None
    if_none_exist: str | None
    if_match: int | None
    assigned_id: str | None = None
    matched: str | None = None  # id of an existing resource matched by ifNoneExist
    response: dict[str, Any] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"Bundle.entry[{self.index}]"


def process_bundle(
    store: FhirStore,
    principal: Principal,
    bundle: Any,
    base_url: str,
    *,
    representation: bool = False,
) -> dict[str, Any]:
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise bad_request(
            "POST to the base takes a Bundle of type transaction or batch", "resourceType"
        )
    kind = bundle.get("type")
    if kind not in ("transaction", "batch"):
        raise bad_request(
            f"Bundle.type {kind!r} cannot be processed; use transaction or batch", "Bundle.type"
        )
    raw_entries = bundle.get("entry") or []
    if not isinstance(raw_entries, list):
        raise bad_request("Bundle.entry must be an array", "Bundle.entry")
    if kind == "transaction":
        entries = [_parse_entry(i, raw) for i, raw in enumerate(raw_entries)]
        _run_transaction(store, principal, entries, base_url, representation)
        responses = [e.response for e in entries]
    else:
        responses = [
            _run_batch_entry(store, principal, i, raw, base_url, representation)
            for i, raw in enumerate(raw_entries)
        ]
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": f"{kind}-response",
        "entry": responses,
    }


# ------------------------------------------------------------------ parsing
def _parse_entry(index: int, raw: Any) -> Entry:
    where = f"Bundle.entry[{index}]"
    if not isinstance(raw, dict):
        raise bad_request("A Bundle entry must be an object", where)
    request = raw.get("request")
    if not isinstance(request, dict):
        raise bad_request(
            "Each entry of a transaction or batch needs a request",
            f"{where}.request",
            code="required",
        )
    method = request.get("method")
    url = request.get("url")
    if not isinstance(method, str) or method not in ORDER:
        raise bad_request(f"Unsupported request.method {method!r}", f"{where}.request.method")
    if not isinstance(url, str) or not url:
        raise bad_request("request.url is required", f"{where}.request.url", code="required")
    path, _, query = url.partition("?")
    parts = [p for p in path.split("/") if p]
    if not parts or not is_resource_type(parts[0]):
        raise bad_request(
            f"request.url {url!r} does not start with a known resource type", f"{where}.request.url"
        )
    resource_id = parts[1] if len(parts) > 1 else None
    if resource_id is not None and not ID_PATTERN.fullmatch(resource_id):
        raise bad_request(f"Invalid id in request.url {url!r}", f"{where}.request.url")
    resource = raw.get("resource")
    if method in ("POST", "PUT") and resource is None:
        raise bad_request(
            f"A {method} entry needs a resource", f"{where}.resource", code="required"
        )
    if method == "POST" and resource_id is not None:
        raise bad_request("A POST entry's url is the resource type alone", f"{where}.request.url")
    if method in ("DELETE", "PATCH") and resource_id is None and not query:
        raise bad_request(f"A {method} entry's url needs an id", f"{where}.request.url")
    if method == "PUT" and resource_id is None and not query:
        raise bad_request(
            "A PUT entry's url needs an id or search criteria", f"{where}.request.url"
        )
    if_match = request.get("ifMatch")
    if_none_exist = request.get("ifNoneExist")
    for name, value in (("ifMatch", if_match), ("ifNoneExist", if_none_exist)):
        if value is not None and not isinstance(value, str):
            raise bad_request(f"request.{name} must be a string", f"{where}.request.{name}")

    return Entry(
        index=index,
        method=method,
        url=url,
        resource_type=parts[0],
        resource_id=resource_id,
        query=query or None,
        resource=resource,
        full_url=raw.get("fullUrl") if isinstance(raw.get("fullUrl"), str) else None,
        if_none_exist=if_none_exist,
        if_match=parse_if_match(if_match, f"{where}.request.ifMatch"),
    )


# -------------------------------------------------------------- transaction
def _run_transaction(
    store: FhirStore,
    principal: Principal,
    entries: list[Entry],
    base_url: str,
    representation: bool,
) -> None:
    mapping = _assign_ids(store, principal, entries)
    pending_identifiers = _identifier_index(entries)
    conditional_cache: dict[str, str] = {}

    def resolve(reference: str, where: str) -> str | None:
        target = mapping.get(reference)
        if target is not None:
            return target
        if "?" in reference and not reference.startswith(("http:", "https:", "urn:")):
            if reference not in conditional_cache:
                conditional_cache[reference] = _resolve_conditional(
                    store, principal, reference, pending_identifiers, where
                )
            return conditional_cache[reference]
        return None

    for entry in entries:
        if isinstance(entry.resource, dict):
            _rewrite_references(entry.resource, resolve, f"{entry.where}.resource", mapping)

    for entry in sorted(entries, key=lambda e: ORDER[e.method]):
        entry.response = _execute_located(store, principal, entry, base_url, representation)


def _assign_ids(store: FhirStore, principal: Principal, entries: list[Entry]) -> dict[str, str]:
    """Settle each entry's target and map its fullUrl to the final ``Type/id``.

    POSTs get a server id (or the resource their ifNoneExist matched); conditional PUTs are
    resolved now to the resource they update, or to a new id. Two entries aimed at the same
    resource make the transaction fail, as the specification requires.
    """
    mapping: dict[str, str] = {}
    seen_urls: set[str] = set()
    targets: dict[str, int] = {}
    for entry in entries:
        if entry.full_url:
            if entry.full_url in seen_urls:
                raise bad_request(
                    f"fullUrl {entry.full_url!r} appears twice", f"{entry.where}.fullUrl"
                )
            seen_urls.add(entry.full_url)
        if entry.method == "POST":
            if entry.if_none_exist:
                entry.matched = _single_match(
                    store,
                    principal,
                    entry,
                    entry.if_none_exist,
                    f"{entry.where}.request.ifNoneExist",
                )
            entry.assigned_id = entry.matched or str(uuid.uuid4())
            target = f"{entry.resource_type}/{entry.assigned_id}"
        elif entry.method == "PUT" and entry.resource_id is None:
            match = _single_match(
                store, principal, entry, entry.query or "", f"{entry.where}.request.url"
            )
            body_id = entry.resource.get("id") if isinstance(entry.resource, dict) else None
            entry.resource_id = match or (
                body_id if isinstance(body_id, str) else str(uuid.uuid4())
            )
            if isinstance(entry.resource, dict):
                entry.resource["id"] = entry.resource_id
            entry.query = None
            target = f"{entry.resource_type}/{entry.resource_id}"
        elif entry.resource_id is not None:
            target = f"{entry.resource_type}/{entry.resource_id}"
        else:
            continue
        if entry.method != "GET" and not entry.matched:
            if target in targets:
                raise bad_request(
                    f"Entries {targets[target]} and {entry.index} both change {target}; "
                    "a transaction may touch each resource once",
                    f"{entry.where}.request.url",
                )
            targets[target] = entry.index
        if entry.full_url and entry.method in ("POST", "PUT"):
            mapping[entry.full_url] = target
    return mapping


def _single_match(
    store: FhirStore, principal: Principal, entry: Entry, query: str, where: str
) -> str | None:
    matches = interactions.find_matches(store, principal, entry.resource_type, query, where)
    if len(matches) > 1:
        raise fhir_error(
            412, "multiple-matches", f"{query!r} matches {len(matches)} resources", where
        )
    return matches[0] if matches else None


def identifier_tokens(resource: dict[str, Any]) -> Iterator[tuple[str, str | None, str]]:
    """Index rows (param, system, code) for the resource's top-level identifiers."""
    identifiers = resource.get("identifier")
    if isinstance(identifiers, dict):
        identifiers = [identifiers]
    for identifier in identifiers or ():
        value = identifier.get("value")
        if isinstance(value, str):
            yield "identifier", identifier.get("system"), value


def _identifier_index(entries: list[Entry]) -> dict[tuple[str, str | None, str], str]:
    """(type, system, value) → reference for resources the transaction itself creates."""
    index: dict[tuple[str, str | None, str], str] = {}
    for entry in entries:
        if entry.method == "POST" and isinstance(entry.resource, dict) and not entry.matched:
            for _, system, code in identifier_tokens(entry.resource):
                index[(entry.resource_type, system, code)] = (
                    f"{entry.resource_type}/{entry.assigned_id}"
                )
    return index


def _resolve_conditional(
    store: FhirStore,
    principal: Principal,
    reference: str,
    pending: dict[tuple[str, str | None, str], str],
    where: str,
) -> str:
    """The one resource a ``Type?criteria`` reference names, in the store or in this bundle."""
    resource_type, _, query = reference.partition("?")
    if not is_resource_type(resource_type):
        raise bad_request(f"Conditional reference {reference!r} names an unknown type", where)
    found = {
        f"{resource_type}/{i}"
        for i in interactions.find_matches(store, principal, resource_type, query, where)
    }
    pairs = parse_qsl(query, keep_blank_values=True)
    if len(pairs) == 1 and pairs[0][0] == "identifier":
        for text in split_values(pairs[0][1]):
            try:
                token = parse_token_query(text)
            except ValueError as error:
                raise bad_request(str(error), where) from None
            for (rtype, system, code), target in pending.items():
                if (
                    rtype == resource_type
                    and code == token.code
                    and (not token.system_given or token.system == system)
                ):
                    found.add(target)
    if not found:
        raise fhir_error(
            400, "not-found", f"Conditional reference {reference!r} matches no resource", where
        )
    if len(found) > 1:
        raise fhir_error(
            412,
            "multiple-matches",
            f"Conditional reference {reference!r} matches several resources",
            where,
        )
    return found.pop()


def _rewrite_references(
    node: Any, resolve: Callable[[str, str], str | None], where: str, mapping: dict[str, str]
) -> None:
    """Replace, in place, what points at another entry of the transaction.

    ``reference`` fields are resolved (fullUrls and conditional references); any other string
    equal to a ``urn:uuid:`` fullUrl of the bundle (uri elements, attachment urls, extension
    values) is replaced too, except ``Identifier.value``, which names the resource rather than
    pointing at it; links in the narrative's ``div`` are rewritten as well. ``#contained``
    references never resolve and stay as they are.
    """
    if isinstance(node, dict):
        is_identifier = "system" in node and "value" in node
        for key, value in node.items():
            if isinstance(value, str):
                if key == "reference":
                    target = resolve(value, f"{where}.{key}")
                elif key == "div" and "urn:uuid:" in value:
                    target = _rewrite_narrative(value, mapping)
                elif value.startswith("urn:uuid:") and not (is_identifier and key == "value"):
                    target = mapping.get(value)
                else:
                    continue
                if target is not None:
                    node[key] = target
            elif isinstance(value, dict | list):
                _rewrite_references(value, resolve, f"{where}.{key}", mapping)
    elif isinstance(node, list):
        for position, item in enumerate(node):
            _rewrite_references(item, resolve, f"{where}[{position}]", mapping)


def _rewrite_narrative(div: str, mapping: dict[str, str]) -> str:
    for full_url, target in mapping.items():
        if full_url.startswith("urn:uuid:") and full_url in div:
            div = div.replace(f'"{full_url}"', f'"{target}"')
    return div


def _execute_located(
    store: FhirStore, principal: Principal, entry: Entry, base_url: str, representation: bool
) -> dict[str, Any]:
    """Run one entry; an error that does not say where it happened is pinned to the entry."""
    try:
        return _execute(store, principal, entry, base_url, representation)
    except FhirError as error:
        error.issues = [
            issue if issue.expression else replace(issue, expression=(entry.where,))
            for issue in error.issues
        ]
        raise


def _execute(
    store: FhirStore, principal: Principal, entry: Entry, base_url: str, representation: bool
) -> dict[str, Any]:
    where = f"{entry.where}.resource"
    if entry.method == "POST":
        if entry.matched:
            principal.require(entry.resource_type, "c")
            stored = store.read(entry.resource_type, entry.matched)
            return _response(stored, 200, base_url, representation)
        result = interactions.create(
            store,
            principal,
            entry.resource_type,
            entry.resource,
            assigned_id=entry.assigned_id,
            where=where,
        )
    elif entry.method == "PUT":
        if entry.resource_id is None:
            result = interactions.conditional_update(
                store,
                principal,
                entry.resource_type,
                entry.query or "",
                entry.resource,
                if_match=entry.if_match,
                where=where,
            )
        else:
            result = interactions.update(
                store,
                principal,
                entry.resource_type,
                entry.resource_id,
                entry.resource,
                if_match=entry.if_match,
                where=where,
            )
    elif entry.method == "PATCH":
        if entry.resource_id is None:
            raise bad_request("Conditional PATCH is not supported", f"{entry.where}.request.url")
        operations = _patch_operations(entry)
        result = interactions.patch(
            store,
            principal,
            entry.resource_type,
            entry.resource_id,
            operations,
            if_match=entry.if_match,
            where=where,
        )
    elif entry.method == "DELETE":
        if entry.resource_id is None:
            result = interactions.conditional_delete(
                store,
                principal,
                entry.resource_type,
                entry.query or "",
                f"{entry.where}.request.url",
            )
        else:
            result = interactions.delete(
                store, principal, entry.resource_type, entry.resource_id, if_match=entry.if_match
            )
        response: dict[str, Any] = {"status": "204 No Content"}
        if result.stored is not None:
            response["etag"] = result.stored.etag
        return {"response": response}
    else:  # GET / HEAD
        return _read_entry(store, principal, entry, base_url)
    assert result.stored is not None
    return _response(result.stored, result.status, base_url, representation)


def _patch_operations(entry: Entry) -> Any:
    """A PATCH entry carries its JSON Patch as a Binary (base64 data), the FHIR convention."""
    resource = entry.resource
    if (
        isinstance(resource, dict)
        and resource.get("resourceType") == "Binary"
        and isinstance(resource.get("data"), str)
    ):
        try:
            return json_codec.loads(base64.b64decode(resource["data"], validate=True))
        except ValueError:
            raise bad_request(
                "The Binary of a PATCH entry does not hold a JSON Patch",
                f"{entry.where}.resource.data",
            ) from None
    if isinstance(resource, list):
        return resource
    raise bad_request(
        "A PATCH entry needs a Binary resource holding a JSON Patch", f"{entry.where}.resource"
    )


def _read_entry(
    store: FhirStore, principal: Principal, entry: Entry, base_url: str
) -> dict[str, Any]:
    parts = [p for p in entry.url.split("?")[0].split("/") if p]
    if entry.resource_id is None:
        query = parse_qsl(entry.query or "", keep_blank_values=True)
        bundle = search_bundle(
            store, principal, entry.resource_type, query, base_url, f"{base_url}/{entry.url}"
        )
        return {"resource": bundle, "response": {"status": "200 OK"}}
    if len(parts) == 4 and parts[2] == "_history":
        stored = interactions.vread(
            store, principal, entry.resource_type, entry.resource_id, parts[3]
        )
    else:
        stored = interactions.read(store, principal, entry.resource_type, entry.resource_id)
    return _response(stored, 200, base_url, True)


def _response(stored: Stored, status: int, base_url: str, representation: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"fullUrl": f"{base_url}/{stored.resource_type}/{stored.id}"}
    if representation and stored.content is not None:
        out["resource"] = stored.content
    out["response"] = {
        "status": STATUS_TEXT.get(status, str(status)),
        "location": f"{stored.resource_type}/{stored.id}/_history/{stored.version_id}",
        "etag": stored.etag,
        "lastModified": format_instant(stored.last_updated),
    }
    return out


# -------------------------------------------------------------------- batch
def _run_batch_entry(
    store: FhirStore,
    principal: Principal,
    index: int,
    raw: Any,
    base_url: str,
    representation: bool,
) -> dict[str, Any]:
    """One batch entry on its own savepoint: its failure is reported, the others stand."""
    savepoint = store.session.begin_nested()
    try:
        entry = _parse_entry(index, raw)
        if isinstance(entry.resource, dict):
            _rewrite_references(
                entry.resource,
                lambda ref, where: _batch_resolve(store, principal, ref, where),
                f"{entry.where}.resource",
                {},
            )
        if entry.method == "POST" and entry.if_none_exist:
            _assign_ids(store, principal, [entry])
        result = _execute(store, principal, entry, base_url, representation)
        store.flush()
        savepoint.commit()
        return result
    except FhirError as error:
        savepoint.rollback()
        store.discard_pending()
        return {
            "response": {
                "status": f"{error.status}",
                "outcome": operation_outcome(error.issues),
            }
        }


def _batch_resolve(
    store: FhirStore, principal: Principal, reference: str, where: str
) -> str | None:
    if "?" in reference and not reference.startswith(("http:", "https:", "urn:")):
        return _resolve_conditional(store, principal, reference, {}, where)
    return None
