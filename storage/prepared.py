"""A hot statement compiled once and run straight on the driver's connection.

SQLAlchemy's execution path (the ORM session, cache-key generation, the execution context,
the result proxy) costs several times what the database does for a primary-key read. On
PostgreSQL a :class:`Prepared` statement is compiled to SQL once per dialect, its constants
(the policy's type lists ...) rendered in, and run with psycopg as a server-side prepared
statement (``prepare=True``: parsed and planned once per connection). Rows come back as
tuples, typed by psycopg as SQLAlchemy would type them for these columns (JSON through the
hub's orjson loader, timestamps aware). Other databases go through SQLAlchemy as usual.

A driver error is raised as SQLAlchemy's (``OperationalError`` ...), as SQLAlchemy would
raise it, so the API answers it the same way; a lost connection is discarded with every
other connection of the pool (the server has likely restarted), as SQLAlchemy does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
from sqlalchemy import Connection, Dialect
from sqlalchemy.exc import DBAPIError
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
        if connection.dialect.name != "postgresql":
            row = session.execute(self.statement, params).first()
            return None if row is None else tuple(row)
        return self._run(connection, params, lambda cursor: cursor.fetchone())  # type: ignore[no-any-return]

    def all(self, session: Session, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Every row for ``params``."""
        connection = session.connection()
        if connection.dialect.name != "postgresql":
            return [tuple(row) for row in session.execute(self.statement, params)]
        return self._run(connection, params, lambda cursor: cursor.fetchall())  # type: ignore[no-any-return]

    def driver_sql(self, dialect: Dialect, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The statement's SQL for the driver, and its parameters with ``params``."""
        sql, constants = self._compiled.get(dialect.name) or self._compile(dialect, params)
        return sql, constants | params

    def _run(
        self, connection: Connection, params: dict[str, Any], fetch: Callable[[Any], Any]
    ) -> Any:
        dialect = connection.dialect
        sql, values = self.driver_sql(dialect, params)
        driver = connection.connection.driver_connection
        assert driver is not None
        try:
            with driver.cursor() as cursor:
                cursor.execute(sql, values, prepare=True)
                return fetch(cursor)
        except psycopg.Error as error:
            if dialect.is_disconnect(error, driver, None):
                connection.invalidate(error)
                connection.engine.dispose()
            raise driver_error(sql, error, dialect, connection.invalidated) from error

    def _compile(self, dialect: Dialect, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        # IN lists of constants are expanded once, here; every call passes its own values for
        # the named parameters, so only the constants are kept from this first call.
        expanded = self.statement.compile(dialect=dialect).construct_expanded_state(params)
        constants = {k: v for k, v in expanded.parameters.items() if k not in params}
        found = (expanded.statement, constants)
        self._compiled[dialect.name] = found
        return found


def driver_error(sql: str, error: psycopg.Error, dialect: Dialect, invalidated: bool) -> DBAPIError:
    """The SQLAlchemy error SQLAlchemy would have raised for ``error`` (values hidden)."""
    return DBAPIError.instance(
        sql,
        None,
        error,
        psycopg.Error,
        hide_parameters=True,
        dialect=dialect,
        connection_invalidated=invalidated,
    )
