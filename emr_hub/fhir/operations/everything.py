"""``Patient/$everything``: the patient, everything in the patient's compartment and the
resources those point at (practitioners, organizations, medications, locations ...).

Membership comes from the reference index in one query (``search_reference`` by target);
the result is ordered by (type, id) and paged by keyset on that order, so the ``next`` link
stays right while others write. ``_since`` keeps resources changed since an instant,
``_type`` keeps some types.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, or_, select

from emr_hub.errors import bad_request
from emr_hub.fhir.search.compartment import patient_compartment
from emr_hub.fhir.search.indexer import REFERENCE
from emr_hub.fhir.store import RESOURCE, FhirStore, Stored, _aware

if TYPE_CHECKING:
    from emr_hub.security.principal import Principal

MAX_COUNT = 1000


@dataclass
class EverythingPage:
    entries: list[Stored]
    next_cursor: str | None


def everything(
    store: FhirStore,
    principal: Principal,
    patient_id: str,
    *,
    since: datetime | None = None,
    types: set[str] | None = None,
    count: int = 100,
    cursor: str | None = None,
) -> EverythingPage:
    principal.require("Patient", "r")
    store.read("Patient", patient_id)  # 404 / 410 for an unknown or deleted patient
    members = _members(store, patient_id)
    members |= _referenced(store, members)
    wanted = sorted(
        key
        for key in members
        if (types is None or key[0] in types) and principal.allows(key[0], "r")
    )
    if cursor is not None:
        after = _decode(cursor)
        wanted = [key for key in wanted if key > after]
    count = max(1, min(count, MAX_COUNT))
    entries: list[Stored] = []
    position = 0
    # read in chunks until the page is full: _since may drop some of them
    while position < len(wanted) and len(entries) < count:
        chunk = wanted[position : position + count]
        position += len(chunk)
        entries.extend(_load(store, chunk, since)[: count - len(entries)])
    next_cursor = None
    if len(entries) == count:
        last = (entries[-1].resource_type, entries[-1].id)
        if wanted.index(last) < len(wanted) - 1:
            next_cursor = _encode(last)
    return EverythingPage(entries, next_cursor)


def _members(store: FhirStore, patient_id: str) -> set[tuple[str, str]]:
    compartment = patient_compartment()
    rows = store.session.execute(
        select(REFERENCE.c.resource_type, REFERENCE.c.resource_id, REFERENCE.c.param).where(
            REFERENCE.c.target_type == "Patient", REFERENCE.c.target_id == patient_id
        )
    )
    members = {("Patient", patient_id)}
    members.update((t, i) for t, i, param in rows if param in compartment.get(t, ()))
    return members


def _referenced(store: FhirStore, members: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """Resources the members point at, outside any patient compartment (one level)."""
    found: set[tuple[str, str]] = set()
    by_type: dict[str, list[str]] = {}
    for resource_type, resource_id in members:
        by_type.setdefault(resource_type, []).append(resource_id)
    for resource_type, ids in by_type.items():
        for start in range(0, len(ids), 500):
            rows = store.session.execute(
                select(REFERENCE.c.target_type, REFERENCE.c.target_id)
                .where(
                    REFERENCE.c.resource_type == resource_type,
                    REFERENCE.c.resource_id.in_(ids[start : start + 500]),
                    REFERENCE.c.target_id.is_not(None),
                    REFERENCE.c.target_type != "Patient",
                )
                .distinct()
            )
            found.update((t, i) for t, i in rows if t and (t, i) not in members)
    return found


def _load(
    store: FhirStore, keys: Iterable[tuple[str, str]], since: datetime | None
) -> list[Stored]:
    keys = list(keys)
    if not keys:
        return []
    condition = or_(*(and_(RESOURCE.c.resource_type == t, RESOURCE.c.id == i) for t, i in keys))
    query = select(
        RESOURCE.c.resource_type,
        RESOURCE.c.id,
        RESOURCE.c.version_id,
        RESOURCE.c.last_updated,
        RESOURCE.c.content,
    ).where(condition, RESOURCE.c.deleted.is_(False))
    if since is not None:
        query = query.where(RESOURCE.c.last_updated >= since)
    rows = store.session.execute(query.order_by(RESOURCE.c.resource_type, RESOURCE.c.id))
    return [Stored(t, i, v, _aware(u), False, c) for t, i, v, u, c in rows]


def _encode(key: tuple[str, str]) -> str:
    return base64.urlsafe_b64encode(f"{key[0]}/{key[1]}".encode()).decode().rstrip("=")


def _decode(text: str) -> tuple[str, str]:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
        resource_type, resource_id = raw.split("/", 1)
    except (ValueError, UnicodeDecodeError):
        raise bad_request("Malformed _cursor; start again", "_cursor") from None
    return resource_type, resource_id


def everything_bundle(
    page: EverythingPage, base_url: str, self_url: str, next_url: str | None
) -> dict[str, Any]:
    links = [{"relation": "self", "url": self_url}]
    if next_url:
        links.append({"relation": "next", "url": next_url})
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": [
            {
                "fullUrl": f"{base_url}/{s.resource_type}/{s.id}",
                "resource": s.content,
                "search": {"mode": "match"},
            }
            for s in page.entries
        ],
    }


__all__ = ["everything", "everything_bundle"]
