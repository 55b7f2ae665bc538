"""The services one process holds: settings, database, object store, token signer.

Built once per process (API, worker, CLI) by :func:`Hub.from_settings`; request handlers
get it from ``app.state.hub``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from emr_hub.config import Settings, get_settings
from storage.db import Database
from storage.migrate import upgrade

if TYPE_CHECKING:
    from emr_hub.security.audit.writer import AuditWriter
    from emr_hub.security.token_cache import TokenCache
    from storage.objects import ObjectStore


@dataclass
class Hub:
    settings: Settings
    db: Database
    _closed: bool = field(default=False, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings | None = None, *, migrate: bool = False) -> Hub:
        settings = settings or get_settings()
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(
            settings.effective_database_url,
            # The request threads, plus two for the background threads (the thread audit
            # writer, the outbox relay). An API process also has its event loop's connections
            # (storage/async_db.py: the direct reads and the loop's audit writer share them)
            # and the client-change listener's: threads + 5 in all.
            pool_size=settings.worker_threads + 2,
            statement_timeout=settings.statement_timeout_seconds,
        )
        if migrate:
            upgrade(db.engine)
        return cls(settings=settings, db=db)

    @cached_property
    def objects(self) -> ObjectStore:
        from storage.objects import open_object_store

        store = open_object_store(
            self.settings.effective_object_store,
            endpoint=self.settings.s3_endpoint,
            access_key=self.settings.s3_access_key,
            secret_key=self.settings.s3_secret_key,
        )
        store.ensure_ready()
        return store

    @cached_property
    def audit_writer(self) -> AuditWriter:
        """The group writer of this process's audit records (its thread starts on first use)."""
        from emr_hub.security.audit.writer import AuditWriter

        return AuditWriter(self.db)

    @cached_property
    def token_cache(self) -> TokenCache:
        """The access tokens this process has verified (its listener starts on first use)."""
        from emr_hub.security.token_cache import TokenCache

        return TokenCache(self)

    def close(self) -> None:
        if not self._closed:
            if "audit_writer" in self.__dict__:
                self.audit_writer.stop()
            if "token_cache" in self.__dict__:
                self.token_cache.stop()
            self.db.dispose()
            self._closed = True
