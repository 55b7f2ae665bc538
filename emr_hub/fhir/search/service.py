"""Run a compiled search: ordering, keyset paging, totals, _include and _revinclude.

Paging is by keyset, not offset: the ``next`` link carries the sort values and id of the
last entry of the page, and the next page starts strictly after them. A write between two
pages therefore neither repeats nor skips an entry that was there all along.

The access policy's condition is part of the query (and of the count), so pages and totals
hold only what the caller may see; included resources are loaded through the policy too.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import ColumnElement, and_, false, func, or_, select

from emr_hub.errors import bad_request
from emr_hub.fhir.read_sql import members_of
from emr_hub.fhir.search.compile import SEARCHED, Compiler
from emr_hub.fhir.search.indexer import REFERENCE
from emr_hub.fhir.search.params import (
    ANY_TYPE,
    Include,
    SearchRequest,
    SortKey,
    require_search_scopes,
)
from emr_hub.fhir.search.registry import params_for
from emr_hub.fhir.store import FhirStore, Stored
from storage.db import as_utc

if TYPE_CHECKING:
    from emr_hub.security.principal import Principal

MAX_INCLUDED = 1000
ITERATE_DEPTH = 3
_MEMBERS = members_of(SEARCHED.c.resource_type, SEARCHED.c.id)
"""The patients of each match, for the audit record: built once, on the shared alias."""


@dataclass
class SearchResult:
    matches: list[Stored]
    included: list[Stored]
    total: int | None
    next_cursor: str | None


def run_search(
    store: FhirStore,
    principal: Principal,
    request: SearchRequest,
    base_url: str | None,
    *,
    also: list[SearchRequest] | None = None,
) -> SearchResult:
    """Run ``request``; with ``also``, the same search over more types (system-level search),
    ordered and paged together. The first request's result parameters apply to all."""
    requests = [request, *(also or [])]
    for each in requests:
        require_search_scopes(principal, each)
    compiler = Compiler(base_url, store.session.get_bind().dialect.name, visibility=store.visible)
    resource = SEARCHED
    per_type = []
    for each in requests:
        visible = store.visible(resource, each.resource_type)
        per_type.append(
            and_(
                resource.c.resource_type == each.resource_type,
                *((visible,) if visible is not None else ()),
                *(compiler.condition(f, each.resource_type, resource) for f in each.filters),
            )
        )
    where = [resource.c.deleted.is_(False), or_(*per_type)]
    keys: list[tuple[ColumnElement[Any], bool]] = [
        (compiler.sort_expression(k, resource.c.resource_type, resource), k.descending)
        for k in request.sort
    ]
    keys += [(resource.c.resource_type, False), (resource.c.id, False)]
    page_where = list(where)
    if request.cursor:
        kinds = [*(_cursor_kind(k) for k in request.sort), str, str]
        page_where.append(_after(keys, _decode_cursor(request.cursor, kinds)))
    order = [
        item
        for expr, desc in keys
        for item in ((expr.is_(None)), expr.desc() if desc else expr.asc())
    ]
    query = (
        select(
            resource.c.resource_type,
            resource.c.id,
            resource.c.version_id,
            resource.c.last_updated,
            resource.c.content,
            resource.c.owner_org,
            _MEMBERS,  # for the audit record
            *(expr for expr, _ in keys[:-2]),
        )
        .where(*page_where)
        .order_by(*order)
        .limit(request.count + 1)
    )
    store.flush()
    only_count = request.summary == "count" or request.count == 0
    params = store.access_params()
    rows = [] if only_count else store.session.execute(query, params).all()
    page = rows[: request.count]
    matches = [Stored(r[0], r[1], r[2], as_utc(r[3]), False, r[4], owner=r[5]) for r in page]
    next_cursor = None
    if len(rows) > request.count and page:
        last = page[-1]
        next_cursor = _encode_cursor([*last[7:], last[0], last[1]])
    total = None
    if only_count or request.total != "none":
        if not only_count and request.cursor is None and len(rows) <= request.count:
            total = len(rows)
        elif only_count or request.total == "accurate":
            count_query = select(func.count()).select_from(resource).where(*where)
            total = store.session.execute(count_query, params).scalar_one()
    store.disclose(matches, {(r[0], r[1]): r[6] for r in page})
    included = _includes(store, principal, request, matches) if request.includes and matches else []
    return SearchResult(matches, included, total, next_cursor)


# ------------------------------------------------------------------- keyset
def _after(keys: list[tuple[ColumnElement[Any], bool]], values: list[Any]) -> ColumnElement[bool]:
    """Rows strictly after ``values`` in the order of ``keys`` (nulls last on every key)."""
    alternatives = []
    for i, (expr, descending) in enumerate(keys):
        equal_before = [_equal(keys[j][0], values[j]) for j in range(i)]
        value = values[i]
        if value is None:
            beyond: ColumnElement[bool] = false()  # nothing sorts after null on this key
        elif descending:
            beyond = or_(expr < value, expr.is_(None))
        else:
            beyond = or_(expr > value, expr.is_(None))
        alternatives.append(and_(*equal_before, beyond))
    return or_(*alternatives)


def _equal(expr: ColumnElement[Any], value: Any) -> ColumnElement[bool]:
    return expr.is_(None) if value is None else expr == value


def _encode_cursor(values: list[Any]) -> str:
    def tag(value: Any) -> Any:
        if isinstance(value, datetime):
            return {"dt": as_utc(value).isoformat()}
        if isinstance(value, Decimal | float):
            return {"dec": str(value)}
        return value

    raw = orjson.dumps([tag(value) for value in values])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _cursor_kind(key: SortKey) -> type:
    """The Python type of a sort key's value: what a cursor must hold at its place."""
    if key.param.code == "_lastUpdated" or key.param.type == "date":
        return datetime
    if key.param.type in ("number", "quantity"):
        return Decimal
    return str


def _decode_cursor(text: str, kinds: list[type]) -> list[Any]:
    """The values of a cursor this hub made, each of the kind its sort key holds (or null).
    The client sends the cursor back and may have changed it: a value of another kind would
    reach the database as a wrong-typed parameter, so it is refused here."""

    def untag(value: Any) -> Any:
        if isinstance(value, dict) and "dt" in value:
            return datetime.fromisoformat(value["dt"])
        if isinstance(value, dict) and "dec" in value:
            return Decimal(value["dec"])
        return value

    try:
        values = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        if not isinstance(values, list) or len(values) != len(kinds):
            raise ValueError("wrong shape")
        decoded = [untag(value) for value in values]
        if any(v is not None and not isinstance(v, k) for v, k in zip(decoded, kinds, strict=True)):
            raise ValueError("a value of the wrong kind")
        if any(isinstance(v, Decimal) and v.is_nan() for v in decoded):  # (open ends: ±Infinity)
            raise ValueError("not a number")
        return decoded
    except (ValueError, TypeError, ArithmeticError, orjson.JSONDecodeError):
        raise bad_request(
            "Malformed or outdated _cursor; start the search again", "_cursor"
        ) from None


# ----------------------------------------------------------------- includes
def _includes(
    store: FhirStore, principal: Principal, request: SearchRequest, matches: list[Stored]
) -> list[Stored]:
    seen = {(m.resource_type, m.id) for m in matches}
    found: list[Stored] = []
    frontier = list(seen)
    for depth in range(ITERATE_DEPTH):
        wave: list[tuple[str, str]] = []
        for include in request.includes:
            if depth > 0 and not include.iterate:
                continue
            for key in _follow(store, include, frontier):
                if key not in seen:
                    seen.add(key)
                    wave.append(key)
        if not wave:
            break
        readable = [key for key in wave if principal.allows(key[0], "r")]
        found.extend(store.load_many(readable[: MAX_INCLUDED - len(found)]))
        frontier = wave
        if len(found) >= MAX_INCLUDED:
            break
    return found


def _follow(
    store: FhirStore, include: Include, frontier: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    ref = REFERENCE
    if include.reverse:
        targets = [(t, i) for t, i in frontier]
        if not targets:
            return []
        query = select(ref.c.resource_type, ref.c.resource_id).where(
            or_(*(and_(ref.c.target_type == t, ref.c.target_id == i) for t, i in targets)),
        )
        if include.source_type != ANY_TYPE:
            params = (
                [include.param.code] if include.param else _reference_params(include.source_type)
            )
            query = query.where(ref.c.resource_type == include.source_type, ref.c.param.in_(params))
    else:
        sources = [i for t, i in frontier if t == include.source_type]
        if not sources:
            return []
        params = [include.param.code] if include.param else _reference_params(include.source_type)
        query = select(ref.c.target_type, ref.c.target_id).where(
            ref.c.resource_type == include.source_type,
            ref.c.resource_id.in_(sources),
            ref.c.param.in_(params),
            ref.c.target_id.is_not(None),
        )
        if include.target:
            query = query.where(ref.c.target_type == include.target)
    return [(t, i) for t, i in store.session.execute(query.distinct()) if t and i]


def _reference_params(resource_type: str) -> list[str]:
    return [code for code, p in params_for(resource_type).items() if p.type == "reference"]
