"""An independent, deliberately simple, in-memory evaluator of FHIR R4 search.

The hub compiles FHIR search to SQL.  This module answers the same searches by walking plain
JSON resources in Python, written straight from the specification
(http://hl7.org/fhir/R4/search.html, cited below as "search.html#<anchor>"), so that
differential tests can require ``SQL results == Oracle results``.

It shares no code with ``emr_hub.fhir.search`` on purpose: only the search parameter definitions
(``emr_hub/fhir/definitions/search-parameters.json``) are common ground.  Values are extracted by
evaluating each parameter's FHIRPath expression with ``fhirpathpy``.  Clarity beats speed: every
search is a full scan over at most a few hundred resources.

Where the specification leaves a choice open, the choice made here is marked ``DECISION`` in a
comment; the SQL side has to make the same one.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import fhirpathpy
from fhirpathpy.engine.nodes import FP_Type, ResourceNode
from fhirpathpy.models import models as fhirpath_models

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFINITIONS_PATH = REPO_ROOT / "emr_hub" / "fhir" / "definitions" / "search-parameters.json"

# search.html#date: "Where both search parameters and resource element date times do not have
# time zones, the servers local time zone should be assumed."  DECISION: the hub's local time is
# Asia/Ho_Chi_Minh taken as the fixed offset +07:00 (the IANA zone differs only before 1975).
LOCAL_TZ = timezone(timedelta(hours=7))

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FHIRPATH_MODEL = fhirpath_models["r4"]
_FHIRPATH_OPTIONS = {"returnRawData": True}  # keep type hints (ResourceNode.path) on results

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
SEARCH_TYPES = ("token", "string", "reference", "date", "quantity", "number", "uri")

# Modifiers accepted per parameter type (search.html#modifiers); reference also takes ":[type]".
# search.html#modifiers: "Server SHALL reject any search request that contains is suffixed by a
# modifier that the server does not support" -> ValueError (HTTP 400 on the SQL side).
MODIFIERS = {
    "token": {"missing", "not", "text"},
    "string": {"missing", "exact", "contains"},
    "reference": {"missing", "identifier"},
    "date": {"missing"},
    "number": {"missing"},
    "quantity": {"missing"},
    "uri": {"missing", "below", "above"},
}

# ContactPoint.system codes; used to tell a ContactPoint from an Identifier when FHIRPath lost the
# type (both are {"system": ..., "value": ...} in JSON).
CONTACT_POINT_SYSTEMS = {"phone", "fax", "email", "pager", "url", "sms", "other"}

_ID = r"[A-Za-z0-9\-.]{1,64}"
_RELATIVE_REF = re.compile(rf"([A-Z][A-Za-z]+)/({_ID})(?:/_history/[^/]+)?")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_DATE = re.compile(
    r"(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d+))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?"
)


# --------------------------------------------------------------------------------------------
# Search parameter definitions
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    """One member of a parameter's FHIRPath union, for one resource type."""

    expression: str
    resolve_type: str | None  # from a trailing ".where(resolve() is X)", which was removed


@dataclass(frozen=True)
class SearchParam:
    code: str
    type: str
    targets: tuple[str, ...]
    members: tuple[Member, ...]


def split_union(expression: str) -> list[str]:
    """Split a FHIRPath expression on the top-level ``|`` (not inside parentheses or quotes)."""
    parts, current, depth, quoted = [], "", 0, False
    for char in expression:
        if char == "'":
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
        elif not quoted and depth == 0 and char == "|":
            parts.append(current.strip())
            current = ""
            continue
        current += char
    parts.append(current.strip())
    return [p for p in parts if p]


_RESOLVE_IS = re.compile(
    r"^(?P<path>.*)\.where\(resolve\(\) is (?P<type>[A-Za-z]+)\)(?P<close>\)*)$"
)


class Definitions:
    """The search parameters of ``search-parameters.json``, per resource type."""

    def __init__(self, path: Path = DEFINITIONS_PATH):
        raw = json.loads(path.read_text(encoding="utf-8"))["parameters"]
        self.resource_types: set[str] = {
            base for p in raw for base in p["base"] if base not in ("Resource", "DomainResource")
        }
        self._raw: dict[str, list[dict]] = {}
        for p in raw:
            self._raw.setdefault(p["code"], []).append(p)

    @functools.cache  # noqa: B019 - one Definitions object per process, never freed anyway
    def get(self, resource_type: str, code: str) -> SearchParam | None:
        """The parameter ``code`` on ``resource_type``, or None when it is not defined there."""
        for p in self._raw.get(code, []):
            bases = p["base"]
            if resource_type in bases:
                members = self._members(p["expression"], resource_type) if "expression" in p else []
            elif "Resource" in bases or "DomainResource" in bases:
                # Resource-level parameters (_id, _lastUpdated, _tag, _profile, _security,
                # _source): "Resource.x" is evaluated as "<Type>.x".
                expression = p.get("expression", "")
                members = self._members(
                    re.sub(r"\b(Domain)?Resource\.", f"{resource_type}.", expression),
                    resource_type,
                )
            else:
                continue
            if not members or p["type"] not in SEARCH_TYPES:
                return None  # _text, _content, _query, composite, special: not supported here
            return SearchParam(p["code"], p["type"], tuple(p.get("target", [])), tuple(members))
        return None

    def _members(self, expression: str, resource_type: str) -> list[Member]:
        members = []
        for member in split_union(expression):
            head = re.match(r"\(*([A-Za-z_]+)", member)
            first = head.group(1) if head else ""
            # Pick the union members for this type; members written relative to the resource
            # (InsurancePlan's "name | alias") start with a lower-case element name.
            if first != resource_type and first[:1].isupper():
                continue
            resolve_type = None
            found = _RESOLVE_IS.match(member)
            if found:
                member = found["path"] + found["close"]
                resolve_type = found["type"]
            members.append(Member(member, resolve_type))
        return members


@functools.cache
def default_definitions() -> Definitions:
    return Definitions()


@functools.cache
def _compiled(expression: str) -> Callable[[dict], list]:
    return fhirpathpy.compile(expression, _FHIRPATH_MODEL, _FHIRPATH_OPTIONS)


# --------------------------------------------------------------------------------------------
# Values extracted from resources
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """One value found by a FHIRPath expression: its JSON and the FHIR type name, if known."""

    data: Any
    hint: str | None


def _node(item: Any) -> Node | None:
    if isinstance(item, ResourceNode):
        data, hint = item.data, item.path if isinstance(item.path, str) else None
    else:
        data, hint = item, None
    if isinstance(data, FP_Type):
        data = str(data)
    if data is None:
        return None  # a primitive with extensions only has no value (search.html#modifiers)
    return Node(data, hint)


def reference_names_type(reference: str, resource_type: str) -> bool:
    """``X/id`` or an absolute URL whose path ends in ``X/id`` (for ``where(resolve() is X)``)."""
    return re.search(rf"(?:^|/){resource_type}/{_ID}(?:/_history/[^/]+)?$", reference) is not None


def fold(text: str) -> str:
    """Case- and accent-insensitive form (search.html#string): lower case, đ->d, no marks."""
    text = text.lower().replace("đ", "d")
    return "".join(c for c in unicodedata.normalize("NFD", text) if not unicodedata.combining(c))


def string_parts(node: Node) -> list[str]:
    """The strings a string parameter searches in one value (search.html#string).

    "When a string search parameter refers to the types HumanName and Address, the search covers
    the elements of type string, and does not cover elements such as use and period."  Each part
    (family, each given, ...) is matched on its own.
    """
    data = node.data
    if isinstance(data, str):
        return [data]
    if not isinstance(data, dict):
        return []
    if node.hint == "HumanName" or {"family", "given", "prefix", "suffix"} & data.keys():
        keys = ("family", "given", "prefix", "suffix", "text")
    elif node.hint == "Address" or {"line", "city", "district", "state", "postalCode"} & set(data):
        keys = ("line", "city", "district", "state", "postalCode", "country", "text")
    else:  # DECISION: any other complex type: all of its string leaves, extensions aside
        return [s for key, v in data.items() if key != "extension" for s in _string_leaves(v)]
    parts: list[str] = []
    for key in keys:
        value = data.get(key)
        parts += value if isinstance(value, list) else [value] if value is not None else []
    return [p for p in parts if isinstance(p, str)]


def _string_leaves(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in _string_leaves(v)]
    if isinstance(value, dict):
        return [s for k, v in value.items() if k != "extension" for s in _string_leaves(v)]
    return []


def token_kind(node: Node) -> str:
    """Which token data type a value is (search.html#token, "Token search parameters are used
    for the following data types")."""
    data = node.data
    if not isinstance(data, dict):
        return "primitive"
    if node.hint in ("CodeableConcept", "Coding", "Identifier", "ContactPoint"):
        return node.hint
    if "coding" in data or set(data) <= {"text", "id", "extension"}:
        return "CodeableConcept"
    if "code" in data or "display" in data:
        return "Coding"
    if "value" in data:
        return "ContactPoint" if data.get("system") in CONTACT_POINT_SYSTEMS else "Identifier"
    return "other"


def token_pairs(node: Node) -> list[tuple[str | None, str | None]]:
    """(system, code) pairs of one value.  Primitives (code, boolean, string, uri, id) and
    ContactPoint have no system: search.html#token "In these cases, the URI portion is not used"."""
    data, kind = node.data, token_kind(node)
    if kind == "primitive":
        if isinstance(data, bool):  # boolean values are the codes "true" and "false"
            return [(None, "true" if data else "false")]
        return [(None, str(data))]
    if kind == "CodeableConcept":
        return [(c.get("system"), c.get("code")) for c in data.get("coding", [])]
    if kind == "Coding":
        return [(data.get("system"), data.get("code"))]
    if kind == "Identifier":
        return [(data.get("system"), data.get("value"))]
    if kind == "ContactPoint":
        return [(None, data.get("value"))]
    return []


def token_texts(node: Node) -> list[str]:
    """Text for ``:text``: CodeableConcept.text, Coding.display, Identifier.type.text."""
    data, kind = node.data, token_kind(node)
    if kind == "CodeableConcept":
        return [data.get("text")] + [c.get("display") for c in data.get("coding", [])]
    if kind == "Coding":
        return [data.get("display")]
    if kind == "Identifier":
        return [(data.get("type") or {}).get("text")]
    return []


# A range is [low, high): numbers (microseconds since 1970 UTC for dates), +-inf when open.
Range = tuple[Any, Any]


def parse_date(text: str) -> Range:
    """The range a date/dateTime/instant covers at its precision (search.html#date).

    "the date 2013-01-10 specifies all the time from 00:00 on 10-Jan 2013 to immediately before
    00:00 on 11-Jan 2013"; a year or a month likewise.  A time covers its minute, second or
    fraction of a second.  DECISION: an instant is treated like any dateTime of the same
    precision (it covers its last digit), not as a zero-width point.
    """
    found = _DATE.fullmatch(text)
    if not found:
        raise ValueError(f"not a FHIR date: {text!r}")
    g = found.groupdict()
    tz = LOCAL_TZ
    if g["tz"] == "Z":
        tz = UTC
    elif g["tz"]:
        sign = 1 if g["tz"][0] == "+" else -1
        tz = timezone(sign * timedelta(hours=int(g["tz"][1:3]), minutes=int(g["tz"][4:6])))
    year, month, day = int(g["y"]), int(g["m"] or 1), int(g["d"] or 1)
    hour, minute, second = int(g["H"] or 0), int(g["M"] or 0), int(g["S"] or 0)
    fraction = g["f"] or ""
    try:
        low = datetime(
            year, month, day, hour, minute, second, int(fraction[:6].ljust(6, "0")), tzinfo=tz
        )
    except ValueError as error:
        raise ValueError(f"not a FHIR date: {text!r}") from error
    try:
        if g["m"] is None:
            high = low.replace(year=year + 1)
        elif g["d"] is None:
            high = low.replace(year=year + month // 12, month=month % 12 + 1)
        elif g["H"] is None:
            high = low + timedelta(days=1)
        elif g["S"] is None:
            high = low + timedelta(minutes=1)
        elif not fraction:
            high = low + timedelta(seconds=1)
        else:
            high = low + timedelta(microseconds=10 ** max(0, 6 - len(fraction)))
    except (ValueError, OverflowError):
        return _micros(low), math.inf
    return _micros(low), _micros(high)


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def date_range(node: Node) -> Range | None:
    """The range of a date, dateTime, instant, Period or Timing value (search.html#date)."""
    data = node.data
    if isinstance(data, str):
        try:
            return parse_date(data)
        except ValueError:
            return None
    if not isinstance(data, dict):
        return None
    if "start" in data or "end" in data or node.hint == "Period":
        # Period: "Implicitly, a missing lower boundary is "less than" any actual date.  A
        # missing upper boundary is "greater than" any actual date."
        low = parse_date(data["start"])[0] if data.get("start") else -math.inf
        high = parse_date(data["end"])[1] if data.get("end") else math.inf
        return low, high
    if "event" in data or "repeat" in data:
        # Timing: "the specified scheduling details are ignored and only the outer limits matter"
        ranges = [parse_date(e) for e in data.get("event", [])]
        bounds = (data.get("repeat") or {}).get("boundsPeriod")
        if bounds:
            ranges.append(date_range(Node(bounds, "Period")))
        if not ranges:
            return None
        return min(r[0] for r in ranges), max(r[1] for r in ranges)
    return None


@dataclass(frozen=True)
class Amount:
    """A number or quantity value: the range [low, high] (equal for a plain value) and units."""

    low: Decimal | float
    high: Decimal | float
    system: str | None = None
    code: str | None = None
    unit: str | None = None


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int | float | str):
        try:
            return Decimal(str(value))
        except InvalidOperation:
            return None
    return None


def amount(node: Node) -> Amount | None:
    """The value of a number, Quantity (Age, Duration, ...), Money or Range."""
    data = node.data
    if not isinstance(data, dict):
        number = _decimal(data)
        return Amount(number, number) if number is not None else None
    if "low" in data or "high" in data:  # Range: explicitly a range (search.html#prefix)
        low, high = data.get("low") or {}, data.get("high") or {}
        low_value, high_value = _decimal(low.get("value")), _decimal(high.get("value"))
        if low_value is None and high_value is None:
            return None
        units = low if low_value is not None else high
        return Amount(
            low_value if low_value is not None else -math.inf,
            high_value if high_value is not None else math.inf,
            units.get("system"),
            units.get("code"),
            units.get("unit"),
        )
    number = _decimal(data.get("value"))
    if number is None:
        return None  # e.g. SampledData
    if "currency" in data:  # DECISION: Money's currency is its code, in the ISO 4217 system
        return Amount(number, number, "urn:iso:std:iso:4217", data["currency"], None)
    return Amount(number, number, data.get("system"), data.get("code"), data.get("unit"))


# --------------------------------------------------------------------------------------------
# Parsing search values
# --------------------------------------------------------------------------------------------


def split_escaped(value: str, separator: str) -> list[str]:
    """Split on ``separator`` unless escaped with ``\\``; escapes stay in the parts.

    search.html#escaping: "$", "," and "|" in a value are escaped as "\\$", "\\,", "\\|", and
    "\\" itself as "\\\\"; "The parameter value xx\\xx is illegal".
    """
    parts, current, i = [], "", 0
    while i < len(value):
        char = value[i]
        if char == "\\":
            if i + 1 >= len(value) or value[i + 1] not in "\\,$|":
                raise ValueError(f"illegal escape in search value {value!r}")
            current += value[i : i + 2]
            i += 2
            continue
        if char == separator:
            parts.append(current)
            current = ""
        else:
            current += char
        i += 1
    parts.append(current)
    return parts


def unescape(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value)


def split_prefix(value: str) -> tuple[str, str]:
    """search.html#prefix: "If no prefix is present, the prefix eq is assumed"."""
    if value[:2] in PREFIXES:
        prefix, rest = value[:2], value[2:]
    else:
        prefix, rest = "eq", value
    if prefix == "ap":
        raise NotImplementedError("the ap prefix is not modelled by the oracle")
    return prefix, rest


def parse_number(text: str) -> tuple[Decimal, Decimal]:
    """A search number and the half-width of its implicit range (search.html#number).

    "100" covers [99.5, 100.5) and "100.00" covers [99.995, 100.005): the range is half a unit of
    the last significant digit given.  DECISION: "1e2" therefore covers [50, 150) (one significant
    digit, as corrected in R5; the R4 table's "[95 ... 105)" contradicts its own rule).
    """
    if not _NUMBER.fullmatch(text):
        raise ValueError(f"not a number: {text!r}")
    number = Decimal(text)
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)
    return number, Decimal("0.5").scaleb(exponent)


# --------------------------------------------------------------------------------------------
# Matching one value against one search value
# --------------------------------------------------------------------------------------------


def range_matches(prefix: str, search: Range, target: Range) -> bool:
    """The range column of the prefix table (search.html#prefix), with ranges [low, high).

    "range above the search value" is [search.high, +inf), "range below" is (-inf, search.low).
    """
    s_low, s_high = search
    t_low, t_high = target
    contains = s_low <= t_low and t_high <= s_high  # S fully contains T
    above_overlaps = t_high > s_high  # the range above S intersects T
    below_overlaps = t_low < s_low  # the range below S intersects T
    if prefix == "eq":  # the range of the search value fully contains the range of the target
        return contains
    if prefix == "ne":  # ... does not fully contain the range of the target value
        return not contains
    if prefix == "gt":  # the range above the search value intersects the range of the target
        return above_overlaps
    if prefix == "lt":  # the range below the search value intersects the range of the target
        return below_overlaps
    if prefix == "ge":  # above intersects, or the search range fully contains the target
        return above_overlaps or contains
    if prefix == "le":  # below intersects, or the search range fully contains the target
        return below_overlaps or contains
    if prefix == "sa":  # no overlap with S, and the range above S contains T
        return t_low >= s_high
    if prefix == "eb":  # no overlap with S, and the range below S contains T
        return t_high <= s_low
    raise ValueError(f"unknown prefix {prefix!r}")


def amount_matches(prefix: str, number: Decimal, half_width: Decimal, value: Amount) -> bool:
    """search.html#number: eq/ne use the implicit range of the search value ("100" is
    [99.5, 100.5)); "When a comparison prefix in the set gt, lt, ge, le, sa & eb is provided, the
    implicit precision of the number is ignored".  Values in resources have arbitrarily high
    precision: a plain value is a point, a Range an explicit [low, high]."""
    low, high = value.low, value.high
    if prefix in ("eq", "ne"):
        inside = number - half_width <= low and high < number + half_width
        return inside if prefix == "eq" else not inside
    return {
        "gt": high > number,
        "lt": low < number,
        "ge": high >= number,
        "le": low <= number,
        "sa": low > number,
        "eb": high < number,
    }[prefix]


def token_matches(system: str | None, code: str, pairs: Iterable[tuple[Any, Any]]) -> bool:
    """search.html#token value forms; codes compare case-sensitively (DECISION, see report).

    [code]           code matches, whatever the system
    [system]|[code]  code and system match
    |[code]          code matches and the value has no system
    [system]|        any value in the system
    """
    for value_system, value_code in pairs:
        if system is None:
            if value_code == code:
                return True
        elif system == "":
            if not value_system and value_code == code:
                return True
        elif value_system == system and (code == "" or value_code == code):
            return True
    return False


def parse_token(text: str) -> tuple[str | None, str]:
    parts = split_escaped(text, "|")
    if len(parts) == 1:
        return None, unescape(parts[0])
    if len(parts) == 2:
        return unescape(parts[0]), unescape(parts[1])
    raise ValueError(f"a token is [system|]code, not {text!r}")


def uri_below(value: str, search: str) -> bool:
    """``value`` is ``search`` or under it, on whole path segments (``:below``)."""
    if value == search:
        return True
    if search.startswith("urn:"):  # "the :above and :below modifiers only apply to URLs"
        return False
    return value.startswith(search if search.endswith("/") else search + "/")


# --------------------------------------------------------------------------------------------
# The oracle
# --------------------------------------------------------------------------------------------

Predicate = Callable[[dict], bool]


class Oracle:
    """Answers FHIR R4 searches over a fixed list of resources.

    ``search("Observation", [("code", "http://loinc.org|8867-4"), ("_sort", "-date")])`` returns
    the matching ids.  Unknown or unsupported parameters and modifiers, and malformed values,
    raise ``ValueError`` (the hub answers 400 there); the ``ap`` prefix raises
    ``NotImplementedError``.
    """

    def __init__(
        self,
        resources: list[dict],
        base_url: str = "http://127.0.0.1:8000/fhir",
        definitions: Definitions | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.definitions = definitions or default_definitions()
        # fhirpathpy may annotate what it evaluates: work on a private copy.
        self.resources = copy.deepcopy(resources)
        self._by_key: dict[tuple[str, str], dict] = {}
        self._by_type: dict[str, list[dict]] = {}
        for resource in self.resources:
            key = (resource["resourceType"], resource["id"])
            if key in self._by_key:
                raise ValueError(f"two resources are {key[0]}/{key[1]}")
            self._by_key[key] = resource
            self._by_type.setdefault(key[0], []).append(resource)
        self._cache: dict[tuple[int, str], list[Node]] = {}

    # ---- public API ---------------------------------------------------------------------------

    def search(self, resource_type: str, params: list[tuple[str, str]]) -> list[str]:
        """Ids of the ``resource_type`` resources matching every parameter.

        Sorted by id, or by ``_sort`` then id.  search.html#combining: a repeated parameter is
        an AND, a comma-separated list of values is an OR.
        """
        self._check_type(resource_type)
        predicates: list[Predicate] = []
        sort_keys: list[tuple[SearchParam, bool]] = []
        for key, value in params:
            if key == "_sort":
                if value != "":  # empty parameters are ignored (search.html#errors)
                    sort_keys += self._parse_sort(resource_type, value)
                continue
            predicate = self._predicate(resource_type, key, value)
            if predicate is not None:
                predicates.append(predicate)
        found = [r for r in self._by_type.get(resource_type, []) if all(p(r) for p in predicates)]
        return [r["id"] for r in self._order(found, sort_keys)]

    def values(self, resource: dict, param: SearchParam) -> list[Node]:
        """The values of ``param`` in ``resource``, from its FHIRPath expression."""
        cache_key = (id(resource), param.code)
        if cache_key not in self._cache:
            nodes: list[Node] = []
            for member in param.members:
                for item in _compiled(member.expression)(resource, {}):
                    node = _node(item)
                    if node is None:
                        continue
                    if member.resolve_type and not (
                        isinstance(node.data, dict)
                        and isinstance(node.data.get("reference"), str)
                        and reference_names_type(node.data["reference"], member.resolve_type)
                    ):
                        continue  # ".where(resolve() is X)": only references naming type X
                    nodes.append(node)
            self._cache[cache_key] = nodes
        return self._cache[cache_key]

    # ---- parameters -------------------------------------------------------------------------

    def _check_type(self, resource_type: str) -> None:
        if resource_type not in self.definitions.resource_types:
            raise ValueError(f"unknown resource type {resource_type!r}")

    def _param(self, resource_type: str, code: str) -> SearchParam:
        param = self.definitions.get(resource_type, code)
        if param is None:
            raise ValueError(f"unknown search parameter {resource_type}.{code}")
        return param

    def _predicate(self, resource_type: str, key: str, value: str) -> Predicate | None:
        """The test for one ``key=value`` pair; None when the pair is to be ignored.

        Everything is validated here, before any resource is looked at, so that a bad query
        raises whatever the data.
        """
        if key.startswith("_has:"):
            return self._has_predicate(resource_type, key, value)
        head, dot, tail = key.partition(".")
        code, _, modifier = head.partition(":")
        param = self._param(resource_type, code)
        if dot:
            return self._chain_predicate(param, modifier, tail, value)
        if modifier and modifier not in MODIFIERS[param.type]:
            if not (param.type == "reference" and modifier in self.definitions.resource_types):
                raise ValueError(f"modifier :{modifier} is not supported on {code}")
            if param.targets and modifier not in param.targets:
                raise ValueError(f"{code} cannot refer to a {modifier}")
        # search.html#errors: "Note: Empty parameters are not an error - they are just ignored".
        # DECISION: empty alternatives in a comma list are dropped likewise.
        alternatives = [v for v in split_escaped(value, ",") if v != ""]
        if not alternatives:
            return None
        if modifier == "missing":
            return self._missing_predicate(param, alternatives)
        matcher = getattr(self, f"_{param.type}_matcher")(param, modifier, alternatives)
        if modifier == "not":
            # search.html#token: ":not ... return all resources that do not have a matching item.
            # Note that this includes resources that have no value for the parameter"; "the
            # negation applies to the set, not each individual entry".  DECISION: with a comma
            # list, the set is all alternatives: no value may match any of them.
            return lambda resource: not any(matcher(n) for n in self.values(resource, param))
        return lambda resource: any(matcher(n) for n in self.values(resource, param))

    def _missing_predicate(self, param: SearchParam, alternatives: list[str]) -> Predicate:
        """search.html#modifiers: ":missing=true" matches resources without a value for the
        parameter, ":missing=false" those with one.  DECISION: a value is anything the expression
        finds that the parameter type can search on (for token and reference: any element
        found, even a Reference holding only an identifier)."""
        wanted = set()
        for alternative in alternatives:
            if alternative not in ("true", "false"):
                raise ValueError(f":missing takes true or false, not {alternative!r}")
            wanted.add(alternative == "true")

        def predicate(resource: dict) -> bool:
            return (not self._has_value(param, self.values(resource, param))) in wanted

        return predicate

    def _has_value(self, param: SearchParam, nodes: list[Node]) -> bool:
        if param.type == "string":
            return any(part != "" for node in nodes for part in string_parts(node))
        if param.type == "date":
            return any(date_range(node) is not None for node in nodes)
        if param.type in ("number", "quantity"):
            return any(amount(node) is not None for node in nodes)
        if param.type == "uri":
            return any(isinstance(node.data, str) for node in nodes)
        return bool(nodes)

    # ---- per type: a matcher takes one value (Node) and tells whether it matches any
    # ---- alternative of the OR list

    def _token_matcher(self, param, modifier, alternatives) -> Callable[[Node], bool]:
        if modifier == "text":
            # search.html#token ":text": "the search functions as a normal string search" on
            # CodeableConcept.text, Coding.display or Identifier.type.text.
            wanted = [fold(unescape(a)) for a in alternatives]
            return lambda node: any(
                fold(text).startswith(w)
                for text in token_texts(node)
                if isinstance(text, str)
                for w in wanted
            )
        parsed = [parse_token(a) for a in alternatives]
        return lambda node: any(token_matches(s, c, token_pairs(node)) for s, c in parsed)

    def _string_matcher(self, param, modifier, alternatives) -> Callable[[Node], bool]:
        wanted = [unescape(a) for a in alternatives]

        def test(part: str, search: str) -> bool:
            if modifier == "exact":
                # search.html#string ":exact returns results that match the entire supplied
                # parameter, including casing and accents".  DECISION: code points are compared
                # as stored (no Unicode normalisation).
                return part == search
            if modifier == "contains":
                # ":contains (case insensitive and combining character-insensitive, search text
                # matched anywhere in the string)"
                return fold(search) in fold(part)
            # default: "a field matches a string query if the value of the field equals or
            # starts with the supplied parameter value, after both have been normalized by case
            # and combining characters".  DECISION: punctuation and whitespace are kept as is.
            return fold(part).startswith(fold(search))

        return lambda node: any(test(part, w) for part in string_parts(node) for w in wanted)

    def _uri_matcher(self, param, modifier, alternatives) -> Callable[[Node], bool]:
        # search.html#uri: "By default, matches are precise (e.g. case, accent, and escape)
        # sensitive, and the entire URI must match"; ":below" / ":above" match on path segments.
        wanted = [unescape(a) for a in alternatives]

        def matcher(node: Node) -> bool:
            if not isinstance(node.data, str):
                return False
            if modifier == "below":
                return any(uri_below(node.data, w) for w in wanted)
            if modifier == "above":
                return any(uri_below(w, node.data) for w in wanted)
            return node.data in wanted

        return matcher

    def _date_matcher(self, param, modifier, alternatives) -> Callable[[Node], bool]:
        searches = []
        for alternative in alternatives:
            prefix, text = split_prefix(unescape(alternative))
            searches.append((prefix, parse_date(text)))

        def matcher(node: Node) -> bool:
            target = date_range(node)
            return target is not None and any(range_matches(p, s, target) for p, s in searches)

        return matcher

    def _number_matcher(self, param, modifier, alternatives) -> Callable[[Node], bool]:
        searches = []
        for alternative in alternatives:
            prefix, text = split_prefix(unescape(alternative))
            searches.append((prefix, *parse_number(text)))

        def matcher(node: Node) -> bool:
            value = amount(node)
            return value is not None and any(amount_matches(p, n, h, value) for p, n, h in searches)

        return matcher

    def _quantity_matcher(self, param, modifier, alternatives) -> Callable[[Node], bool]:
        # search.html#quantity: [prefix][number]|[system]|[code]; "[number]||[code]" matches the
        # code or the stated unit; a bare number matches whatever the unit.  No unit conversion.
        searches = []
        for alternative in alternatives:
            parts = split_escaped(alternative, "|")
            if len(parts) not in (1, 3):
                raise ValueError(f"a quantity is number[|system|code], not {alternative!r}")
            prefix, text = split_prefix(unescape(parts[0]))
            system, code = (unescape(parts[1]), unescape(parts[2])) if len(parts) == 3 else ("", "")
            searches.append((prefix, *parse_number(text), system, code))

        def unit_ok(value: Amount, system: str, code: str) -> bool:
            if system and value.system != system:
                return False
            if not code:
                return True
            return value.code == code or (not system and value.unit == code)

        def matcher(node: Node) -> bool:
            value = amount(node)
            return value is not None and any(
                unit_ok(value, s, c) and amount_matches(p, n, h, value)
                for p, n, h, s, c in searches
            )

        return matcher

    def _reference_matcher(self, param, modifier, alternatives) -> Callable[[Node], bool]:
        if modifier == "identifier":
            # search.html#reference: with :identifier "the search value works as a token search"
            # on Reference.identifier.
            parsed = [parse_token(a) for a in alternatives]

            def identifier_matcher(node: Node) -> bool:
                identifier = node.data.get("identifier") if isinstance(node.data, dict) else None
                if not isinstance(identifier, dict):
                    return False
                pairs = token_pairs(Node(identifier, "Identifier"))
                return any(token_matches(s, c, pairs) for s, c in parsed)

            return identifier_matcher
        wanted = [self._reference_search(param, modifier, unescape(a)) for a in alternatives]

        def matcher(node: Node) -> bool:
            stored = _reference_string(node)
            if stored is None:
                return False
            local = self.local_reference(stored)
            for kind, want in wanted:
                if kind == "raw" and stored == want:
                    return True
                if kind == "local" and local == want:
                    return True
                if (
                    kind == "id"
                    and local is not None
                    and local[1] == want
                    and (not param.targets or local[0] in param.targets)
                ):
                    return True
            return False

        return matcher

    def _reference_search(self, param, modifier: str, text: str) -> tuple[str, Any]:
        """How one reference search value matches (search.html#reference):

        [id]        a local reference to any type the parameter allows, with that id
        [type]/[id] a local reference, relative or absolute on this server's base
        [url]       an absolute URL: on this base it is the local reference, else compared whole
        :[type]     the modifier supplies the type of a bare id
        """
        if modifier:  # a resource type, checked by the caller
            local = self.local_reference(text) if "/" in text else (modifier, text)
            if local is None or local[0] != modifier:
                raise ValueError(f"{text!r} is not an id of a {modifier}")
            return "local", local
        if "/" in text or ":" in text:
            local = self.local_reference(text)
            if local is not None:
                return "local", local
            return "raw", text
        return "id", text

    def local_reference(self, reference: str) -> tuple[str, str] | None:
        """(type, id) of a reference to a resource on this server, else None.

        search.html#reference: "A relative reference resolving to the same value as a specified
        absolute URL, or vice versa, qualifies as a match".  DECISION: a version
        ("/_history/n") is ignored, search being on current versions (search.html#versions).
        """
        if reference.startswith(self.base_url + "/"):
            reference = reference[len(self.base_url) + 1 :]
        found = _RELATIVE_REF.fullmatch(reference)
        return (found[1], found[2]) if found else None

    def resolve(self, node: Node) -> dict | None:
        stored = _reference_string(node)
        local = self.local_reference(stored) if stored else None
        return self._by_key.get(local) if local else None

    # ---- chaining -----------------------------------------------------------------------------

    def _chain_predicate(
        self, param: SearchParam, modifier: str, tail: str, value: str
    ) -> Predicate | None:
        """search.html#chaining: ``ref.param=v`` / ``ref:Type.param=v`` match resources with a
        reference (in this resource list) to a resource matching ``param=v``.  "chained parameters
        are applied independently to the target resource" - each parameter on its own.

        DECISION: without a :Type, every target type of the reference parameter on which the
        chained parameter is defined is tried (no 400 for ambiguity).
        """
        if param.type != "reference":
            raise ValueError(f"{param.code} is not a reference: it cannot be chained")
        tail_code = re.split(r"[.:]", tail, maxsplit=1)[0]
        if modifier:
            if modifier not in self.definitions.resource_types:
                raise ValueError(f"modifier :{modifier} cannot be chained")
            if param.targets and modifier not in param.targets:
                raise ValueError(f"{param.code} cannot refer to a {modifier}")
            types = [modifier]
        else:
            types = sorted(param.targets or self.definitions.resource_types)
        types = [t for t in types if self.definitions.get(t, tail_code) is not None]
        if not types:
            raise ValueError(f"no target of {param.code} has a search parameter {tail_code}")
        inner = {t: self._predicate(t, tail, value) for t in types}
        if any(p is None for p in inner.values()):
            return None
        tests = {t: _memoised(p) for t, p in inner.items() if p is not None}

        def predicate(resource: dict) -> bool:
            for node in self.values(resource, param):
                target = self.resolve(node)
                test = tests.get(target["resourceType"]) if target else None
                if test is not None and test(target):
                    return True
            return False

        return predicate

    def _has_predicate(self, resource_type: str, key: str, value: str) -> Predicate | None:
        """search.html#has: ``_has:Type:ref:param=v`` matches resources referred to, through the
        reference parameter ``ref``, by at least one ``Type`` resource matching ``param=v``;
        ``param`` may itself be a ``_has`` (nested) or a chain."""
        parts = key.split(":", 3)
        if len(parts) != 4 or not all(parts):
            raise ValueError(f"_has takes _has:Type:reference:parameter, not {key!r}")
        _, source_type, ref_code, rest = parts
        self._check_type(source_type)
        ref = self._param(source_type, ref_code)
        if ref.type != "reference":
            raise ValueError(f"{source_type}.{ref_code} is not a reference")
        if ref.targets and resource_type not in ref.targets:
            raise ValueError(f"{source_type}.{ref_code} cannot refer to a {resource_type}")
        inner = self._predicate(source_type, rest, value)
        if inner is None:
            return None

        @functools.cache
        def referenced() -> frozenset[tuple[str, str]]:
            """What the matching ``source_type`` resources refer to through ``ref``."""
            return frozenset(
                local
                for source in self._by_type.get(source_type, [])
                if inner(source)
                for local in map(self._local, self.values(source, ref))
                if local is not None
            )

        return lambda resource: (resource["resourceType"], resource["id"]) in referenced()

    def _local(self, node: Node) -> tuple[str, str] | None:
        stored = _reference_string(node)
        return self.local_reference(stored) if stored else None

    # ---- sorting ------------------------------------------------------------------------------

    def _parse_sort(self, resource_type: str, value: str) -> list[tuple[SearchParam, bool]]:
        """search.html#sort: "a comma-separated list of sort rules in priority order"; "-" sorts
        in decreasing order."""
        keys = []
        for item in value.split(","):
            descending = item.startswith("-")
            code = item[1:] if descending else item
            if not code or ":" in code or "." in code:
                raise ValueError(f"cannot sort by {item!r}")
            keys.append((self._param(resource_type, code), descending))
        return keys

    def _order(self, found: list[dict], sort_keys: list[tuple[SearchParam, bool]]) -> list[dict]:
        """Sort by the keys, then by id ascending.

        search.html#sort: for a repeating element "the sort is based on the item in the set of
        multiple parameters that comes earliest in the specified sort order": ascending uses the
        lowest value, descending the highest.  DECISIONS: a date or a range value sorts by its
        low end ascending and its high end descending; resources without a value come last in
        either direction; ties are broken by id ascending; strings sort on their folded form
        (case-insensitive, "Accents may either be ignored"), other keys in code point order.
        """
        keyed = []
        for resource in found:
            keys = []
            for param, descending in sort_keys:
                candidates = self._sort_values(param, resource, descending)
                if not candidates:
                    keys.append(None)
                else:
                    keys.append(max(candidates) if descending else min(candidates))
            keyed.append((keys, resource))

        def compare(a: tuple[list, dict], b: tuple[list, dict]) -> int:
            for (_param, descending), x, y in zip(sort_keys, a[0], b[0], strict=True):
                if x == y:
                    continue
                if x is None:
                    return 1
                if y is None:
                    return -1
                result = -1 if x < y else 1
                return -result if descending else result
            return -1 if a[1]["id"] < b[1]["id"] else (1 if a[1]["id"] > b[1]["id"] else 0)

        return [resource for _, resource in sorted(keyed, key=functools.cmp_to_key(compare))]

    def _sort_values(self, param: SearchParam, resource: dict, descending: bool) -> list:
        nodes = self.values(resource, param)
        if param.type == "string":
            return [fold(p) for n in nodes for p in string_parts(n) if p != ""]
        if param.type == "token":
            return [c for n in nodes for _, c in token_pairs(n) if isinstance(c, str)]
        if param.type == "date":
            ranges = [r for r in map(date_range, nodes) if r is not None]
            return [r[1] if descending else r[0] for r in ranges]
        if param.type in ("number", "quantity"):
            amounts = [a for a in map(amount, nodes) if a is not None]
            return [a.high if descending else a.low for a in amounts]
        if param.type == "reference":
            strings = [s for s in map(_reference_string, nodes) if s is not None]
            locals_ = [(s, self.local_reference(s)) for s in strings]
            return [f"{lo[0]}/{lo[1]}" if lo else s for s, lo in locals_]
        return [n.data for n in nodes if isinstance(n.data, str)]  # uri


def _memoised(predicate: Predicate) -> Predicate:
    """``predicate`` remembering its answer per resource (the data never changes)."""
    answers: dict[int, bool] = {}

    def memoised(resource: dict) -> bool:
        if id(resource) not in answers:
            answers[id(resource)] = predicate(resource)
        return answers[id(resource)]

    return memoised


def _reference_string(node: Node) -> str | None:
    """Reference.reference, or the value of a canonical / uri used as a reference."""
    if isinstance(node.data, str):
        return node.data
    if isinstance(node.data, dict) and isinstance(node.data.get("reference"), str):
        return node.data["reference"]
    return None
