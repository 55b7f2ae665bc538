"""Writing the demo: each version as the hospital whose it is, and only what is missing, so
that loading the demo again writes nothing and keeps what someone changed since."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from sqlalchemy.orm import Session

from emr_hub.fhir import interactions
from emr_hub.fhir.store import Author, FhirStore, Stored
from emr_hub.security.principal import OPERATOR, Principal
from emr_hub.security.scopes import ScopeSet

Resource = dict[str, Any]


class Facility(Protocol):
    """A hospital of the chain (the demo's ``DemoHospital``)."""

    @property
    def client_id(self) -> str: ...

    @property
    def facility_code(self) -> str: ...

    @property
    def name(self) -> str: ...


Authored = tuple[Facility | None, Resource]
"""A version and the hospital that writes it (None: the operator, for the directory)."""


def principal_of(facility: Facility) -> Principal:
    """The hospital as the demo writes for it: its client, scope ``system/*.cruds``."""
    organization = f"Organization/{facility.client_id}"
    return Principal(facility.client_id, organization, ScopeSet.parse("system/*.cruds"), "demo")


class Writers:
    """One store and principal per hospital on one session, so each version is written as
    the hospital whose it is (through the rules a hospital's own request meets)."""

    def __init__(self, session: Session, base_url: str) -> None:
        self.session = session
        self.base_url = base_url
        self._stores: dict[str | None, tuple[FhirStore, Principal]] = {}

    def _as(self, author: Facility | None) -> tuple[FhirStore, Principal]:
        key = author.client_id if author is not None else None
        if key not in self._stores:
            principal = OPERATOR if author is None else principal_of(author)
            author_row = Author(
                principal.client_id, principal.organization, operator=principal.is_operator
            )
            store = FhirStore(self.session, base_url=self.base_url, author=author_row)
            self._stores[key] = (store, principal)
        return self._stores[key]

    def current(self, resource_type: str, resource_id: str) -> Stored | None:
        return self._as(None)[0].current(resource_type, resource_id)

    def write(self, author: Facility | None, version: Resource) -> None:
        store, principal = self._as(author)
        interactions.update(store, principal, version["resourceType"], version["id"], version)
        store.flush()


WRITTEN, UNCHANGED, KEPT = "written", "unchanged", "kept"


def write_versions(writers: Writers, versions: Sequence[Authored], *, reset: bool = False) -> str:
    """Write the versions of one resource that are not stored yet, each as its author; returns
    :data:`WRITTEN`, :data:`UNCHANGED` or :data:`KEPT`.

    The stored content is looked up among ``versions`` and only the later ones are written, so
    a re-run writes nothing. A resource someone changed or deleted since (its content matching
    none of the demo's versions) is theirs now: it is kept as it is, unless ``reset``, which
    writes the last version over it as the operator: one new version bringing it back to the
    demo's state (a repair, which the workflow would not allow a hospital: a Task moved to a
    final status)."""
    first = versions[0][1]
    stored = writers.current(first["resourceType"], first["id"])
    contents = [version for _, version in versions]
    if stored is None:
        for author, version in versions:
            writers.write(author, version)
        return WRITTEN
    content = None if stored.deleted or stored.content is None else _without_meta(stored.content)
    matched = [i for i, version in enumerate(contents) if _without_meta(version) == content]
    if not matched:
        if not reset:
            return KEPT
        writers.write(None, contents[-1])
        return WRITTEN
    missing = versions[matched[0] + 1 :]
    for author, version in missing:
        writers.write(author, version)
    return WRITTEN if missing else UNCHANGED


def _without_meta(resource: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in resource.items() if key != "meta"}
