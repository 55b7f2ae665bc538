"""Composite search parameters (``code-value-quantity=http://loinc.org|4548-4$gt7``).

A composite matches when its parts match **the same element** (the same Observation, or the same
component of it), so its index rows are pairs: the first part (always a token in the supported
shapes) with the second (token, quantity, date or string), taken from each element the base
expression yields. 64 of the 67 R4 composites have that shape; the others (three numbers, or a
reference and a token) are refused as not supported.
"""

from __future__ import annotations

from functools import cache
from itertools import product
from typing import Any

from emr_hub.fhir.search.extract import CompileError, compile_path
from emr_hub.fhir.search.registry import SearchParam, param_by_url, params_for
from emr_hub.fhir.search.values import DateRange, QuantityRow, StringRow, TokenRow, rows_for

SECOND_KINDS = ("token", "quantity", "date", "string")
Extractor = Any


@cache
def composite_parts(param: SearchParam) -> tuple[SearchParam, SearchParam] | None:
    """The two part parameters of a supported composite, or None."""
    if param.type != "composite" or len(param.components) != 2:
        return None
    parts = tuple(param_by_url(url, param.resource_type) for url, _ in param.components)
    first, second = parts
    if first is None or second is None or first.type != "token" or second.type not in SECOND_KINDS:
        return None
    return first, second


@cache
def _plan(resource_type: str) -> tuple[tuple[str, str, Extractor, tuple[str, str]], ...]:
    """(code, second part type, base extractor, component expressions) per supported composite."""
    plan = []
    for code, param in params_for(resource_type).items():
        parts = composite_parts(param)
        if parts is None or not param.expression:
            continue
        try:
            base = compile_path(param.expression, resource_type)
        except CompileError:
            continue
        expressions = (param.components[0][1], param.components[1][1])
        plan.append((code, parts[1].type, base, expressions))
    return tuple(plan)


@cache
def _component(expression: str, context_type: str) -> Extractor | None:
    try:
        return compile_path(expression, context_type)
    except CompileError:
        return None


def composite_rows(resource: dict[str, Any]) -> list[dict[str, Any]]:
    """Index rows (column dicts, without the owner columns) of every supported composite."""
    out: list[dict[str, Any]] = []
    for code, second_kind, base, (first_expr, second_expr) in _plan(resource["resourceType"]):
        seen: set[tuple[Any, ...]] = set()
        for context_type, node in base(resource):
            first_extract = _component(first_expr, context_type)
            second_extract = _component(second_expr, context_type)
            if first_extract is None or second_extract is None:
                continue
            firsts = [r for e in first_extract(node) for r in rows_for("token", e)]
            seconds = [r for e in second_extract(node) for r in rows_for(second_kind, e)]
            for first, second in product(firsts, seconds):
                row = {"param": code, "system": first.system, "code": first.code, **_second(second)}
                key = tuple(sorted(row.items(), key=lambda kv: kv[0]))
                if key not in seen:
                    seen.add(key)
                    out.append(row)
    return out


def _second(row: Any) -> dict[str, Any]:
    columns: dict[str, Any] = dict.fromkeys(
        (
            "second_system",
            "second_code",
            "second_unit",
            "num_low",
            "num_high",
            "date_low",
            "date_high",
            "text_normalized",
            "text_exact",
        )
    )
    if isinstance(row, TokenRow):
        columns.update(second_system=row.system, second_code=row.code)
    elif isinstance(row, QuantityRow):
        columns.update(
            second_system=row.system,
            second_code=row.code,
            second_unit=row.unit,
            num_low=row.low,
            num_high=row.high,
        )
    elif isinstance(row, DateRange):
        columns.update(date_low=row.low, date_high=row.high)
    elif isinstance(row, StringRow):
        columns.update(text_normalized=row.normalized, text_exact=row.exact)
    return columns
