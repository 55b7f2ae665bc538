"""Rebuild the search index (``emr-hub reindex``): after a change to the search parameters,
their extractors or the value rules, or to repair an index, every resource's index rows are
computed again from its stored body, exactly as a write computes them, and so are its
``patient_compartment`` rows and its ``restricted`` flag (which the access policy reads: after
an upgrade from a version without them, or a change of the labels that restrict, a reindex
brings what was stored before in line).

The ``resource`` table is walked in primary-key order, ``(resource_type, id)``, by keyset (each
batch starts strictly after the last key of the previous one; never OFFSET), ``batch`` rows at a
time, so memory stays bounded by one batch whatever the size of the database. Each batch is one
transaction: the index rows of its resources are deleted from every index table and written
again (COPY on PostgreSQL). Tombstones are in the walk too: their index rows are deleted and
none are written, so a deleted resource is left with no rows even if an old bug left some.

Running beside the API is safe. The reindex of a resource and a concurrent write of the same
resource cannot interleave badly:

* On PostgreSQL the batch's resource rows are read ``FOR UPDATE``, the lock the API's update
  and delete take on the row before they touch its index rows. A writer that comes first holds
  the row until it commits; the batch then waits and (READ COMMITTED re-reads a locked row)
  indexes the newly committed body. A writer that comes second waits for the batch to commit
  and then replaces the rebuilt rows with its own, as every write does. Without the lock a batch
  could read the old body, the writer commit its new rows, and the batch delete those and write
  rows of the old body: the index would be stale until the next write. A deadlock with a writer
  that locks several resources (a transaction Bundle) is retried.
* On SQLite every write transaction takes the database's write lock at BEGIN, so a batch runs
  alone among writers; readers keep reading (WAL).

A resource created while the reindex runs is indexed by its own write; whether the walk also
meets it does not matter (indexing is idempotent: delete, then write the same rows).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Table, delete, func, select, tuple_, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from emr_hub.fhir import hooks
from emr_hub.fhir.labels import is_restricted
from emr_hub.fhir.search.compartment import compartment_rows, propagate_person, resolve_persons
from emr_hub.fhir.search.indexer import COMPARTMENT, REFERENCE, ROW_TABLES, index_rows
from emr_hub.fhir.store import FhirStore, Stored
from emr_hub.fhir.validation import R4_RESOURCE_TYPES
from storage.bulk import write_rows
from storage.tables import ResourceRow

if TYPE_CHECKING:
    from emr_hub.hub import Hub

T = TypeVar("T")

RESOURCE: Table = ResourceRow.__table__  # type: ignore[assignment]
IN_CHUNK = 500  # ids per IN list: within every SQLite's bound-parameter limit
RETRIES = 5
_RETRYABLE = frozenset({"40P01", "40001"})  # deadlock detected, serialization failure


def reindex(
    hub: Hub,
    *,
    resource_types: list[str] | None = None,
    batch: int = 500,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Rebuild the index rows of every live resource (of ``resource_types`` when given).

    ``progress`` is called after each committed batch with the number of live resources it
    reindexed. Returns the number of live resources reindexed."""
    if batch < 1:
        raise ValueError("batch must be at least 1")
    types = _checked(resource_types)
    base_url = hub.settings.fhir_base_url
    after: tuple[str, str] | None = None
    total = 0
    while True:
        last, live = _with_retry(_one_batch, hub, types, after, batch, base_url)
        if last is None:
            return total
        after = last
        total += live
        if progress is not None:
            progress(live)


def count_resources(hub: Hub, resource_types: list[str] | None = None) -> int:
    """How many live resources (of ``resource_types`` when given) there are: the total a
    progress bar of :func:`reindex` counts up to."""
    types = _checked(resource_types)
    query = select(func.count()).select_from(RESOURCE).where(RESOURCE.c.deleted.is_(False))
    if types is not None:
        query = query.where(RESOURCE.c.resource_type.in_(types))
    with hub.db.snapshot() as session:
        return int(session.execute(query).scalar_one())


def _checked(resource_types: list[str] | None) -> list[str] | None:
    if resource_types is None:
        return None
    unknown = sorted(set(resource_types) - R4_RESOURCE_TYPES)
    if unknown:
        raise ValueError(f"not R4 resource types: {', '.join(unknown)}")
    return sorted(set(resource_types))


def _one_batch(
    hub: Hub,
    types: list[str] | None,
    after: tuple[str, str] | None,
    batch: int,
    base_url: str,
) -> tuple[tuple[str, str] | None, int]:
    """Reindex the next ``batch`` resources after ``after`` in one transaction: (the last key
    walked, or None when there was none left; how many of them were live)."""
    with hub.db.transaction() as session:
        query = select(
            RESOURCE.c.resource_type,
            RESOURCE.c.id,
            RESOURCE.c.deleted,
            RESOURCE.c.content,
            RESOURCE.c.restricted,
        )
        if types is not None:
            query = query.where(RESOURCE.c.resource_type.in_(types))
        if after is not None:
            query = query.where(tuple_(RESOURCE.c.resource_type, RESOURCE.c.id) > tuple_(*after))
        query = query.order_by(RESOURCE.c.resource_type, RESOURCE.c.id).limit(batch)
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update(of=RESOURCE)
        rows = session.execute(query).all()
        if not rows:
            return None, 0
        _delete_index_rows(session, ((r.resource_type, r.id) for r in rows))
        fresh: dict[Table, list[dict[str, Any]]] = defaultdict(list)
        live = 0
        for row in rows:
            if row.deleted or row.content is None:
                continue
            live += 1
            by_table = index_rows(row.content, base_url)
            for table, table_rows in by_table.items():
                fresh[table].extend(table_rows)
            fresh[COMPARTMENT].extend(compartment_rows(row.content, by_table.get(REFERENCE, ())))
        patients = {r["patient_id"]: r["person"] for r in fresh[COMPARTMENT] if r["person"]}
        resolve_persons(session, fresh[COMPARTMENT], patients)
        for table in ROW_TABLES:  # a fixed order: the same lock order as every batch
            if fresh.get(table):
                write_rows(session, table, fresh[table])
        for patient_id, person in patients.items():
            propagate_person(session, patient_id, person)
        store = FhirStore(session, base_url=base_url)
        live_rows = [r for r in rows if not r.deleted and r.content is not None]
        hooks.after_reindex(
            store,
            [Stored(r.resource_type, r.id, 0, store.moment, False, r.content) for r in live_rows],
        )
        for row in rows:
            restricted = row.content is not None and is_restricted(row.content)
            if restricted != row.restricted:
                session.execute(
                    update(RESOURCE)
                    .where(RESOURCE.c.resource_type == row.resource_type, RESOURCE.c.id == row.id)
                    .values(restricted=restricted)
                )
        last = rows[-1]
        return (last.resource_type, last.id), live


def _delete_index_rows(session: Session, keys: Iterable[tuple[str, str]]) -> None:
    """Delete every index row of the resources ``keys`` names (by the owner indexes)."""
    ids_by_type: dict[str, list[str]] = defaultdict(list)
    for resource_type, resource_id in keys:
        ids_by_type[resource_type].append(resource_id)
    for table in ROW_TABLES:
        for resource_type, ids in ids_by_type.items():
            for start in range(0, len(ids), IN_CHUNK):
                session.execute(
                    delete(table).where(
                        table.c.resource_type == resource_type,
                        table.c.resource_id.in_(ids[start : start + IN_CHUNK]),
                    )
                )


def _with_retry(work: Callable[..., T], *args: Any) -> T:
    """Run one batch, again after a deadlock or serialization failure (PostgreSQL rolled the
    batch back whole, so running it again is safe)."""
    for attempt in range(RETRIES):
        try:
            return work(*args)
        except OperationalError as error:
            code = getattr(error.orig, "sqlstate", None)
            if code not in _RETRYABLE or attempt == RETRIES - 1:
                raise
            time.sleep(0.05 * 2**attempt)
    raise AssertionError("unreachable")  # pragma: no cover
