"""The R4 search parameters, per resource type, from ``fhir/definitions/search-parameters.json``.

A definition lists several base types and one FHIRPath expression that is a union over them
(``AllergyIntolerance.patient | CarePlan.subject.where(resolve() is Patient) | ...``). Here
each definition becomes one :class:`SearchParam` per base type, whose expression keeps only
the union members about that type. The ``Resource``-level parameters (``_id``,
``_lastUpdated``, ``_tag``, ``_profile``, ``_security``, ``_source`` ...) are given to every
type with ``Resource.`` rewritten to the type's name; ``DomainResource`` ones (``_text``) to
every type but ``Bundle``, ``Binary`` and ``Parameters``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

from emr_hub.fhir.validation import R4_RESOURCE_TYPES

DEFINITIONS = Path(__file__).resolve().parent.parent / "definitions" / "search-parameters.json"

_ABSTRACT_BASES = ("Resource", "DomainResource")
_NOT_DOMAIN_RESOURCES = frozenset({"Bundle", "Binary", "Parameters"})


@dataclass(frozen=True)
class SearchParam:
    code: str
    type: str  # token | string | reference | date | quantity | number | uri | composite
    resource_type: str
    expression: str | None  # None: no FHIRPath (_content, _query, _text): handled specially
    targets: tuple[str, ...] = ()
    modifiers: tuple[str, ...] = ()
    comparators: tuple[str, ...] = ()
    components: tuple[tuple[str, str], ...] = ()  # (definition url, expression) of composites
    url: str = ""


def split_union(expression: str) -> list[str]:
    """The members of a top-level ``|`` union, each stripped. ``|`` inside parentheses,
    brackets or string literals does not split: ``(X.value as Quantity) | (X.value as
    SampledData)`` gives two members, ``X.where(a = 'b|c')`` one."""
    members: list[str] = []
    depth = 0
    start = 0
    quote: str | None = None
    i = 0
    while i < len(expression):
        ch = expression[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "'`\"":
            quote = ch
        elif ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "|" and depth == 0:
            members.append(expression[start:i].strip())
            start = i + 1
        i += 1
    members.append(expression[start:].strip())
    return [m for m in members if m]


def _head(member: str) -> tuple[str, str]:
    """(leading parentheses, the rest) of a union member."""
    stripped = member.lstrip("( ")
    return member[: len(member) - len(stripped)], stripped


def _leading_identifier(text: str) -> str:
    end = 0
    while end < len(text) and (text[end].isalnum() or text[end] == "_"):
        end += 1
    return text[:end]


def member_applies(member: str, resource_type: str) -> bool:
    """Whether a union member is about ``resource_type``: its path starts with ``Type.``
    (possibly inside the leading parenthesis) or is ``Type`` itself (composites)."""
    _, rest = _head(member)
    return _leading_identifier(rest) == resource_type


def _is_relative(member: str) -> bool:
    """A member that starts with an element name, not a type (``name | alias``)."""
    _, rest = _head(member)
    first = _leading_identifier(rest)
    return bool(first) and first[0].islower()


def _qualify(member: str, resource_type: str, abstract: str | None = None) -> str:
    """The member with its leading type (``Resource``) or no type made ``resource_type``."""
    parens, rest = _head(member)
    if abstract is not None:
        return parens + resource_type + rest[len(abstract) :]
    return f"{parens}{resource_type}.{rest}"


def expression_for(expression: str, resource_type: str, bases: tuple[str, ...]) -> str | None:
    """The part of a definition's expression about ``resource_type``, or None if no part is."""
    kept: list[str] = []
    for member in split_union(expression):
        _, rest = _head(member)
        first = _leading_identifier(rest)
        if first in _ABSTRACT_BASES and first in bases:
            kept.append(_qualify(member, resource_type, first))
        elif first == resource_type:
            kept.append(member)
        elif _is_relative(member):
            kept.append(_qualify(member, resource_type))
    return " | ".join(kept) if kept else None


@cache
def _definitions() -> tuple[dict[str, Any], ...]:
    with DEFINITIONS.open("rb") as file:
        data = json.load(file)
    return tuple(data["parameters"])


def _make(raw: dict[str, Any], resource_type: str) -> SearchParam:
    bases = tuple(raw.get("base", ()))
    expression = raw.get("expression")
    if expression:
        expression = expression_for(expression, resource_type, bases)
    return SearchParam(
        code=raw["code"],
        type=raw["type"],
        resource_type=resource_type,
        expression=expression or None,
        targets=tuple(raw.get("target", ())),
        modifiers=tuple(raw.get("modifier", ())),
        comparators=tuple(raw.get("comparator", ())),
        components=tuple(
            (c["definition"], c["expression"])
            for c in raw.get("component", ())
            if "definition" in c
        ),
        url=raw.get("url", ""),
    )


@cache
def _by_type() -> Mapping[str, tuple[dict[str, Any], ...]]:
    table: dict[str, list[dict[str, Any]]] = {}
    for raw in _definitions():
        for base in raw.get("base", ()):
            table.setdefault(base, []).append(raw)
    return {base: tuple(raws) for base, raws in table.items()}


def known_type(resource_type: str) -> bool:
    return resource_type in R4_RESOURCE_TYPES or (
        resource_type in _by_type() and resource_type not in _ABSTRACT_BASES
    )


@cache
def params_for(resource_type: str) -> Mapping[str, SearchParam]:
    """Every search parameter of a resource type, by code, the Resource-level ones included.
    Empty for a name that is not a resource type."""
    if not known_type(resource_type):
        return MappingProxyType({})
    table = _by_type()
    raws = list(table.get("Resource", ()))
    if resource_type not in _NOT_DOMAIN_RESOURCES:
        raws += table.get("DomainResource", ())
    raws += table.get(resource_type, ())
    params: dict[str, SearchParam] = {}
    for raw in raws:
        params.setdefault(raw["code"], _make(raw, resource_type))
    return MappingProxyType(params)


def get_param(resource_type: str, code: str) -> SearchParam | None:
    return params_for(resource_type).get(code)


@cache
def _urls() -> Mapping[str, dict[str, Any]]:
    return {raw["url"]: raw for raw in _definitions() if raw.get("url")}


def param_by_url(url: str, resource_type: str | None = None) -> SearchParam | None:
    """The parameter a canonical URL defines (as composites name their components), for
    ``resource_type`` or, when not given, for the definition's first base type."""
    raw = _urls().get(url)
    if raw is None:
        return None
    bases = raw.get("base") or ()
    if resource_type is None:
        if not bases:
            return None
        resource_type = bases[0]
    elif resource_type not in bases and not any(b in _ABSTRACT_BASES for b in bases):
        return None
    if resource_type in _ABSTRACT_BASES:
        return _make(raw, resource_type)
    return params_for(resource_type).get(raw["code"]) or _make(raw, resource_type)
