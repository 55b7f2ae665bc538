"""The SQL of the store's read paths, built once per resource type and kind of principal.

Each builder takes ``visible``, the access condition of the request's principal on a resource
table alias (:meth:`emr_hub.fhir.store.FhirStore.visible`: None when everything is visible),
whose values are named parameters; so a statement built for one principal serves every other
of the same kind, and :func:`prepared` keeps it (on PostgreSQL as a driver-prepared statement,
:mod:`storage.prepared`). The reads also bring the patients each resource is about, so the
audit record names them without a second statement.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import ARRAY, Integer, String, Text, any_, bindparam, cast, exists, func, select

from emr_hub.fhir.search.indexer import COMPARTMENT
from storage.prepared import Prepared
from storage.tables import ResourceHistoryRow, ResourceRow

if TYPE_CHECKING:
    from sqlalchemy import ColumnElement, FromClause

RESOURCE = ResourceRow.__table__
HISTORY = ResourceHistoryRow.__table__
Visible = Callable[["FromClause", "str | None"], "ColumnElement[bool] | None"]

_STATEMENTS: dict[tuple[Any, ...], Prepared] = {}
"""Per (name, type, shape of the principal's access, variant): a few per type."""


def prepared(key: tuple[Any, ...], build: Callable[[], Any]) -> Prepared:
    statement = _STATEMENTS.get(key)
    if statement is None:
        statement = _STATEMENTS[key] = Prepared(build())
    return statement


def members_of(resource_type: Any, resource_id: Any) -> Any:
    """The ``patient|person`` pairs of the patients a resource is about, comma-separated."""
    member = COMPARTMENT.alias("member")
    return (
        select(func.aggregate_strings(member.c.patient_id.concat("|").concat(member.c.person), ","))
        .where(member.c.resource_type == resource_type, member.c.resource_id == resource_id)
        .scalar_subquery()
    )


def members(text: str | None) -> list[tuple[str, str]]:
    """The (patient, person) pairs of an aggregated ``patient|person,...`` column."""
    pairs = (item.split("|", 1) for item in (text or "").split(",") if "|" in item)
    return [(patient, person) for patient, person in pairs]


def read_statement(visible: Visible, resource_type: str, verbatim: bool = False) -> Any:
    """``verbatim``: the content as its stored text, not parsed (to be sent as it is)."""
    statement = select(
        RESOURCE.c.version_id,
        RESOURCE.c.last_updated,
        RESOURCE.c.deleted,
        cast(RESOURCE.c.content, Text) if verbatim else RESOURCE.c.content,
        RESOURCE.c.owner_org,
        members_of(RESOURCE.c.resource_type, RESOURCE.c.id),
    ).where(
        RESOURCE.c.resource_type == bindparam("read_type"),
        RESOURCE.c.id == bindparam("read_id"),
    )
    return _where(statement, visible(RESOURCE, resource_type))


def vread_statement(visible: Visible, resource_type: str, verbatim: bool = False) -> Any:
    """``verbatim``: as :func:`read_statement`'s."""
    query = select(
        HISTORY.c.last_updated,
        HISTORY.c.deleted,
        cast(HISTORY.c.content, Text) if verbatim else HISTORY.c.content,
        HISTORY.c.method,
        members_of(HISTORY.c.resource_type, HISTORY.c.id),
    ).where(
        HISTORY.c.resource_type == bindparam("read_type"),
        HISTORY.c.id == bindparam("read_id"),
        HISTORY.c.version_id == bindparam("read_version"),
    )
    return where_visible(visible, query, resource_type)


def exists_statement(visible: Visible, resource_type: str) -> Any:
    query = select(RESOURCE.c.id).where(
        RESOURCE.c.resource_type == bindparam("read_type"),
        RESOURCE.c.id == bindparam("read_id"),
    )
    return _where(query, visible(RESOURCE, resource_type))


def load_statement(visible: Visible | None, resource_type: str, since: bool, arrays: bool) -> Any:
    """``arrays``: the ids are one array parameter (PostgreSQL), else an expanding IN list."""
    if arrays:
        ids = RESOURCE.c.id == any_(bindparam("load_ids", type_=ARRAY(String)))
    else:
        ids = RESOURCE.c.id.in_(bindparam("load_ids", expanding=True))
    statement = select(
        RESOURCE.c.id,
        RESOURCE.c.version_id,
        RESOURCE.c.last_updated,
        RESOURCE.c.content,
        RESOURCE.c.owner_org,
        members_of(RESOURCE.c.resource_type, RESOURCE.c.id),
    ).where(
        RESOURCE.c.resource_type == bindparam("load_type"),
        ids,
        RESOURCE.c.deleted.is_(False),
    )
    if since:
        statement = statement.where(RESOURCE.c.last_updated >= bindparam("load_since"))
    return statement if visible is None else _where(statement, visible(RESOURCE, resource_type))


def history_statement(visible: Visible, resource_type: str | None, given: tuple[str, ...]) -> Any:
    """Versions newest first; ``given`` names the filters present (``history_type``,
    ``history_id``, ``history_since``, ``history_before``); ``history_limit`` bounds it."""
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
    if "history_type" in given:
        query = query.where(HISTORY.c.resource_type == bindparam("history_type"))
    if "history_id" in given:
        query = query.where(HISTORY.c.id == bindparam("history_id"))
    if "history_since" in given:
        since_type = HISTORY.c.last_updated.type
        query = query.where(HISTORY.c.last_updated >= bindparam("history_since", type_=since_type))
    if "history_before" in given:
        query = query.where(HISTORY.c.seq < bindparam("history_before", type_=Integer))
    query = where_visible(visible, query, resource_type)
    return query.order_by(HISTORY.c.seq.desc()).limit(bindparam("history_limit", type_=Integer))


def _where(statement: Any, condition: ColumnElement[bool] | None) -> Any:
    return statement if condition is None else statement.where(condition)


def where_visible(visible: Visible, query: Any, resource_type: str | None) -> Any:
    """Keep the history rows of resources the principal may see (the current row decides:
    its owner and the patients it is about now)."""
    current = RESOURCE.alias("current")
    condition = visible(current, resource_type)
    if condition is None:
        return query
    return query.where(
        exists().where(
            current.c.resource_type == HISTORY.c.resource_type,
            current.c.id == HISTORY.c.id,
            condition,
        )
    )
