"""The CapabilityStatement at ``/fhir/metadata``: only what the hub really does.

The search parameters listed for a type are the ones the search really answers: those of the
R4 registry (:func:`params_for`) with a FHIRPath expression and a type the index has a table for,
and the composites of the supported shape (a token paired with one value; ``_content`` /
``_text`` / ``_query``, which have no expression, and the other composites are left out),
``_id`` and ``_lastUpdated`` (answered by the ``resource`` table) among them. When fhirpathpy is
not installed, the few parameters whose expression the compiled extractors cannot handle index
nothing, so they are left out too. ``searchInclude`` lists the type's own reference parameters
(``Type:param``, and ``*``); ``searchRevInclude`` the reference parameters of every type that
may point at it. Built once per process: it is served on every ``/metadata``.
"""

from __future__ import annotations

import importlib.util
from collections import defaultdict
from collections.abc import Mapping
from functools import cache
from typing import Any

from emr_hub import __version__
from emr_hub.fhir.operations import Operation, declared
from emr_hub.fhir.search.composite import composite_parts
from emr_hub.fhir.search.indexer import TABLE_OF_TYPE
from emr_hub.fhir.search.registry import SearchParam, param_by_url, params_for
from emr_hub.fhir.validation import R4_RESOURCE_TYPES

INTERACTIONS = [
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
]
# the Resource-level parameters every type answers, stated once at the rest level too
COMMON_PARAMS = ("_id", "_lastUpdated", "_tag", "_profile", "_security")
_RESOURCE_PARAM_URL = "http://hl7.org/fhir/SearchParameter/Resource-{}"


def _interpreter_available() -> bool:
    return importlib.util.find_spec("fhirpathpy") is not None


@cache
def _unindexed() -> frozenset[tuple[str, str]]:
    """(type, code) of the parameters that index nothing in this installation."""
    if _interpreter_available():
        return frozenset()
    from emr_hub.fhir.search.extract import fallback_params

    return frozenset(fallback_params())


@cache
def supported_params(resource_type: str) -> tuple[SearchParam, ...]:
    """The search parameters of ``resource_type`` the hub answers, by code."""
    skip = _unindexed()
    return tuple(
        param
        for code, param in sorted(params_for(resource_type).items())
        if param.expression
        and (param.type in TABLE_OF_TYPE or composite_parts(param) is not None)
        and (resource_type, code) not in skip
    )


@cache
def _rev_includes() -> Mapping[str, tuple[str, ...]]:
    """Target type -> the ``Source:param`` values of the reference parameters that may point
    at it (a parameter without stated targets may point at any type)."""
    found: dict[str, set[str]] = defaultdict(set)
    for source in R4_RESOURCE_TYPES:
        for param in supported_params(source):
            if param.type != "reference":
                continue
            for target in param.targets or R4_RESOURCE_TYPES:
                found[target].add(f"{source}:{param.code}")
    return {target: tuple(sorted(values)) for target, values in found.items()}


def _search_param(param: SearchParam) -> dict[str, Any]:
    entry = {"name": param.code, "type": param.type}
    if param.url:
        entry["definition"] = param.url
    return entry


_SERVED_ELSEWHERE: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {}


def declare_read_only(
    resource_type: str, search_params: tuple[str, ...], documentation: str
) -> None:
    """State a type a feature package serves itself, for reading and searching only, with the
    search parameters it takes (the audit trail's AuditEvent)."""
    _SERVED_ELSEWHERE[resource_type] = (("read", "search-type"), search_params, documentation)
    _statement.cache_clear()


def _resource(resource_type: str, operations: tuple[Operation, ...]) -> dict[str, Any]:
    if resource_type in _SERVED_ELSEWHERE:
        interactions, names, documentation = _SERVED_ELSEWHERE[resource_type]
        by_code = {p.code: p for p in params_for(resource_type).values()}
        return {
            "type": resource_type,
            "documentation": documentation,
            "interaction": [{"code": code} for code in interactions],
            "searchParam": [_search_param(by_code[name]) for name in names if name in by_code],
        }
    params = supported_params(resource_type)
    entry: dict[str, Any] = {
        "type": resource_type,
        "interaction": [{"code": code} for code in INTERACTIONS],
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": True,
        "conditionalCreate": True,
        "conditionalUpdate": True,
        "conditionalDelete": "single",
        "searchInclude": [
            "*",
            *(f"{resource_type}:{p.code}" for p in params if p.type == "reference"),
        ],
    }
    rev_includes = _rev_includes().get(resource_type)
    if rev_includes:
        entry["searchRevInclude"] = list(rev_includes)
    entry["searchParam"] = [_search_param(p) for p in params]
    own = [o.as_fhir() for o in operations if o.resource_type == resource_type]
    if own:
        entry["operation"] = own
    return entry


def _common_params() -> list[dict[str, Any]]:
    entries = []
    for code in COMMON_PARAMS:
        param = param_by_url(_RESOURCE_PARAM_URL.format(code.removeprefix("_")))
        assert param is not None and param.code == code, code
        entries.append(_search_param(param))
    return entries


def capability_statement(base_url: str, published: str) -> dict[str, Any]:
    """The statement, with the operations declared so far (features declare theirs when the
    app installs them)."""
    return _statement(base_url, published, declared())


@cache
def _statement(base_url: str, published: str, operations: tuple[Operation, ...]) -> dict[str, Any]:
    resources = [_resource(t, operations) for t in sorted(R4_RESOURCE_TYPES)]
    statement: dict[str, Any] = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": published,
        "kind": "instance",
        "software": {"name": "emr_hub", "version": __version__},
        "implementation": {"description": "emr_hub FHIR hub", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "cors": False,
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                    "code": "SMART-on-FHIR",
                                }
                            ]
                        }
                    ],
                    "description": (
                        "OAuth2 client credentials at /auth/token; SMART v2 scopes. Every read "
                        "path applies the hub's access policy (care relationships, the "
                        "person's Consent, break-the-glass with X-Purpose-Of-Use: ETREAT and "
                        "X-Break-Glass-Reason); every interaction is audited (AuditEvent)."
                    ),
                },
                "resource": resources,
                "interaction": [
                    {"code": "transaction"},
                    {"code": "batch"},
                    {"code": "history-system"},
                    {"code": "search-system"},  # GET /fhir?_type=A,B
                ],
                "searchParam": _common_params(),
            }
        ],
    }
    system_operations = [o.as_fhir() for o in operations if o.resource_type is None]
    if system_operations:
        statement["rest"][0]["operation"] = system_operations
    return statement
