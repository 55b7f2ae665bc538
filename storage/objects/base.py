"""The object-store contract shared by the local-folder and S3 backends.

Everything here is backend-neutral: the :class:`ObjectStore` protocol, the value and error
types, key validation, and the streaming helpers both backends use so that an object is
never held in memory as a whole.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from typing import BinaryIO, Protocol, runtime_checkable

CHUNK_SIZE = 1024 * 1024
"""Size of the chunks :meth:`ObjectStore.get` yields (the last one may be shorter)."""

MAX_KEY_LENGTH = 1024
MAX_PRESIGN_SECONDS = 3600
DEFAULT_CONTENT_TYPE = "application/octet-stream"

PutData = BinaryIO | bytes | bytearray | memoryview | Iterable[bytes]
"""What :meth:`ObjectStore.put` accepts: a binary file object, bytes, or an iterable of bytes."""

_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class ObjectStoreError(Exception):
    """Base class of the errors this package raises on purpose."""


class ObjectStoreUnavailable(ObjectStoreError):
    """The store cannot be reached or failed on its side (after the client's retries): the
    same request may succeed later."""


class ObjectNotFound(ObjectStoreError, LookupError):
    """No object is stored under ``key``."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key

    def __str__(self) -> str:
        return f"object not found: {self.key!r}"


@dataclass(frozen=True, slots=True)
class StoredObject:
    """What the store knows about one object."""

    key: str
    size: int
    sha256_hex: str
    content_type: str
    content_encoding: str | None = None
    """``gzip`` for an object stored compressed and served as such (HTTP Content-Encoding)."""


@runtime_checkable
class ObjectStore(Protocol):
    """A flat namespace of immutable-once-written byte objects addressed by ``/``-separated keys.

    Keys are validated by :func:`validate_key` in every method (``ValueError`` when invalid).
    Writes stream: ``put`` reads its input chunk by chunk and hashes it on the way, and
    ``get`` yields chunks of :data:`CHUNK_SIZE`. A ``put`` is atomic: readers see either the
    previous object or the new one, never a partial one.
    """

    def put(
        self,
        key: str,
        data: PutData,
        *,
        content_type: str = DEFAULT_CONTENT_TYPE,
        length: int | None = None,
        content_encoding: str | None = None,
    ) -> StoredObject:
        """Store ``data`` under ``key`` (replacing any previous object).

        ``length``, when given, must equal the number of bytes ``data`` yields, else
        ``ValueError`` and nothing is stored. ``content_encoding`` (``gzip``) is kept with
        the object and sent as its Content-Encoding by the store's own links.
        """
        ...

    def get(self, key: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        """Return the content as chunks; raise :class:`ObjectNotFound` right away if missing.

        ``offset`` and ``length`` ask for a byte range (the whole rest when ``length`` is
        None); a range past the end gives what there is (possibly nothing), as HTTP ranges do.
        The returned iterator holds an open file or connection until exhausted; callers that
        stop early should ``close()`` it (it is an :class:`ObjectReader`).
        """
        ...

    def stat(self, key: str) -> StoredObject:
        """Size, SHA-256 and content type of the object; :class:`ObjectNotFound` if missing."""
        ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove the object; deleting a missing object is not an error."""
        ...

    def presigned_get_url(self, key: str, expires_seconds: int = 900) -> str | None:
        """A URL that downloads the object without credentials, or ``None`` if unsupported.

        ``expires_seconds`` must be within 1..3600 (``ValueError`` otherwise).
        """
        ...

    def ensure_ready(self) -> None:
        """Create the backing folder or bucket if missing (idempotent)."""
        ...

    def ping(self) -> bool:
        """Cheap readiness probe: ``True`` when the store can serve requests now."""
        ...


class ObjectReader(Iterator[bytes]):
    """An iterator over an object's chunks that owns an open file or HTTP response.

    The resource is released when the iterator is exhausted, when reading fails, on
    :meth:`close`, on leaving a ``with`` block, or at the latest when garbage collected. A
    plain generator would not do: one that was never started never runs its ``finally``.
    """

    def __init__(self, chunks: Iterator[bytes], release: Callable[[], None]) -> None:
        self._chunks = chunks
        self._release: Callable[[], None] | None = release

    def __iter__(self) -> ObjectReader:
        return self

    def __next__(self) -> bytes:
        if self._release is None:
            raise StopIteration
        try:
            return next(self._chunks)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()

    def __enter__(self) -> ObjectReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        with suppress(Exception):
            self.close()


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe object key, else raise ``ValueError``.

    A key is 1..1024 characters (and at most 1024 bytes as UTF-8) of ``/``-separated
    segments. Refused: a leading ``/``, backslashes, control characters, empty segments
    (``a//b``, trailing ``/``), and any segment starting with ``.`` -- that covers ``.`` and
    ``..`` (no path traversal in the file backend) and reserves dot-names for the backends'
    own bookkeeping (temporary files, metadata sidecars, in-flight uploads).
    """
    if not isinstance(key, str):
        raise ValueError(f"object key must be a string, not {type(key).__name__}")
    if not key:
        raise ValueError("object key must not be empty")
    if len(key) > MAX_KEY_LENGTH or len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_LENGTH:
        raise ValueError(f"object key longer than {MAX_KEY_LENGTH} bytes")
    if key.startswith("/"):
        raise ValueError(f"object key must not start with '/': {key!r}")
    if "\\" in key:
        raise ValueError(f"object key must not contain a backslash: {key!r}")
    if _CONTROL_CHARS.search(key):
        raise ValueError(f"object key must not contain control characters: {key!r}")
    for segment in key.split("/"):
        if not segment:
            raise ValueError(f"object key must not contain empty segments: {key!r}")
        if segment.startswith("."):
            raise ValueError(f"object key segments must not start with '.': {key!r}")
    return key


def validate_content_type(content_type: str) -> str:
    """Return ``content_type`` if usable as an HTTP header value, else raise ``ValueError``."""
    if not isinstance(content_type, str) or not content_type.strip():
        raise ValueError("content type must be a non-empty string")
    if len(content_type) > 255 or _CONTROL_CHARS.search(content_type):
        raise ValueError(f"invalid content type: {content_type[:80]!r}")
    return content_type


def validate_length(length: int | None) -> int | None:
    if length is not None and (isinstance(length, bool) or length < 0):
        raise ValueError(f"length must be a non-negative integer or None, not {length!r}")
    return length


def validate_expiry(expires_seconds: int) -> int:
    if isinstance(expires_seconds, bool) or not 1 <= expires_seconds <= MAX_PRESIGN_SECONDS:
        raise ValueError(
            f"expires_seconds must be between 1 and {MAX_PRESIGN_SECONDS}, not {expires_seconds!r}"
        )
    return expires_seconds


def validate_range(offset: int, length: int | None) -> None:
    if isinstance(offset, bool) or offset < 0:
        raise ValueError(f"offset must be a non-negative integer, not {offset!r}")
    if length is not None and (isinstance(length, bool) or length < 0):
        raise ValueError(f"length must be a non-negative integer or None, not {length!r}")


def is_sha256_hex(value: object) -> bool:
    return isinstance(value, str) and _SHA256_HEX.fullmatch(value) is not None


def iter_chunks(data: PutData, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Yield the non-empty chunks of ``data`` without reading it all first.

    ``str`` is refused (``TypeError``): it is iterable, but not bytes.
    """
    if isinstance(data, bytes | bytearray | memoryview):
        if data:
            yield bytes(data)
        return
    if isinstance(data, str):
        raise TypeError("object data must be bytes, a binary file or an iterable of bytes")
    read = getattr(data, "read", None)
    if callable(read):
        while chunk := read(chunk_size):
            if not isinstance(chunk, bytes | bytearray | memoryview):
                raise TypeError("object file must be opened in binary mode")
            yield bytes(chunk)
        return
    for chunk in data:  # type: ignore[union-attr]
        if not isinstance(chunk, bytes | bytearray | memoryview):
            raise TypeError(f"object data chunks must be bytes, not {type(chunk).__name__}")
        if chunk:
            yield bytes(chunk)


class HashingReader:
    """A read-only file object over :func:`iter_chunks` that hashes and counts what is read.

    It also enforces a declared ``length``: reaching the end early raises ``ValueError``
    (from inside ``read``, so an upload in progress is aborted), and :meth:`finish` checks
    that the source holds nothing beyond it.
    """

    def __init__(self, data: PutData, length: int | None = None) -> None:
        self._chunks = iter_chunks(data)
        self._length = length
        self._pending = memoryview(b"")
        self._eof = False
        self._sha256 = hashlib.sha256()
        self.size = 0

    def read(self, size: int | None = -1) -> bytes:
        """Return up to ``size`` bytes (all remaining if negative); ``b""`` at the end.

        Returns exactly ``size`` bytes unless the source ends first, joining source chunks
        once, so a caller asking for a whole multipart part gets it in one piece.
        """
        wanted = None if size is None or size < 0 else size
        parts: list[memoryview] = []
        while wanted is None or wanted > 0:
            if not self._pending:
                if self._eof:
                    break
                chunk = next(self._chunks, b"")
                if not chunk:
                    self._eof = True
                    break
                self._pending = memoryview(chunk)
            take = len(self._pending) if wanted is None else min(wanted, len(self._pending))
            parts.append(self._pending[:take])
            self._pending = self._pending[take:]
            if wanted is not None:
                wanted -= take
        out = b"".join(parts)
        del parts
        self._sha256.update(out)
        self.size += len(out)
        if self._length is not None:
            if self.size > self._length:
                raise ValueError(f"data is longer than the declared length {self._length}")
            if self._eof and self.size < self._length:
                raise ValueError(
                    f"data ended after {self.size} bytes, "
                    f"shorter than the declared length {self._length}"
                )
        return out

    def finish(self) -> str:
        """Check the source is exhausted (and matched ``length``); return the SHA-256 hex."""
        if self._length is not None and self.read(1):
            raise ValueError(f"data is longer than the declared length {self._length}")
        return self._sha256.hexdigest()
