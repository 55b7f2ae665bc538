"""Statements run on the event loop, with asyncio connections of psycopg (PostgreSQL).

A read (``GET [type]/[id]``) is one statement, and the audit record of a read one short
transaction. Run from a route the usual way each costs a hop to a worker thread (the driver
blocks), an ORM session, a pool checkout and check-in: together several times what the
database does for it. :class:`AsyncConnections` instead keeps a few asyncio connections per
API process: :meth:`~AsyncConnections.first` runs a :class:`~storage.prepared.Prepared`
statement on one of them as a server-side prepared statement, :meth:`~AsyncConnections.run`
lends one to a coroutine (the audit group writer's transaction), without leaving the event
loop.

The connections start as the engine's do (``timezone``, ``statement_timeout``), in autocommit
(one statement is its own snapshot; a coroutine that needs a transaction opens one), with the
engine's JSON loader (:mod:`storage.json_codec`: decimals keep their digits). Errors are raised
as SQLAlchemy raises the engine's (``OperationalError`` ...), so the API answers them alike. A
connection whose statement failed with a lost connection, or was cancelled midway (the client
hung up), is closed rather than reused; a lost one also closes the idle ones (the server has
likely restarted). Connections are opened when first needed, bound to the event loop they were
opened on, and closed by :meth:`AsyncConnections.close` (the app's shutdown).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
from psycopg.types.json import set_json_loads
from sqlalchemy import Dialect

from storage import json_codec
from storage.db import Database, postgres_options
from storage.prepared import Prepared, driver_error

T = TypeVar("T")
Connection = psycopg.AsyncConnection[Any]

CONNECTIONS = 2
"""Read connections per API process: a read holds one for a round trip only (about 0.1 ms),
so two serve thousands of reads a second; they come on top of the engine's pool
(docs/scaling.md counts them)."""


class AsyncConnections:
    """Up to ``size`` asyncio connections to ``db``'s PostgreSQL database."""

    def __init__(self, db: Database, size: int = CONNECTIONS) -> None:
        url = db.engine.url.set(drivername="postgresql")
        self._conninfo = url.render_as_string(hide_password=False)
        self._options = postgres_options(db.statement_timeout)
        self._dialect: Dialect = db.engine.dialect
        self._size = size
        self._idle: list[Connection] = []
        self._opened = 0
        self._freed = asyncio.Condition()
        self._closed = False

    @classmethod
    def for_database(cls, db: Database, size: int = CONNECTIONS) -> AsyncConnections | None:
        """Statements on the event loop where the database offers it (PostgreSQL), else None."""
        return cls(db, size) if db.dialect == "postgresql" else None

    async def first(self, statement: Prepared, params: dict[str, Any]) -> tuple[Any, ...] | None:
        """The first row of ``statement`` for ``params``, or None."""
        sql, values = statement.driver_sql(self._dialect, params)

        async def fetch(connection: Connection) -> tuple[Any, ...] | None:
            async with connection.cursor() as cursor:
                await cursor.execute(sql, values, prepare=True)
                return await cursor.fetchone()

        return await self.run(fetch, sql)

    async def run(self, work: Callable[[Connection], Awaitable[T]], what: str) -> T:
        """``work`` done on a connection of the pool (``what`` names it in an error); a
        driver error comes out as SQLAlchemy's."""
        connection = await self._acquire()
        reusable = False
        try:
            result = await work(connection)
            reusable = True
            return result
        except psycopg.Error as error:
            lost = connection.broken or self._dialect.is_disconnect(error, connection, None)
            reusable = not lost
            if lost:
                await self._close_idle()
            raise driver_error(what, error, self._dialect, lost) from error
        finally:
            await self._release(connection, reusable)

    async def close(self) -> None:
        """Close every connection; later calls open none."""
        self._closed = True
        await self._close_idle()

    async def _acquire(self) -> Connection:
        async with self._freed:
            while True:
                if self._closed:
                    raise RuntimeError("the event-loop connections are closed")
                if self._idle:
                    return self._idle.pop()
                if self._opened < self._size:
                    self._opened += 1
                    break
                await self._freed.wait()
        try:
            return await self._open()
        except BaseException:
            async with self._freed:
                self._opened -= 1
                self._freed.notify()
            raise

    async def _open(self) -> Connection:
        connection = await psycopg.AsyncConnection.connect(
            self._conninfo, autocommit=True, options=self._options
        )
        set_json_loads(json_codec.loads, connection)
        return connection

    async def _release(self, connection: Connection, reusable: bool) -> None:
        keep = reusable and not self._closed and not connection.broken
        if not keep:
            await connection.close()
        async with self._freed:
            if keep:
                self._idle.append(connection)  # the newest on top: the busy few stay warm
            else:
                self._opened -= 1
            self._freed.notify()

    async def _close_idle(self) -> None:
        async with self._freed:
            idle, self._idle = self._idle, []
            self._opened -= len(idle)
            self._freed.notify_all()
        for connection in idle:
            await connection.close()
