"""What the store hands out and takes in: a stored version, its author, the result of a write,
and the instants of ``meta.lastUpdated`` (:mod:`emr_hub.fhir.store` works with them)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple


def now_instant() -> datetime:
    """Current time truncated to milliseconds, the precision we publish in meta.lastUpdated."""
    moment = datetime.now(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def format_instant(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Author(NamedTuple):
    """Who writes a version: the API client and its Organization (None for the command line).
    What the operator creates is owned by no hospital (``operator``): no hospital may change
    it, and the operator sees everything anyway."""

    client: str
    organization: str | None
    operator: bool = False

    @property
    def owner(self) -> str | None:
        return None if self.operator else self.organization


OPERATOR_AUTHOR = Author("operator", None, operator=True)


@dataclass(frozen=True)
class Stored:
    """One version of a resource as stored (``owner``: the Organization that created it)."""

    resource_type: str
    id: str
    version_id: int
    last_updated: datetime
    deleted: bool
    content: dict[str, Any] | None
    method: str = "PUT"
    owner: str | None = None
    text: str | None = None
    """The stored JSON as text, when it was read to be sent unchanged (``content`` is then
    None): :meth:`emr_hub.fhir.store.FhirStore.read_plan` with ``verbatim``."""

    @property
    def etag(self) -> str:
        return f'W/"{self.version_id}"'

    @property
    def reference(self) -> str:
        return f"{self.resource_type}/{self.id}"


@dataclass(frozen=True)
class WriteResult:
    stored: Stored
    created: bool
    changed: bool = True
