"""A request body read from a worker thread, chunk by chunk, counted against a limit.

STOW's work is blocking (object-store puts, the database), so it runs in a worker thread; this
iterator lets that thread pull the body from the event loop as it arrives (chunked
transfer-encoding included), instead of the body being read into memory first.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import anyio.from_thread
from fastapi import Request

from emr_hub.errors import FhirError, Issue

GATHER = 1024 * 1024


def too_large(limit: int) -> FhirError:
    return FhirError(413, [Issue("too-costly", f"The request body exceeds {limit} bytes")])


class ThreadBody(Iterator[bytes]):
    """Iterate in a thread started by ``run_in_threadpool``; raises 413 past ``limit``."""

    def __init__(self, request: Request, limit: int) -> None:
        self._stream: AsyncIterator[bytes] = request.stream().__aiter__()
        self._limit = limit
        self.received = 0

    def __iter__(self) -> ThreadBody:
        return self

    def __next__(self) -> bytes:
        chunk = anyio.from_thread.run(self._gather)
        if not chunk:
            raise StopIteration
        return chunk

    async def _gather(self) -> bytes:
        """What has arrived, up to about :data:`GATHER` bytes, in one hop from the thread to
        the event loop (a hop per network read would cost more than the parsing)."""
        held: list[bytes] = []
        size = 0
        while size < GATHER:
            try:
                chunk = await self._stream.__anext__()
            except StopAsyncIteration:
                break
            self.received += len(chunk)
            if self.received > self._limit:
                raise too_large(self._limit)
            held.append(chunk)
            size += len(chunk)
        return b"".join(held)
