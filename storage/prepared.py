"""A hot statement compiled once and run straight on the driver's connection.

SQLAlchemy's execution path (the ORM session, cache-key generation, the execution context,
the result proxy) costs several times what the database does for a primary-key read. On
PostgreSQL a :class:`Prepared` statement is compiled to SQL once per dialect, its constants
(the policy's type lists ...) rendered in, and run with psycopg as a server-side prepared
statement (``prepare=True``: parsed and planned once per connection). Rows come back as
tuples, typed by psycopg as SQLAlchemy would type them for these columns (JSON through the
hub's orjson loader, timestamps aware). Other databases go through SQLAlchemy as usual.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Dialect
from sqlalchemy.orm import Session
from sqlalchemy.sql import Executable


class Prepared:
    """``statement`` (named bind parameters, no expanding ones left unbound)."""

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        self._compiled: dict[str, tuple[str, dict[str, Any]]] = {}

    def first(self, session: Session, params: dict[str, Any]) -> tuple[Any, ...] | None:
        """The first row for ``params``, or None."""
        connection = session.connection()
        dialect = connection.dialect
        if dialect.name != "postgresql":
            row = session.execute(self.statement, params).first()
            return None if row is None else tuple(row)
        sql, constants = self._compiled.get(dialect.name) or self._compile(dialect, params)
        driver = connection.connection.driver_connection
        assert driver is not None
        with driver.cursor() as cursor:
            cursor.execute(sql, constants | params, prepare=True)
            return cursor.fetchone()  # type: ignore[no-any-return]

    def all(self, session: Session, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Every row for ``params``."""
        connection = session.connection()
        dialect = connection.dialect
        if dialect.name != "postgresql":
            return [tuple(row) for row in session.execute(self.statement, params)]
        sql, constants = self._compiled.get(dialect.name) or self._compile(dialect, params)
        driver = connection.connection.driver_connection
        assert driver is not None
        with driver.cursor() as cursor:
            cursor.execute(sql, constants | params, prepare=True)
            return cursor.fetchall()

    def _compile(self, dialect: Dialect, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        # IN lists of constants are expanded once, here; every call passes its own values for
        # the named parameters, so only the constants are kept from this first call.
        expanded = self.statement.compile(dialect=dialect).construct_expanded_state(params)
        constants = {k: v for k, v in expanded.parameters.items() if k not in params}
        found = (expanded.statement, constants)
        self._compiled[dialect.name] = found
        return found
