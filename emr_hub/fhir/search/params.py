"""Parse a search query (``GET /fhir/Type?...`` or the form of ``POST .../_search``) into a
:class:`SearchRequest`: filters (AND of ORs) and result parameters. No I/O, no SQL.

Rules from the R4 search page: a repeated parameter is AND, a comma inside one value is OR
(``\\,`` is a literal comma), ``name:modifier=value``, chains ``subject:Patient.name=x`` and
reverse chains ``_has:Observation:patient:code=x``. Unknown parameters are an error unless the
client asked for ``Prefer: handling=lenient``; then they are listed in ``ignored``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from emr_hub.errors import bad_request
from emr_hub.fhir.search.composite import composite_parts
from emr_hub.fhir.search.registry import SearchParam, get_param
from emr_hub.fhir.unstorable import NUL, REPLACEMENT
from emr_hub.fhir.validation import is_resource_type

if TYPE_CHECKING:
    from emr_hub.security.principal import Principal

RESULT_PARAMS = frozenset(
    {"_count", "_sort", "_total", "_summary", "_elements", "_format", "_pretty", "_cursor", "_type"}
)
MODIFIERS = {
    "token": {"not", "text", "missing", "in", "not-in", "below", "above", "of-type"},
    "string": {"exact", "contains", "missing", "text"},
    "reference": {"missing", "identifier", "type-modifier"},
    "date": {"missing"},
    "number": {"missing"},
    "quantity": {"missing"},
    "uri": {"missing", "below", "above"},
    "composite": {"missing"},
}
UNSUPPORTED_MODIFIERS = {"in", "not-in", "of-type", "above-token", "below-token"}
MAX_CHAIN = 3
MAX_VALUES = 200
"""Values one parameter may list (``code=a,b,c``): each is a term of the SQL, and a search's
work must stay bounded (SQLite's parser stops at an expression depth of 1,000)."""
MAX_PARAMETERS = 40
_SPLIT = re.compile(r"(?<!\\),")


@dataclass(frozen=True)
class Filter:
    """``name[:modifier]=v1,v2`` on the searched type itself: a match on any value (OR)."""

    param: SearchParam
    modifier: str | None
    values: tuple[str, ...]


@dataclass(frozen=True)
class Chain:
    """``ref.inner``: ``param`` (a reference) points at a ``target`` resource matching ``inner``."""

    param: SearchParam
    target: str
    inner: Condition


@dataclass(frozen=True)
class Reverse:
    """``_has:Source:ref:inner``: a ``source_type`` resource whose ``param`` points here matches."""

    source_type: str
    param: SearchParam
    inner: Condition


@dataclass(frozen=True)
class AnyOf:
    """Alternatives: a chain through a reference that may point at several types."""

    options: tuple[Condition, ...]


Condition = Filter | Chain | Reverse | AnyOf


@dataclass(frozen=True)
class SortKey:
    param: SearchParam
    descending: bool


ANY_TYPE = "*"
"""The ``source_type`` of ``_revinclude=*``: resources of every type pointing at the matches."""


@dataclass(frozen=True)
class Include:
    source_type: str
    param: SearchParam | None  # None for the wildcard
    target: str | None
    iterate: bool
    reverse: bool


@dataclass
class SearchRequest:
    resource_type: str
    filters: list[Condition] = field(default_factory=list)
    sort: list[SortKey] = field(default_factory=list)
    count: int = 50
    total: str | None = None  # None: stated only when the first page holds every match
    summary: str | None = None
    elements: list[str] | None = None
    includes: list[Include] = field(default_factory=list)
    cursor: str | None = None
    ignored: list[str] = field(default_factory=list)


def touched_types(condition: Condition) -> Iterator[str]:
    """The resource types a condition searches besides its own: chain targets, ``_has``
    sources, at every depth."""
    if isinstance(condition, Chain):
        yield condition.target
        yield from touched_types(condition.inner)
    elif isinstance(condition, Reverse):
        yield condition.source_type
        yield from touched_types(condition.inner)
    elif isinstance(condition, AnyOf):
        for option in condition.options:
            yield from touched_types(option)


def require_search_scopes(principal: Principal, request: SearchRequest) -> None:
    """403 unless the token may search every type the request touches: a chain or ``_has``
    through a type reveals what that type's resources hold, so it needs that type's search
    scope as much as searching it directly does."""
    principal.require(request.resource_type, "s")
    for condition in request.filters:
        for resource_type in dict.fromkeys(touched_types(condition)):
            principal.require(resource_type, "s")


def split_values(raw: str) -> tuple[str, ...]:
    return tuple(part.replace("\\,", ",") for part in _SPLIT.split(raw))


def parse_search(
    resource_type: str,
    items: list[tuple[str, str]],
    *,
    lenient: bool = False,
    default_count: int = 50,
    max_count: int = 1000,
) -> SearchRequest:
    request = SearchRequest(resource_type, count=default_count)
    if len(items) > MAX_PARAMETERS:
        raise bad_request(
            f"The search has {len(items)} parameters; at most {MAX_PARAMETERS}", code="too-costly"
        )
    for name, raw in items:
        if NUL in name or NUL in raw:  # in the URL, a form, a Bundle entry or a criteria
            shown = name.replace(NUL, REPLACEMENT)
            raise bad_request(f"The search parameter {shown!r} holds a NUL character", shown)
        base, _, modifier = name.partition(":")
        if base in ("_include", "_revinclude"):
            if modifier not in ("", "iterate", "recurse"):
                raise bad_request(f"Unknown modifier on {name}", name)
            request.includes.append(_include(resource_type, base, raw, iterate=bool(modifier)))
            continue
        if name in RESULT_PARAMS:
            _result_param(request, name, raw, max_count)
            continue
        try:
            request.filters.append(_filter(resource_type, name, raw))
        except UnknownParameter as unknown:
            if not lenient:
                raise bad_request(str(unknown), name, code="not-supported") from None
            request.ignored.append(name)
    return request


class UnknownParameter(Exception):
    pass


def _param(resource_type: str, code: str) -> SearchParam:
    param = get_param(resource_type, code)
    if param is None:
        raise UnknownParameter(f"Unknown search parameter {code!r} for {resource_type}")
    return param


def _filter(resource_type: str, name: str, raw: str, depth: int = 0) -> Condition:
    if depth > MAX_CHAIN:
        raise bad_request(f"Chains are limited to {MAX_CHAIN} links", name, code="too-costly")
    if name.startswith("_has:"):
        return _reverse_chain(resource_type, name, raw, depth)
    head, dot, rest = name.partition(".")
    code, _, modifier = head.partition(":")
    param = _param(resource_type, code)
    if dot:
        return _chain(param, modifier or None, rest, raw, depth)
    return _plain(param, modifier or None, raw, name)


def _plain(param: SearchParam, modifier: str | None, raw: str, name: str) -> Filter:
    if modifier is not None:
        if param.type == "reference" and is_resource_type(modifier):
            if param.targets and modifier not in param.targets:
                raise bad_request(f"{param.code} cannot point at {modifier}", name)
        elif modifier in UNSUPPORTED_MODIFIERS:
            raise bad_request(f"Modifier :{modifier} is not supported", name, code="not-supported")
        elif modifier not in MODIFIERS.get(param.type, set()):
            raise bad_request(
                f"Modifier :{modifier} does not apply to {param.type} parameter {param.code}", name
            )
    if param.type == "composite" and composite_parts(param) is None:
        raise bad_request(
            f"Composite parameter {param.code} (not a token paired with one value) is not "
            "supported",
            name,
            code="not-supported",
        )
    values = split_values(raw)
    if len(values) > MAX_VALUES:
        raise bad_request(
            f"{name} lists {len(values)} values; at most {MAX_VALUES} (split the search)",
            name,
            code="too-costly",
        )
    if modifier == "missing" and raw not in ("true", "false"):
        raise bad_request(f"{name} takes true or false", name)
    if any(v == "" for v in values) and modifier != "missing":
        raise bad_request(f"Empty value for {name}", name)
    return Filter(param, modifier, values)


def _chain(param: SearchParam, modifier: str | None, rest: str, raw: str, depth: int) -> Condition:
    """``param[:Type].rest``: through every target type that defines the next parameter."""
    if param.type != "reference":
        raise bad_request(f"{param.code} is not a reference; it cannot be chained", param.code)
    next_code = rest.split(".", 1)[0].split(":", 1)[0]
    candidates = [modifier] if modifier else list(param.targets)
    targets = [t for t in candidates if next_code.startswith("_has") or get_param(t, next_code)]
    if not targets:
        raise bad_request(
            f"No resource {param.code} points at has a parameter {next_code!r}", param.code
        )
    options = tuple(Chain(param, t, _filter(t, rest, raw, depth + 1)) for t in targets)
    return options[0] if len(options) == 1 else AnyOf(options)


def _reverse_chain(resource_type: str, name: str, raw: str, depth: int) -> Reverse:
    parts = name.split(":", 3)
    if len(parts) != 4 or not is_resource_type(parts[1]):
        raise bad_request(
            f"Malformed reverse chain {name!r}: use _has:Type:reference:parameter", name
        )
    _, source_type, ref_code, rest = parts
    ref = _param(source_type, ref_code)
    if ref.type != "reference" or (ref.targets and resource_type not in ref.targets):
        raise bad_request(f"{source_type}.{ref_code} does not point at {resource_type}", name)
    return Reverse(source_type, ref, _filter(source_type, rest, raw, depth + 1))


def parse_count(raw: str | None, default: int = 50, maximum: int = 1000) -> int:
    if raw is None:
        return default
    if not raw.isdigit():
        raise bad_request(f"_count must be a non-negative integer, not {raw!r}", "_count")
    return min(int(raw), maximum)


def _result_param(request: SearchRequest, name: str, raw: str, max_count: int) -> None:
    if name == "_count":
        request.count = parse_count(raw, maximum=max_count)
    elif name == "_sort":
        for key in raw.split(","):
            descending = key.startswith("-")
            param = get_param(request.resource_type, key.lstrip("-"))
            if param is None or param.type in ("composite", "special"):
                raise bad_request(f"Cannot sort by {key!r}", "_sort")
            request.sort.append(SortKey(param, descending))
    elif name == "_total":
        if raw not in ("none", "estimate", "accurate"):
            raise bad_request("_total takes none, estimate or accurate", "_total")
        request.total = raw
    elif name == "_summary":
        if raw not in ("true", "false", "text", "data", "count"):
            raise bad_request("_summary takes true, false, text, data or count", "_summary")
        request.summary = raw
    elif name == "_elements":
        request.elements = (request.elements or []) + [e for e in raw.split(",") if e]
    elif name == "_cursor":
        request.cursor = raw


def _include(resource_type: str, name: str, raw: str, *, iterate: bool) -> Include:
    reverse = name == "_revinclude"
    parts = raw.split(":")
    if parts[0] == "*" and len(parts) == 1:
        # _include=*: every reference of the matches; _revinclude=*: everything pointing at them
        return Include(ANY_TYPE if reverse else resource_type, None, None, iterate, reverse)
    if len(parts) not in (2, 3) or not is_resource_type(parts[0]):
        raise bad_request(f"{name}={raw!r}: use Type:parameter[:TargetType] or *", name)
    source, code = parts[0], parts[1]
    if code == "*":
        return Include(source, None, parts[2] if len(parts) == 3 else None, iterate, reverse)
    param = get_param(source, code)
    if param is None or param.type != "reference":
        raise bad_request(f"{name}: {source}.{code} is not a reference parameter", name)
    return Include(source, param, parts[2] if len(parts) == 3 else None, iterate, reverse)
