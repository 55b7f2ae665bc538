"""``Patient/$everything``: the patient, everything in the patient's compartment and the
resources those point at (practitioners, organizations, medications, locations ...).

Membership comes from the compartment table in one query, what the members point at from
the reference index in one more;
the result is ordered by (type, id) and paged by keyset on that order, so the ``next`` link
stays right while others write. ``_since`` keeps resources changed since an instant,
``_type`` keeps some types. Only what the caller may see is loaded (the access policy is in
the loading queries), and a page is filled from what remains.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, select

from emr_hub.errors import bad_request
from emr_hub.fhir.search.indexer import COMPARTMENT, REFERENCE
from emr_hub.fhir.store import FhirStore, Stored

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
    members = compartment_members(store, patient_id)
    members |= referenced_outside(store, patient_id, members)
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
    # read in chunks until the page is full and one more is known to follow: _since and the
    # access policy may drop some of them, so a next link is given only when it leads somewhere
    while position < len(wanted) and len(entries) <= count:
        chunk = wanted[position : position + count + 1]
        position += len(chunk)
        loaded = store.load_many(chunk, since=since, disclose=False)
        entries.extend(loaded[: count + 1 - len(entries)])
    next_cursor = None
    if len(entries) > count:
        entries = entries[:count]
        next_cursor = _encode((entries[-1].resource_type, entries[-1].id))
    store.disclose(entries)
    return EverythingPage(entries, next_cursor)


def compartment_members(store: FhirStore, patient_id: str) -> set[tuple[str, str]]:
    """The patient's compartment: its ``patient_compartment`` rows (kept with every write,
    from the compartment definition's parameters), the Patient itself included."""
    rows = store.session.execute(
        select(COMPARTMENT.c.resource_type, COMPARTMENT.c.resource_id).where(
            COMPARTMENT.c.patient_id == patient_id
        )
    )
    return {("Patient", patient_id), *((t, i) for t, i in rows)}


def referenced_outside(
    store: FhirStore, patient_id: str, members: set[tuple[str, str]]
) -> set[tuple[str, str]]:
    """What the members point at outside the compartment (practitioners, organizations,
    medications ...): the distinct targets of their references, found in one join."""
    out = REFERENCE.alias("out")
    rows = store.session.execute(
        select(out.c.target_type, out.c.target_id)
        .join(
            COMPARTMENT,
            and_(
                COMPARTMENT.c.resource_type == out.c.resource_type,
                COMPARTMENT.c.resource_id == out.c.resource_id,
            ),
        )
        .where(
            COMPARTMENT.c.patient_id == patient_id,
            out.c.target_type != "Patient",
            out.c.target_type.is_not(None),
            out.c.target_id.is_not(None),
        )
        .distinct()
    )
    return {(t, i) for t, i in rows if t} - members


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


__all__ = ["compartment_members", "everything", "everything_bundle", "referenced_outside"]
