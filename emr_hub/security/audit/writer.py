"""Group commit of audit records: durable before the answer is sent, one commit for many.

Requests that read (and every refusal) have no transaction of their own to carry their audit
record, so they hand it to the process's writer and wait: one thread takes every record
queued meanwhile, appends them in one transaction and commits, then releases the waiting
requests. Under load that is one commit (one WAL flush) for a batch of requests instead of one
each; alone, a request waits for its own commit only. A request whose record could not be
written is answered 503 instead of its answer: nothing is disclosed unaudited.

Two writers do this. On PostgreSQL the API's middleware uses :class:`LoopAuditWriter`, a task
of the event loop on the loop's asyncio connections (:mod:`storage.async_db`): a record is
handed over and waited for without leaving the loop, where a thread writer cost a hop to its
thread and a wake-up back per request, about a third of a read's CPU when measured. Code that
runs in a worker thread (and every app on SQLite) uses :class:`AuditWriter`, a thread of its
own. Both append a batch as :mod:`emr_hub.security.audit.log` does (on PostgreSQL one call of
the database's ``emr_hub_audit_append``, one round trip). Successful writes put their record
in their own transaction instead (:func:`emr_hub.security.audit.log.append` just before the
commit), so a write and its audit record commit together or not at all.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from concurrent.futures import Future
from typing import Any

from emr_hub.security.audit.log import append_committed, append_on
from storage.async_db import AsyncConnections, Connection
from storage.db import Database

log = logging.getLogger(__name__)

MAX_BATCH = 500


class AuditWriter:
    """One per process and database; start it lazily with :meth:`submit`."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._queue: queue.SimpleQueue[tuple[list[dict[str, Any]], Future[None]] | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopped = False

    def submit(self, events: list[dict[str, Any]]) -> Future[None]:
        """Queue ``events``; the future completes once they are committed (or fails)."""
        future: Future[None] = Future()
        if self._stopped:
            future.set_exception(RuntimeError("the audit writer is stopped"))
            return future
        self._ensure_started()
        self._queue.put((events, future))
        return future

    def write(self, events: list[dict[str, Any]]) -> None:
        """Queue ``events`` and wait until they are committed."""
        self.submit(events).result()

    def stop(self) -> None:
        """Commit what is queued, then end the thread."""
        with self._lock:
            self._stopped = True
            thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=30)

    def _ensure_started(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="emr-hub-audit-writer", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            batch: list[tuple[list[dict[str, Any]], Future[None]]] = []
            stopping = item is None
            if item is not None:
                batch.append(item)
            while len(batch) < MAX_BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                batch.append(more)
            if batch:
                self._commit(batch)
            if stopping:
                return

    def _commit(self, batch: list[tuple[list[dict[str, Any]], Future[None]]]) -> None:
        try:
            append_committed(self.db, [event for events, _ in batch for event in events])
        except Exception as exc:  # noqa: BLE001 - every waiting request learns of the failure
            log.error("audit records could not be written: %s", type(exc).__name__)
            for _, future in batch:
                future.set_exception(exc)
            return
        for _, future in batch:
            future.set_result(None)


class LoopAuditWriter:
    """The group writer of an API process on PostgreSQL, on its event loop: while one batch
    commits, the records handed over meanwhile wait, and go in the next commit together."""

    def __init__(self, connections: AsyncConnections) -> None:
        self._connections = connections
        self._queued: list[tuple[list[dict[str, Any]], asyncio.Future[None]]] = []
        self._draining: asyncio.Task[None] | None = None

    @classmethod
    def on(cls, connections: AsyncConnections | None) -> LoopAuditWriter | None:
        """A writer on the event loop's connections where the app has them, else None. It
        holds one of them while it commits, never more, so the direct reads always have
        the others."""
        return cls(connections) if connections is not None else None

    async def write(self, events: list[dict[str, Any]]) -> None:
        """Hand ``events`` over and wait until they are committed (or raise why not). A caller
        that is cancelled meanwhile (its client hung up) leaves them to be committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._queued.append((events, future))
        if self._draining is None:
            self._draining = loop.create_task(self._drain())
        await future

    async def close(self) -> None:
        """Commit what was handed over (the app closes the connections afterwards)."""
        if self._draining is not None:
            await self._draining

    async def _drain(self) -> None:
        batch: list[tuple[list[dict[str, Any]], asyncio.Future[None]]] = []
        try:
            while self._queued:
                batch, self._queued = self._queued[:MAX_BATCH], self._queued[MAX_BATCH:]
                await self._commit(batch)
        finally:
            self._draining = None
            for _, future in batch:  # cancelled midway (the loop is ending): not committed
                if not future.done():
                    future.set_exception(RuntimeError("the audit writer stopped"))

    async def _commit(self, batch: list[tuple[list[dict[str, Any]], asyncio.Future[None]]]) -> None:
        events = [event for handed, _ in batch for event in handed]

        async def append(connection: Connection) -> list[int]:
            return await append_on(connection, events)

        try:
            await self._connections.run(append, "audit append")
        except Exception as exc:  # noqa: BLE001 - every waiting request learns of the failure
            log.error("audit records could not be written: %s", type(exc).__name__)
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for _, future in batch:
            if not future.done():
                future.set_result(None)
