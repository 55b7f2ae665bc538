"""Shared fixtures: real servers when reachable, a clear skip (or failure under CI) when not."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

REQUIRE_SERVICES = os.environ.get("EMR_HUB_REQUIRE_SERVICES", "").lower() in {"1", "true", "yes"}


def service_missing(reason: str) -> None:
    """Skip the test with `reason`, or fail it when EMR_HUB_REQUIRE_SERVICES is set."""
    if REQUIRE_SERVICES:
        pytest.fail(f"required service unavailable: {reason}", pytrace=False)
    pytest.skip(reason)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


POSTGRES_ADMIN_URL = os.environ.get(
    "EMR_HUB_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("EMR_HUB_TEST_REDIS", "redis://127.0.0.1:6379")


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """Create an empty PostgreSQL database for one test (or module) and drop it afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    if not port_open("127.0.0.1", 5432):
        service_missing("PostgreSQL is not reachable on 127.0.0.1:5432")
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"emr_hub_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001
        admin.dispose()
        service_missing(f"cannot create a PostgreSQL test database: {exc}")
    try:
        yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture
def redis_url() -> str:
    """A Redis URL on a database number of its own, flushed before use."""
    if not port_open("127.0.0.1", 6379):
        service_missing("Redis is not reachable on 127.0.0.1:6379")
    import redis

    db_number = 1 + (os.getpid() % 14)
    url = f"{REDIS_URL}/{db_number}"
    redis.Redis.from_url(url).flushdb()
    return url


def make_settings(tmp_path: Path, database_url: str | None = None, **overrides: Any) -> Any:
    """Settings for a hub whose state lives under ``tmp_path``."""
    from emr_hub.config import Settings

    return Settings(data_dir=tmp_path / "data", database_url=database_url, **overrides)


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test using this runs on the embedded SQLite file and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'hub.db'}"
        return
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture
def hub(tmp_path: Path, database_url: str) -> Iterator[Any]:
    """A migrated Hub on both databases."""
    from emr_hub.hub import Hub

    instance = Hub.from_settings(make_settings(tmp_path, database_url), migrate=True)
    yield instance
    instance.close()


@pytest.fixture
def receiver() -> Iterator[Any]:
    """A running HTTP receiver (:class:`tests.receiver.Receiver`) standing in for an endpoint."""
    from tests.receiver import Receiver

    instance = Receiver()
    instance.start()
    yield instance
    instance.stop()


@contextmanager
def published_hub(
    tmp_path: Path, postgres_url: str, redis_url: str, **overrides: Any
) -> Iterator[Any]:
    """A migrated PostgreSQL hub (settings ``overrides`` on top) whose after-commit jobs this
    process publishes to Redis; Celery is pointed back at the defaults afterwards."""
    from emr_hub.config import get_settings
    from emr_hub.hub import Hub
    from emr_hub.tasks import configure_celery

    settings = make_settings(tmp_path, postgres_url, broker_url=redis_url, **overrides)
    instance = Hub.from_settings(settings, migrate=True)
    configure_celery(settings, hub=instance)
    try:
        yield instance
    finally:
        configure_celery(get_settings())
        instance.close()


@pytest.fixture
def broker_hub(tmp_path: Path, postgres_url: str, redis_url: str) -> Iterator[Any]:
    """A migrated PostgreSQL hub whose after-commit jobs this process publishes to Redis."""
    with published_hub(tmp_path, postgres_url, redis_url) as instance:
        yield instance
