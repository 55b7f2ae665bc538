"""Database engine and unit-of-work sessions.

One request (or one task) is one transaction: :meth:`Database.transaction` commits on
success and rolls back on any error; application code never commits. Work owed after the
commit (sending Celery jobs) is registered with :func:`after_commit` and dropped on rollback;
work that must land in the same transaction once the unit of work is done (matching the
writes against subscriptions) is registered with :func:`before_commit`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from storage import json_codec

_AFTER_COMMIT = "emr_hub.after_commit"
_BEFORE_COMMIT = "emr_hub.before_commit"
READ_ONLY = "emr_hub_read_only"
UNBOUNDED = "emr_hub_unbounded"
"""Execution option: this connection's statements have no time limit (migrations)."""
_DEADLINE = "emr_hub_deadline"
_PROGRESS_STEPS = 10_000


def as_utc(moment: datetime) -> datetime:
    """Everything stored is UTC; SQLite hands back naive datetimes, PostgreSQL local ones."""
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def _json_dumps(value: Any) -> str:
    return json_codec.dumps(value).decode()


def make_engine(url: str, *, pool_size: int = 10, statement_timeout: float | None = None) -> Engine:
    """An engine whose JSON columns keep decimals as written (:mod:`storage.json_codec`), with
    dialect-specific hardening.

    On PostgreSQL the pool holds ``pool_size`` connections and never opens more (a pool that
    overflows under load opens and closes a backend per burst, which costs more than the
    wait); a request that finds none free within 30 s is answered 503. Connections are not
    pinged on every checkout (a round trip per request): one that the server dropped fails
    its statement, and SQLAlchemy then discards every connection older than that failure, so
    one request sees the outage, not every later one. Connections are renewed after an hour.

    ``statement_timeout`` (seconds) bounds every statement: PostgreSQL cancels it
    (``statement_timeout``), SQLite interrupts it from its progress handler.
    """
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            json_serializer=_json_dumps,
            json_deserializer=json_codec.loads,
            hide_parameters=True,  # errors never show the values (names, CCCDs) of a statement
            connect_args={"check_same_thread": False, "timeout": 30, "isolation_level": None},
        )
        _configure_sqlite(engine, statement_timeout)
        return engine
    return create_engine(
        url,
        json_serializer=_json_dumps,
        json_deserializer=json_codec.loads,
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=30,
        pool_recycle=3600,
        pool_use_lifo=True,  # the busy few stay warm; idle ones age out by the recycle
        hide_parameters=True,
        connect_args={"options": postgres_options(statement_timeout)},
    )


def postgres_options(statement_timeout: float | None) -> str:
    """The session settings every PostgreSQL connection of the hub starts with."""
    options = "-c timezone=UTC"
    if statement_timeout is not None:
        options += f" -c statement_timeout={max(1, round(statement_timeout * 1000))}"
    return options


def _configure_sqlite(engine: Engine, statement_timeout: float | None) -> None:
    """WAL, foreign keys, an explicit BEGIN IMMEDIATE for transactions, a work limit.

    pysqlite's own transaction handling starts transactions lazily, which lets two writers
    deadlock on lock upgrade; taking the write lock at BEGIN serialises writers cleanly.

    The work limit: every statement gets a deadline when it is executed, and SQLite's progress
    handler (called every few thousand virtual-machine steps, rows fetched later included)
    interrupts it once the deadline has passed ("interrupted", a 400 for the request).
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()
        if statement_timeout is not None:
            deadline = record.info[_DEADLINE] = [float("inf")]
            dbapi_connection.set_progress_handler(
                lambda: int(time.monotonic() > deadline[0]), _PROGRESS_STEPS
            )

    if statement_timeout is not None:

        @event.listens_for(engine, "before_cursor_execute")
        def _start_clock(conn: Any, *_args: Any) -> None:
            deadline = conn.info.get(_DEADLINE)
            if deadline is not None:
                unbounded = conn.get_execution_options().get(UNBOUNDED, False)
                deadline[0] = float("inf") if unbounded else time.monotonic() + statement_timeout

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        read_only = conn.get_execution_options().get(READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


class Database:
    """Owns the engine and hands out transactional sessions."""

    def __init__(
        self, url: str, *, pool_size: int = 10, statement_timeout: float | None = None
    ) -> None:
        self.url = url
        self.statement_timeout = statement_timeout
        self.engine = make_engine(url, pool_size=pool_size, statement_timeout=statement_timeout)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False, autoflush=False)
        self._read_sessions = sessionmaker(
            self.engine.execution_options(**{READ_ONLY: True}),
            expire_on_commit=False,
            autoflush=False,
        )
        # A single statement is its own snapshot: on PostgreSQL it runs without BEGIN and
        # ROLLBACK around it (two round trips of three). SQLite keeps its deferred BEGIN.
        self._single_sessions = (
            sessionmaker(
                self.engine.execution_options(isolation_level="AUTOCOMMIT"),
                expire_on_commit=False,
                autoflush=False,
            )
            if self.dialect == "postgresql"
            else self._read_sessions
        )

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session inside one database transaction; commit on success, rollback on error."""
        session = self._sessions()
        try:
            yield session
            for callback in session.info.pop(_BEFORE_COMMIT, []):
                callback()
            session.commit()
        except BaseException:
            session.rollback()
            session.info.pop(_AFTER_COMMIT, None)
            session.info.pop(_BEFORE_COMMIT, None)
            raise
        finally:
            callbacks = session.info.pop(_AFTER_COMMIT, [])
            session.close()
        for callback in callbacks:
            callback()

    @contextmanager
    def snapshot(self) -> Iterator[Session]:
        """A session for reads only: one consistent view, never a write lock.

        On SQLite a write transaction takes the database's write lock at BEGIN; reads use a
        deferred BEGIN instead, so they do not queue behind writers (WAL lets them run beside).
        """
        session = self._read_sessions()
        try:
            yield session
        finally:
            session.rollback()
            session.close()

    @contextmanager
    def single_read(self) -> Iterator[Session]:
        """A session for work that reads with one statement (a read, a vread): no transaction
        is opened for it where the database allows, since one statement sees one snapshot.
        Work that may run a second statement must use :meth:`snapshot`."""
        session = self._single_sessions()
        try:
            yield session
        finally:
            session.close()

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
            return True
        except Exception:  # noqa: BLE001 - readiness reports any failure as not ready
            return False

    def dispose(self) -> None:
        self.engine.dispose()


def after_commit(session: Session, callback: Callable[[], None]) -> None:
    """Run ``callback`` once the session's transaction has committed; never on rollback."""
    session.info.setdefault(_AFTER_COMMIT, []).append(callback)


def before_commit(session: Session, callback: Callable[[], None]) -> None:
    """Run ``callback`` inside the transaction, after the unit of work and before the commit.

    An exception it raises rolls the whole transaction back, like one raised by the work.
    """
    session.info.setdefault(_BEFORE_COMMIT, []).append(callback)
