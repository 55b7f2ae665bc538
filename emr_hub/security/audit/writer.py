"""Group commit of audit records: durable before the answer is sent, one commit for many.

Requests that read (and every refusal) have no transaction of their own to carry their audit
record, so they hand it to the process's writer and wait: one thread takes every record
queued meanwhile, appends them in one transaction and commits, then releases the waiting
requests. Under load that is one commit (one WAL flush) for a batch of requests instead of one
each; alone, a request waits for its own commit only. A request whose record could not be
written is answered 503 instead of its answer: nothing is disclosed unaudited.

The batch is appended by :func:`emr_hub.security.audit.log.append_committed` (on PostgreSQL
in two round trips). Successful writes put their record in their own transaction instead
(:func:`emr_hub.security.audit.log.append` just before the commit), so a write and its audit
record commit together or not at all.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from typing import Any

from emr_hub.security.audit.log import append_committed
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
