"""Compile a :class:`SearchRequest` into SQL over the index tables. No I/O.

Every filter becomes an ``EXISTS`` on the index table of its parameter type, correlated with
the resource being searched; ORs are ORs inside one ``EXISTS`` (a value matches), ANDs are
separate ``EXISTS``. Chains follow ``search_reference`` to the target and apply the inner
filter there; ``_has`` follows it backwards. The prefix semantics mirror
:mod:`emr_hub.fhir.search.values` (``date_matches``, ``number_matches``) on the ``low`` /
``high`` columns. Every value is a bound parameter.

The access policy's condition (``visibility``) applies to every resource a search reaches:
the searched one, a chain's targets and a ``_has``'s sources. A chain through a patient the
caller may not see matches nothing, and so does a ``_has`` through resources it may not see.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import (
    ColumnElement,
    FromClause,
    Select,
    and_,
    exists,
    false,
    func,
    literal,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy.sql.elements import KeyedColumnElement

from emr_hub.errors import bad_request
from emr_hub.fhir.search import values as v
from emr_hub.fhir.search.composite import composite_parts
from emr_hub.fhir.search.indexer import (
    COMPOSITE,
    DATE,
    QUANTITY,
    REFERENCE,
    STRING,
    TABLE_OF_TYPE,
    TOKEN,
    URI,
)
from emr_hub.fhir.search.params import (
    AnyOf,
    Chain,
    Condition,
    Filter,
    Reverse,
    SearchRequest,
    SortKey,
)
from storage.tables import ResourceRow

RESOURCE = ResourceRow.__table__
SEARCHED = RESOURCE.alias("r")
"""The alias of the searched resource, one object for every search, so that what is built on
it (the access condition, the patients of each match) can be built once and reused."""
Visibility = Callable[[FromClause, str | None], ColumnElement[bool] | None]
"""The access condition on a resource table alias, given the one type it holds (None: no
condition); :meth:`emr_hub.fhir.store.FhirStore.visible`."""


def _bad(flt: Filter, message: str) -> Exception:
    return bad_request(message, flt.param.code)


def _like_prefix(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class Compiler:
    """Builds the conditions of one search; ``base_url`` makes absolute local URLs local."""

    def __init__(
        self,
        base_url: str | None = None,
        dialect: str = "sqlite",
        *,
        visibility: Visibility | None = None,
    ) -> None:
        self.base_url = base_url
        self.dialect = dialect
        self.visibility = visibility

    # ------------------------------------------------------------------ entry
    def select_ids(self, request: SearchRequest) -> Select[Any]:
        resource = SEARCHED
        query = select(resource.c.id).where(
            resource.c.resource_type == request.resource_type, resource.c.deleted.is_(False)
        )
        visible = self.visible(resource, request.resource_type)
        if visible is not None:
            query = query.where(visible)
        for flt in request.filters:
            query = query.where(self.condition(flt, request.resource_type, resource))
        return query

    def visible(
        self, resource: FromClause, resource_type: str | None
    ) -> ColumnElement[bool] | None:
        """The access condition on ``resource`` (None when everything is visible)."""
        return None if self.visibility is None else self.visibility(resource, resource_type)

    def condition(
        self, cond: Condition, resource_type: str, resource: FromClause
    ) -> ColumnElement[bool]:
        if isinstance(cond, Filter):
            return self._plain(cond, resource_type, resource.c.id, resource)
        if isinstance(cond, AnyOf):
            return or_(
                *(self.condition(option, resource_type, resource) for option in cond.options)
            )
        if isinstance(cond, Chain):
            return self._chained(cond, resource_type, resource)
        return self._reverse(cond, resource_type, resource)

    # ------------------------------------------------------------ chains, _has
    def _chained(
        self, chain: Chain, resource_type: str, resource: FromClause
    ) -> ColumnElement[bool]:
        target = RESOURCE.alias()
        ref = REFERENCE.alias()
        targets = (
            select(target.c.id)
            .where(target.c.resource_type == chain.target, target.c.deleted.is_(False))
            .where(self.condition(chain.inner, chain.target, target))
        )
        visible = self.visible(target, chain.target)
        if visible is not None:
            targets = targets.where(visible)
        return exists().where(
            ref.c.resource_type == resource_type,
            ref.c.resource_id == resource.c.id,
            ref.c.param == chain.param.code,
            ref.c.target_type == chain.target,
            ref.c.target_id.in_(targets),
        )

    def _reverse(
        self, reverse: Reverse, resource_type: str, resource: FromClause
    ) -> ColumnElement[bool]:
        source = RESOURCE.alias()
        ref = REFERENCE.alias()
        visible = self.visible(source, reverse.source_type)
        return exists().where(
            ref.c.resource_type == reverse.source_type,
            ref.c.param == reverse.param.code,
            ref.c.target_type == resource_type,
            ref.c.target_id == resource.c.id,
            source.c.resource_type == reverse.source_type,
            source.c.id == ref.c.resource_id,
            source.c.deleted.is_(False),
            self.condition(reverse.inner, reverse.source_type, source),
            *((visible,) if visible is not None else ()),
        )

    # ------------------------------------------------------------------ plain
    def _plain(
        self,
        flt: Filter,
        resource_type: str,
        owner_id: KeyedColumnElement[Any],
        resource: FromClause,
    ) -> ColumnElement[bool]:
        code = flt.param.code
        if code == "_id":
            return self._id(flt, resource)
        if code == "_lastUpdated":
            return self._last_updated(flt, resource)
        kind = flt.param.type
        if flt.modifier == "text" and kind == "token":
            table = STRING.alias()
            matches = [
                table.c.normalized.like(
                    _like_prefix(self._string(flt, x).normalized) + "%", escape="\\"
                )
                for x in flt.values
            ]
            return self._exists(table, resource_type, owner_id, f"{code}:text", or_(*matches))
        table = (COMPOSITE if kind == "composite" else TABLE_OF_TYPE[kind]).alias()
        if flt.modifier == "missing":
            present = self._exists(table, resource_type, owner_id, code, true())
            return not_(present) if flt.values[0] == "true" else present
        build: Callable[[FromClause, Filter, str], ColumnElement[bool]] = getattr(
            self, f"_{kind}_match"
        )
        matches = or_(*(build(table, flt, value) for value in flt.values))
        if flt.modifier == "not":
            return not_(self._exists(table, resource_type, owner_id, code, matches))
        return self._exists(table, resource_type, owner_id, code, matches)

    @staticmethod
    def _exists(
        table: FromClause,
        resource_type: str,
        owner_id: KeyedColumnElement[Any],
        param: str,
        match: Any,
    ) -> ColumnElement[bool]:
        return exists().where(
            table.c.resource_type == resource_type,
            table.c.resource_id == owner_id,
            table.c.param == param,
            match,
        )

    def _id(self, flt: Filter, resource: FromClause) -> ColumnElement[bool]:
        if flt.modifier == "missing":
            return false() if flt.values[0] == "true" else true()
        ids = [x for x in flt.values]
        condition = resource.c.id.in_(ids)
        return not_(condition) if flt.modifier == "not" else condition

    def _last_updated(self, flt: Filter, resource: FromClause) -> ColumnElement[bool]:
        alternatives = []
        for text in flt.values:
            prefix, query = self._date(flt, text)
            # an instant is a point: it covers its own millisecond
            low = resource.c.last_updated
            alternatives.append(date_condition(prefix, query, low, low, point=True))
        return or_(*alternatives)

    # ------------------------------------------------------------ value kinds
    def _string(self, flt: Filter, text: str) -> v.StringRow:
        try:
            return v.parse_string_query(text, exact=flt.modifier == "exact")
        except ValueError as error:
            raise _bad(flt, str(error)) from None

    def _date(self, flt: Filter, text: str) -> tuple[str, v.DateRange]:
        try:
            prefix, query = v.parse_date_query(text)
        except ValueError as error:
            raise _bad(flt, str(error)) from None
        if prefix == "ap":
            query = v.approximate_range(query)
        return prefix, query

    def _token_match(self, table: FromClause, flt: Filter, text: str) -> ColumnElement[bool]:
        try:
            query = v.parse_token_query(text)
        except ValueError as error:
            raise _bad(flt, str(error)) from None
        parts = []
        if query.code is not None:
            parts.append(table.c.code == query.code)
        if query.system_given:
            parts.append(
                table.c.system.is_(None) if query.system is None else table.c.system == query.system
            )
        return and_(*parts) if parts else true()

    def _string_match(self, table: FromClause, flt: Filter, text: str) -> ColumnElement[bool]:
        query = self._string(flt, text)
        if flt.modifier == "exact":
            return table.c.exact == query.exact
        if flt.modifier == "contains":
            return table.c.normalized.like("%" + _like_prefix(query.normalized) + "%", escape="\\")
        return table.c.normalized.like(_like_prefix(query.normalized) + "%", escape="\\")

    def _reference_match(self, table: FromClause, flt: Filter, text: str) -> ColumnElement[bool]:
        if flt.modifier == "identifier":
            try:
                token = v.parse_token_query(text)
            except ValueError as error:
                raise _bad(flt, str(error)) from None
            parts = [table.c.identifier_value == token.code] if token.code is not None else []
            if token.system_given:
                parts.append(
                    table.c.identifier_system.is_(None)
                    if token.system is None
                    else table.c.identifier_system == token.system
                )
            return and_(*parts)
        try:
            query = v.parse_reference_query(text, self.base_url)
        except ValueError as error:
            raise _bad(flt, str(error)) from None
        if query.target_id is None:
            return table.c.url == query.url
        parts = [table.c.target_id == query.target_id]
        wanted_type = query.target_type or (
            flt.modifier if flt.modifier and flt.modifier[0].isupper() else None
        )
        if wanted_type:
            parts.append(table.c.target_type == wanted_type)
        return and_(*parts)

    def _date_match(self, table: FromClause, flt: Filter, text: str) -> ColumnElement[bool]:
        prefix, query = self._date(flt, text)
        return date_condition(prefix, query, table.c.low, table.c.high)

    def _number_match(self, table: FromClause, flt: Filter, text: str) -> ColumnElement[bool]:
        try:
            query = v.parse_number_query(text)
        except ValueError as error:
            raise _bad(flt, str(error)) from None
        return _number_condition(query, table)

    def _quantity_match(self, table: FromClause, flt: Filter, text: str) -> ColumnElement[bool]:
        try:
            query = v.parse_quantity_query(text)
        except ValueError as error:
            raise _bad(flt, str(error)) from None
        parts = [_number_condition(query, table)]
        if query.system is not None:
            parts.append(table.c.system == query.system)
            if query.code is not None:
                parts.append(table.c.code == query.code)
        elif query.code is not None:  # number||code: the code or the human unit (R4)
            parts.append(or_(table.c.code == query.code, table.c.unit == query.code))
        return and_(*parts)

    def _composite_match(self, table: FromClause, flt: Filter, text: str) -> ColumnElement[bool]:
        """``token$value``: both parts on the same element (the same row)."""
        parts = composite_parts(flt.param)
        assert parts is not None  # the parser refuses unsupported composites
        first_text, dollar, second_text = text.partition("$")
        if not dollar or not first_text or not second_text:
            raise _bad(flt, f"A composite value is 'token$value', not {text!r}")
        first = self._token_match(table, flt, first_text)
        kind = parts[1].type
        if kind == "token":
            try:
                token = v.parse_token_query(second_text)
            except ValueError as error:
                raise _bad(flt, str(error)) from None
            second = [table.c.second_code == token.code] if token.code is not None else []
            if token.system_given:
                system = table.c.second_system
                second.append(system.is_(None) if token.system is None else system == token.system)
            return and_(first, *second)
        if kind == "quantity":
            try:
                query = v.parse_quantity_query(second_text)
            except ValueError as error:
                raise _bad(flt, str(error)) from None
            condition = _number_condition(query, table, low=table.c.num_low, high=table.c.num_high)
            units = []
            if query.system is not None:
                units.append(table.c.second_system == query.system)
                if query.code is not None:
                    units.append(table.c.second_code == query.code)
            elif query.code is not None:
                units.append(
                    or_(table.c.second_code == query.code, table.c.second_unit == query.code)
                )
            return and_(first, condition, *units)
        if kind == "date":
            prefix, query = self._date(flt, second_text)
            return and_(first, date_condition(prefix, query, table.c.date_low, table.c.date_high))
        string = self._string(flt, second_text)
        like = _like_prefix(string.normalized) + "%"
        return and_(first, table.c.text_normalized.like(like, escape="\\"))

    def _uri_match(self, table: FromClause, flt: Filter, text: str) -> ColumnElement[bool]:
        if flt.modifier == "below":
            base = text.rstrip("/")
            return or_(
                table.c.value == base, table.c.value.like(_like_prefix(base) + "/%", escape="\\")
            )
        if flt.modifier == "above":
            # the stored uri is the query or one of its path ancestors
            ancestors = [text]
            while "/" in ancestors[-1].rstrip("/").split("://", 1)[-1]:
                ancestors.append(ancestors[-1].rstrip("/").rsplit("/", 1)[0])
            return table.c.value.in_(ancestors)
        return table.c.value == text

    # -------------------------------------------------------------------- sort
    def sort_expression(
        self, key: SortKey, resource_type: str | ColumnElement[str], resource: FromClause
    ) -> ColumnElement[Any]:
        """A correlated scalar: the lowest value ascending, the highest descending (nulls last)."""
        code = key.param.code
        if code == "_id":
            return resource.c.id
        if code == "_lastUpdated":
            return resource.c.last_updated
        table = TABLE_OF_TYPE[key.param.type].alias()
        kind = key.param.type
        value: ColumnElement[Any]
        if kind == "reference":
            local = table.c.target_type.concat("/").concat(table.c.target_id)
            value = func.coalesce(local, table.c.url)
        elif kind in ("date", "number", "quantity"):
            value = table.c.high if key.descending else table.c.low
        else:
            value = table.c[{"token": "code", "string": "normalized", "uri": "value"}[kind]]
        if kind in ("token", "string", "reference", "uri") and self.dialect == "postgresql":
            value = value.collate("C")  # code-point order, the same on both databases
        pick = func.max if key.descending else func.min
        return (
            select(pick(value))
            .where(
                table.c.resource_type == resource_type,
                table.c.resource_id == resource.c.id,
                table.c.param == code,
            )
            .scalar_subquery()
        )


def date_condition(
    prefix: str, query: v.DateRange, low: Any, high: Any, *, point: bool = False
) -> ColumnElement[bool]:
    """The rows of ``values.date_matches`` as SQL on a value range ``[low, high)``.

    For a point (an instant such as ``_lastUpdated``) ``high`` is ``low`` itself and the
    half-open comparisons become ``low < q.high`` and so on.
    """
    q_low, q_high = literal(query.low), literal(query.high)
    if point:
        inside = and_(low >= q_low, low < q_high)
        return {
            "eq": inside,
            "ap": inside,
            "ne": not_(inside),
            "gt": low >= q_high,
            "sa": low >= q_high,
            "lt": low < q_low,
            "eb": low < q_low,
            "ge": low >= q_low,
            "le": low < q_high,
        }[prefix]
    return {
        "eq": and_(low >= q_low, high <= q_high),
        "ne": or_(low < q_low, high > q_high),
        "gt": high > q_high,
        "lt": low < q_low,
        "ge": or_(high > q_high, low >= q_low),
        "le": or_(low < q_low, high <= q_high),
        "sa": low >= q_high,
        "eb": high <= q_low,
        "ap": and_(low < q_high, high > q_low),
    }[prefix]


def _number_condition(
    query: v.NumberQuery | v.QuantityQuery,
    table: FromClause,
    *,
    low: Any = None,
    high: Any = None,
) -> ColumnElement[bool]:
    """The rows of ``values.number_matches`` on the closed interval ``[low, high]``."""
    low = table.c.low if low is None else low
    high = table.c.high if high is None else high
    n = query.number
    if query.prefix in ("eq", "ne"):
        inside = and_(low >= query.low, high < query.high)
        return inside if query.prefix == "eq" else not_(inside)
    if query.prefix == "ap":
        wide_low, wide_high = v.approximate_numbers(query)
        return and_(low < wide_high, high >= wide_low)
    return {
        "gt": high > n,
        "lt": low < n,
        "ge": high >= n,
        "le": low <= n,
        "sa": low > n,
        "eb": high < n,
    }[query.prefix]


__all__ = ["DATE", "QUANTITY", "STRING", "TOKEN", "URI", "Compiler"]
