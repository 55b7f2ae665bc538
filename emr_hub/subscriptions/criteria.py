"""``Subscription.criteria``: a search on one resource type, ``Type?param=value&...``.

Parsed by the hub's search (so a Subscription matches exactly what the same search finds),
without the result parameters (``_sort``, ``_count``, ``_include``...) that mean nothing for a
single resource. ``Type`` alone, or ``Type?``, matches every resource of the type.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from urllib.parse import parse_qsl

from emr_hub.errors import FhirError, unprocessable
from emr_hub.fhir.search.params import RESULT_PARAMS, SearchRequest, parse_search
from emr_hub.fhir.validation import is_resource_type

WHERE = "Subscription.criteria"


@dataclass(frozen=True)
class Criteria:
    resource_type: str
    query: str

    @property
    def request(self) -> SearchRequest:
        return _parsed(self.resource_type, self.query)


def parse_criteria(text: str) -> Criteria:
    """The type and search of ``text``; a 422 naming ``Subscription.criteria`` when invalid."""
    resource_type, _, query = text.strip().partition("?")
    if not is_resource_type(resource_type):
        raise unprocessable(
            f"Subscription criteria must start with a resource type, as in Task?owner=...; "
            f"{resource_type!r} is not one",
            WHERE,
        )
    try:
        _parsed(resource_type, query)
    except FhirError as error:
        error.status = 422 if error.status == 400 else error.status
        error.issues = [replace(issue, expression=(WHERE,)) for issue in error.issues]
        raise
    return Criteria(resource_type, query)


@lru_cache(maxsize=1024)
def _parsed(resource_type: str, query: str) -> SearchRequest:
    """Parse once per distinct criteria; the compiler only reads the request it is given."""
    items = parse_qsl(query, keep_blank_values=True)
    for name, _ in items:
        if name in RESULT_PARAMS or name.startswith(("_include", "_revinclude")):
            raise unprocessable(f"{name} has no meaning in Subscription criteria", WHERE)
    return parse_search(resource_type, items)
