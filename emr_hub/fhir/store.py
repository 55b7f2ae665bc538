"""The FHIR repository: versioned resources, their history and index rows, in one session.

Every method works inside the caller's transaction; nothing here commits. Creates are
buffered and written with one multi-row INSERT per table at :meth:`FhirStore.flush` (called
before any read), which is what keeps bulk ingest fast. Every version written is also handed
to the change hooks of :mod:`emr_hub.fhir.hooks` just before the transaction commits.

Each version records its author (the API client and its Organization); a resource's owner is
the Organization that created it. A store built for a request carries the principal's
:class:`~emr_hub.fhir.access.Access`: its read methods (:meth:`~FhirStore.read`,
:meth:`~FhirStore.vread`, :meth:`~FhirStore.history`, :meth:`~FhirStore.load_many`) keep only
what the principal may see, in their SQL, and remember what they returned
(:attr:`~FhirStore.disclosed`) for the audit record. :meth:`~FhirStore.current` is the
unfiltered read of the write path and of the rules.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import Table, delete, insert, select, update
from sqlalchemy.orm import Session

from emr_hub.errors import conflict, gone, not_found, precondition_failed
from emr_hub.fhir import hooks
from emr_hub.fhir import read_sql as sql
from emr_hub.fhir.labels import is_restricted
from emr_hub.fhir.search.compartment import compartment_rows, propagate_person, resolve_persons
from emr_hub.fhir.search.indexer import COMPARTMENT, REFERENCE, ROW_TABLES, index_rows
from emr_hub.fhir.stored import (
    OPERATOR_AUTHOR,
    Author,
    Stored,
    WriteResult,
    format_instant,
    now_instant,
)
from storage import json_codec
from storage.bulk import write_rows
from storage.db import as_utc, before_commit
from storage.prepared import Prepared
from storage.tables import ResourceHistoryRow, ResourceRow, SearchTokenRow

if TYPE_CHECKING:
    from sqlalchemy import ColumnElement, FromClause

    from emr_hub.fhir.access import Access

RESOURCE = ResourceRow.__table__
HISTORY = ResourceHistoryRow.__table__
TOKEN = SearchTokenRow.__table__


def _strip_volatile_meta(resource: dict[str, Any]) -> dict[str, Any]:
    meta = resource.get("meta")
    if not isinstance(meta, dict):
        return resource
    rest = {k: v for k, v in meta.items() if k not in ("versionId", "lastUpdated")}
    copy = {k: v for k, v in resource.items() if k != "meta"}
    if rest:
        copy["meta"] = rest
    return copy


def _same_json(left: dict[str, Any], right: dict[str, Any]) -> bool:
    return json_codec.dumps(left, orjson.OPT_SORT_KEYS) == json_codec.dumps(
        right, orjson.OPT_SORT_KEYS
    )


@dataclass(frozen=True)
class SingleRead:
    """A read that is one statement: the statement, its parameters, and ``result``, which
    turns the row it gave (or None) into the answer (or raises 404 / 410). :meth:`run` runs
    it in a session; a caller on the event loop runs the statement itself
    (:mod:`storage.async_db`) and hands the row to ``result``."""

    statement: Prepared
    params: dict[str, Any]
    result: Callable[[tuple[Any, ...] | None], Stored]

    def run(self, session: Session) -> Stored:
        return self.result(self.statement.first(session, self.params))


class FhirStore:
    """Versioned reads and writes of FHIR resources inside one database session."""

    def __init__(
        self,
        session: Session,
        *,
        moment: datetime | None = None,
        base_url: str | None = None,
        author: Author = OPERATOR_AUTHOR,
        access: Access | None = None,
    ) -> None:
        self.session = session
        self.base_url = base_url
        self.moment = moment or now_instant()
        self.author = author
        self.access = access
        self.disclosed: list[Stored] = []
        """What the read methods returned (and searches found), for the audit record."""
        self._pending_resources: list[dict[str, Any]] = []
        self._pending_history: list[dict[str, Any]] = []
        self._pending_index: dict[Table, list[dict[str, Any]]] = defaultdict(list)
        self._pending_keys: set[tuple[str, str]] = set()
        self._pending_persons: dict[str, str] = {}
        self._changes: list[Stored] = []
        self._loaded_members: dict[tuple[str, str], str | None] = {}
        self.members: dict[tuple[str, str], list[tuple[str, str]]] = {}
        """The (patient, person) pairs of resources read or deleted here, when the read
        already knew them (the audit record need not look them up again)."""
        self.is_postgres = session.get_bind().dialect.name == "postgresql"

    # ---------------------------------------------------------------- policy
    def visible(
        self, resource: FromClause, resource_type: str | None = None
    ) -> ColumnElement[bool] | None:
        """The access condition on a ``resource`` table alias (None: everything is visible)."""
        return None if self.access is None else self.access.visible(resource, resource_type)

    def access_params(self) -> dict[str, Any]:
        """The values every statement holding a :meth:`visible` condition is executed with."""
        return {} if self.access is None else self.access.params()

    def disclose(
        self, items: Iterable[Stored], members: dict[tuple[str, str], str | None] | None = None
    ) -> None:
        """Remember what a read path is about to return, with the patients of each where
        they are known (``members``: the aggregated column a query selected with
        :func:`~emr_hub.fhir.read_sql.members_of`; or what :meth:`load_many` loaded), so the
        audit record need not look them up."""
        for stored in items:
            self.disclosed.append(stored)
            key = (stored.resource_type, stored.id)
            if members is not None and key in members:
                self.members[key] = sql.members(members[key])
            elif key in self._loaded_members:
                self.members[key] = sql.members(self._loaded_members[key])

    @property
    def changes(self) -> list[Stored]:
        """The versions written so far in this transaction (until the change hooks run)."""
        return list(self._changes)

    # ---------------------------------------------------------------- reads
    def current(
        self, resource_type: str, resource_id: str, *, for_update: bool = False
    ) -> Stored | None:
        """The newest version, tombstones included; None when the id was never used."""
        self.flush()
        query = select(
            RESOURCE.c.version_id,
            RESOURCE.c.last_updated,
            RESOURCE.c.deleted,
            RESOURCE.c.content,
            RESOURCE.c.owner_org,
        ).where(RESOURCE.c.resource_type == resource_type, RESOURCE.c.id == resource_id)
        if for_update and self.is_postgres:
            query = query.with_for_update()
        row = self.session.execute(query).first()
        if row is None:
            return None
        return Stored(
            resource_type, resource_id, row[0], as_utc(row[1]), row[2], row[3], owner=row[4]
        )

    def read(self, resource_type: str, resource_id: str) -> Stored:
        """The live version, if the principal may see it: 404 when it may not (or nothing is
        there), 410 when it was deleted. One statement, cached per type and kind of principal,
        that also brings the patients the resource is about (for the audit record)."""
        self.flush()
        return self.read_plan(resource_type, resource_id).run(self.session)

    def read_plan(
        self, resource_type: str, resource_id: str, *, verbatim: bool = False
    ) -> SingleRead:
        """:meth:`read` as its statement and what makes the answer of its row. ``verbatim``:
        the answer holds the stored JSON as text (:attr:`Stored.text`), not parsed, for a
        caller that sends it unchanged."""
        statement = self._prepared(
            "read",
            resource_type,
            lambda: sql.read_statement(self.visible, resource_type, verbatim),
            verbatim,
        )

        def result(row: tuple[Any, ...] | None) -> Stored:
            if row is None:
                raise not_found(f"{resource_type}/{resource_id} is not known")
            content, text = _content(row[3], verbatim)
            stored = Stored(
                resource_type,
                resource_id,
                row[0],
                as_utc(row[1]),
                row[2],
                content,
                owner=row[4],
                text=text,
            )
            if stored.deleted:
                error = gone(f"{resource_type}/{resource_id} was deleted")
                error.headers["ETag"] = stored.etag
                raise error
            return self._disclosed(stored, row[5])

        params = self._params(read_type=resource_type, read_id=resource_id)
        return SingleRead(statement, params, result)

    def vread(self, resource_type: str, resource_id: str, version_id: int) -> Stored:
        """One version, if the principal may see the resource (as it is now)."""
        self.flush()
        return self.vread_plan(resource_type, resource_id, version_id).run(self.session)

    def vread_plan(
        self, resource_type: str, resource_id: str, version_id: int, *, verbatim: bool = False
    ) -> SingleRead:
        """:meth:`vread` as its statement and what makes the answer of its row
        (``verbatim``: as :meth:`read_plan`'s)."""
        statement = self._prepared(
            "vread",
            resource_type,
            lambda: sql.vread_statement(self.visible, resource_type, verbatim),
            verbatim,
        )

        def result(row: tuple[Any, ...] | None) -> Stored:
            if row is None:
                raise not_found(f"{resource_type}/{resource_id} has no version {version_id}")
            content, text = _content(row[2], verbatim)
            stored = Stored(
                resource_type,
                resource_id,
                version_id,
                as_utc(row[0]),
                row[1],
                content,
                row[3],
                text=text,
            )
            if stored.deleted:
                raise gone(f"Version {version_id} of {resource_type}/{resource_id} is a deletion")
            return self._disclosed(stored, row[4])

        params = self._params(read_type=resource_type, read_id=resource_id, read_version=version_id)
        return SingleRead(statement, params, result)

    def _disclosed(self, stored: Stored, members: str | None) -> Stored:
        self.disclose([stored])
        self.members[(stored.resource_type, stored.id)] = sql.members(members)
        return stored

    def exists(self, resource_type: str, resource_id: str) -> bool:
        """Whether the principal may see that ``resource_type/resource_id`` was ever stored
        (live or deleted): an instance history of something unseen is a 404."""
        self.flush()
        params = self._params(read_type=resource_type, read_id=resource_id)
        statement = self._prepared(
            "exists", resource_type, lambda: sql.exists_statement(self.visible, resource_type)
        )
        return statement.first(self.session, params) is not None

    def _prepared(
        self,
        name: str,
        resource_type: str | None,
        build: Callable[[], Any],
        *variant: Any,
        policed: bool = True,
    ) -> Prepared:
        """The statement ``name`` for ``resource_type`` and this principal's kind of access,
        built once (the principal's values are parameters: :meth:`_params`). ``policed=False``:
        the statement holds no access condition, so one serves every principal."""
        shape = self.access.shape(resource_type) if policed and self.access is not None else None
        return sql.prepared((name, resource_type, shape, *variant), build)

    def _params(self, **values: Any) -> dict[str, Any]:
        return values | self.access_params()

    def load_many(
        self,
        keys: Iterable[tuple[str, str]],
        *,
        since: datetime | None = None,
        checked: bool = True,
        disclose: bool = True,
    ) -> list[Stored]:
        """The live resources among ``keys`` (type, id) the principal may see, in the order
        given: one query per type and 500 ids, instead of one per resource. ``checked=False``
        is for the rules of the write path, which read what they need whoever asks;
        ``disclose=False`` for a caller that returns only part of what it loads (it discloses
        that part itself)."""
        self.flush()
        wanted = list(dict.fromkeys(keys))
        by_type: dict[str, list[str]] = defaultdict(list)
        for resource_type, resource_id in wanted:
            by_type[resource_type].append(resource_id)
        found: dict[tuple[str, str], Stored] = {}
        policed = checked and self.access is not None
        for resource_type, ids in by_type.items():
            statement = self._load_statement(resource_type, since is not None, policed)
            for start in range(0, len(ids), 500):
                params: dict[str, Any] = {
                    "load_type": resource_type,
                    "load_ids": ids[start : start + 500],
                    "load_since": since,
                }
                if policed:
                    params.update(self.access_params())
                rows = statement.all(self.session, params)
                for rid, version, updated, content, owner, members in rows:
                    found[(resource_type, rid)] = Stored(
                        resource_type, rid, version, as_utc(updated), False, content, owner=owner
                    )
                    self._loaded_members[(resource_type, rid)] = members
        loaded = [found[key] for key in wanted if key in found]
        if checked and disclose:
            self.disclose(loaded)
        return loaded

    def _load_statement(self, resource_type: str, since: bool, policed: bool) -> Prepared:
        """The statement of :meth:`load_many`, built once per type, use of ``since`` and kind
        of principal (as the read's is): the ids and the principal's values are parameters
        (on PostgreSQL the ids are one array, so the SQL is the same whatever their number).
        Each row brings the patients its resource is about, for the audit record."""

        def build() -> Any:
            visible = self.visible if policed else None
            return sql.load_statement(visible, resource_type, since, self.is_postgres)

        # The variant names the dialect: an array parameter on PostgreSQL, an IN list elsewhere.
        variant = (since, policed, self.is_postgres)
        return self._prepared("load", resource_type, build, *variant, policed=policed)

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
        values = {
            "history_type": resource_type or None,
            "history_id": resource_id or None,
            "history_since": since,
            "history_before": before_seq,
        }
        given = tuple(name for name, value in values.items() if value is not None)

        def build() -> Any:
            return sql.history_statement(self.visible, resource_type, given)

        statement = self._prepared("history", resource_type, build, given)
        params = self._params(history_limit=count + 1, **{name: values[name] for name in given})
        rows = statement.all(self.session, params)
        page = [Stored(r[1], r[2], r[3], as_utc(r[4]), r[5], r[6], r[7]) for r in rows[:count]]
        cursor = rows[count - 1][0] if len(rows) > count else None
        self.disclose(page)
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
        values = self._resource_values(resource_type, new_id, 1, False, content)
        values["owner_org"] = self.author.owner
        values["restricted"] = self._restricted(content)
        self._pending_resources.append(values)
        self._queue_history(resource_type, new_id, 1, False, content, method)
        self._queue_index(resource_type, new_id, content)
        return self._changed(
            Stored(
                resource_type,
                new_id,
                1,
                self.moment,
                False,
                content,
                method,
                owner=self.author.owner,
            )
        )

    def update(
        self,
        resource_type: str,
        resource_id: str,
        resource: dict[str, Any],
        *,
        if_match: int | None = None,
        current: Stored | None = None,
    ) -> WriteResult:
        """Update in place, or create with the client's id when the id is unused.

        ``current`` is the stored version when the caller has just read it for update."""
        if current is None:
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
        stored = Stored(
            resource_type,
            resource_id,
            version,
            self.moment,
            False,
            content,
            "PUT",
            owner=current.owner,
        )
        return WriteResult(self._changed(stored), created=current.deleted)

    def delete(
        self,
        resource_type: str,
        resource_id: str,
        *,
        if_match: int | None = None,
        current: Stored | None = None,
    ) -> Stored | None:
        """Mark deleted (a new version); None when there was nothing live to delete."""
        if current is None:
            current = self.current(resource_type, resource_id, for_update=True)
        _check_if_match(current, if_match, f"{resource_type}/{resource_id}")
        if current is None or current.deleted:
            return None
        if self.access is not None:  # a request: its audit names the patients of what it deletes
            self.members[(resource_type, resource_id)] = [
                (patient_id, person)
                for patient_id, person in self.session.execute(
                    select(COMPARTMENT.c.patient_id, COMPARTMENT.c.person).where(
                        COMPARTMENT.c.resource_type == resource_type,
                        COMPARTMENT.c.resource_id == resource_id,
                    )
                )
            ]
        version = current.version_id + 1
        self._write_version(resource_type, resource_id, version, True, None, "DELETE")
        return self._changed(
            Stored(
                resource_type,
                resource_id,
                version,
                self.moment,
                True,
                None,
                "DELETE",
                owner=current.owner,
            )
        )

    def flush(self) -> None:
        """Write buffered creates with one multi-row INSERT per table."""
        if self._pending_resources:
            self.session.execute(insert(RESOURCE), self._pending_resources)
            self._pending_resources = []
        if self._pending_history:
            self.session.execute(insert(HISTORY), self._pending_history)
            self._pending_history = []
        compartment = self._pending_index.get(COMPARTMENT)
        if compartment:
            resolve_persons(self.session, compartment, self._pending_persons)
        for table, rows in self._pending_index.items():
            if rows:
                write_rows(self.session, table, rows)
        for patient_id, person in self._pending_persons.items():
            propagate_person(self.session, patient_id, person)
        self._pending_index.clear()
        self._pending_keys.clear()
        self._pending_persons.clear()

    def discard_pending(self) -> None:
        """Forget buffered writes (a batch entry whose savepoint was rolled back)."""
        self._pending_resources, self._pending_history = [], []
        self._pending_index.clear()
        self._pending_keys.clear()
        self._pending_persons.clear()

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
        """A live version with the same content: an update would only repeat it (a retry).
        Compared as JSON text, keys sorted: ``1.50`` is not ``1.5`` (they are equal floats)."""
        if current.deleted or current.content is None:
            return False
        return _same_json(_strip_volatile_meta(current.content), _strip_volatile_meta(resource))

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

    @staticmethod
    def _restricted(content: dict[str, Any] | None) -> bool:
        return content is not None and is_restricted(content)

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
        values["author_client"] = self.author.client
        values["author_org"] = self.author.organization
        self._pending_history.append(values)

    def _queue_index(self, resource_type: str, resource_id: str, content: dict[str, Any]) -> None:
        rows_by_table = index_rows(content, self.base_url)
        for table, rows in rows_by_table.items():
            self._pending_index[table].extend(rows)
        members = compartment_rows(content, rows_by_table.get(REFERENCE, ()))
        for row in members:
            if row["person"] is not None:  # a Patient's own row
                self._pending_persons[row["patient_id"]] = row["person"]
        self._pending_index[COMPARTMENT].extend(members)

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
            .values(
                version_id=version,
                last_updated=self.moment,
                deleted=deleted,
                content=content,
                restricted=self._restricted(content),
            )
        )
        for table in ROW_TABLES:
            self.session.execute(
                delete(table).where(
                    table.c.resource_type == resource_type, table.c.resource_id == resource_id
                )
            )
        self._queue_history(resource_type, resource_id, version, deleted, content, method)
        if content is not None:
            self._queue_index(resource_type, resource_id, content)


def _content(column: Any, verbatim: bool) -> tuple[dict[str, Any] | None, str | None]:
    """A read's (content, text): the parsed JSON, or with ``verbatim`` the stored text."""
    return (None, column) if verbatim else (column, None)


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
