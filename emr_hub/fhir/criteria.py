"""Conditional criteria (``If-None-Exist``, conditional update, ``Patient?identifier=...``).

A deliberately small matcher over the token index until full search lands: it knows
``_id`` and ``identifier`` (``system|value``, ``value``, ``|value``, ``system|``), comma
for OR and ``&`` for AND. Anything else is refused with a clear OperationOutcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl

from emr_hub.errors import bad_request, not_supported

SUPPORTED = ("_id", "identifier")


@dataclass(frozen=True)
class TokenValue:
    system: str | None  # None = any system; "" = no system
    code: str | None  # None = any code (``system|``)


@dataclass(frozen=True)
class Criterion:
    param: str
    values: tuple[TokenValue, ...]  # OR


def parse_criteria(query: str, expression: str) -> list[Criterion]:
    """Parse ``identifier=sys|val&_id=x`` into AND-ed criteria; refuse what is not supported."""
    pairs = parse_qsl(query, keep_blank_values=True)
    if not pairs:
        raise bad_request(f"Empty conditional criteria {query!r}", expression)
    criteria = []
    for name, raw in pairs:
        if name not in SUPPORTED:
            raise not_supported(
                f"Search parameter {name!r} is not supported in conditional operations "
                f"(supported: {', '.join(SUPPORTED)})",
                status=400,
            )
        values = tuple(_token(part) for part in raw.split(","))
        if any(v.code is None and v.system is None for v in values):
            raise bad_request(f"Empty value for {name!r} in {query!r}", expression)
        criteria.append(Criterion(name, values))
    return criteria


def _token(text: str) -> TokenValue:
    if "|" not in text:
        return TokenValue(None, text or None)
    system, code = text.split("|", 1)
    return TokenValue(system, code or None)
