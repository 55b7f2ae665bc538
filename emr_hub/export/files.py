"""The files of an export: NDJSON, gzip'ed on the way to a temporary file on disk, and put in
the object store whole once the file is complete (a put is atomic: a reader never sees half a
file, and a file written again after a crash replaces the first attempt).

Objects are stored compressed with ``Content-Encoding: gzip``, so a presigned link or the
hub's own download hands them to any HTTP client, which decodes them. A file holds one type
and at most ``limit`` uncompressed bytes (one resource larger than that has a file of its own).
"""

from __future__ import annotations

import gzip
import tempfile
from typing import Any

from storage.objects import ObjectStore

NDJSON = "application/fhir+ndjson"
OUTPUT, DELETED, ERROR = "output", "deleted", "error"
COMPRESS_LEVEL = 1
"""zlib's fastest level: ~4× smaller than the JSON at several times level 6's speed."""


def object_key(job_id: str, kind: str, resource_type: str, part: int) -> str:
    return f"exports/{job_id}/{kind}-{resource_type}-{part:05d}.ndjson"


class PartFile:
    """One file being written: lines go through gzip into a spool file on disk."""

    def __init__(self, kind: str, resource_type: str, limit: int) -> None:
        self.kind = kind
        self.resource_type = resource_type
        self.limit = limit
        self.count = 0
        self.size = 0
        # Closed by upload() or discard(): the file outlives this call.
        self._spool = tempfile.TemporaryFile(prefix="emr-hub-export-")  # noqa: SIM115
        self._gzip = gzip.GzipFile(
            fileobj=self._spool, mode="wb", compresslevel=COMPRESS_LEVEL, mtime=0
        )

    def fits(self, length: int) -> bool:
        return self.count == 0 or self.size + length <= self.limit

    def write(self, line: bytes) -> None:
        self._gzip.write(line)
        self._gzip.write(b"\n")
        self.count += 1
        self.size += len(line) + 1

    def upload(self, store: ObjectStore, key: str) -> dict[str, Any]:
        """Put the file in the store under ``key``; its record for the job's file list."""
        self._gzip.close()
        length = self._spool.tell()
        self._spool.seek(0)
        stored = store.put(
            key, self._spool, content_type=NDJSON, length=length, content_encoding="gzip"
        )
        self.discard()
        return {
            "kind": self.kind,
            "type": self.resource_type,
            "key": key,
            "count": self.count,
            "bytes": stored.size,
            "sha256": stored.sha256_hex,
        }

    def discard(self) -> None:
        if not self._gzip.closed:
            self._gzip.close()
        self._spool.close()
