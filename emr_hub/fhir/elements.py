"""``_summary`` and ``_elements``: trimming a resource to what the client asked for.

Summary membership and required elements come from the R4B model metadata
(``summary_element_property`` / ``element_required``). Trimming is at the top level of the
resource, which is where the specification's summary flags matter most; the result is
tagged SUBSETTED as the specification asks.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from emr_hub.errors import bad_request
from emr_hub.fhir.validation import model_class

SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
}
SUMMARY_MODES = ("true", "false", "text", "data", "count")


@cache
def _element_flags(resource_type: str) -> tuple[frozenset[str], frozenset[str]]:
    """(summary elements, required elements) of a resource type, by JSON name."""
    cls = model_class(resource_type)
    summary: set[str] = set()
    required: set[str] = set()
    for name, info in (cls.model_fields if cls else {}).items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        json_name = info.alias or name
        if extra.get("summary_element_property"):
            summary.add(json_name)
        if extra.get("element_required"):
            required.add(json_name)
    return frozenset(summary), frozenset(required)


def _tagged(resource: dict[str, Any], keep: set[str]) -> dict[str, Any]:
    out = {k: v for k, v in resource.items() if k in keep or k in ("resourceType", "id", "meta")}
    meta = dict(out.get("meta") or {})
    meta["tag"] = [*meta.get("tag", []), SUBSETTED]
    out["meta"] = meta
    return out


def apply_summary(resource: dict[str, Any], mode: str | None) -> dict[str, Any]:
    if mode is None or mode == "false":
        return resource
    resource_type = resource["resourceType"]
    summary, required = _element_flags(resource_type)
    if mode == "true":
        return _tagged(resource, {k for k in resource if k in summary or k in required})
    if mode == "text":
        return _tagged(resource, {"text", *required})
    if mode == "data":
        return _tagged(resource, {k for k in resource if k != "text"})
    raise bad_request(
        f"_summary={mode} is not valid here (allowed: true, false, text, data)", "_summary"
    )


def apply_elements(resource: dict[str, Any], elements: list[str] | None) -> dict[str, Any]:
    if not elements:
        return resource
    _, required = _element_flags(resource["resourceType"])
    keep = {
        e.split(".", 1)[-1] if e.startswith(resource["resourceType"] + ".") else e for e in elements
    }
    return _tagged(resource, keep | (required & resource.keys()))


def parse_elements(values: list[str]) -> list[str] | None:
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    return names or None
