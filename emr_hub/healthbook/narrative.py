"""Reading FHIR values for people: the display of a concept, a date, a quantity, and the
section narratives (XHTML tables) of the summary, in Vietnamese.

Only what the narrative shows is read here; the entries themselves stay as they are stored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

XHTML = "http://www.w3.org/1999/xhtml"
NOTHING = "Không có thông tin."
"""The narrative of an empty section ("no information")."""


def concept(value: Any) -> str:
    """The text of a CodeableConcept: its ``text``, else the first coding's display, else
    its code."""
    if not isinstance(value, Mapping):
        return ""
    if value.get("text"):
        return str(value["text"])
    for coding in value.get("coding") or []:
        if isinstance(coding, Mapping) and coding.get("display"):
            return str(coding["display"])
    for coding in value.get("coding") or []:
        if isinstance(coding, Mapping) and coding.get("code"):
            return str(coding["code"])
    return ""


def concepts(values: Any) -> str:
    items = values if isinstance(values, list) else [values]
    return ", ".join(text for text in (concept(v) for v in items) if text)


def day(value: Any) -> str:
    """The date part of a FHIR date or dateTime (``YYYY-MM-DD``, or less when less is known)."""
    return str(value)[:10] if isinstance(value, str) else ""


def period_start(period: Any) -> str:
    return day(period.get("start")) if isinstance(period, Mapping) else ""


def quantity(value: Any) -> str:
    if not isinstance(value, Mapping) or "value" not in value:
        return ""
    unit = value.get("unit") or value.get("code") or ""
    return f"{value['value']} {unit}".strip()


def observation_value(resource: Mapping[str, Any]) -> str:
    """An Observation's value, or its components' (a blood pressure) joined."""
    own = _value(resource)
    if own:
        return own
    parts = []
    for component in resource.get("component") or []:
        if isinstance(component, Mapping):
            text = _value(component)
            if text:
                parts.append(f"{concept(component.get('code'))}: {text}")
    return "; ".join(parts)


def _value(item: Mapping[str, Any]) -> str:
    if "valueQuantity" in item:
        return quantity(item["valueQuantity"])
    if "valueCodeableConcept" in item:
        return concept(item["valueCodeableConcept"])
    for key in ("valueString", "valueBoolean", "valueInteger", "valueDateTime"):
        if key in item:
            return str(item[key])
    return ""


def status_of(resource: Mapping[str, Any], element: str) -> str:
    """The code of a status element that is a CodeableConcept (``clinicalStatus``)."""
    value = resource.get(element)
    if isinstance(value, Mapping):
        for coding in value.get("coding") or []:
            if isinstance(coding, Mapping) and coding.get("code"):
                return str(coding["code"])
    return ""


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The XHTML narrative of a section: a table, or :data:`NOTHING` when it has no rows."""
    if not rows:
        return f'<div xmlns="{XHTML}"><p>{NOTHING}</p></div>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    rows_html = f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody>"
    return f'<div xmlns="{XHTML}"><table>{rows_html}</table></div>'


def paragraph(text: str) -> str:
    return f'<div xmlns="{XHTML}"><p>{escape(text)}</p></div>'
