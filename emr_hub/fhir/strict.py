"""JSON-level checks the R4B models leave out, compiled from the models' own metadata.

The models coerce ``"yes"`` to a boolean and ``"2"`` to an integer, and never check a code
against its required value set; FHIR JSON allows neither. For every element this module
knows its JSON kind (boolean, integer, decimal, string, object, resource) and, for codes with
a required binding, the allowed values (``enum_values``; a list ending in ``+`` was cut short
by the model generator and is not enforced). One walk checks a resource against that.
"""

from __future__ import annotations

import datetime
import decimal
import typing
from dataclasses import dataclass
from functools import cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class

from emr_hub.errors import Issue


@dataclass(frozen=True)
class ElementSpec:
    kind: str  # "boolean" | "integer" | "decimal" | "string" | "object" | "resource"
    is_list: bool
    child: str | None = None  # model name for objects
    codes: frozenset[str] | None = None


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(innermost type, is it a list) from Optional[List[Annotated[...]]] and friends."""
    is_list = False
    while True:
        origin = typing.get_origin(annotation)
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if origin is list:
            is_list = True
            annotation = args[0]
        elif origin is typing.Annotated:
            return args[0], is_list
        elif args and origin is not None:  # Optional / Union
            annotation = args[0]
        else:
            return annotation, is_list


def _spec(annotation: Any, extra: dict[str, Any]) -> ElementSpec:
    inner, is_list = _unwrap(annotation)
    codes = extra.get("enum_values")
    enum = frozenset(codes) if codes and "+" not in codes else None
    if inner is bool:
        return ElementSpec("boolean", is_list)
    if inner is int:
        return ElementSpec("integer", is_list)
    if inner is decimal.Decimal:
        return ElementSpec("decimal", is_list)
    if inner in (str, datetime.date, datetime.datetime, datetime.time):
        return ElementSpec("string", is_list, codes=enum)
    name = getattr(inner, "__name__", "")
    if name == "ResourceType":
        return ElementSpec("resource", is_list)
    if name.endswith("Type"):
        return ElementSpec("object", is_list, child=name[: -len("Type")])
    return ElementSpec("any", is_list)


@cache
def element_specs(model_name: str) -> dict[str, ElementSpec]:
    try:
        model = get_fhir_model_class(model_name)
    except (KeyError, ValueError):
        return {}
    specs = {}
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        specs[info.alias or name] = _spec(info.annotation, extra)
    return specs


_KIND_CHECK = {
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "decimal": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "object": lambda v: isinstance(v, dict),
    "resource": lambda v: isinstance(v, dict),
    "any": lambda v: True,
}
_KIND_WORD = {
    "boolean": "true or false",
    "integer": "a JSON integer",
    "decimal": "a JSON number",
    "string": "a JSON string",
}


def strict_issues(resource: dict[str, Any], root: str) -> list[Issue]:
    issues: list[Issue] = []
    _walk(resource, str(resource.get("resourceType")), root, issues)
    return issues[:20]


def _walk(node: dict[str, Any], model_name: str, path: str, issues: list[Issue]) -> None:
    specs = element_specs(model_name)
    for key, value in node.items():
        spec = specs.get(key)
        if spec is None:  # unknown elements and `_x` primitive extensions: the models judge them
            continue
        items = value if spec.is_list and isinstance(value, list) else (value,)
        for index, item in enumerate(items):
            where = (
                f"{path}.{key}[{index}]"
                if spec.is_list and isinstance(value, list)
                else f"{path}.{key}"
            )
            if not _KIND_CHECK[spec.kind](item):
                if spec.kind in _KIND_WORD:
                    issues.append(
                        Issue(
                            "value", f"Expected {_KIND_WORD[spec.kind]}, got {item!r:.40}", (where,)
                        )
                    )
                continue
            if spec.codes is not None and item not in spec.codes:
                allowed = ", ".join(sorted(spec.codes))
                issues.append(
                    Issue(
                        "code-invalid",
                        f"Code {item!r:.40} is not allowed here (allowed: {allowed})",
                        (where,),
                    )
                )
            elif spec.kind == "object" and spec.child:
                _walk(item, spec.child, where, issues)
            elif spec.kind == "resource" and isinstance(item.get("resourceType"), str):
                _walk(item, item["resourceType"], where, issues)
