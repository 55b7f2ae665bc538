"""Statements on the event loop (PostgreSQL): rows as the engine's, errors as SQLAlchemy
raises them, and connections that are never reused after a loss or a cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Integer, String, bindparam, func, literal, select
from sqlalchemy.exc import DBAPIError, OperationalError

from emr_hub.hub import Hub
from emr_hub.main import took_too_long
from storage.async_db import AsyncConnections
from storage.db import Database
from storage.prepared import Prepared
from tests.conftest import make_settings
from tests.storage.test_lost_connections import kill_pooled_backends

ECHO = Prepared(select(literal(1).label("one"), bindparam("text", type_=String).label("text")))


@pytest.fixture
def hub(tmp_path: Path, postgres_url: str) -> Iterator[Hub]:
    instance = Hub.from_settings(make_settings(tmp_path, postgres_url), migrate=True)
    yield instance
    instance.close()


def test_rows_come_back_typed_as_the_engine_types_them(hub: Hub) -> None:
    statement = Prepared(
        select(
            func.jsonb_build_object("a", bindparam("value", type_=String)).label("json"),
            func.now().label("moment"),
        )
    )

    async def run() -> tuple[object, ...] | None:
        reads = AsyncConnections(hub.db)
        try:
            return await reads.first(statement, {"value": "x"})
        finally:
            await reads.close()

    row = asyncio.run(run())
    assert row is not None
    assert row[0] == {"a": "x"}
    assert row[1].utcoffset() is not None and row[1].utcoffset().total_seconds() == 0


def test_no_more_connections_than_its_size_and_they_are_reused(hub: Hub) -> None:
    statement = Prepared(select(func.pg_sleep(0.05), bindparam("n", type_=Integer)))

    async def run() -> int:
        reads = AsyncConnections(hub.db, size=2)
        try:
            await asyncio.gather(*(reads.first(statement, {"n": n}) for n in range(12)))
            return reads._opened
        finally:
            await reads.close()

    assert asyncio.run(run()) == 2


def test_the_statement_timeout_applies(tmp_path: Path, postgres_url: str) -> None:
    hub = Hub.from_settings(
        make_settings(tmp_path, postgres_url, statement_timeout_seconds=0.2), migrate=True
    )
    statement = Prepared(select(func.pg_sleep(bindparam("seconds", type_=Integer))))

    async def run() -> BaseException | None:
        reads = AsyncConnections(hub.db)
        try:
            await reads.first(statement, {"seconds": 3})
        except OperationalError as error:
            assert (await reads.first(statement, {"seconds": 0})) is not None  # still usable
            return error
        finally:
            await reads.close()
        return None

    try:
        error = asyncio.run(run())
    finally:
        hub.close()
    assert isinstance(error, OperationalError) and took_too_long(error.orig)


def test_a_lost_connection_is_raised_as_sqlalchemy_does_and_the_next_one_is_new(
    hub: Hub,
) -> None:
    async def run() -> tuple[DBAPIError, tuple[object, ...] | None]:
        reads = AsyncConnections(hub.db)
        try:
            assert await reads.first(ECHO, {"text": "before"}) is not None
            await asyncio.to_thread(kill_pooled_backends, hub)
            try:
                await reads.first(ECHO, {"text": "during"})
            except DBAPIError as error:
                return error, await reads.first(ECHO, {"text": "after"})
            raise AssertionError("the statement on a killed connection succeeded")
        finally:
            await reads.close()

    error, after = asyncio.run(run())
    assert isinstance(error, OperationalError) and error.connection_invalidated
    assert after == (1, "after")


def test_a_cancelled_statement_leaves_its_connection_closed(hub: Hub) -> None:
    slow = Prepared(select(func.pg_sleep(bindparam("seconds", type_=Integer))))

    async def run() -> tuple[int, tuple[object, ...] | None]:
        reads = AsyncConnections(hub.db, size=1)
        try:
            task = asyncio.create_task(reads.first(slow, {"seconds": 5}))
            await asyncio.sleep(0.3)  # let it reach the server
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            opened = reads._opened
            return opened, await reads.first(ECHO, {"text": "next"})
        finally:
            await reads.close()

    opened, row = asyncio.run(run())
    assert opened == 0 and row == (1, "next")


def test_closed_reads_refuse_work_and_hold_no_connection(hub: Hub) -> None:
    async def run() -> None:
        reads = AsyncConnections(hub.db)
        await reads.first(ECHO, {"text": "x"})
        await reads.close()
        assert reads._opened == 0
        with pytest.raises(RuntimeError):
            await reads.first(ECHO, {"text": "y"})

    asyncio.run(run())


def test_sqlite_has_none(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        assert AsyncConnections.for_database(db) is None
    finally:
        db.dispose()
