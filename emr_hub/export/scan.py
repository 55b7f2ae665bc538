"""The SQL an export reads with: keyset batches over one resource type, in id order.

Three passes per type, each bounded by the export's ``transactionTime`` (T):

* ``current``: live resources whose newest version is from T or before;
* ``earlier``: resources changed after T, as they were at T (their newest version up to T,
  from the history): an export never holds a version newer than T;
* ``deleted`` (with ``_since`` only): resources deleted after ``_since`` and up to T.

Every pass keeps what the export's principal may see (the access policy's condition, the same
one a search adds), the patients a Patient or Group export is limited to, and the
``_typeFilter`` conditions (evaluated against the current index rows: a filter on a resource
changed after T sees its current values). The stored JSON text is read as it is, never parsed
here; ids come as one parameter (a PostgreSQL array, a JSON array on SQLite).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import (
    ARRAY,
    Integer,
    String,
    Text,
    and_,
    any_,
    bindparam,
    cast,
    exists,
    func,
    or_,
    select,
)
from sqlalchemy.orm import Session

from emr_hub.export.request import ExportRequest, parse_type_filter
from emr_hub.fhir.search.compile import Compiler
from emr_hub.fhir.search.indexer import COMPARTMENT
from storage.db import as_utc
from storage.tables import ResourceHistoryRow, ResourceRow

RESOURCE = ResourceRow.__table__
HISTORY = ResourceHistoryRow.__table__
CURRENT, EARLIER, DELETED = "current", "earlier", "deleted"
PASSES = (CURRENT, EARLIER, DELETED)
Visible = Callable[[Any, "str | None"], Any]


@dataclass(frozen=True)
class Row:
    resource_id: str
    text: str | None
    """The resource's JSON as stored; None for a deletion."""
    deleted: bool = False


def id_list(column: Any, name: str, postgres: bool) -> Any:
    """``column`` is one of the ids bound as ``name`` (one parameter whatever their number)."""
    if postgres:
        return column == any_(bindparam(name, type_=ARRAY(String)))
    values = func.json_each(bindparam(name)).table_valued("value")
    return column.in_(select(values.c.value))


def id_list_value(ids: list[str], postgres: bool) -> Any:
    return ids if postgres else orjson.dumps(ids).decode()


class TypeScan:
    """The three statements of one resource type for one export, built once."""

    def __init__(
        self,
        request: ExportRequest,
        resource_type: str,
        visible: Visible,
        *,
        base_url: str,
        postgres: bool,
    ) -> None:
        self.resource_type = resource_type
        self.request = request
        self.postgres = postgres
        self._visible = visible
        self._compiler = Compiler(
            base_url, "postgresql" if postgres else "sqlite", visibility=visible
        )
        self.statements = {
            CURRENT: self._current(),
            EARLIER: self._earlier(),
            DELETED: self._deleted(),
        }

    def batch(
        self, session: Session, phase: str, after: str, limit: int, params: dict[str, Any]
    ) -> tuple[list[Row], str | None]:
        """Up to ``limit`` rows after id ``after``, and the last id scanned (None: the pass is
        done). The ``earlier`` pass may scan rows it does not keep (resources that did not
        exist at T, or deletions before ``_since``), so the scan goes on from that id."""
        values = {**params, "scan_after": after, "scan_limit": limit}
        rows = session.execute(self.statements[phase], values).all()
        if not rows:
            return [], None
        last = rows[-1][0]
        if phase == CURRENT:
            return [Row(rid, text) for rid, text in rows], last
        if phase == DELETED:
            return [Row(rid, None, True) for (rid,) in rows], last
        since = self.request.since_instant
        kept = []
        for rid, text, deleted, updated in rows:
            if not deleted:
                kept.append(Row(rid, text))
            elif since is not None and as_utc(updated) > since:
                kept.append(Row(rid, None, True))
        return kept, last

    # ------------------------------------------------------------------ statements
    def _keep(self, resource: Any) -> list[Any]:
        """The conditions every pass puts on the current row ``resource``."""
        conditions: list[Any] = [
            resource.c.resource_type == self.resource_type,
            resource.c.id > bindparam("scan_after", type_=String),
        ]
        if self.request.level != "system":
            conditions.append(self._in_compartment(resource))
        visible = self._visible(resource, self.resource_type)
        if visible is not None:
            conditions.append(visible)
        queries = self.request.type_filters.get(self.resource_type)
        if queries:
            options = []
            for query in queries:
                search = parse_type_filter(self.resource_type, query)
                options.append(
                    and_(
                        *(
                            self._compiler.condition(flt, self.resource_type, resource)
                            for flt in search.filters
                        )
                    )
                )
            conditions.append(or_(*options))
        return conditions

    def _in_compartment(self, resource: Any) -> Any:
        member = COMPARTMENT.alias("member")
        condition = exists().where(
            member.c.resource_type == resource.c.resource_type,
            member.c.resource_id == resource.c.id,
        )
        if self.request.patients is not None:
            condition = condition.where(
                id_list(member.c.patient_id, "scan_patients", self.postgres)
            )
        return condition

    def _limit(self, query: Any) -> Any:
        return query.limit(bindparam("scan_limit", type_=Integer))

    def _until(self) -> Any:
        return bindparam("scan_until", type_=RESOURCE.c.last_updated.type)

    def _since(self) -> Any:
        return bindparam("scan_since", type_=RESOURCE.c.last_updated.type)

    def _current(self) -> Any:
        r = RESOURCE.alias("r")
        query = select(r.c.id, cast(r.c.content, Text)).where(
            *self._keep(r), r.c.deleted.is_(False), r.c.last_updated <= self._until()
        )
        if self.request.since is not None:
            query = query.where(r.c.last_updated > self._since())
        return self._limit(query.order_by(r.c.id))

    def _earlier(self) -> Any:
        r = RESOURCE.alias("r")
        h = HISTORY.alias("h")
        newest = HISTORY.alias("newest")
        at_transaction_time = (
            select(func.max(newest.c.version_id))
            .where(
                newest.c.resource_type == r.c.resource_type,
                newest.c.id == r.c.id,
                newest.c.last_updated <= self._until(),
            )
            .scalar_subquery()
        )
        query = (
            select(h.c.id, cast(h.c.content, Text), h.c.deleted, h.c.last_updated)
            .select_from(r.join(h, and_(h.c.resource_type == r.c.resource_type, h.c.id == r.c.id)))
            .where(
                *self._keep(r),
                r.c.last_updated > self._until(),
                h.c.version_id == at_transaction_time,
            )
        )
        if self.request.since is not None:
            query = query.where(h.c.last_updated > self._since())
        return self._limit(query.order_by(r.c.id))

    def _deleted(self) -> Any:
        r = RESOURCE.alias("r")
        query = select(r.c.id).where(
            *self._keep(r),
            r.c.deleted.is_(True),
            r.c.last_updated <= self._until(),
            r.c.last_updated > self._since(),
        )
        return self._limit(query.order_by(r.c.id))


def patients_of(
    session: Session, resource_type: str, ids: list[str], postgres: bool
) -> list[tuple[str, str | None]]:
    """The (patient, person) pairs of the given resources, for the audit record."""
    query = (
        select(COMPARTMENT.c.patient_id, COMPARTMENT.c.person)
        .where(
            COMPARTMENT.c.resource_type == resource_type,
            id_list(COMPARTMENT.c.resource_id, "audit_ids", postgres),
        )
        .distinct()
    )
    rows = session.execute(query, {"audit_ids": id_list_value(ids, postgres)})
    return [(patient, person) for patient, person in rows]
