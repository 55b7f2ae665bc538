"""What the FHIR store asks of an access policy, so the core applies one without knowing it.

A store built for a request (:func:`emr_hub.security.access.store_for`) carries an
:class:`Access`: every read path of the store, the search compiler and the operations add its
:meth:`~Access.visible` condition to their SQL, and every write asks :meth:`~Access.check_write`
first. A store without one (the worker, migrations, the operator's own tools) sees everything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from sqlalchemy import ColumnElement, FromClause

    from emr_hub.fhir.store import FhirStore, Stored


class Access(Protocol):
    def visible(
        self, resource: FromClause, resource_type: str | None = None
    ) -> ColumnElement[bool] | None:
        """The SQL condition on a ``resource`` table alias that keeps the rows the principal
        may read; None when it may read them all. ``resource_type``, when the query is about
        one type only, lets the condition be the simpler one of that type."""
        ...

    def shape(self, resource_type: str | None) -> tuple[Any, ...]:
        """A key of the SQL :meth:`visible` makes for ``resource_type``: two accesses of the
        same shape make the same SQL, with different :meth:`params`."""
        ...

    def params(self) -> dict[str, Any]:
        """The values of the named parameters in :meth:`visible`'s SQL."""
        ...

    def check_writable_type(self, resource_type: str) -> None:
        """Raise unless resources of this type may be written through the API at all (before
        the body is even read: the hub's own audit records never are)."""
        ...

    def check_write(
        self,
        store: FhirStore,
        resource_type: str,
        current: Stored | None,
        new: dict[str, Any] | None,
    ) -> None:
        """Raise a :class:`~emr_hub.errors.FhirError` unless the principal may write ``new``
        (None: delete) over ``current`` (None: nothing stored under that id)."""
        ...
