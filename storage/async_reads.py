"""Single statements run on the event loop, with asyncio connections of psycopg (PostgreSQL).

A read (``GET [type]/[id]``) is one statement. Run from a route the usual way it costs a hop
to a worker thread (the driver blocks), an ORM session, a pool checkout and check-in: together
several times what the database does for it. :class:`AsyncReads` instead keeps a few asyncio
connections per API process and runs a :class:`~storage.prepared.Prepared` statement on one
of them as a server-side prepared statement, without leaving the event loop.

The connections start as the engine's do (``timezone``, ``statement_timeout``), in autocommit
(one statement is its own snapshot), with the engine's JSON loader (:mod:`storage.json_codec`:
decimals keep their digits). Errors are raised as SQLAlchemy raises the engine's
(``OperationalError`` ...), so the API answers them alike. A connection whose statement failed
with a lost connection, or was cancelled midway (the client hung up), is closed rather than
reused; a lost one also closes the idle ones (the server has likely restarted). Connections
are opened when first needed, bound to the event loop they were opened on, and closed by
:meth:`AsyncReads.close` (the app's shutdown).
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from psycopg.types.json import set_json_loads
from sqlalchemy import Dialect

from storage import json_codec
from storage.db import Database, postgres_options
from storage.prepared import Prepared, driver_error

CONNECTIONS = 2
"""Connections per API process: a read holds one for a round trip only (about 0.1 ms), so two
serve thousands of reads a second; they come on top of the engine's pool (docs/scaling.md
counts them)."""


class AsyncReads:
    """Up to ``size`` asyncio connections to ``db``'s PostgreSQL database."""

    def __init__(self, db: Database, size: int = CONNECTIONS) -> None:
        url = db.engine.url.set(drivername="postgresql")
        self._conninfo = url.render_as_string(hide_password=False)
        self._options = postgres_options(db.statement_timeout)
        self._dialect: Dialect = db.engine.dialect
        self._size = size
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._opened = 0
        self._freed = asyncio.Condition()
        self._closed = False

    @classmethod
    def for_database(cls, db: Database) -> AsyncReads | None:
        """Statements on the event loop where the database offers it (PostgreSQL), else None."""
        return cls(db) if db.dialect == "postgresql" else None

    async def first(self, statement: Prepared, params: dict[str, Any]) -> tuple[Any, ...] | None:
        """The first row of ``statement`` for ``params``, or None."""
        sql, values = statement.driver_sql(self._dialect, params)
        connection = await self._acquire()
        reusable = False
        try:
            async with connection.cursor() as cursor:
                await cursor.execute(sql, values, prepare=True)
                row = await cursor.fetchone()
            reusable = True
            return row
        except psycopg.Error as error:
            lost = connection.broken or self._dialect.is_disconnect(error, connection, None)
            reusable = not lost
            if lost:
                await self._close_idle()
            raise driver_error(sql, error, self._dialect, lost) from error
        finally:
            await self._release(connection, reusable)

    async def close(self) -> None:
        """Close every connection; later calls open none."""
        self._closed = True
        await self._close_idle()

    async def _acquire(self) -> psycopg.AsyncConnection[Any]:
        async with self._freed:
            while True:
                if self._closed:
                    raise RuntimeError("the event-loop reads are closed")
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

    async def _open(self) -> psycopg.AsyncConnection[Any]:
        connection = await psycopg.AsyncConnection.connect(
            self._conninfo, autocommit=True, options=self._options
        )
        set_json_loads(json_codec.loads, connection)
        return connection

    async def _release(self, connection: psycopg.AsyncConnection[Any], reusable: bool) -> None:
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
