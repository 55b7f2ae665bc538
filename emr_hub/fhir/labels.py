"""Which security labels restrict a resource (``meta.security``): set by the access policy
when it is installed, read by the store on every write (the ``restricted`` flag of a stored
resource) so the policy's SQL tests a column instead of the labels.

A change of the set applies to what is written from then on; ``emr-hub reindex`` applies it
to what was stored before.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

_restricting: frozenset[tuple[str, str]] = frozenset()


def configure(labels: Iterable[tuple[str, str]]) -> None:
    global _restricting
    _restricting = frozenset(labels)


def is_restricted(resource: dict[str, Any]) -> bool:
    meta = resource.get("meta")
    labels = meta.get("security") if isinstance(meta, dict) else None
    if not _restricting or not isinstance(labels, list):
        return False
    return any(
        isinstance(label, dict) and (label.get("system"), label.get("code")) in _restricting
        for label in labels
    )
