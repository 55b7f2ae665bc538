"""Shared fixtures: real servers when reachable, a clear skip (or failure under CI) when not."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
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


def postgres_admin(statement: str) -> None:
    """Run one statement (CREATE or DROP DATABASE) on the server's admin database."""
    from sqlalchemy import create_engine, text

    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(statement))
    finally:
        admin.dispose()


def postgres_url_of(name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def create_postgres_database(prefix: str, template: str | None = None) -> str:
    """A new database named ``prefix`` and a random suffix, empty or a copy of ``template``;
    the test is skipped (failed under CI) when the server cannot make it."""
    if not port_open("127.0.0.1", 5432):
        service_missing("PostgreSQL is not reachable on 127.0.0.1:5432")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    copied = f' TEMPLATE "{template}"' if template else ""
    try:
        postgres_admin(f'CREATE DATABASE "{name}"{copied}')
    except Exception as exc:  # noqa: BLE001
        service_missing(f"cannot create a PostgreSQL test database: {exc}")
    return name


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """Create an empty PostgreSQL database for one test (or module) and drop it afterwards."""
    name = create_postgres_database("emr_hub_test")
    try:
        yield postgres_url_of(name)
    finally:
        postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class MigratedTemplates:
    """A database of each kind migrated once per test process, which each test's database is
    copied from (a PostgreSQL ``CREATE DATABASE ... TEMPLATE``, a SQLite file copy).

    Why: running the migrations is about a second a test on PostgreSQL, and most tests only
    need a migrated database. A test about the migrations themselves takes the
    ``empty_database_url`` fixture instead. Each kind is made on first use, so a run that never
    touches PostgreSQL never connects to it. PostgreSQL's copy (most of a second, mostly the
    server writing files) is made on a thread while the test before runs, and a used copy is
    dropped there too; each test still gets a database no other test has touched.
    """

    def __init__(self, folder: Path) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.folder = folder
        self.postgres: str | None = None
        self.sqlite: Path | None = None
        self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-db")
        self._next: Future[str] | None = None

    def _copy(self) -> str:
        return create_postgres_database("emr_hub_test", self.postgres)

    @contextmanager
    def postgres_copy(self) -> Iterator[str]:
        """A migrated database of the test's own, dropped after it."""
        self.postgres_template()
        ready, self._next = self._next, None
        # (a copy the server refused skips the test, as a refused database does)
        name = (ready or self._background.submit(self._copy)).result()
        self._next = self._background.submit(self._copy)
        try:
            yield postgres_url_of(name)
        finally:
            drop = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
            self._background.submit(postgres_admin, drop)

    def postgres_template(self) -> str:
        if self.postgres is None:
            from sqlalchemy import create_engine

            from storage.migrate import upgrade

            name = create_postgres_database("emr_hub_template")
            self.postgres = name  # from here on, dropped at the end of the session
            engine = create_engine(postgres_url_of(name))
            try:
                upgrade(engine)
            finally:
                engine.dispose()  # a template must have no connections when it is copied
        return self.postgres

    def sqlite_copy(self, target: Path) -> str:
        import shutil

        if self.sqlite is None:
            from sqlalchemy import create_engine

            from storage.migrate import upgrade

            path = self.folder / "template.db"
            engine = create_engine(f"sqlite:///{path}")
            try:
                upgrade(engine)
            finally:
                engine.dispose()
            self.sqlite = path
        shutil.copyfile(self.sqlite, target)
        return f"sqlite:///{target}"

    def drop(self) -> None:
        """Drop the copy made ahead, then the template (after the drops still queued)."""
        if self._next is not None and self._next.exception() is None:  # (a failed one: none)
            name = self._next.result()
            self._background.submit(postgres_admin, f'DROP DATABASE IF EXISTS "{name}"')
        self._background.shutdown(wait=True)
        if self.postgres is not None:
            postgres_admin(f'DROP DATABASE IF EXISTS "{self.postgres}" WITH (FORCE)')


@pytest.fixture(scope="session")
def migrated_templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MigratedTemplates]:
    templates = MigratedTemplates(tmp_path_factory.mktemp("templates"))
    yield templates
    templates.drop()


@pytest.fixture
def postgres_url(migrated_templates: MigratedTemplates) -> Iterator[str]:
    """A fresh PostgreSQL database, already migrated."""
    with migrated_templates.postgres_copy() as url:
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
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, migrated_templates: MigratedTemplates
) -> Iterator[str]:
    """Each test using this runs on the embedded SQLite file and on a fresh PostgreSQL
    database, both already migrated."""
    if request.param == "sqlite":
        yield migrated_templates.sqlite_copy(tmp_path / "hub.db")
        return
    with migrated_templates.postgres_copy() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each kind, for tests of the migrations themselves."""
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
