"""The FHIR repository: versioned resources, their history and index rows, in one session.

Every method works inside the caller's transaction; nothing here commits. Creates are
buffered and written with one multi-row INSERT per table at :meth:`FhirStore.flush` (called
before any read), which is what keeps bulk ingest fast. Every version written is also handed
to the change hooks of :mod:`emr_hub.fhir.hooks` just before the transaction commits.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, delete, insert, select, update
from sqlalchemy.orm import Session

from emr_hub.errors import conflict, gone, not_found, precondition_failed
from emr_hub.fhir import hooks
from emr_hub.fhir.search.indexer import INDEX_TABLES, index_rows
from storage.bulk import write_rows
from storage.db import as_utc, before_commit
from storage.tables import ResourceHistoryRow, ResourceRow, SearchTokenRow

RESOURCE = ResourceRow.__table__
HISTORY = ResourceHistoryRow.__table__
TOKEN = SearchTokenRow.__table__


def now_instant() -> datetime:
    """Current time truncated to milliseconds, the precision we publish in meta.lastUpdated."""
    moment = datetime.now(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def format_instant(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Stored:
    """One version of a resource as stored."""

    resource_type: str
    id: str
    version_id: int
    last_updated: datetime
    deleted: bool
    content: dict[str, Any] | None
    method: str = "PUT"

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


def _strip_volatile_meta(resource: dict[str, Any]) -> dict[str, Any]:
    meta = resource.get("meta")
    if not isinstance(meta, dict):
        return resource
    rest = {k: v for k, v in meta.items() if k not in ("versionId", "lastUpdated")}
    copy = {k: v for k, v in resource.items() if k != "meta"}
    if rest:
        copy["meta"] = rest
    return copy


class FhirStore:
    """Versioned reads and writes of FHIR resources inside one database session."""

    def __init__(
        self, session: Session, *, moment: datetime | None = None, base_url: str | None = None
    ) -> None:
        self.session = session
        self.base_url = base_url
        self.moment = moment or now_instant()
        self._pending_resources: list[dict[str, Any]] = []
        self._pending_history: list[dict[str, Any]] = []
        self._pending_index: dict[Table, list[dict[str, Any]]] = defaultdict(list)
        self._pending_keys: set[tuple[str, str]] = set()
        self._changes: list[Stored] = []
        self.is_postgres = session.get_bind().dialect.name == "postgresql"

    # ---------------------------------------------------------------- reads
    def current(
        self, resource_type: str, resource_id: str, *, for_update: bool = False
    ) -> Stored | None:
        """The newest version, tombstones included; None when the id was never used."""
        self.flush()
        query = select(
            RESOURCE.c.version_id, RESOURCE.c.last_updated, RESOURCE.c.deleted, RESOURCE.c.content
        ).where(RESOURCE.c.resource_type == resource_type, RESOURCE.c.id == resource_id)
        if for_update and self.is_postgres:
            query = query.with_for_update()
        row = self.session.execute(query).first()
        if row is None:
            return None
        return Stored(resource_type, resource_id, row[0], as_utc(row[1]), row[2], row[3])

    def read(self, resource_type: str, resource_id: str) -> Stored:
        stored = self.current(resource_type, resource_id)
        if stored is None:
            raise not_found(f"{resource_type}/{resource_id} is not known")
        if stored.deleted:
            error = gone(f"{resource_type}/{resource_id} was deleted")
            error.headers["ETag"] = stored.etag
            raise error
        return stored

    def vread(self, resource_type: str, resource_id: str, version_id: int) -> Stored:
        self.flush()
        row = self.session.execute(
            select(
                HISTORY.c.last_updated, HISTORY.c.deleted, HISTORY.c.content, HISTORY.c.method
            ).where(
                HISTORY.c.resource_type == resource_type,
                HISTORY.c.id == resource_id,
                HISTORY.c.version_id == version_id,
            )
        ).first()
        if row is None:
            raise not_found(f"{resource_type}/{resource_id} has no version {version_id}")
        stored = Stored(
            resource_type, resource_id, version_id, as_utc(row[0]), row[1], row[2], row[3]
        )
        if stored.deleted:
            raise gone(f"Version {version_id} of {resource_type}/{resource_id} is a deletion")
        return stored

    def load_many(
        self, keys: Iterable[tuple[str, str]], *, since: datetime | None = None
    ) -> list[Stored]:
        """The live resources among ``keys`` (type, id), in the order given: one query per type
        and 500 ids, instead of one per resource."""
        self.flush()
        wanted = list(dict.fromkeys(keys))
        by_type: dict[str, list[str]] = defaultdict(list)
        for resource_type, resource_id in wanted:
            by_type[resource_type].append(resource_id)
        found: dict[tuple[str, str], Stored] = {}
        for resource_type, ids in by_type.items():
            for start in range(0, len(ids), 500):
                query = select(
                    RESOURCE.c.id,
                    RESOURCE.c.version_id,
                    RESOURCE.c.last_updated,
                    RESOURCE.c.content,
                ).where(
                    RESOURCE.c.resource_type == resource_type,
                    RESOURCE.c.id.in_(ids[start : start + 500]),
                    RESOURCE.c.deleted.is_(False),
                )
                if since is not None:
                    query = query.where(RESOURCE.c.last_updated >= since)
                for rid, version, updated, content in self.session.execute(query):
                    found[(resource_type, rid)] = Stored(
                        resource_type, rid, version, as_utc(updated), False, content
                    )
        return [found[key] for key in wanted if key in found]

    def history(
        self,
        resource_type: str | None = None,
        resource_id: str | None = None,
        *,
        since: datetime | None = None,
        before_seq: int | None = None,
        count: int = 50,
    ) -> tuple[list[Stored], int | None]:
        """Versions newest first; returns the page and the cursor for the next page (or None)."""
        self.flush()
        query = select(
            HISTORY.c.seq,
            HISTORY.c.resource_type,
            HISTORY.c.id,
            HISTORY.c.version_id,
            HISTORY.c.last_updated,
            HISTORY.c.deleted,
            HISTORY.c.content,
            HISTORY.c.method,
        )
        if resource_type:
            query = query.where(HISTORY.c.resource_type == resource_type)
        if resource_id:
            query = query.where(HISTORY.c.id == resource_id)
        if since is not None:
            query = query.where(HISTORY.c.last_updated >= since)
        if before_seq is not None:
            query = query.where(HISTORY.c.seq < before_seq)
        rows = self.session.execute(query.order_by(HISTORY.c.seq.desc()).limit(count + 1)).all()
        page = [Stored(r[1], r[2], r[3], as_utc(r[4]), r[5], r[6], r[7]) for r in rows[:count]]
        cursor = rows[count - 1][0] if len(rows) > count else None
        return page, cursor

    # --------------------------------------------------------------- writes
    def create(
        self, resource: dict[str, Any], *, resource_id: str | None = None, method: str = "POST"
    ) -> Stored:
        """A new resource, under ``resource_id`` when given (assigned earlier or the client's)."""
        resource_type = resource["resourceType"]
        new_id = resource_id or str(uuid.uuid4())
        key = (resource_type, new_id)
        if key in self._pending_keys:
            raise conflict(f"{resource_type}/{new_id} is written twice in one request")
        content = self._stamp(resource, new_id, 1)
        self._pending_keys.add(key)
        self._pending_resources.append(
            self._resource_values(resource_type, new_id, 1, False, content)
        )
        self._queue_history(resource_type, new_id, 1, False, content, method)
        self._queue_index(resource_type, new_id, content)
        return self._changed(Stored(resource_type, new_id, 1, self.moment, False, content, method))

    def update(
        self,
        resource_type: str,
        resource_id: str,
        resource: dict[str, Any],
        *,
        if_match: int | None = None,
    ) -> WriteResult:
        """Update in place, or create with the client's id when the id is unused."""
        current = self.current(resource_type, resource_id, for_update=True)
        _check_if_match(current, if_match, f"{resource_type}/{resource_id}")
        if current is None:
            return WriteResult(
                self.create(resource, resource_id=resource_id, method="PUT"), created=True
            )
        if self._unchanged(current, {**resource, "id": resource_id}):
            return WriteResult(current, created=False, changed=False)
        version = current.version_id + 1
        content = self._stamp(resource, resource_id, version)
        self._write_version(resource_type, resource_id, version, False, content, "PUT")
        stored = Stored(resource_type, resource_id, version, self.moment, False, content, "PUT")
        return WriteResult(self._changed(stored), created=current.deleted)

    def delete(
        self, resource_type: str, resource_id: str, *, if_match: int | None = None
    ) -> Stored | None:
        """Mark deleted (a new version); None when there was nothing live to delete."""
        current = self.current(resource_type, resource_id, for_update=True)
        _check_if_match(current, if_match, f"{resource_type}/{resource_id}")
        if current is None or current.deleted:
            return None
        version = current.version_id + 1
        self._write_version(resource_type, resource_id, version, True, None, "DELETE")
        return self._changed(
            Stored(resource_type, resource_id, version, self.moment, True, None, "DELETE")
        )

    def flush(self) -> None:
        """Write buffered creates with one multi-row INSERT per table."""
        if self._pending_resources:
            self.session.execute(insert(RESOURCE), self._pending_resources)
            self._pending_resources = []
        if self._pending_history:
            self.session.execute(insert(HISTORY), self._pending_history)
            self._pending_history = []
        for table, rows in self._pending_index.items():
            if rows:
                write_rows(self.session, table, rows)
        self._pending_index.clear()
        self._pending_keys.clear()

    def discard_pending(self) -> None:
        """Forget buffered writes (a batch entry whose savepoint was rolled back)."""
        self._pending_resources, self._pending_history = [], []
        self._pending_index.clear()
        self._pending_keys.clear()

    # -------------------------------------------------------------- helpers
    def _changed(self, stored: Stored) -> Stored:
        """Remember a written version for the change hooks, run once before the commit.

        A version whose batch entry is rolled back stays in the list: the hooks compare it with
        what is stored (see :mod:`emr_hub.subscriptions.matching`).
        """
        if not self._changes and hooks.has_change_hooks():
            before_commit(self.session, self._run_change_hooks)
        self._changes.append(stored)
        return stored

    def _run_change_hooks(self) -> None:
        self.flush()
        changes, self._changes = self._changes, []
        hooks.after_changes(self, changes)

    @staticmethod
    def _unchanged(current: Stored, resource: dict[str, Any]) -> bool:
        """A live version with the same content: an update would only repeat it (a retry)."""
        if current.deleted or current.content is None:
            return False
        return _strip_volatile_meta(current.content) == _strip_volatile_meta(resource)

    def _stamp(self, resource: dict[str, Any], resource_id: str, version: int) -> dict[str, Any]:
        content = dict(resource)
        content["id"] = resource_id
        meta = dict(content.get("meta") or {})
        meta["versionId"] = str(version)
        meta["lastUpdated"] = format_instant(self.moment)
        content["meta"] = meta
        # keep resourceType, id and meta first, as FHIR servers conventionally do
        head = {
            "resourceType": content.pop("resourceType"),
            "id": content.pop("id"),
            "meta": content.pop("meta"),
        }
        return head | content

    def _resource_values(
        self,
        resource_type: str,
        resource_id: str,
        version: int,
        deleted: bool,
        content: dict[str, Any] | None,
    ) -> dict[str, Any]:
        return {
            "resource_type": resource_type,
            "id": resource_id,
            "version_id": version,
            "last_updated": self.moment,
            "deleted": deleted,
            "content": content,
        }

    def _queue_history(
        self,
        resource_type: str,
        resource_id: str,
        version: int,
        deleted: bool,
        content: dict[str, Any] | None,
        method: str,
    ) -> None:
        values = self._resource_values(resource_type, resource_id, version, deleted, content)
        values["method"] = method
        self._pending_history.append(values)

    def _queue_index(self, resource_type: str, resource_id: str, content: dict[str, Any]) -> None:
        for table, rows in index_rows(content, self.base_url).items():
            self._pending_index[table].extend(rows)

    def _write_version(
        self,
        resource_type: str,
        resource_id: str,
        version: int,
        deleted: bool,
        content: dict[str, Any] | None,
        method: str,
    ) -> None:
        self.session.execute(
            update(RESOURCE)
            .where(RESOURCE.c.resource_type == resource_type, RESOURCE.c.id == resource_id)
            .values(version_id=version, last_updated=self.moment, deleted=deleted, content=content)
        )
        for table in INDEX_TABLES:
            self.session.execute(
                delete(table).where(
                    table.c.resource_type == resource_type, table.c.resource_id == resource_id
                )
            )
        self._queue_history(resource_type, resource_id, version, deleted, content, method)
        if content is not None:
            self._queue_index(resource_type, resource_id, content)


def _check_if_match(current: Stored | None, if_match: int | None, reference: str) -> None:
    if if_match is None:
        return
    if current is None or current.deleted:
        raise precondition_failed(
            f"If-Match version {if_match} given, but {reference} has no live version"
        )
    if current.version_id != if_match:
        raise precondition_failed(
            f"If-Match version {if_match} is stale: {reference} is at version {current.version_id}"
        )
